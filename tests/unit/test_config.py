"""xnatfs/config.py (precedence, masking, every refusal) and xnatfs/notify.py (sd_notify).

The sd_notify tests bind a local AF_UNIX datagram socket — the only "socket" in this file; no
network is involved.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

import pytest

from xnatfs import cli, notify
from xnatfs.config import (
    KEYS,
    MASK,
    SOURCE_CLI,
    SOURCE_DEFAULT,
    SOURCE_ENV,
    SOURCE_FILE,
    ConfigError,
    ConfigFile,
    effective_settings,
    load_config,
    normalize_url,
    render,
)

URL = "https://xnat.example.org"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


CONFIG = """
# comment
[defaults]
cache_size = "20G"
listing_ttl = 120
max_threads = 8
log_level = "warning"

[servers."https://xnat.example.org"]
max_threads = 32
netrc = "~/.netrc-xnat"
read_only = false

[servers."http://other.example.org:8080/xnat"]
retries = 9
"""


# --------------------------------------------------------------------------- loading
def test_missing_default_file_is_an_empty_config(env):
    cfg = load_config(env=env)
    assert cfg == ConfigFile()
    assert cfg.path is None


def test_default_location_is_xdg_config_home(env):
    path = Path(env["XDG_CONFIG_HOME"]) / "xnatfs" / "config.toml"
    path.parent.mkdir(parents=True)
    write(path, CONFIG)
    cfg = load_config(env=env)
    assert cfg.path == path
    assert cfg.defaults["cache_size"] == 20 * 1024**3


def test_xnatfs_config_variable_names_the_file(tmp_path, env):
    path = write(tmp_path / "elsewhere.toml", CONFIG)
    assert load_config(env=dict(env, XNATFS_CONFIG=str(path))).path == path


def test_explicit_missing_file_is_refused(tmp_path, env):
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        load_config(tmp_path / "nope.toml", env=env)


def test_server_tables_match_normalized_urls(tmp_path, env):
    cfg = load_config(write(tmp_path / "c.toml", CONFIG), env=env)
    assert cfg.for_server("HTTPS://XNAT.example.org:443/")["max_threads"] == 32
    assert cfg.for_server("http://other.example.org:8080/xnat/")["retries"] == 9
    assert cfg.for_server("http://other.example.org:8080/xnat/")["max_threads"] == 8  # defaults
    assert "retries" not in cfg.for_server("https://unknown.example.org")
    assert normalize_url("https://X.org:443/a/") == "https://x.org/a"
    assert normalize_url("http://x.org:8080") == "http://x.org:8080"


# --------------------------------------------------------------------------- precedence
def test_precedence_command_line_environment_file_default(tmp_path, env):
    cfg = load_config(write(tmp_path / "c.toml", CONFIG), env=env)
    environ = dict(
        env,
        XNATFS_MAX_THREADS="64",
        XNATFS_LISTING_TTL="5",
        XNATFS_UNRELATED="ignored",
        XNATFS_FUSE="3",
    )
    s = effective_settings(URL, {"listing-ttl": "7.5", "netrc": None}, environ, cfg)
    assert s["listing_ttl"] == (7.5, SOURCE_CLI)  # cli > env > file
    assert s["max_threads"] == (64, SOURCE_ENV)  # env > server table > defaults
    assert s["read_only"] == (False, SOURCE_FILE)  # server table
    assert s["cache_size"] == (20 * 1024**3, SOURCE_FILE)  # [defaults]
    assert s["log_level"] == ("warning", SOURCE_FILE)
    assert s["netrc"] == (os.path.expanduser("~/.netrc-xnat"), SOURCE_FILE)
    assert s["retries"] == (3, SOURCE_DEFAULT)  # other server's table unused
    assert s["cache_dir"] == (str(Path(env["XDG_CACHE_HOME"]) / "xnatfs"), SOURCE_DEFAULT)
    assert s["password"] == (None, SOURCE_DEFAULT)
    assert set(s) == set(KEYS)


def test_server_table_beats_defaults_and_env_beats_server_table(tmp_path, env):
    cfg = load_config(write(tmp_path / "c.toml", CONFIG), env=env)
    assert effective_settings(URL, {}, env, cfg)["max_threads"] == (32, SOURCE_FILE)
    assert effective_settings("https://b.example.org", {}, env, cfg)["max_threads"] == (
        8,
        SOURCE_FILE,
    )
    assert effective_settings(URL, {}, dict(env, XNATFS_MAX_THREADS="2"), cfg)["max_threads"] == (
        2,
        SOURCE_ENV,
    )


def test_no_file_no_env_gives_the_cli_defaults(env):
    s = effective_settings(URL, {}, env, ConfigFile())
    assert all(source == SOURCE_DEFAULT for _, source in s.values())
    # the command line leaves every setting unset, so the defaults live in one place
    parsed = cli.build_parser().parse_args(["mount", URL, "/mnt"])
    assert all(getattr(parsed, key) is None for key in KEYS if key not in ("user", "password"))
    opts = cli.options_from_settings(URL, s, [])
    assert (opts.listing_ttl, opts.max_threads, opts.retries) == (60.0, 16, 3)
    assert s["cache_size"][0] == 10 * 1024**3


def test_values_are_converted_from_text(env):
    s = effective_settings(
        URL,
        {"cache_size": "512M", "allow_delete": "yes"},
        dict(
            env,
            XNATFS_READ_ONLY="off",
            XNATFS_RETRIES="0",
            XNATFS_USER="alice",
            XNATFS_PASSWORD="s3cret",
        ),
        None,
    )
    assert s["cache_size"] == (512 * 1024**2, SOURCE_CLI)
    assert s["allow_delete"] == (True, SOURCE_CLI)
    assert s["read_only"] == (False, SOURCE_ENV)
    assert s["retries"] == (0, SOURCE_ENV)
    assert s["user"] == ("alice", SOURCE_ENV)
    assert s["password"] == ("s3cret", SOURCE_ENV)


def test_render_masks_the_password_and_names_sources(tmp_path, env):
    path = write(tmp_path / "c.toml", '[defaults]\nuser = "alice"\npassword = "hunter2"\n')
    cfg = load_config(path, env=env)
    text = render(effective_settings(URL, {"max_threads": 4}, env, cfg), cfg)
    assert "hunter2" not in text
    # the column width follows the longest key name
    assert re.search(rf'^password +\= "{re.escape(MASK)}"', text, re.M)
    assert "# config file" in text.splitlines()[1 + list(KEYS).index("password")]
    assert str(path) in text.splitlines()[0]
    line = next(ln for ln in text.splitlines() if ln.startswith("max_threads"))
    assert line.split("=", 1)[1].split("#")[0].strip() == "4" and line.endswith("# command line")
    assert re.search(r'^cache_size +\= "10G"', text, re.M)
    assert "(unset)" in next(ln for ln in text.splitlines() if ln.startswith("ca_bundle"))


def test_errors_never_show_the_password(env):
    with pytest.raises(ConfigError) as info:
        effective_settings(URL, {"password": 12345}, env, None)
    assert "12345" not in str(info.value) and MASK in str(info.value)


# --------------------------------------------------------------------------- refusals
def test_malformed_toml_names_file_and_line(tmp_path, env):
    path = write(tmp_path / "bad.toml", '[defaults]\ncache_size = "20G"\nlisting_ttl = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "malformed TOML" in message
    assert "\n" not in message


def test_unknown_key_is_refused_with_line_and_suggestion(tmp_path, env):
    path = write(tmp_path / "c.toml", '[defaults]\n\ncache_sise = "2G"\n')
    with pytest.raises(
        ConfigError,
        match=r"c\.toml, line 3: unknown key 'cache_sise' in "
        r"\[defaults\] \(did you mean 'cache_size'\?\)",
    ):
        load_config(path, env=env)


def test_unknown_key_in_a_server_table(tmp_path, env):
    path = write(tmp_path / "c.toml", CONFIG + "bogus = 1\n")
    with pytest.raises(ConfigError, match=r"line 16: unknown key 'bogus'"):
        load_config(path, env=env)


def test_unknown_table_is_refused(tmp_path, env):
    path = write(tmp_path / "c.toml", '[default]\ncache_size = "2G"\n')
    with pytest.raises(
        ConfigError,
        match=r"unknown table or key 'default' \(did you mean "
        r"\[defaults\]\?\)",
    ):
        load_config(path, env=env)


def test_server_table_needs_an_http_url(tmp_path, env):
    path = write(tmp_path / "c.toml", '[servers."xnat.example.org"]\nretries = 1\n')
    with pytest.raises(ConfigError, match="is not an http\\(s\\) URL"):
        load_config(path, env=env)


@pytest.mark.parametrize(
    "line, reason",
    [
        ('max_threads = "16"', "max_threads must be an integer"),
        ("max_threads = 0", "max_threads must be at least 1"),
        ('listing_ttl = "soon"', "listing_ttl must be a number"),
        ("timeout = 0", "timeout must be greater than 0"),
        ('read_only = "no"', "read_only must be true or false"),
        ('cache_size = "lots"', "cache_size must be a size"),
        ("cache_size = true", "cache_size must be a size"),
        ('log_level = "loud"', "log_level must be one of debug, info, warning, error"),
        ("netrc = 3", "netrc must be a string"),
    ],
)
def test_wrong_value_type_is_refused(tmp_path, env, line, reason):
    path = write(tmp_path / "c.toml", f"[defaults]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert f"{path}, line 2: [defaults] {reason}" in str(info.value)


def test_bad_environment_and_command_line_values_are_refused(env):
    with pytest.raises(ConfigError, match=r"\$XNATFS_MAX_THREADS must be an integer"):
        effective_settings(URL, {}, dict(env, XNATFS_MAX_THREADS="many"), None)
    with pytest.raises(ConfigError, match=r"\$XNATFS_READ_ONLY must be true or false"):
        effective_settings(URL, {}, dict(env, XNATFS_READ_ONLY="maybe"), None)
    with pytest.raises(ConfigError, match=r"--cache-size must be a size"):
        effective_settings(URL, {"cache_size": "big"}, env, None)
    with pytest.raises(ConfigError, match=r"unknown setting 'colour'"):
        effective_settings(URL, {"colour": "red"}, env, None)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_password_in_a_readable_file_is_refused(tmp_path, env, mode):
    path = write(
        tmp_path / "c.toml", '[servers."https://xnat.example.org"]\npassword = "hunter2"\n', mode
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    message = str(info.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message
    assert "hunter2" not in message


def test_password_in_a_private_file_and_readable_file_without_password_are_fine(tmp_path, env):
    private = write(tmp_path / "p.toml", '[defaults]\npassword = "hunter2"\n', 0o600)
    assert load_config(private, env=env).defaults["password"] == "hunter2"
    public = write(tmp_path / "o.toml", CONFIG, 0o644)
    assert load_config(public, env=env).defaults["max_threads"] == 8


def test_not_utf8_is_refused(tmp_path, env):
    path = tmp_path / "c.toml"
    path.write_bytes(b'[defaults]\nuser = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env=env)


# --------------------------------------------------------------------------- sd_notify
def _receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)  # a deadline for recv, not a sleep
    return sock


def test_sd_notify_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as sock:
        assert notify.sd_notify("READY=1\nSTATUS=mounted", env={"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=mounted"


def test_sd_notify_abstract_socket():
    name = f"xnatfs-test-{os.getpid()}-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as sock:
        assert notify.sd_notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_notify_ready_reads_the_environment(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with _receiver(path) as sock:
        assert notify.notify_ready("serving https://x")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving https://x"


@pytest.mark.parametrize(
    "environ",
    [
        {},  # not under systemd
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "relative/path"},
        {"NOTIFY_SOCKET": "vsock:2:1234"},
        {"NOTIFY_SOCKET": "/nonexistent/dir/notify.sock"},  # nobody listening
        {"NOTIFY_SOCKET": "@xnatfs-test-nobody-listens-" + uuid.uuid4().hex},
        {"NOTIFY_SOCKET": "/" + "x" * 200},  # longer than sun_path
    ],
)
def test_sd_notify_never_raises(environ):
    assert notify.sd_notify("READY=1", env=environ) is False


def test_sd_notify_bad_message_does_not_raise(tmp_path):
    path = str(tmp_path / "notify.sock")
    with _receiver(path):
        assert notify.sd_notify("", env={"NOTIFY_SOCKET": path}) is False
        assert notify.sd_notify(None, env={"NOTIFY_SOCKET": path}) is False  # type: ignore
        assert notify.sd_notify("\udcff", env={"NOTIFY_SOCKET": path}) is False


def test_a_config_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, env):
    """A FIFO at the config file's name: its open waited for a writer for ever (every xnatfs
    command that reads the config hung); now one line at once."""
    import threading

    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo, 0o600)
    outcome = {}

    def load():
        try:
            load_config(fifo, env=env)
        except ConfigError as exc:
            outcome["error"] = str(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # let the blocked open go, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        raise AssertionError("the config file's open waited for a FIFO's writer")
    assert "not a regular file" in outcome["error"]
    # XNATFS_CONFIG=/dev/null (no config) is still fine; a device that never ends is cut
    assert load_config("/dev/null", env=env).defaults == {}
    with pytest.raises(ConfigError, match="larger than"):
        load_config("/dev/zero", env=env)
