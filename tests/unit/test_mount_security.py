"""The pure parts of the mount's security (issue 17, docs/SECURITY.md): written-name checks,
write-URL containment, the CA bundle against the environment, the daemon's environment and
argv, the options that decide what other local users may do."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest

from xnatfs import cli
from xnatfs.config import effective_settings, load_config
from xnatfs.options import Options
from xnatfs.tree.paths import check_write_name
from xnatfs.xnat import errors as xe
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions, XnatClient, check_contained

URL = "https://xnat.example.org"


# ------------------------------------------------------------------ written names
def test_names_xnat_cannot_store_are_too_long_before_any_request():
    """A 300-byte name was accepted at create; XNAT answered its upload 500 (its archive is on
    a disk whose names are at most 255 bytes): close() failed with EIO and the file was left
    to the upload journal's retries."""
    for name in ("L" * 256, "é" * 128, "x" * 250 + "%2Fabc"):
        with pytest.raises(OSError) as info:
            check_write_name(name, "/P/resources/R/files/" + name)
        assert info.value.errno in (errno.ENAMETOOLONG, errno.EINVAL), name
    assert check_write_name("L" * 255) == "L" * 255
    assert check_write_name("é" * 127) == "é" * 127
    assert check_write_name("%25" * 255) == "%" * 255  # the XNAT name is what counts


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "..%2F..%2Fx",
        "a%2Fb",
        "a%00b",
        "a\\b",
        "line\nbreak",
        "tab\there",
        "del\x7f",
        # '..' once Tomcat drops the ';' path parameter (or the decoded %3B): the '/..;/'
        # traversal; the upload of a file '..;' sent as '..%3B' is a literal name for Tomcat,
        # but a decoding proxy or container would climb
        "..;",
        ".;x",
        "..;jsessionid=1",
        "%2E%2E;",
        # bytes that are not UTF-8 (b"bad\xff.txt" reaches us as "bad\udcff.txt"): no URL
        # names them; before, close() failed with an unexpected UnicodeEncodeError
        os.fsdecode(b"bad\xff.txt"),
    ],
)
def test_hostile_written_names_are_einval(name):
    with pytest.raises(OSError) as info:
        check_write_name(name, "/P/resources/R/files/" + name)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "name, xnat",
    [
        ("a#b.txt", "a#b.txt"),
        ("q?.txt", "q?.txt"),
        ("50%25.txt", "50%.txt"),
        ("..x", "..x"),
        ("a;b.txt", "a;b.txt"),
        (";x", ";x"),
        ("...;", "...;"),
        ("..%3B", "..%3B"),  # '%3B' is no escape of the path rule: sent as '..%253B'
        ("%252E%252E", "%2E%2E"),
        ("Ünï ✓", "Ünï ✓"),
    ],
)
def test_ordinary_odd_names_pass(name, xnat):
    assert check_write_name(name) == xnat


# ------------------------------------------------------------------ URL containment
@pytest.mark.parametrize(
    "uri",
    [
        "/data/experiments/E1/resources/R/files/../../../resources/X/files/a",
        "/data/experiments/E1/resources/R/files/%2E%2E/%2e%2e/x",
        "/data/experiments/E1/resources/R/files/a%5Cb",
        "/data/experiments/E1/resources/R/files/./a",
        "/data/experiments/E1/resources/R/files/..;/..;/..;/resources/X/files/a",
        "/data/experiments/E1/resources/R/files/..%3B",
        "/data/experiments/E1/resources/R/files/%2e%2e;x/a",
        "/data/experiments/E1/resources/Rx/files/a",
        "/data/experiments/E1/resources/R/files",
    ],
)
def test_write_urls_must_stay_under_their_object(uri):
    with pytest.raises(xe.BadRequest):
        check_contained("PUT", uri, "/data/experiments/E1/resources/R/files")


def test_base_outside_data_or_with_dots_is_refused():
    with pytest.raises(xe.BadRequest):
        check_contained("PUT", "/etc/x/files/a", "/etc/x/files")
    with pytest.raises(xe.BadRequest):
        check_contained("PUT", "/data/../etc/files/a", "/data/../etc/files")


def test_ordinary_write_urls_pass():
    base = "/data/experiments/E1/resources/R/files"
    for uri in (
        base + "/a%20b.txt",
        base + "/sub/dir/x.nii",
        base + "/%252E%252E",
        base + "/a%23b%3F.txt",
        base + "/a%3Bb.txt",
        base + "/...%3B",
    ):
        check_contained("PUT", uri, base)


def test_client_refuses_a_dotdot_upload_without_sending():
    client = XnatClient(URL, Credentials("u", "p"), ClientOptions(pool_size=1))
    sent = []
    client._send = lambda *a, **k: sent.append(a)  # would be the only way out
    try:
        with pytest.raises(xe.BadRequest):
            client.upload_file(
                "/data/experiments/E1/resources/R", "../../../resources/S/x", None, 1
            )
        with pytest.raises(xe.BadRequest):
            client.create_subject("P", "..")
        with pytest.raises(xe.BadRequest):
            client.create_resource("/data/experiments/E1", "..")
    finally:
        client.close()
    assert sent == []


# ------------------------------------------------------------------ --ca-bundle vs environment
@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_ca_bundle_beats_the_environment(monkeypatch, tmp_path, variable):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "wrong.pem"))
    client = XnatClient(
        URL, Credentials("u", "p"), ClientOptions(verify=str(tmp_path / "right.pem"))
    )
    merged = client._http.merge_environment_settings(URL, {}, None, None, None)
    client.close()
    assert merged["verify"] == str(tmp_path / "right.pem")
    # without the option the environment's bundle is used, as by curl
    client = XnatClient(URL, Credentials("u", "p"), ClientOptions())
    merged = client._http.merge_environment_settings(URL, {}, None, None, None)
    client.close()
    assert merged["verify"] == str(tmp_path / "wrong.pem")


def _args_and_options(argv, env, config=None):
    args = cli.build_parser().parse_args(["mount", URL, "/mnt", *argv])
    given = {
        k: getattr(args, k)
        for k in ("ca_bundle", "allow_other_write")
        if getattr(args, k, None) is not None
    }
    settings = effective_settings(
        URL, given, env, load_config(config, env) if config else load_config(None, env)
    )
    return args, cli.options_from_settings(URL, settings, args.fuse_options)


def test_daemon_gets_a_ca_bundle_from_the_config_file(tmp_path, env):
    """The daemon reads no config file (``--config /dev/null``): a bundle named only there
    must reach it on its command line."""
    config = tmp_path / "config.toml"
    config.write_text(f'[defaults]\nca_bundle = "{tmp_path}/ca.pem"\n')
    config.chmod(0o600)
    args, options = _args_and_options([], env, str(config))
    argv = cli.daemon_argv(args, options, "/mnt", "info")
    assert argv[argv.index("--ca-bundle") + 1] == f"{tmp_path}/ca.pem"


def test_daemon_environment_has_no_credentials():
    env = cli.daemon_env(
        {"XNATFS_USER": "u", "XNATFS_PASSWORD": "secret", "PATH": "/bin", "XNATFS_CACHE_SIZE": "1G"}
    )
    assert env == {"PATH": "/bin", "XNATFS_CACHE_SIZE": "1G"}


# ------------------------------------------------------------------ other local users
def test_allow_other_always_brings_default_permissions(env):
    _args, options = _args_and_options(["-o", "allow_other"], env)
    kwargs = cli.fuse_kwargs(options, SimpleNamespace(fuse_version_major=3))
    assert kwargs["allow_other"] is True and kwargs["default_permissions"] is True
    _args, options = _args_and_options([], env)
    assert "default_permissions" not in cli.fuse_kwargs(
        options, SimpleNamespace(fuse_version_major=3)
    )


def test_uid_gid_umask_are_taken_by_xnatfs_not_libfuse(env):
    _args, options = _args_and_options(["-o", "allow_other,uid=1000,gid=100,umask=027"], env)
    assert (options.uid, options.gid, options.umask) == (1000, 100, 0o027)
    kwargs = cli.fuse_kwargs(options, SimpleNamespace(fuse_version_major=3))
    assert not {"uid", "gid", "umask"} & set(kwargs)
    with pytest.raises(cli.UsageError):
        _args_and_options(["-o", "umask=999"], env)


def _ops(monkeypatch, caller, **options):
    from xnatfs.fs import ops

    monkeypatch.setattr(ops.mfusepy, "fuse_get_context", lambda: (caller, caller, 1))
    runtime = SimpleNamespace(options=Options(url=URL, **options), writer=object())
    return ops.XnatOperations(runtime)


def test_daemon_refuses_writes_of_other_users(monkeypatch):
    """Behind the kernel's check (default_permissions): a write request from another uid
    (root on a user's mount, a mount made with allow_other some other way) is refused."""
    other = os.getuid() + 1
    with pytest.raises(OSError) as info:
        _ops(monkeypatch, other)._writer("/P/x")
    assert info.value.errno == errno.EACCES
    assert _ops(monkeypatch, os.getuid())._writer("/P/x") is not None
    assert _ops(monkeypatch, other, uid=other)._writer("/P/x") is not None  # -o uid=: owner
    assert _ops(monkeypatch, other, allow_other_write=True)._writer("/P/x") is not None


def test_daemon_refuses_control_files_to_other_users(monkeypatch):
    """Behind the kernel's check: an open of ``.xnatfs/stats`` (a private node) by another uid
    is refused before anything is made; the owner, root and ``-o uid=``'s owner may."""
    from xnatfs.view.node import NodeInfo

    made = []
    node = NodeInfo(name="stats", kind="virtual", is_dir=False, private=True)
    tree = SimpleNamespace(
        fs_timeout=5.0,
        lookup=lambda path: node,
        open=lambda n, path: made.append(path) or SimpleNamespace(direct_io=True),
        cacheable=lambda n: False,
    )
    fi = SimpleNamespace(flags=os.O_RDONLY, fh=0, direct_io=0)
    other = os.getuid() + 1000
    ops_other = _ops(monkeypatch, other)
    ops_other.runtime.tree = tree
    ops_other.runtime.note_fuse = ops_other.runtime.note_error = lambda what: None
    with pytest.raises(OSError) as info:
        ops_other.open("/.xnatfs/stats", fi)
    assert info.value.errno == errno.EACCES and made == []
    for caller, extra in ((os.getuid(), {}), (0, {}), (other, {"uid": other})):
        ops_ok = _ops(monkeypatch, caller, **extra)
        ops_ok.runtime.tree = tree
        ops_ok.runtime.note_fuse = lambda what: None
        assert ops_ok.open("/.xnatfs/stats", fi) == 0
    assert len(made) == 3


def test_modes_shown_never_give_others_write_unless_asked(monkeypatch):
    ops = _ops(monkeypatch, 0)
    assert all(mode & 0o022 == 0 for mode in ops._modes.values())
    ops = _ops(monkeypatch, 0, umask=0o077)
    assert all(mode & 0o077 == 0 for mode in ops._modes.values())
    ops = _ops(monkeypatch, 0, allow_other_write=True)
    assert ops._modes == {True: 0o777, False: 0o666}
    # --dir-mode/--file-mode cannot add group/other write bits either (issue 16 §3)
    ops = _ops(monkeypatch, 0, dir_mode=0o777, file_mode=0o666)
    assert ops._modes == {True: 0o755, False: 0o644}
    ops = _ops(monkeypatch, 0, dir_mode=0o777, file_mode=0o666, umask=0o027)
    assert ops._modes == {True: 0o750, False: 0o640}
    ops = _ops(monkeypatch, 0, read_only=True, allow_other_write=True)
    assert ops._modes == {True: 0o555, False: 0o444}


def test_a_semicolon_is_always_sent_encoded_never_as_a_path_parameter():
    """Tomcat cuts a raw segment at ``;`` (path parameters) before it resolves ``..``: a name
    holding ``;`` sent raw (an upload's own URI, read back after the upload) was asked for
    as the part before it, and ``..;`` as ``..``."""
    client = XnatClient(URL, Credentials("u", "p"), ClientOptions(pool_size=1))
    try:
        files = "/data/projects/P/resources/R/files"
        assert client._url(f"{files}/a;b.txt?x=1") == f"{URL}{files}/a%3Bb.txt?x=1"
        assert client._url(f"{files}/a%3Bb.txt") == f"{URL}{files}/a%3Bb.txt"
        with pytest.raises(xe.XnatError, match="refused"):
            client._url(f"{files}/..;")
    finally:
        client.close()


def test_deletes_of_listed_uris_stay_under_data():
    """A hostile listing could name ``/data/../../x`` as an object's URI: rm/rmdir must not
    send a DELETE there."""
    client = XnatClient(URL, Credentials("u", "p"), ClientOptions(pool_size=1))
    sent = []
    client._send = lambda *a, **k: sent.append(a)
    try:
        for uri in (
            "/data/../../admin/x",
            "/data/projects/P/../../../x",
            "/other/x",
            # what Tomcat resolves to the resource itself, or to project B's file
            "/data/projects/H/resources/1/files/..;",
            "/data/projects/H/resources/1/files/..;/..;/..;/..;/B/resources/1/files/s.txt",
        ):
            with pytest.raises(xe.BadRequest):
                client.delete(uri)
        with pytest.raises(xe.BadRequest):
            client.delete_prearchive("/data/prearchive/projects/P/../../../archive/x")
    finally:
        client.close()
    assert sent == []


def test_plain_http_to_another_machine_is_warned_about():
    """The login form (the password) goes to the server URL: over plain http to another
    machine anyone on the path reads it.  ``xnatfs mount`` said nothing."""
    from xnatfs.commands.common import plaintext_warning

    for url in ("http://xnat.example.org", "http://10.0.0.5:8080/xnat", "http://[2001:db8::1]"):
        assert "unencrypted" in plaintext_warning(url), url
    for url in (
        "https://xnat.example.org",
        "http://localhost:8080",
        "http://127.0.0.1:8080",
        "http://127.0.0.2",
        "http://[::1]:8080",
    ):
        assert plaintext_warning(url) == "", url


def test_mount_prints_the_plain_http_warning(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("XNATFS_")}
    env.update(
        HOME=str(tmp_path),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        XNATFS_USER="u",
        XNATFS_PASSWORD="p",
    )
    (tmp_path / "mnt").mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "mount", "http://192.0.2.1:9", str(tmp_path / "mnt")]
        + ["--connect-timeout", "1", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 1, res
    assert "plain http" in res.stderr and "unencrypted" in res.stderr, res.stderr


def test_a_password_in_mount_options_is_refused_never_passed_on(tmp_path, capsys):
    """``-o password=...`` (an fstab line): it went on to the daemon's argv (``ps``,
    ``/proc/PID/cmdline``) and libfuse; now refused before anything runs, without echoing it."""
    (tmp_path / "mnt").mkdir()
    rc = cli.main(
        ["mount", "https://xnat.example.org", str(tmp_path / "mnt"), "-o", "ro,password=s3cret"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "credentials do not belong in mount options" in err, err
    assert "s3cret" not in err, err
