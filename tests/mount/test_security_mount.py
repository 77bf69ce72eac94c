"""The mount's security (issue 17, docs/SECURITY.md): other local users, hostile written names,
credentials in the daemon's environment, ``--ca-bundle`` against the environment, truncate.

Everything goes through a real mount; what reached the server is read from the emulator's access
log and its own listings (plain requests, not the code under test).  Commands of "another user"
run as ``nobody`` (uid 65534) through ``setpriv``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN, Mount, needs_fuse
from tests.helpers.fsop import fs_op
from tests.mount.helpers import api, md5, put_file, sh
from xnatfs.fs.mounting import is_mounted

pytestmark = [needs_fuse]

NOBODY = 65534
PROTOCOLS = "DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"
SCAN1 = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1"
#: issue 17 §3: five '..' from .../scans/1/resources/DICOM/files reach the experiment
ESCAPE = "..%2F..%2F..%2F..%2F..%2Fresources%2FSEGnd%2Ffiles%2Fesc.txt"


#: the tests of other users run commands as nobody: root and setpriv (util-linux) are needed
as_other_user = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="running a command as another user needs root and setpriv (util-linux)",
)


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


@pytest.fixture
def public_dir():
    """A directory ``nobody`` can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="xnatfs-sec-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def public_mount(public_dir, tmp_path):
    """Factory: a mount at a path ``nobody`` can reach; unmounted after."""
    mounts = []

    def make(url, *args):
        m = Mount(
            url,
            public_dir / f"m{len(mounts)}",
            tmp_path / f"cache{len(mounts)}",
            tmp_path / f"mount{len(mounts)}.log",
            list(args),
        ).start()
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        if m.proc.poll() is None and is_mounted(str(m.path)):
            m.umount()
        else:
            m.cleanup()


def as_nobody(cmd, timeout=60, env=None):
    """Run ``cmd`` as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env={"PATH": os.environ["PATH"], **(env or {})},
    )


def py_as_nobody(code, *args):
    """A Python snippet as nobody; prints ``ok`` or the errno name of the OSError."""
    wrapper = (
        "import errno, os, sys\ntry:\n"
        + "".join(f"    {line}\n" for line in code.strip().splitlines())
        + "    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    res = as_nobody([sys.executable, "-c", wrapper, *args])
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def writes(records):
    return [(m, p) for m, p in api(records) if m in ("PUT", "POST", "DELETE")]


def server_files(emu, files_uri=PROTOCOLS_URI):
    """Paths (below ``files/``) of the files XNAT lists under ``files_uri``: the
    emulator's own answer."""
    r = requests.get(emu.url + files_uri, params={"format": "json"}, auth=ADMIN, timeout=30)
    r.raise_for_status()
    # XNAT builds URI by plain concatenation: the name in it is raw (parse.file_relpath)
    return {row["URI"].split("/files/", 1)[1] for row in r.json()["ResultSet"]["Result"]}


# ------------------------------------------------------------------ other local users (§2)
@as_other_user
def test_allow_other_others_read_but_cannot_write(emu, public_mount, tmp_path):
    m = public_mount(emu.url, "-o", "allow_other", "--allow-delete")
    files = m.path / PROTOCOLS
    readme = files / "README.txt"
    expected = readme.read_bytes()
    mark = emu.mark()
    # reading is what allow_other is for
    res = as_nobody(["cat", str(readme)])
    assert res.returncode == 0 and res.stdout.encode() == expected, res.stderr
    # every kind of write is refused to another user, by the kernel, before xnatfs sees it
    assert py_as_nobody("open(sys.argv[1], 'wb').write(b'x')", str(files / "evil.txt")) == "EACCES"
    assert py_as_nobody("os.mkdir(sys.argv[1])", str(m.path / "DEMO1/subjects/EVIL")) == "EACCES"
    assert py_as_nobody("open(sys.argv[1], 'r+b').write(b'x')", str(readme)) == "EACCES"
    assert py_as_nobody("os.truncate(sys.argv[1], 0)", str(readme)) == "EACCES"
    assert py_as_nobody("os.unlink(sys.argv[1])", str(readme)) == "EACCES"
    assert writes(emu.since(mark)) == []
    st = os.stat(files)
    assert st.st_uid == os.getuid() and st.st_mode & 0o022 == 0
    # the owner still writes
    src = tmp_path / "mine.txt"
    src.write_bytes(b"mine")
    sh(["cp", str(src), str(files / "mine.txt")])
    assert "mine.txt" in server_files(emu)


@as_other_user
def test_allow_other_others_change_nothing_by_any_other_call(emu, public_mount):
    """Beyond write/mkdir/truncate/rm: every other call that changes something (an append or
    truncating open without write access, times, modes, owners, attributes, rename, links)
    is refused to another user, and no write request reaches XNAT."""
    m = public_mount(emu.url, "-o", "allow_other", "--allow-delete")
    readme = str(m.path / PROTOCOLS / "README.txt")
    mark = emu.mark()
    refused = {
        "os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_APPEND))": "EACCES",
        "os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_TRUNC))": "EACCES",
        "os.utime(sys.argv[1])": "EACCES",
        "os.utime(sys.argv[1], (0, 0))": "EPERM",
        "os.chmod(sys.argv[1], 0o666)": "EPERM",
        "os.chown(sys.argv[1], 65534, 65534)": "EPERM",
        "os.setxattr(sys.argv[1], 'user.xnat.label', b'x')": "EACCES",
        "os.rename(sys.argv[1], sys.argv[1] + '.moved')": "EACCES",
        # fs.protected_hardlinks refuses first (EPERM: nobody does not own it), else the
        # folder's mode (EACCES)
        "os.link(sys.argv[1], sys.argv[1] + '.link')": "EPERM|EACCES",
        "os.symlink(sys.argv[1], sys.argv[1] + '.sym')": "EACCES",
    }
    got = {code: py_as_nobody(code, readme) for code in refused}
    assert all(got[code] in want.split("|") for code, want in refused.items()), got
    assert writes(emu.since(mark)) == []
    assert "README.txt" in server_files(emu)


#: what xnatfs's client imports beyond the standard library (requests and its own
#: dependencies, all with pure-Python sources): copied beside the package for nobody
CLIENT_PACKAGES = ("requests", "urllib3", "idna", "charset_normalizer", "certifi")


def xnatfs_as_nobody(public_dir, *args, env=None, needs="json"):
    """``xnatfs ARGS`` run by nobody.  The checkout (and its venv) may sit in a folder only
    root can enter (a CI's private temporary clone: an interpreter started from it as nobody
    finds no venv, so no ``requests``), so the package and the client's dependencies
    (``CLIENT_PACKAGES``) are copied where nobody reads them, and run by the first
    interpreter nobody can start that imports ``needs`` with them; None when there is none."""
    import importlib.util

    import xnatfs

    pkg = public_dir / "pkg"
    if not pkg.exists():
        shutil.copytree(Path(xnatfs.__file__).parent, pkg / "xnatfs")
        for name in CLIENT_PACKAGES:
            spec = importlib.util.find_spec(name)
            assert spec is not None and spec.submodule_search_locations, name
            shutil.copytree(
                spec.submodule_search_locations[0],
                pkg / name,
                ignore=shutil.ignore_patterns("*.so", "__pycache__"),  # sources serve any 3.x
            )
        for folder, dirs, files in os.walk(pkg):
            for name in dirs + files:
                os.chmod(os.path.join(folder, name), 0o755)
        pkg.chmod(0o755)
    for python in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not python:
            continue
        check = as_nobody([python, "-c", f"import {needs}"], env={"PYTHONPATH": str(pkg)})
        if check.returncode == 0:
            return as_nobody(
                [python, "-m", "xnatfs", *args], env={"PYTHONPATH": str(pkg), **(env or {})}
            )
    if needs != "json":
        return None
    raise AssertionError("no Python interpreter that nobody may run")


@as_other_user
def test_allow_other_control_files_are_the_owners_alone(emu, public_mount, public_dir):
    """``.xnatfs/stats`` names the cache directory, every upload's path and its last error
    (URLs, server messages) and what the owner's programs do (requests, errors): it was
    shown ``0644`` like the archive, so every local user read it on an ``allow_other`` mount.
    Now ``.xnatfs/`` and its files are the owner's alone (``0700``/``0600``), whatever the
    modes of the archive; the kernel refuses the others (``default_permissions``)."""
    m = public_mount(emu.url, "-o", "allow_other")
    control = m.path / ".xnatfs"
    for name in ("stats", "metrics"):
        assert py_as_nobody("open(sys.argv[1], 'rb').read()", str(control / name)) == "EACCES", name
        st = os.stat(control / name)
        assert st.st_uid == os.getuid() and st.st_mode & 0o077 == 0, oct(st.st_mode)
        assert (control / name).read_bytes()  # the owner reads them
    assert py_as_nobody("os.listdir(sys.argv[1])", str(control)) == "EACCES"
    assert os.stat(control).st_mode & 0o077 == 0
    status = xnatfs_as_nobody(public_dir, "status", str(m.path))
    assert status.returncode == 1 and "only the user who mounted it" in status.stderr, status
    # who that is, and what this user may run instead
    assert f"(uid {os.getuid()})" in status.stderr and "findmnt" in status.stderr, status
    assert len(status.stderr.splitlines()) == 1, status.stderr
    # the archive keeps its modes: others still read it
    assert as_nobody(["cat", str(m.path / PROTOCOLS / "README.txt")]).returncode == 0


@as_other_user
def test_allow_other_commands_of_another_user(emu, public_mount, public_dir):
    """``xnatfs prearchive``, ``refresh`` by another user on an ``allow_other`` mount, whose
    ``.xnatfs/stats`` (the server's URL) is the owner's alone.  ``prearchive`` without
    ``--url`` says in one line why and what to give, and sends nothing: it must not take the
    server from another user's mount, since the credentials it sends are the caller's (before,
    it walked past the unreadable stats and said it could not find the server, naming neither
    why nor whose mount).  With ``--url`` it acts as that user and refreshes the mount;
    ``refresh`` needs no URL and works for every user who can read the path."""
    m = public_mount(emu.url, "-o", "allow_other")
    pre = m.path / ".prearchive" / "DEMO1"
    ts = sorted(os.listdir(pre))[0]
    session = pre / ts / sorted(os.listdir(pre / ts))[0]
    mark = emu.mark()
    res = xnatfs_as_nobody(public_dir, "prearchive", "rebuild", str(session))
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res
    line = res.stderr
    assert f"a mount of uid {os.getuid()}" in line and "--url" in line, line
    assert f"findmnt -no SOURCE {m.path}" in line, line
    # (the mount read the session's attributes: GETs; no login, no action was sent)
    assert [r for r in emu.since(mark) if r[0] != "GET"] == []

    # refresh: a file made on XNAT after the listing shows at once to nobody
    folder = m.path / PROTOCOLS
    assert "later.txt" not in os.listdir(folder)
    put_file(emu.url, PROTOCOLS_URI + "/later.txt", b"later\n")
    res = xnatfs_as_nobody(public_dir, "refresh", str(folder))
    assert res.returncode == 0, res
    listed = as_nobody(["ls", str(folder)])
    assert "later.txt" in listed.stdout.split(), listed

    # with --url, the action is nobody's own, with nobody's credentials (needs requests)
    creds = {"XNATFS_USER": ADMIN[0], "XNATFS_PASSWORD": ADMIN[1]}
    res = xnatfs_as_nobody(
        public_dir,
        "prearchive",
        "rebuild",
        str(session),
        "--url",
        emu.url,
        env=creds,
        needs="requests",
    )
    assert res is not None, "no interpreter nobody may run imports requests from the copy"
    assert res.returncode == 0, res
    assert "/data/prearchive/projects/DEMO1/" in res.stdout, res


@as_other_user
def test_allow_other_umask_keeps_others_out(emu, public_mount):
    m = public_mount(emu.url, "-o", "allow_other,umask=077")
    assert py_as_nobody("os.listdir(sys.argv[1])", str(m.path / PROTOCOLS)) == "EACCES"
    assert (
        py_as_nobody("open(sys.argv[1], 'rb').read()", str(m.path / PROTOCOLS / "README.txt"))
        == "EACCES"
    )
    assert "README.txt" in os.listdir(m.path / PROTOCOLS)  # the owner is not affected


@as_other_user
def test_allow_other_umask_cannot_add_write_bits(emu, public_mount):
    """libfuse's own umask= would set 0777 & ~umask on every file: umask=0 must not let
    others write."""
    m = public_mount(emu.url, "-o", "allow_other,umask=0")
    mark = emu.mark()
    assert (
        py_as_nobody("open(sys.argv[1], 'wb').write(b'x')", str(m.path / PROTOCOLS / "evil.txt"))
        == "EACCES"
    )
    assert writes(emu.since(mark)) == []


@as_other_user
def test_allow_other_write_is_an_explicit_choice(emu, public_mount):
    m = public_mount(emu.url, "-o", "allow_other", "--allow-other-write")
    assert (
        py_as_nobody(
            "open(sys.argv[1], 'wb').write(b'shared')", str(m.path / PROTOCOLS / "shared.txt")
        )
        == "ok"
    )
    assert "shared.txt" in server_files(emu)


# ------------------------------------------------------------------ hostile written names (§3)
def _py(code, *args):
    """A Python snippet as this user; ``ok`` or the errno name."""
    wrapper = (
        "import errno, os, sys\ntry:\n"
        + "".join(f"    {line}\n" for line in code.strip().splitlines())
        + "    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_dotdot_names_are_refused_before_any_request(emu, make_mount):
    m = make_mount(emu.url)
    dicom = m.path / SCAN1 / "resources/DICOM/files"
    os.listdir(dicom)  # listings loaded: what follows may only be the refused writes
    mark = emu.mark()
    assert _py("open(sys.argv[1], 'wb').write(b'escaped')", str(dicom / ESCAPE)) == "EINVAL"
    assert _py("os.mkdir(sys.argv[1])", str(dicom / "..%2F..%2Fx")) == "EINVAL"
    assert _py("open(sys.argv[1], 'wb').write(b'x')", str(dicom / "a\\b.txt")) == "EINVAL"
    assert _py("open(sys.argv[1], 'wb').write(b'x')", str(dicom / "a%2Fb.txt")) == "EINVAL"
    assert _py("open(sys.argv[1], 'wb').write(b'x')", str(dicom / "bell\x07.txt")) == "EINVAL"
    # a name whose bytes are not UTF-8: before, the create passed and close() failed with EIO
    # (an unexpected UnicodeEncodeError while the journal recorded it)
    not_utf8 = os.fsdecode(b"bad\xff.txt")
    assert _py("open(sys.argv[1], 'wb').write(b'x')", str(dicom / not_utf8)) == "EINVAL"
    assert _py("os.mkdir(sys.argv[1])", str(dicom / not_utf8)) == "EINVAL"
    # longer than XNAT's disk can name: before, create passed and close() failed with EIO
    # after four PUTs answered 500 (the emulator's disk refused the name)
    too_long = "L" * 300 + ".txt"
    assert _py("open(sys.argv[1], 'wb').write(b'x')", str(dicom / too_long)) == "ENAMETOOLONG"
    # rename: a local file (a temporary name: not uploaded at close) moved to a hostile name
    tmp = dicom / "draft.tmp"
    assert (
        _py(
            "open(sys.argv[1], 'wb').write(b'x')\nos.rename(sys.argv[1], sys.argv[2])",
            str(tmp),
            str(dicom / ESCAPE),
        )
        == "EINVAL"
    )
    os.unlink(tmp)
    touched = [p for _m, p in api(emu.since(mark))]
    assert not [p for p in touched if "SEGnd" in p or "esc.txt" in p], touched
    assert writes(emu.since(mark)) == []
    r = requests.get(
        emu.url + "/data/projects/DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/resources",
        params={"format": "json"},
        auth=ADMIN,
        timeout=30,
    )
    assert "SEGnd" not in r.text


@pytest.mark.parametrize(
    "name",
    [
        "a#b.txt",
        "what?.txt",
        "50% done.txt",
        "50%25 done.txt",
        "two  spaces.txt",
        "Ünïcødé ✓.txt",
        "%252E%252E.txt",
        "..dots..txt",
        # query and path-parameter syntax stays in the name (never a parameter of the PUT)
        "x?overwrite=true&extract=true",
        "a;b+c=d&e,f'(g)$!@~.txt",
        "%2B%20%3F.txt",
    ],
)
def test_odd_names_land_where_written(emu, make_mount, tmp_path, name):
    """The name XNAT stores is the one written, in the resource written into, and reads back
    under it.  A ``%`` is itself unless it reads as an escape (README "The path rule"):
    ``50% done.txt`` is stored and listed as written; ``50%25 done.txt`` is stored as
    ``50% done.txt`` (listed so) and still opens under the name written."""
    m = make_mount(emu.url)
    data = name.encode() * 3
    src = tmp_path / "src"
    src.write_bytes(data)
    sh(["cp", str(src), str(m.path / PROTOCOLS / name)])
    xnat_name = name.replace("%25", "%")
    assert xnat_name in server_files(emu)
    listed = "50% done.txt" if name == "50%25 done.txt" else name
    shown = os.listdir(m.path / PROTOCOLS)
    assert listed in shown
    assert shown.count(listed) == 1 and (listed == name or name not in shown), shown
    assert md5((m.path / PROTOCOLS / name).read_bytes()) == md5(data)
    assert md5((m.path / PROTOCOLS / listed).read_bytes()) == md5(data)


def test_a_percent_in_an_xnat_name_is_shown_as_xnat_has_it(emu, make_mount):
    """``50%_mask.nii.gz`` on XNAT is ``50%_mask.nii.gz`` in the mount (it was listed as
    ``50%25_mask.nii.gz`` before: a file copied in under its own name was listed under
    another, and `rsync` copied it again every time); the old spelling still opens it, and a
    name that reads as an escape keeps its ``%25`` (``%2F`` on XNAT, ``%252F`` here)."""
    from urllib.parse import quote

    names = {"50%_mask.nii.gz": "50%_mask.nii.gz", "100%": "100%", "%2F": "%252F"}
    for xnat_name in names:
        put_file(emu.url, f"{PROTOCOLS_URI}/{quote(xnat_name)}", xnat_name.encode() * 5)
    m = make_mount(emu.url)
    shown = set(os.listdir(m.path / PROTOCOLS))
    for xnat_name, name in names.items():
        assert name in shown, (name, sorted(shown))
        assert (m.path / PROTOCOLS / name).read_bytes() == xnat_name.encode() * 5
    assert (m.path / PROTOCOLS / "50%25_mask.nii.gz").read_bytes() == b"50%_mask.nii.gz" * 5
    assert "50%25_mask.nii.gz" not in shown


def test_a_semicolon_in_a_file_name_is_sent_encoded_and_dotdot_semicolon_is_refused(
    emu, make_mount, tmp_path
):
    """XNAT lists file URIs raw (§1.8) and a ``;`` is legal in a name; Tomcat reads a raw
    ``;`` as the start of a path parameter and drops it with what follows, then resolves
    ``..``.  A file ``..;`` (uploaded as ``..%3B``, so stored under that name) was creatable,
    and its listed URI was sent raw: ``rm`` of it would have sent ``DELETE .../files/..;``,
    which Tomcat reads as ``DELETE`` of the resource, ``removeFiles=true``.  Now a ``;`` is
    always sent as ``%3B``: ``a;b.txt`` made elsewhere and ``c;d.txt`` written here list, read
    and delete as themselves; a name that is ``..`` before its ``;`` is refused like ``..``
    (EINVAL when written; made elsewhere, listed but EIO with one log line, never requested),
    since a decoding proxy in front of Tomcat would still read ``..%3B`` as ``..``."""
    put_file(emu.url, f"{PROTOCOLS_URI}/a%3Bb.txt", b"made elsewhere\n")
    put_file(emu.url, f"{PROTOCOLS_URI}/..%3B", b"named dot dot semicolon\n")
    assert {"a;b.txt", "..;"} <= server_files(emu)
    m = make_mount(emu.url, "--allow-delete")
    files = m.path / PROTOCOLS
    src = tmp_path / "src"
    src.write_bytes(b"written here\n")
    sh(["cp", str(src), str(files / "c;d.txt")])
    assert "c;d.txt" in server_files(emu)
    mark = emu.mark()
    assert _py("open(sys.argv[1], 'wb').write(b'x')", str(files / "..;x")) == "EINVAL"
    shown = fs_op("listdir", files)["names"]
    assert {"a;b.txt", "c;d.txt", "..;"} <= set(shown), shown
    assert (files / "a;b.txt").read_bytes() == b"made elsewhere\n"
    assert (files / "c;d.txt").read_bytes() == b"written here\n"
    assert fs_op("read", files / "..;")["errno"] == errno.EIO
    assert fs_op("unlink", files / "..;")["errno"] == errno.EIO
    refused = [ln for ln in m.log_text().splitlines() if " ERROR " in ln and "/..;" in ln]
    assert refused, m.log_tail()
    for name in ("a;b.txt", "c;d.txt"):
        assert fs_op("unlink", files / name)["errno"] == 0, name
    left = server_files(emu)
    assert "a;b.txt" not in left and "c;d.txt" not in left and "..;" in left, left
    sent = [(method, path.split("?", 1)[0]) for method, path, _s, _b in emu.since(mark)]
    deletes = sorted(path for method, path in sent if method == "DELETE")
    # on the wire: the file, its ';' encoded, never a path parameter nor the resource
    assert [d.rsplit("/files/", 1)[1] for d in deletes] == ["a%3Bb.txt", "c%3Bd.txt"], deletes
    assert not [p for _m, p in sent if ";" in p or p.endswith("/..%3B")], sent


def test_a_project_called_files_shows_its_files_where_they_are(emu, make_mount):
    """XNAT's file URIs hold the IDs of the objects above the resource; a project whose ID is
    ``files`` (a valid ID) showed ``x.txt`` of its resource ``R`` as
    ``files/resources/R/files/resources/<id>/files/x.txt``: the path below the resource was
    taken after the URI's first ``/files/``."""
    r = requests.put(emu.url + "/data/projects/files", auth=ADMIN, timeout=30)
    assert r.status_code in (200, 201), r.text
    put_file(emu.url, "/data/projects/files/resources/R/files/x.txt", b"in project files\n")
    m = make_mount(emu.url)
    assert os.listdir(m.path / "files/resources/R/files") == ["x.txt"]
    assert (m.path / "files/resources/R/files/x.txt").read_bytes() == b"in project files\n"


# ------------------------------------------------------------------ credentials (§7)
def _mount_env(tmp_path, extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("XNATFS_")
        and k not in ("NETRC", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    env.update({"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    env.update(extra)
    return env


def _bg_mount(url, mnt, tmp_path, env_extra, *args):
    mnt.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "xnatfs", "mount", url, str(mnt), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=_mount_env(tmp_path, env_extra),
        stdin=subprocess.DEVNULL,
    )


def _umount(mnt):
    if is_mounted(str(mnt)):
        res = subprocess.run(
            [sys.executable, "-m", "xnatfs", "umount", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr


def _daemon_pids(mnt):
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(mnt).encode() in argv and b"--foreground" in argv:
            pids.append(int(pid))
    return pids


def test_daemon_environment_holds_no_credentials(shared_emulator, tmp_path):
    mnt = tmp_path / "m"
    res = _bg_mount(
        shared_emulator.url,
        mnt,
        tmp_path,
        {"XNATFS_USER": ADMIN[0], "XNATFS_PASSWORD": ADMIN[1], "XNATFS_LISTING_TTL": "30"},
    )
    try:
        assert res.returncode == 0, res.stderr
        assert "DEMO1" in os.listdir(mnt)
        pids = _daemon_pids(mnt)
        assert pids, "no daemon found"
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith((b"XNATFS_USER=", b"XNATFS_PASSWORD="))]
            assert not [v for v in environ if ADMIN[1].encode() in v]
            assert b"XNATFS_LISTING_TTL=30" in environ  # only the secrets are taken out
    finally:
        _umount(mnt)


def test_foreground_mount_drops_credentials_from_its_environment(shared_emulator, tmp_path):
    """systemd (EnvironmentFile=) and docker (-e) run the daemon in the foreground with the
    password in its environment: it re-executes itself (same PID) without it."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = _mount_env(tmp_path, {"XNATFS_USER": ADMIN[0], "XNATFS_PASSWORD": ADMIN[1]})
    with open(tmp_path / "fg.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xnatfs",
                "mount",
                shared_emulator.url,
                str(mnt),
                "--foreground",
                "--cache-dir",
                str(tmp_path / "c"),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        from xnatfs.fs.mounting import wait_mounted

        assert wait_mounted(str(mnt), time.monotonic() + 60, alive=lambda: proc.poll() is None), (
            tmp_path / "fg.log"
        ).read_text()
        assert "DEMO1" in os.listdir(mnt)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert b"XNATFS_PASSWORD" not in environ and ADMIN[1].encode() not in environ
        assert ADMIN[1].encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        _umount(mnt)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            _umount(mnt)
            proc.kill()
            proc.wait(timeout=10)


def test_no_secret_on_disk_and_everything_private(shared_emulator, tmp_path):
    """After reads, a write, a refused write and an unmount, at debug level: the password is
    in no file under the cache directory (content, journal, spool, logs), and nothing there is
    open to group or others (issue 17 "the basics")."""
    cache, mnt = tmp_path / "cache" / "xnatfs", tmp_path / "m"
    res = _bg_mount(
        shared_emulator.url,
        mnt,
        tmp_path,
        {"XNATFS_USER": ADMIN[0], "XNATFS_PASSWORD": ADMIN[1]},
        "--log-level",
        "debug",
        "--cache-dir",
        str(cache),
    )
    try:
        assert res.returncode == 0, res.stderr
        files = mnt / PROTOCOLS
        assert (files / "README.txt").read_bytes()
        (files / "new.txt").write_bytes(b"new bytes")
        assert _py("open(sys.argv[1], 'wb').write(b'x')", str(files / ESCAPE)) == "EINVAL"
    finally:
        _umount(mnt)
    seen = 0
    assert cache.stat().st_mode & 0o077 == 0
    for dirpath, dirnames, filenames in os.walk(cache):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            assert st.st_mode & 0o077 == 0, f"{path} is mode {st.st_mode & 0o777:o}"
            if name in filenames:
                seen += 1
                assert ADMIN[1].encode() not in Path(path).read_bytes(), path
    assert seen >= 2  # at least the log and a cached file
    assert list(cache.glob("logs/*.log"))


# ------------------------------------------------------------------ --ca-bundle (§6)
@pytest.fixture(scope="module")
def tls_front(shared_emulator, tmp_path_factory):
    """The shared emulator behind TLS, the right CA and an unrelated one."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make test certificates")
    from tests.mount.tlsproxy import TLSProxy, make_ca, make_server_cert

    base = tmp_path_factory.mktemp("tls")
    right = make_ca(base, "right")
    wrong = make_ca(base, "wrong")
    cert, key = make_server_cert(base, right)
    port = int(shared_emulator.url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = TLSProxy(port, cert, key).start()
    yield proxy, right[0], wrong[0]
    proxy.stop()


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_ca_bundle_option_wins_over_environment(tls_front, tmp_path, variable):
    proxy, right, wrong = tls_front
    creds = {"XNATFS_USER": ADMIN[0], "XNATFS_PASSWORD": ADMIN[1], variable: str(wrong)}
    mnt = tmp_path / "m"
    # the environment's bundle is used when no option is given: it is wrong, so refused
    refused = _bg_mount(proxy.url, mnt, tmp_path, creds, "--connect-timeout", "5", "--retries", "0")
    assert refused.returncode == 1 and not is_mounted(str(mnt)), refused.stderr
    # OpenSSL's reason and what to do, not urllib3's pool repr cut before the reason
    assert "certificate verify failed" in refused.stderr, refused.stderr
    assert "--ca-bundle" in refused.stderr and "Max retries" not in refused.stderr
    # --ca-bundle wins for the check before mounting and for the daemon
    res = _bg_mount(proxy.url, mnt, tmp_path, creds, "--ca-bundle", str(right))
    try:
        assert res.returncode == 0, res.stderr
        assert "DEMO1" in os.listdir(mnt)
        assert (mnt / PROTOCOLS / "README.txt").read_bytes()
    finally:
        _umount(mnt)


def test_https_to_a_plain_http_server_says_so(shared_emulator, tmp_path):
    creds = {"XNATFS_USER": ADMIN[0], "XNATFS_PASSWORD": ADMIN[1]}
    url = shared_emulator.url.replace("http://", "https://", 1)
    mnt = tmp_path / "m"
    refused = _bg_mount(url, mnt, tmp_path, creds, "--retries", "0")
    assert refused.returncode == 1 and not is_mounted(str(mnt)), refused.stderr
    assert "WRONG_VERSION_NUMBER" in refused.stderr and "http://" in refused.stderr
    assert "Max retries" not in refused.stderr, refused.stderr


# ------------------------------------------------------------------ truncate (§8)
def test_truncate_to_zero_is_refused_not_silent(emu, make_mount):
    m = make_mount(emu.url, "--allow-delete")
    readme = m.path / PROTOCOLS / "README.txt"
    before = readme.read_bytes()
    mark = emu.mark()
    res = sh(["truncate", "-s", "0", str(readme)], check=False)
    assert res.returncode != 0 and "not supported" in res.stderr, res.stderr
    # open(O_TRUNC) + close without writing: the error comes at close
    assert (
        _py("fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)\nos.close(fd)", str(readme))
        == errno.errorcode[errno.ENOTSUP]
    )
    assert writes(emu.since(mark)) == []
    assert readme.stat().st_size == len(before)
    assert readme.read_bytes() == before
    r = requests.get(emu.url + f"{PROTOCOLS_URI}/README.txt", auth=ADMIN, timeout=30)
    assert r.content == before


def test_truncate_shorter_replaces_on_xnat(emu, make_mount):
    m = make_mount(emu.url, "--allow-delete")
    readme = m.path / PROTOCOLS / "README.txt"
    before = readme.read_bytes()
    sh(["truncate", "-s", "10", str(readme)])
    r = requests.get(emu.url + f"{PROTOCOLS_URI}/README.txt", auth=ADMIN, timeout=30)
    assert r.content == before[:10]


# ------------------------------------------------------------------ redirects (issue 17 basics)
class _Recorder:
    """A plain HTTP server that records what it was asked and answers with ``answer``."""

    def __init__(self, answer):
        import http.server
        import threading

        self.hits = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.hits.append(
                    (
                        self.command,
                        self.path,
                        self.headers.get("Cookie"),
                        self.headers.get("Authorization"),
                    )
                )
                status, headers, body = answer(self)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("tls", [False, True], ids=["other-host", "https-to-http"])
def test_redirects_are_never_followed(tmp_path, tls):
    """A server that answers with a redirect to another origin (or from https to http) never
    gets the client to send anything there: not the request, not the session cookie."""
    from xnatfs.xnat.auth import Credentials
    from xnatfs.xnat.client import ClientOptions, XnatClient
    from xnatfs.xnat.errors import XnatError

    target = _Recorder(lambda h: (200, {}, b'{"ResultSet": {"Result": []}}'))

    def hostile(handler):
        if handler.path.startswith("/data/services/auth"):
            return 200, {"Set-Cookie": "JSESSIONID=SECRETSESSION; Path=/"}, b"SECRETSESSION"
        return 302, {"Location": f"http://127.0.0.1:{target.port}{handler.path}"}, b""

    server = _Recorder(hostile)
    proxy = None
    url, verify = f"http://127.0.0.1:{server.port}", True
    try:
        if tls:
            if not shutil.which("openssl"):
                pytest.skip("the openssl command is needed to make test certificates")
            from tests.mount.tlsproxy import TLSProxy, make_ca, make_server_cert

            ca = make_ca(tmp_path, "ca")
            proxy = TLSProxy(server.port, *make_server_cert(tmp_path, ca)).start()
            url, verify = proxy.url, str(ca[0])
        client = XnatClient(
            url, Credentials(*ADMIN), ClientOptions(verify=verify, retries=0, heartbeat=False)
        )
        client.start()
        try:
            with pytest.raises(XnatError):
                client.list_projects()
            with pytest.raises(XnatError):
                client.download("/data/projects/DEMO1/resources/r/files/a.txt", lambda chunk: None)
        finally:
            client.close()
        assert server.hits, "the hostile server was not asked at all"
        assert target.hits == []
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        target.stop()
