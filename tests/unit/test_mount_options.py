"""``--dir-mode``/``--file-mode``/``--nonempty`` (issue 16 §3, §6) through the whole settings path:
command line, ``XNATFS_*``, config file, ``Options``, the daemon's argv, ``mount.xnatfs -o``."""

from __future__ import annotations

import pytest

from xnatfs import cli
from xnatfs.config import ConfigError, effective_settings, load_config

URL = "https://xnat.example.org"


def _options(argv, env, config=None):
    args = cli.build_parser().parse_args(["mount", URL, "/mnt", *argv])
    given = {
        k: getattr(args, k)
        for k in ("dir_mode", "file_mode", "nonempty")
        if getattr(args, k, None) is not None
    }
    settings = effective_settings(URL, given, env, load_config(config, env))
    return args, cli.options_from_settings(URL, settings, args.fuse_options)


def test_modes_from_command_line_environment_and_file(env, tmp_path):
    _, options = _options(["--dir-mode", "0750", "--file-mode", "640"], env)
    assert (options.dir_mode, options.file_mode) == (0o750, 0o640)
    _, options = _options([], dict(env, XNATFS_DIR_MODE="0700"))
    assert (options.dir_mode, options.file_mode) == (0o700, None)
    config = tmp_path / "c.toml"
    config.write_text('[defaults]\nfile_mode = "0600"\nnonempty = true\n')
    _, options = _options([], env, config)
    assert options.file_mode == 0o600 and options.nonempty
    with pytest.raises(ConfigError, match="octal"):
        _options(["--dir-mode", "rwx"], env)
    with pytest.raises(ConfigError):
        _options(["--file-mode", "1777"], env)


def test_nonempty_is_taken_by_xnatfs_and_reaches_the_daemon(env):
    args, options = _options(["-o", "nonempty,allow_other"], env)
    assert options.nonempty and "nonempty" not in options.fuse_options  # libfuse3 refuses it
    args, options = _options(["--nonempty", "--dir-mode", "0700"], env)
    argv = cli.daemon_argv(args, options, "/mnt", "info")
    assert "--nonempty" in argv and argv[argv.index("--dir-mode") + 1] == "0700"
    assert "--file-mode" not in argv


def test_mount_helper_passes_modes_and_nonempty(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    cli.mount_helper_main([URL, "/mnt", "-o", "dir_mode=0750,file_mode=0640,nonempty,_netdev"])
    cmd = seen[0]
    assert cmd[cmd.index("--dir-mode") + 1] == "0750"
    assert cmd[cmd.index("--file-mode") + 1] == "0640"
    assert "--nonempty" in cmd and "-o" not in cmd
