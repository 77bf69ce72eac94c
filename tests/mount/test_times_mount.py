"""Times tools can trust (issue 15), through /dev/fuse against the emulator.

rsync, make, ``cp -p`` and ``tar -x`` decide by size and mtime: the mount must keep the times
they set (``utimens``) and must not upload (or refuse) a rewrite of the same bytes.  Uploads are
counted in the emulator's access log; what the server holds is read back with requests.
"""
from __future__ import annotations

import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.mount.helpers import api, md5, sh

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
    r = requests.get(emu.url + resource_uri + "/files", params={"format": "json"}, auth=ADMIN,
                     timeout=30)
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
    res = subprocess.run(["rsync", "-a", "--stats", *extra, f"{src}/", f"{dst}/"],
                         capture_output=True, text=True, timeout=120)
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
