"""Times tools can trust (issue 15), through /dev/fuse against the emulator.

rsync, make, ``cp -p`` and ``tar -x`` decide by size and mtime: the mount must keep the times
they set (``utimens``) and must not upload (or refuse) a rewrite of the same bytes.  Uploads are
counted in the emulator's access log; what the server holds is read back with requests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.mount.helpers import api, md5, sh, wait_for

pytestmark = [needs_fuse]

SUBJ01 = "DEMO1/subjects/SUBJ01"
PROTOCOLS = "DEMO1/resources/protocols/files"


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


def puts(records):
    return [p for m, p in api(records) if m in ("PUT", "POST")]


def server_files(emu, resource_uri: str):
    """relpath -> (size, digest) straight from the emulator's files listing."""
    r = requests.get(
        emu.url + resource_uri + "/files", params={"format": "json"}, auth=ADMIN, timeout=30
    )
    r.raise_for_status()
    out = {}
    for row in r.json()["ResultSet"]["Result"]:
        rel = re.sub(r"^.*?/resources/[^/]+/files/", "", row["URI"])
        out[rel] = (int(row["Size"]), row.get("digest", ""))
    return out


def make_tree(root: Path) -> dict:
    """A small source tree with sub-folders; fixed mtimes in the past (ns precision)."""
    files = {
        "a.txt": b"alpha\n" * 10,
        "sub/b.bin": os.urandom(3000),
        "sub/deeper/c.nii": os.urandom(5000),
        "d.json": b'{"x": 1}\n',
    }
    for i, (rel, data) in enumerate(sorted(files.items())):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        t = 1_600_000_000_123_456_789 + i * 1_000_000_007
        os.utime(p, ns=(t, t))
    return files


def new_resource(m, name: str) -> Path:
    res = m.path / SUBJ01 / "resources" / name
    res.mkdir()
    return res / "files"


def rsync_stats(src: Path, dst: Path, *extra: str) -> tuple:
    res = subprocess.run(
        ["rsync", "-a", "--stats", *extra, f"{src}/", f"{dst}/"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r"Number of regular files transferred: (\d+)", res.stdout)
    return res.returncode, int(m.group(1)) if m else -1, res.stdout + res.stderr


def mtimes_ns(root: Path) -> dict:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def test_second_rsync_does_nothing_and_changed_file_only_is_resent(emu, make_mount, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    m = make_mount(emu.url)
    dst = new_resource(m, "DERIV")
    rc, sent, out = rsync_stats(src, dst)
    assert rc == 0, out
    assert sent == len(files), out
    assert mtimes_ns(dst) == mtimes_ns(src)

    # the same command again: nothing to do, nothing uploaded, no --allow-delete needed
    mark = emu.mark()
    rc, sent, out = rsync_stats(src, dst)
    assert rc == 0, out
    assert sent == 0, out
    assert puts(emu.since(mark)) == []

    # touch one (same bytes, new time) and change another; the changed one needs
    # --allow-delete (it replaces bytes on XNAT), the touched one uploads nothing
    m.umount()
    m = make_mount(emu.url, "--allow-delete", cache=m.cache)
    dst = m.path / SUBJ01 / "resources" / "DERIV" / "files"
    os.utime(src / "a.txt", ns=(1_700_000_000_000_000_001,) * 2)
    (src / "sub" / "b.bin").write_bytes(b"changed bytes")
    mark = emu.mark()
    rc, sent, out = rsync_stats(src, dst)
    assert rc == 0, out
    uploaded = puts(emu.since(mark))
    assert len(uploaded) == 1 and uploaded[0].split("?")[0].endswith("/files/sub/b.bin"), uploaded
    assert mtimes_ns(dst) == mtimes_ns(src)
    resource = m.path / SUBJ01 / "resources" / "DERIV"
    uri = os.getxattr(resource, "user.xnat.uri").decode()
    assert server_files(emu, uri)["sub/b.bin"] == (13, md5(b"changed bytes"))
    # and again: all settled
    mark = emu.mark()
    rc, sent, out = rsync_stats(src, dst)
    assert (rc, sent) == (0, 0), out
    assert puts(emu.since(mark)) == []


def test_cp_p_and_tar_x_keep_mtimes_across_remount(emu, make_mount, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    m = make_mount(emu.url)
    dst = new_resource(m, "COPIED")
    sh(["cp", "-p", str(src / "a.txt"), str(src / "d.json"), str(dst)])
    tarball = tmp_path / "t.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src / "sub", arcname="sub")
    sh(["tar", "-x", "-f", str(tarball), "-C", str(dst)])
    # tar keeps the times its format holds: what a local extraction gets is the reference
    local = tmp_path / "local"
    local.mkdir()
    sh(["cp", "-p", str(src / "a.txt"), str(src / "d.json"), str(local)])
    sh(["tar", "-x", "-f", str(tarball), "-C", str(local)])
    want = mtimes_ns(local)
    assert mtimes_ns(dst) == want
    m.umount()
    # the same cache: the times come back from its index, the bytes from XNAT
    m2 = make_mount(emu.url, cache=m.cache)
    dst2 = m2.path / SUBJ01 / "resources" / "COPIED" / "files"
    assert mtimes_ns(dst2) == want
    assert sorted(mtimes_ns(dst2)) == sorted(files)
    # another cache (another machine) sees XNAT's own times, not these
    m3 = make_mount(emu.url)
    other = mtimes_ns(m3.path / SUBJ01 / "resources" / "COPIED" / "files")
    assert all(other[k] != want[k] for k in want)


def test_identical_rewrite_without_allow_delete_is_a_no_op(emu, make_mount, tmp_path):
    m = make_mount(emu.url)
    target = m.path / PROTOCOLS / "same.txt"
    (tmp_path / "same.txt").write_bytes(b"the same bytes\n")
    sh(["cp", str(tmp_path / "same.txt"), str(target)])
    uri = os.getxattr(m.path / "DEMO1" / "resources" / "protocols", "user.xnat.uri").decode()
    before = server_files(emu, uri)
    mark = emu.mark()
    # cp, a shell redirection and rsync's temp-and-rename: all succeed, none uploads
    sh(["cp", str(tmp_path / "same.txt"), str(target)])
    sh(["sh", "-c", f"printf 'the same bytes\\n' > '{target}'"])
    rc, _sent, out = rsync_stats_file(tmp_path / "same.txt", target)
    assert rc == 0, out
    assert puts(emu.since(mark)) == []
    assert target.read_bytes() == b"the same bytes\n"
    # other bytes: EACCES (at the first write past the old size, or at close), server unchanged
    (tmp_path / "other.txt").write_bytes(b"other bytes!!!\n")  # the same size
    res = sh(["cp", str(tmp_path / "other.txt"), str(target)], check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    # longer: refused at write() (shells ignore close errors); the kernel may report the
    # refused page write as EIO
    res = sh(["sh", "-c", f"echo 'much longer other bytes' > '{target}'"], check=False)
    assert res.returncode != 0 and (
        "Permission denied" in res.stderr or "I/O error" in res.stderr
    ), res.stderr
    res = subprocess.run(
        ["rsync", "-I", str(tmp_path / "other.txt"), str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "Permission denied" in res.stderr
    assert puts(emu.since(mark)) == []
    assert server_files(emu, uri) == before
    assert target.read_bytes() == b"the same bytes\n"
    # nothing is left behind in the folder (rsync's temporary file was not kept)
    wait_names = [n for n in os.listdir(target.parent) if n.startswith(".same.txt.")]
    assert wait_names == []


def rsync_stats_file(src: Path, dst: Path) -> tuple:
    """rsync of one file with -I (ignore times: always through the temp file and rename)."""
    res = subprocess.run(
        ["rsync", "-I", "--stats", str(src), str(dst)], capture_output=True, text=True, timeout=60
    )
    return res.returncode, None, res.stdout + res.stderr


MAKEFILE = """\
OUT := {out}
all: $(OUT)/report.txt
$(OUT)/%.up: in/%.txt
\tcp $< $@
$(OUT)/report.txt: $(OUT)/a.up $(OUT)/b.up
\tcat $^ > $@
"""


def test_make_with_targets_on_the_mount(emu, make_mount, tmp_path):
    m = make_mount(emu.url, "--allow-delete")
    out = new_resource(m, "MAKE")
    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    past = time.time_ns() - 3600 * 10**9
    for name in ("a", "b"):
        (work / "in" / f"{name}.txt").write_text(f"input {name}\n")
        os.utime(work / "in" / f"{name}.txt", ns=(past, past))
    (work / "Makefile").write_text(MAKEFILE.format(out=out))

    def make() -> list:
        res = subprocess.run(["make", "-C", str(work)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        return [line for line in res.stdout.splitlines() if line.startswith(("cp ", "cat "))]

    assert len(make()) == 3
    assert (out / "report.txt").read_text() == "input a\ninput b\n"
    mark = emu.mark()
    assert make() == []  # nothing to do: the targets are newer than their inputs
    assert puts(emu.since(mark)) == []
    # touch one input: only what depends on it is rebuilt; its bytes are the same, so
    # nothing is uploaded, and the next make is quiet again
    now = time.time_ns()
    os.utime(work / "in" / "a.txt", ns=(now, now))
    ran = make()
    assert len(ran) == 2 and ran[0].startswith("cp in/a.txt") and ran[1].startswith("cat "), ran
    assert make() == []
    # change an input: rebuilt and uploaded (with --allow-delete)
    (work / "in" / "b.txt").write_text("input b, changed\n")
    ran = make()
    assert len(ran) == 2 and ran[0].startswith("cp in/b.txt"), ran
    assert (out / "report.txt").read_text() == "input a\ninput b, changed\n"
    assert make() == []
    assert len(puts(emu.since(mark))) == 2


def test_catalog_times_shown_by_ls(emu, make_mount, tmp_path):
    """``--catalog-times``: the files' times are those of XNAT's catalog entries
    (``createdTime``/``modifiedTime``), read with one request per resource."""
    import datetime
    import xml.etree.ElementTree as ET

    uri = "/data/projects/DEMO1/resources/protocols"
    from tests.mount.helpers import put_file

    put_file(emu.url, uri + "/files/sub/x.txt", b"in a sub-folder\n")
    m = make_mount(emu.url, "--catalog-times")
    files = m.path / PROTOCOLS
    mark = emu.mark()
    out = subprocess.run(
        ["ls", "-lR", "--time-style=full-iso", str(files)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    ).stdout
    requests_made = [p for _m, p in api(emu.since(mark))]
    assert len([p for p in requests_made if "format=xcat" in p]) == 1, requests_made
    shown = {}
    folder = ""
    for line in out.splitlines():
        if line.endswith(":"):
            folder = os.path.relpath(line[:-1], files)
            folder = "" if folder == "." else folder + "/"
        parts = line.split(None, 8)  # the name (parts[8]) may hold spaces
        if len(parts) == 9 and parts[0].startswith("-"):
            stamp = datetime.datetime.strptime(
                parts[5] + " " + parts[6][:15], "%Y-%m-%d %H:%M:%S.%f"
            )
            shown[folder + parts[8]] = stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    r = requests.get(emu.url + uri + "/files", params={"format": "xcat"}, auth=ADMIN, timeout=30)
    server = {}
    for e in ET.fromstring(r.content).iter("{http://nrg.wustl.edu/catalog}entry"):
        stamp = datetime.datetime.strptime(e.get("createdTime"), "%Y-%m-%dT%H:%M:%S.%f")
        server[e.get("URI")] = stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    assert "sub/x.txt" in server and len(server) >= 2
    assert shown.keys() == server.keys()
    for rel, t in server.items():
        assert abs(shown[rel] - t) < 1e-3, (rel, shown[rel], t)
    # files of one resource have their own times, not one object time for all
    assert len(set(shown.values())) > 1


def test_a_kept_time_is_dropped_when_the_file_changes_on_xnat(emu, make_mount, tmp_path):
    from tests.mount.helpers import put_file, wait_until

    m = make_mount(emu.url, "--listing-ttl", "1")
    readme = m.path / PROTOCOLS / "README.txt"
    set_to = 1_500_000_000_987_654_321
    os.utime(readme, ns=(set_to, set_to))  # touch -d: no upload, kept locally
    assert readme.stat().st_mtime_ns == set_to
    uri = os.getxattr(readme, "user.xnat.uri").decode()
    put_file(emu.url, uri, b"new bytes from another client\n")  # the server's copy changes
    wait_until(lambda: readme.stat().st_size == 30, what="the new listing")
    assert readme.stat().st_mtime_ns != set_to  # XNAT's time again, not the one kept


def test_times_set_on_pending_files_survive_a_kill_and_the_upload(emu, make_mount, tmp_path):
    """``cp -p`` and ``touch -d`` while XNAT refuses the uploads (503): the files stay
    pending in the journal, and the times were kept in memory only.  After a kill -9 and a
    remount on the same cache the files showed the time they were journalled, and kept that
    one once uploaded: rsync -a and make saw them changed (review8i)."""
    src = tmp_path / "src"
    files = make_tree(src)
    m = make_mount(emu.url)
    dst = new_resource(m, "PENDING")
    os.listdir(dst)  # the listing is loaded before XNAT refuses
    emu.faults.error_status = 503
    emu.faults.error_rate = 1.0
    try:
        # cp sets the time on its descriptor before close; the close answers the 503 (EIO)
        sh(["cp", "-p", str(src / "a.txt"), str(dst)], check=False)
        with contextlib.suppress(OSError):
            with open(dst / "late.txt", "wb") as fh:
                fh.write(b"written, then dated\n")
        sh(["touch", "-m", "-d", "@1500000000.123456789", str(dst / "late.txt")])
        want = {"a.txt": mtimes_ns(src)["a.txt"], "late.txt": 1_500_000_000_123_456_789}
        assert mtimes_ns(dst) == want
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        m.cleanup()
    finally:
        emu.faults.error_rate = 0.0
    m2 = make_mount(emu.url, cache=m.cache)
    dst2 = m2.path / SUBJ01 / "resources" / "PENDING" / "files"
    assert mtimes_ns(dst2) == want  # pending still (or just uploaded): their times
    wait_for(
        lambda: (
            sorted(server_files(emu, "/data/projects/DEMO1/subjects/SUBJ01/resources/PENDING"))
            == ["a.txt", "late.txt"]
        ),
        60,
        what="the resumed uploads",
    )
    wait_for(lambda: mtimes_ns(dst2) == want, 10, what="the times after the upload")
    assert (dst2 / "a.txt").read_bytes() == files["a.txt"]


#: times set on the mount in these tests: in the past, to the nanosecond
FD_SET = 978_307_200_123_456_789  # 2001-01-01, set by futimens on the open descriptor
PATH_SET = 978_393_600_987_654_321  # 2001-01-02, set by utime on the name while open
AFTER_SET = 978_480_000_000_000_007  # 2001-01-03, set after close


def write_fsync_date(path: Path, data: bytes, set_ns: int, by_fd: bool) -> None:
    """open(O_WRONLY|O_CREAT), write, fsync (the upload is confirmed), the time set while
    the file is still open (on its descriptor or by its name), close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.utime(fd if by_fd else path, ns=(set_ns, set_ns))
    finally:
        os.close(fd)


@pytest.mark.parametrize("checksums", [True, False], ids=["md5", "no-checksums"])
def test_a_time_set_after_fsync_on_an_open_file_sticks(make_emulator, make_mount, checksums):
    """open -> write -> fsync -> futimens/utime -> close: once the fsync'ed upload was
    confirmed the time was kept in the open file's memory only and was gone at close (the
    file showed its upload's time); so was one set after an fsync of the same bytes over
    the file (nothing uploaded).  Also: a time set after close sticks; all survive a
    remount; a change on XNAT wins."""
    from tests.mount.helpers import put_file

    emu = make_emulator(checksums=checksums)
    m = make_mount(emu.url, "--listing-ttl", "1")
    dst = new_resource(m, "SYNCED")
    write_fsync_date(dst / "fd.txt", b"dated by fd\n", FD_SET, by_fd=True)
    write_fsync_date(dst / "path.txt", b"dated by name\n", PATH_SET, by_fd=False)
    (dst / "after.txt").write_bytes(b"dated after close\n")
    os.utime(dst / "after.txt", ns=(AFTER_SET, AFTER_SET))
    want = {"fd.txt": FD_SET, "path.txt": PATH_SET, "after.txt": AFTER_SET}
    if checksums:  # without MD5s the same bytes cannot be told (they need --allow-delete)
        # the same bytes again over the uploaded file (O_TRUNC), fsync'ed: nothing uploaded
        (dst / "same.txt").write_bytes(b"the same bytes\n")
        fd = os.open(dst / "same.txt", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"the same bytes\n")
            os.fsync(fd)
            os.utime(fd, ns=(PATH_SET, PATH_SET))
        finally:
            os.close(fd)
        want["same.txt"] = PATH_SET
    # past the kernel's and the listing's caches (``xnatfs refresh`` drops both for the
    # folder): the mount's own answer, from XNAT's listing and the times index
    refreshed = subprocess.run(
        [sys.executable, "-m", "xnatfs", "refresh", str(dst)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert refreshed.returncode == 0, refreshed.stderr
    assert mtimes_ns(dst) == want
    m.umount()
    m2 = make_mount(emu.url, "--listing-ttl", "1", cache=m.cache)
    dst2 = m2.path / SUBJ01 / "resources" / "SYNCED" / "files"
    assert mtimes_ns(dst2) == want
    uri = os.getxattr(dst2 / "fd.txt", "user.xnat.uri").decode()
    put_file(emu.url, uri, b"other bytes from another client\n")  # XNAT's copy changes
    wait_for(lambda: (dst2 / "fd.txt").stat().st_size == 32, 10, what="the new listing")
    assert (dst2 / "fd.txt").stat().st_mtime_ns != FD_SET  # XNAT's time again
    assert (dst2 / "path.txt").stat().st_mtime_ns == PATH_SET


def test_times_set_on_pending_open_and_closed_files_stick_once_uploaded(emu, make_mount, tmp_path):
    """While XNAT refuses (503): a file fsync'ed (EIO, pending) and dated while still open,
    closed once XNAT answers again (the close uploads it); and a file closed pending then
    ``touch -d``'ed (the background retry uploads it).  Both keep their times after the
    upload and across a remount."""
    m = make_mount(emu.url)
    dst = new_resource(m, "PENDING2")
    os.listdir(dst)  # the listing is loaded before XNAT refuses
    emu.faults.error_status = 503
    emu.faults.error_rate = 1.0
    try:
        fd = os.open(dst / "open.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"pending while open\n")
        with pytest.raises(OSError):
            os.fsync(fd)
        os.utime(fd, ns=(FD_SET, FD_SET))
        with contextlib.suppress(OSError):
            with open(dst / "closed.txt", "wb") as fh:
                fh.write(b"closed pending\n")
        sh(["touch", "-m", "-d", "@978393600.987654321", str(dst / "closed.txt")])
    finally:
        emu.faults.error_rate = 0.0
    os.close(fd)  # XNAT answers again: this close uploads it
    want = {"open.txt": FD_SET, "closed.txt": PATH_SET}
    assert mtimes_ns(dst) == want
    uri = "/data/projects/DEMO1/subjects/SUBJ01/resources/PENDING2"
    wait_for(
        lambda: sorted(server_files(emu, uri)) == ["closed.txt", "open.txt"],
        60,
        what="the uploads",
    )
    wait_for(lambda: mtimes_ns(dst) == want, 10, what="the times after the upload")
    m.umount()
    m2 = make_mount(emu.url, cache=m.cache)
    assert mtimes_ns(m2.path / SUBJ01 / "resources" / "PENDING2" / "files") == want
