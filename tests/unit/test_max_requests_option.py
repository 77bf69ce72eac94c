"""``--max-requests`` (issue 13 §2) through the whole settings path: command line,
``XNATFS_MAX_REQUESTS``, config file, ``Options``, the daemon's argv, ``mount.xnatfs -o``, and
on to the client's limiter."""

from __future__ import annotations

import pytest

from xnatfs import cli
from xnatfs.config import ConfigError, effective_settings, load_config
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions, XnatClient

URL = "https://xnat.example.org"


def _options(argv, env, config=None):
    args = cli.build_parser().parse_args(["mount", URL, "/mnt", *argv])
    given = {"max_requests": args.max_requests} if args.max_requests is not None else {}
    settings = effective_settings(URL, given, env, load_config(config, env))
    return args, cli.options_from_settings(URL, settings, args.fuse_options)


def test_every_source_and_the_default(env, tmp_path):
    assert _options([], env)[1].max_requests == 16
    assert _options(["--max-requests", "4"], env)[1].max_requests == 4
    assert _options([], dict(env, XNATFS_MAX_REQUESTS="6"))[1].max_requests == 6
    config = tmp_path / "c.toml"
    config.write_text("[defaults]\nmax_requests = 3\n")
    assert _options([], env, config)[1].max_requests == 3
    assert _options(["--max-requests", "5"], env, config)[1].max_requests == 5
    with pytest.raises(ConfigError):
        _options(["--max-requests", "0"], env)


def test_reaches_the_daemon_and_the_helper(env, monkeypatch):
    args, options = _options(["--max-requests", "4"], env)
    argv = cli.daemon_argv(args, options, "/mnt", "info")
    assert argv[argv.index("--max-requests") + 1] == "4"
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    cli.mount_helper_main([URL, "/mnt", "-o", "max_requests=4,allow_other"])
    assert seen[0][seen[0].index("--max-requests") + 1] == "4"


def test_client_limiter_uses_it():
    c = XnatClient(URL, Credentials("u", "p"), ClientOptions(max_requests=3, heartbeat=False))
    assert c.limiter["max_requests"] == 3 and c.limiter["limit"] == 3
