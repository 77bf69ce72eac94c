"""``xnatfs refresh PATH`` (``fs/control.py``): what another client changed on XNAT shows at
once instead of after the listing TTL, on a writable and on a read-only mount, with XNAT's
bytes and size, never the old size over the new bytes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.mount.helpers import put_file

pytestmark = [needs_fuse]

FOLDER = "/data/projects/DEMO2/resources/RF/files"


def _read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _refresh(*paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xnatfs", "refresh", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("mode", [[], ["--read-only"]], ids=["read-write", "read-only"])
def test_refresh_shows_another_clients_changes_now(make_emulator, make_mount, mode):
    emu = make_emulator()
    first = b"first version\n" * 100
    put_file(emu.url, f"{FOLDER}/changing.bin", first)
    put_file(emu.url, f"{FOLDER}/gone.txt", b"removed soon\n")
    m = make_mount(emu.url, *mode)  # the default listing TTL, 60 s: longer than this test
    folder = m.path / "DEMO2" / "resources" / "RF" / "files"
    path = folder / "changing.bin"
    assert _read(path) == first and sorted(os.listdir(folder)) == ["changing.bin", "gone.txt"]
    size_before = os.stat(path).st_size

    longer = bytes(range(256)) * 64
    put_file(emu.url, f"{FOLDER}/added.txt", b"added\n")
    put_file(emu.url, f"{FOLDER}/changing.bin", longer)
    r = requests.delete(f"{emu.url}{FOLDER}/gone.txt", auth=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    # what the mount and the kernel trust for 60 s
    assert sorted(os.listdir(folder)) == ["changing.bin", "gone.txt"]
    assert os.stat(path).st_size == size_before and (folder / "gone.txt").exists()
    res = _refresh(folder)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert sorted(os.listdir(folder)) == ["added.txt", "changing.bin"]
    # the kernel forgot what it knew of the folder's names: stat asks again
    assert not (folder / "gone.txt").exists()
    assert os.stat(path).st_size == len(longer) and _read(path) == longer

    # a file's own path refreshes its folder; a shorter version reads whole and only it
    shorter = b"short\n"
    put_file(emu.url, f"{FOLDER}/changing.bin", shorter)
    assert _refresh(path).returncode == 0
    assert _read(path) == shorter and os.stat(path).st_size == len(shorter)


def test_refresh_by_setxattr_and_outside_a_mount(make_emulator, make_mount, tmp_path):
    emu = make_emulator()
    put_file(emu.url, f"{FOLDER}/a.txt", b"a\n")
    m = make_mount(emu.url)
    folder = m.path / "DEMO2" / "resources" / "RF" / "files"
    assert os.listdir(folder) == ["a.txt"]
    put_file(emu.url, f"{FOLDER}/b.txt", b"b\n")
    os.setxattr(folder, "user.xnatfs.refresh", b"1")
    assert sorted(os.listdir(folder)) == ["a.txt", "b.txt"]
    # not listed, so getfattr -d, cp -a and rsync -X never read it by accident
    assert "user.xnatfs.refresh" not in os.listxattr(folder / "a.txt")
    res = _refresh(tmp_path, folder)
    assert res.returncode == 1 and "not in an xnatfs mount" in res.stderr, res.stderr
    assert str(folder) not in res.stderr  # the mount's path was refreshed
    with pytest.raises(OSError) as err:
        os.getxattr(tmp_path, "user.xnatfs.refresh")
    assert err.value.errno in (errno.ENOTSUP, errno.ENODATA)


def test_refresh_of_a_folder_removed_on_xnat_says_so(make_emulator, make_mount):
    emu = make_emulator()
    put_file(emu.url, "/data/projects/DEMO2/resources/GONE/files/x.txt", b"x\n")
    m = make_mount(emu.url)
    folder = m.path / "DEMO2" / "resources" / "GONE"
    assert os.listdir(folder / "files") == ["x.txt"]
    r = requests.delete(f"{emu.url}/data/projects/DEMO2/resources/GONE", auth=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    res = _refresh(folder)  # its own listing and its folder's are loaded anew
    assert res.returncode == 1 and "No such file or directory" in res.stderr, res.stderr
    # and the kernel forgot the names below it: no stale stat of the file
    assert not (folder / "files" / "x.txt").exists()
    assert "GONE" not in os.listdir(m.path / "DEMO2" / "resources")


def test_refresh_shows_a_name_looked_up_as_missing(make_emulator, make_mount):
    """A name `stat`ed as missing is held so by the kernel for ``negative_timeout`` (10 s),
    which the daemon cannot reach through libfuse's high-level API; ``xnatfs refresh`` lists
    the folder after the daemon forgot it, and the listing (READDIRPLUS) replaces the kernel's
    missing-name entry with the new file."""
    emu = make_emulator()
    put_file(emu.url, f"{FOLDER}/a.txt", b"a\n")
    m = make_mount(emu.url)
    folder = m.path / "DEMO2" / "resources" / "RF" / "files"
    late = folder / "late.txt"
    assert not late.exists()  # the kernel now holds late.txt as missing
    put_file(emu.url, f"{FOLDER}/late.txt", b"late\n")
    assert not late.exists()  # still within the TTLs: nothing asked
    res = _refresh(folder)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert os.stat(late).st_size == 5 and _read(late) == b"late\n"
    # a file's path refreshes its folder, and the missing names beside it too
    put_file(emu.url, f"{FOLDER}/later.txt", b"later\n")
    assert not (folder / "later.txt").exists()
    assert _refresh(folder / "a.txt").returncode == 0
    assert _read(folder / "later.txt") == b"later\n"


def _zip_names(path) -> set:
    """Base names of the members of the zip ``cat path`` gives."""
    import io
    import zipfile

    out = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(io.BytesIO(out.stdout)).namelist()}


def test_refresh_of_a_scan_resource_renews_the_scan_and_experiment_zips(make_emulator, make_mount):
    """Another client adds a file to a scan's resource: after ``xnatfs refresh`` of that
    resource's ``files`` folder, the scan's ``.zip`` and its experiment's ``.zip`` hold it.
    Both were keyed on their row's time, which a file added below does not change: the zips
    read before were served for ever (the listing TTL did not help either)."""
    emu = make_emulator()
    exp = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1"
    m = make_mount(emu.url, "--bulk-zip", "0", "--prefetch", "0")
    scan = m.path / exp / "scans" / "1"
    files = scan / "resources" / "DICOM" / "files"
    before = _zip_names(scan / ".zip")
    assert before and "extra.txt" not in before
    assert "extra.txt" not in _zip_names(m.path / exp / ".zip")
    put_file(emu.url, f"/data/projects/{exp}/scans/1/resources/DICOM/files/extra.txt", b"new\n")
    assert _refresh(files).returncode == 0
    assert "extra.txt" in os.listdir(files)
    assert _zip_names(scan / ".zip") == before | {"extra.txt"}
    assert "extra.txt" in _zip_names(m.path / exp / ".zip")
