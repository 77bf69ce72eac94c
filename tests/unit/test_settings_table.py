"""The table of settings (``xnatfs/settings.py``) is the single source (issue 14 item 4): every
setting is an option of ``xnatfs mount`` with its default shown once, from the table; the config
keys, the ``Options`` record and its defaults, the daemon's argv and ``mount.xnatfs -o`` are all
generated from it, and argv -> Options -> argv is the identity."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from xnatfs import cli
from xnatfs import settings as table
from xnatfs.config import KEYS, effective_settings, load_config
from xnatfs.options import Options
from xnatfs.tree.writes import Writer

URL = "https://xnat.example.org/xnat"
#: Options fields that are not settings: the positional URL and what ``-o`` carries
NOT_SETTINGS = {"url", "fuse_options", "uid", "gid", "umask"}


def _mount_parser():
    parser = cli.build_parser()
    return parser._subparsers._group_actions[0].choices["mount"]


def _options_from_argv(argv):
    """``xnatfs mount`` arguments -> (args, Options), with no environment and no config file."""
    args = cli.build_parser().parse_args(argv)
    given = {key: getattr(args, key) for key in KEYS if getattr(args, key, None) is not None}
    settings = effective_settings(URL, given, {}, load_config(args.config, {}))
    return args, cli.options_from_settings(args.url, settings, args.fuse_options)


def _other_value(setting: table.Setting, tmp_path: Path):
    """A valid value of ``setting`` that is not its default."""
    kind = setting.kind
    if kind is table.BOOL:
        return True
    if kind is table.SIZE:
        return 3 * 1024**3
    if kind is table.MODE:
        return 0o750
    if kind in (table.PATH,):
        return str(tmp_path / setting.name)
    if kind.label == "integer":
        return (setting.default or 0) + 3
    if kind.label == "seconds":
        return setting.default + 0.25
    if kind is table.LOG_LEVEL:
        return "debug"
    return f"xnat:ct{setting.name}Data"


def test_every_setting_is_an_option_of_mount_with_its_default_once_from_the_table(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")  # argparse wraps help text at hyphens
    mount = _mount_parser()
    by_flag = {s: a for a in mount._actions for s in a.option_strings}
    help_text = " ".join(mount.format_help().split())
    for s in table.SETTINGS:
        if not s.cli:
            assert s.flag not in by_flag, s.name
            continue
        action = by_flag[s.flag]
        assert action.dest == s.name and action.default is None  # config.py decides
        assert action.help == s.help_text()
        assert " ".join(s.help_text().split()) in help_text
        # the default is written only in the table: the help template holds no number of its own
        template = s.help.replace("{default}", "")
        assert not re.search(r"default:? \d", template), f"{s.name}: default typed in the help"
        if "{default}" in s.help:
            assert s.help.count("{default}") == 1
            assert s.shown_default() in s.help_text()


def test_config_keys_are_the_table():
    assert list(KEYS) == [s.name for s in table.SETTINGS if s.config]
    for s in table.CONFIG_SETTINGS:
        assert (KEYS[s.name].default, KEYS[s.name].convert) == (s.default, s.kind.convert)


def test_options_fields_and_defaults_are_the_table():
    fields = {f.name: f for f in dataclasses.fields(Options)}
    from_table = {s.field for s in table.SETTINGS if s.field}
    assert set(fields) == from_table | NOT_SETTINGS
    built = Options(url=URL)
    for s in table.OPTION_SETTINGS:
        if s.name == "cache_dir":
            assert built.cache_dir == table.default_cache_dir()
        elif s.name == "ca_bundle":
            assert built.verify is True  # no bundle: the system's CAs
        else:
            assert getattr(built, s.field) == s.default, s.name


def test_defaults_reach_options_unchanged():
    _, options = _options_from_argv(["mount", URL, "/mnt", "--cache-dir", "/var/c"])
    assert options == Options(url=URL, cache_dir=Path("/var/c"))


def test_daemon_argv_round_trip_is_the_identity(tmp_path):
    """Every daemon setting set to a value that is not its default: argv -> Options -> argv."""
    argv = ["mount", URL, "/mnt"]
    for s in table.OPTION_SETTINGS:
        value = _other_value(s, tmp_path)
        argv += [s.flag] if s.kind is table.BOOL else [s.flag, s.kind.text(value)]
    args, options = _options_from_argv(argv + ["-o", "allow_other,uid=7"])
    for s in table.OPTION_SETTINGS:
        got = getattr(options, s.field)
        assert got != (Options(url=URL).__getattribute__(s.field)), s.name  # really set
    daemon = cli.daemon_argv(args, options, "/mnt", "debug")
    assert daemon[3:6] == ["mount", URL, "/mnt"] and "--credentials-stdin" in daemon
    args2, options2 = _options_from_argv(daemon[3:])
    assert options2 == options
    assert cli.daemon_argv(args2, options2, "/mnt", "debug") == daemon
    # and with every default
    args, options = _options_from_argv(["mount", URL, "/mnt"])
    daemon = cli.daemon_argv(args, options, "/mnt", "info")
    assert _options_from_argv(daemon[3:])[1] == options


def test_every_command_line_setting_is_a_mount_helper_option(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    for s in table.SETTINGS:
        if not s.cli:
            continue
        value = _other_value(s, tmp_path)
        option = s.name if s.kind is table.BOOL else f"{s.name}={s.kind.text(value)}"
        seen.clear()
        cli.mount_helper_main([URL, "/mnt", "-o", f"{option},allow_other,_netdev"])
        args = cli.build_parser().parse_args(seen[0])
        assert s.kind.convert(getattr(args, s.name), True) == value, s.name
        assert args.fuse_options == ["allow_other"]


def test_writer_takes_the_upload_settings(tmp_path):
    writer = Writer(
        tree=None,
        client=None,
        directory=str(tmp_path),
        upload_workers=3,
        upload_backoff=0.5,
        upload_backoff_max=9.0,
    )
    up = writer.uploader
    assert (up.workers, up.base_delay, up.max_delay) == (3, 0.5, 9.0)
    default = Writer(tree=None, client=None, directory=str(tmp_path / "d")).uploader
    assert (default.workers, default.base_delay, default.max_delay) == (
        table.default("upload_workers"),
        table.default("upload_backoff"),
        table.default("upload_backoff_max"),
    )


@pytest.mark.parametrize("bad", ["--upload-workers=0", "--upload-backoff=0"])
def test_upload_settings_are_checked(bad):
    from xnatfs.config import ConfigError

    with pytest.raises(ConfigError):
        _options_from_argv(["mount", URL, "/mnt", bad])


def test_defaults_the_readme_states_are_the_table():
    """Each "`--option` ... default X" of README.md names the table's default (X in the
    option's own unit; "5 min" for seconds is read as 300)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    found = {}
    for m in re.finditer(
        r"`--([a-z-]+)(?: [A-Z]+)?`[^`]{0,40}?default (`[^`]+`|[^,;)\s]+)"
        r"( s| min)?",
        readme,
    ):
        found.setdefault(m.group(1).replace("-", "_"), []).append((m.group(2), m.group(3)))
    assert {"timeout", "cache_size", "bulk_zip", "upload_backoff_max"} <= set(found)
    for name, mentions in found.items():
        s = table.BY_NAME[name]
        for text, unit in mentions:
            if s.default is None:  # a path that depends on the environment
                continue
            value = s.kind.convert(text.strip("`"), True)
            assert value * (60 if unit == " min" else 1) == s.default, (name, text, unit)
