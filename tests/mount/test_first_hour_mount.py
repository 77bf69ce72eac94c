"""A newcomer's first hour (issue 16 §1, §2, §3, §6), through a real mount against the emulator.

Generated files (``.zip``, ``.xnat.json``) show their true size, so the tools that trust ``stat``
copy them whole; ``mv`` of what is on XNAT without ``--allow-delete`` changes nothing on the
server; a copy taken out of the mount can be deleted by its owner; the mount point is checked.
What reached the server is read from the emulator's access log and its own listings.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN, Mount, needs_fuse
from tests.mount.helpers import api, sh, wait_for
from xnatfs.fs.mounting import is_mounted

pytestmark = [needs_fuse]

EXP = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1"
PROTOCOLS = "DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"
NOBODY = 65534


def server_files(emu, files_uri=PROTOCOLS_URI):
    """Names (below ``files/``) XNAT lists under ``files_uri``: the emulator's own answer."""
    r = requests.get(emu.url + files_uri, params={"format": "json"}, auth=ADMIN, timeout=30)
    r.raise_for_status()
    return {row["URI"].split("/files/", 1)[1] for row in r.json()["ResultSet"]["Result"]}


def server_subjects(emu, project="DEMO1"):
    r = requests.get(
        f"{emu.url}/data/projects/{project}/subjects",
        params={"format": "json"},
        auth=ADMIN,
        timeout=30,
    )
    r.raise_for_status()
    return {row["label"] for row in r.json()["ResultSet"]["Result"]}


def changes(records):
    return [(m, p) for m, p in api(records) if m in ("PUT", "POST", "DELETE")]


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


# ------------------------------------------------------------------ §1 generated files
def test_generated_files_report_their_true_size(emu, make_mount, tmp_path):
    """``zipfile`` opens an experiment's ``.zip`` straight on the mount; ``shutil.copy``,
    ``rsync`` and ``unzip`` copy ``.zip`` and ``.xnat.json`` whole."""
    m = make_mount(emu.url)
    exp = m.path / EXP
    zpath = exp / ".zip"
    size = os.stat(zpath).st_size
    assert size > 0
    # every file of every scan, as the mount lists them, is a member of the experiment's zip
    listed = set()
    for scan in os.listdir(exp / "scans"):
        for res in os.listdir(exp / "scans" / scan / "resources"):
            files = exp / "scans" / scan / "resources" / res / "files"
            listed |= {f"{scan}/{res}/{name}" for name in os.listdir(files)}
    assert listed
    with zipfile.ZipFile(zpath) as zf:  # seeks to the central directory: needs the size
        names = zf.namelist()
        assert zf.testzip() is None
    members = set()
    for name in names:
        parts = name.split("/")
        i = parts.index("scans")
        members.add(f"{parts[i + 1].split('-', 1)[0]}/{parts[i + 3]}/{parts[-1]}")
    assert members == listed
    with open(zpath, "rb") as fh:
        whole = fh.read()
    assert len(whole) == size
    res = sh(["unzip", "-l", str(zpath)], check=False)
    assert res.returncode == 0 and f"{len(names)} files" in res.stdout, res.stdout + res.stderr

    # .xnat.json: the whole document through shutil.copy (sendfile) and rsync
    jpath = exp / ".xnat.json"
    mark = emu.mark()
    copy = Path(shutil.copy(jpath, tmp_path / "copy.json"))
    doc = json.loads(copy.read_text())
    assert doc["items"][0]["data_fields"]["label"] == "SUBJ01_MR1"
    assert copy.stat().st_size == os.stat(jpath).st_size > 0
    if shutil.which("rsync"):
        sh(["rsync", str(jpath), str(zpath), str(tmp_path) + "/"])
        assert (tmp_path / ".xnat.json").read_bytes() == copy.read_bytes()
        assert (tmp_path / ".zip").read_bytes() == whole
    assert Path(shutil.copy(zpath, tmp_path / "copy.zip")).read_bytes() == whole
    # the document was fetched once, at lookup, and served from then on; the zip, once made,
    # costs nothing more
    assert [p for _m, p in api(emu.since(mark))] == [
        f"/data/experiments/{doc['items'][0]['data_fields']['ID']}?format=json"
    ]


def test_zip_that_cannot_be_made_in_time_fails_then_comes(emu, make_mount):
    """A zip XNAT does not deliver within ``--timeout``: its ``stat`` fails with ETIMEDOUT (one
    log line naming the path and URL), never size 0; the download goes on and a later ``stat``
    gives the true size."""
    m = make_mount(emu.url, "--timeout", "1")
    scan = m.path / EXP / "scans" / "1"
    # the walk down and the listings below the scan (what its zip is keyed on) are cached;
    # only the zip is slow now
    for res in os.listdir(scan / "resources"):
        os.listdir(scan / "resources" / res / "files")
    emu.faults.latency_ms = 2500
    try:
        with pytest.raises(OSError) as info:
            os.stat(scan / ".zip")
        assert info.value.errno == errno.ETIMEDOUT
    finally:
        emu.faults.latency_ms = 0
    size = wait_for(lambda: _size_or_none(scan / ".zip"), timeout=30, what="the zip")
    with zipfile.ZipFile(scan / ".zip") as zf:
        assert zf.namelist() and zf.testzip() is None
    assert os.path.getsize(scan / ".zip") == size
    lines = [line for line in m.log_text().splitlines() if "ERROR" in line and ".zip" in line]
    # one line per failed stat (the first and any the wait above made), naming path and URL
    assert lines and all(
        "scans/1/.zip" in line and "format=zip" in line and "--timeout" in line for line in lines
    ), lines


def _size_or_none(path):
    try:
        return os.stat(path).st_size
    except OSError as exc:
        assert exc.errno == errno.ETIMEDOUT, exc
        return None


# ------------------------------------------------------------------ §2 mv needs --allow-delete
def test_mv_of_what_is_on_xnat_needs_allow_delete(emu, make_mount):
    m = make_mount(emu.url)
    files = m.path / PROTOCOLS
    before = server_files(emu)
    assert "README.txt" in before
    subjects = server_subjects(emu)
    mark = emu.mark()
    res = sh(["mv", str(files / "README.txt"), str(files / "README2.txt")], check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr, res.stderr
    # a subject directory: today's copy made a new empty subject before failing
    subj = m.path / "DEMO1/subjects"
    res = sh(["mv", str(subj / "SUBJ01"), str(subj / "SUBJ99")], check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr, res.stderr
    assert changes(emu.since(mark)) == []
    assert server_files(emu) == before and server_subjects(emu) == subjects
    shown = os.listdir(files)
    assert "README.txt" in shown and "README2.txt" not in shown
    assert "SUBJ01" in os.listdir(subj) and "SUBJ99" not in os.listdir(subj)
    logged = [line for line in m.log_text().splitlines() if "ERROR" in line and "rename" in line]
    assert len(logged) == 2 and "--allow-delete" in logged[0], logged

    # a file written here and not yet on XNAT (an editor's temp file) still renames
    (files / ".notes.txt.AbC123").write_bytes(b"draft\n")
    os.rename(files / ".notes.txt.AbC123", files / "notes.txt")
    wait_for(lambda: "notes.txt" in server_files(emu), what="notes.txt on XNAT")
    assert ".notes.txt.AbC123" not in server_files(emu)


def test_mv_with_allow_delete_moves(emu, make_mount):
    m = make_mount(emu.url, "--allow-delete")
    files = m.path / PROTOCOLS
    data = (files / "README.txt").read_bytes()
    sh(["mv", str(files / "README.txt"), str(files / "README2.txt")])
    names = server_files(emu)
    assert "README2.txt" in names and "README.txt" not in names
    assert (files / "README2.txt").read_bytes() == data


def test_mv_of_a_file_still_open_removes_it(emu, make_mount):
    """A file another process holds open is removed for real by ``mv`` (copy, then unlink):
    libfuse once hid it as ``.fuse_hidden*`` (a rename XNAT cannot do: EXDEV), so ``mv`` failed
    whenever its own read's RELEASE had not arrived yet; here the open is held on purpose."""
    m = make_mount(emu.url, "--allow-delete")
    files = m.path / PROTOCOLS
    data = (files / "README.txt").read_bytes()
    with open(files / "README.txt", "rb") as held:
        sh(["mv", str(files / "README.txt"), str(files / "MOVED.txt")])
        assert held.read() == data  # the open handle still reads its bytes
    names = server_files(emu)
    assert "MOVED.txt" in names and "README.txt" not in names
    assert not [n for n in os.listdir(files) if n.startswith(".fuse_hidden")]
    assert (files / "MOVED.txt").read_bytes() == data


# ------------------------------------------------------------------ §3 modes
def test_modes_0755_0644_and_the_options(emu, make_mount):
    m = make_mount(emu.url)
    scan = m.path / EXP / "scans" / "1"
    readme = m.path / PROTOCOLS / "README.txt"
    for path in (m.path, m.path / "DEMO1", scan, scan / "resources"):
        assert os.stat(path).st_mode & 0o777 == 0o755, path
    assert os.stat(readme).st_mode & 0o777 == 0o644
    assert os.stat(scan / ".xnat.json").st_mode & 0o777 == 0o644
    # a write XNAT cannot take still fails at the call, with its errno
    with pytest.raises(OSError) as info:
        (scan / "note.txt").write_bytes(b"x")
    assert info.value.errno == errno.EPERM
    # --dir-mode/--file-mode; group/other write bits are never shown without
    # --allow-other-write; --read-only drops every write bit
    m2 = make_mount(emu.url, "--dir-mode", "0775", "--file-mode", "0600")
    assert os.stat(m2.path / "DEMO1").st_mode & 0o777 == 0o755
    assert os.stat(m2.path / PROTOCOLS / "README.txt").st_mode & 0o777 == 0o600
    m3 = make_mount(emu.url, "--read-only", "--dir-mode", "0750")
    assert os.stat(m3.path / "DEMO1").st_mode & 0o777 == 0o550
    assert os.stat(m3.path / PROTOCOLS / "README.txt").st_mode & 0o777 == 0o444


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="running a command as another user needs root and setpriv",
)
def test_copy_taken_out_can_be_deleted_by_its_owner(emu, make_mount, tmp_path):
    """nobody copies a folder out of the mount (``-o allow_other``) into a directory it owns,
    then deletes its copy."""
    public = Path(tempfile.mkdtemp(prefix="xnatfs-first-", dir="/tmp"))
    try:
        public.chmod(0o755)
        mnt = public / "m"
        m = Mount(
            emu.url, mnt, tmp_path / "cache-pub", tmp_path / "mount-pub.log", ["-o", "allow_other"]
        ).start()
        try:
            home = public / "home"
            home.mkdir()
            os.chown(home, NOBODY, NOBODY)
            src = mnt / EXP / "scans" / "1"
            run = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            env = {"PATH": os.environ["PATH"]}
            res = subprocess.run(
                run + ["cp", "-r", str(src), str(home / "copy")],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                cwd="/",
            )
            assert res.returncode == 0, res.stderr
            copied = [p for p in (home / "copy").rglob("*") if p.is_file()]
            assert copied and all(p.stat().st_uid == NOBODY for p in copied)
            res = subprocess.run(
                run + ["rm", "-rf", str(home / "copy")],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd="/",
            )
            assert res.returncode == 0 and res.stderr == "", res.stderr
            assert not (home / "copy").exists()
        finally:
            if m.proc.poll() is None and is_mounted(str(mnt)):
                m.umount()
            else:
                m.cleanup()
    finally:
        shutil.rmtree(public, ignore_errors=True)


# ------------------------------------------------------------------ §6 mount point checks
def _mount_cmd(url, mnt, tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNATFS_") and k != "NETRC"}
    env.update(
        {
            "HOME": str(tmp_path),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "XNATFS_USER": ADMIN[0],
            "XNATFS_PASSWORD": ADMIN[1],
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "xnatfs", "mount", url, str(mnt), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _one_line(res):
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("xnatfs: "), res.stderr
    return res.stderr


def test_mount_point_must_be_an_empty_directory(emu, tmp_path):
    mnt = tmp_path / "m"
    mnt.mkdir()
    (mnt / "mine.txt").write_text("keep me\n")
    line = _one_line(_mount_cmd(emu.url, mnt, tmp_path))
    assert "not empty" in line and "nonempty" in line
    assert not is_mounted(str(mnt)) and (mnt / "mine.txt").read_text() == "keep me\n"

    afile = tmp_path / "afile"
    afile.write_text("x")
    line = _one_line(_mount_cmd(emu.url, afile, tmp_path))
    assert "is a file" in line and "mkdir" not in line
    line = _one_line(_mount_cmd(emu.url, tmp_path / "absent", tmp_path))
    assert "mkdir -p" in line

    for opt in (["-o", "nonempty"], ["--nonempty"]):
        res = _mount_cmd(emu.url, mnt, tmp_path, *opt)
        try:
            assert res.returncode == 0, res.stderr
            assert "DEMO1" in os.listdir(mnt)
        finally:
            sh([sys.executable, "-m", "xnatfs", "umount", str(mnt)], check=False)
        assert not is_mounted(str(mnt)) and (mnt / "mine.txt").read_text() == "keep me\n"
