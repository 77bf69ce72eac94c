"""``--bids-config`` / ``bids_config``: command line, config file, ``Options`` and the daemon's
argv (the settings helper's table will generate these; this checks the path end to end)."""

from __future__ import annotations

from xnatfs import cli
from xnatfs.config import effective_settings, load_config

URL = "https://xnat.example.org"


def _options(argv, env, config=None):
    args = cli.build_parser().parse_args(["mount", URL, "/mnt", *argv])
    given = {"bids_config": args.bids_config} if args.bids_config is not None else {}
    settings = effective_settings(URL, given, env, load_config(config, env))
    return args, cli.options_from_settings(URL, settings, args.fuse_options)


def test_bids_config_from_every_source(tmp_path) -> None:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    assert not _options([], env)[1].bids_config  # unset: no config file
    config = tmp_path / "c.toml"
    config.write_text('[defaults]\nbids_config = "/etc/xnatfs/dcm2bids.json"\n')
    assert _options([], env, config)[1].bids_config == "/etc/xnatfs/dcm2bids.json"
    args, options = _options(["--bids-config", "/tmp/mine.json"], env, config)
    assert options.bids_config == "/tmp/mine.json"
    argv = cli.daemon_argv(args, options, "/mnt", "info")
    assert argv[argv.index("--bids-config") + 1] == "/tmp/mine.json"
