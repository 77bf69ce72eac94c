"""Small files written through a mount (RESULTS.md, "Small files"; B7): ``tar x`` into a
resource costs one PUT and one listing (the upload's check) per file, and every file is on
XNAT with its bytes and the time tar gave it.  For real through /dev/fuse against the
emulator; requests counted from its access log, XNAT's copy read with xnatpy.
"""

from __future__ import annotations

import os
import random
import re

import pytest

from tests.conftest import needs_fuse
from tests.mount.helpers import api, md5, sh
from tests.mount.test_write_mount import PROTOCOLS, server_files

pytestmark = [needs_fuse]

#: the listing of a resource of DEMO1 (the mount names it by its ID)
LISTING = re.compile(r"^/data/projects/DEMO1/resources/[^/]+/files\?")


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


def _tarball(tmp_path, files: dict, name: str):
    src = tmp_path / f"{name}-src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        os.utime(src / rel, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    tarball = tmp_path / f"{name}.tar"
    sh(["tar", "cf", str(tarball), "-C", str(src), *files])
    return tarball


def test_tar_x_of_small_files_costs_a_put_and_a_listing_per_file(emu, make_mount, tmp_path):
    """Before: two listings per file (the check's, then the next name's lookup, since the
    close dropped the folder's listing), and a close() waited ~50 ms after each PUT."""
    rnd = random.Random(7)
    files = {f"f{i:03d}.dat": rnd.randbytes(2048 + i) for i in range(10)}
    tarball = _tarball(tmp_path, files, "flat")
    m = make_mount(emu.url)
    os.listdir(m.path / PROTOCOLS)  # the folder's listing, as any walk into it loads it
    mark = emu.mark()
    sh(["tar", "xf", str(tarball), "-C", str(m.path / PROTOCOLS)])
    sent = api(emu.since(mark))
    assert sum(1 for method, path in sent if method == "GET" and LISTING.match(path)) == len(files)
    assert sum(1 for method, _ in sent if method == "PUT") == len(files)
    on_server = server_files(emu)
    for name, data in files.items():
        assert on_server[name] == (len(data), md5(data))
        st = os.stat(m.path / PROTOCOLS / name)
        assert (st.st_size, st.st_mtime_ns) == (len(data), 1_500_000_000_000_000_000)
        assert (m.path / PROTOCOLS / name).read_bytes() == data


def test_tar_x_with_folders_and_a_second_tar_over_the_same_names(emu, make_mount, tmp_path):
    """Folders inside ``files/`` (made locally by tar's mkdir until a file lands: their
    files' checks' listings are not kept, the folders are not XNAT's yet), and the same
    archive again over them: the same bytes are a no-op (README, "Times"), nothing is sent."""
    rnd = random.Random(8)
    files = {
        "top.dat": rnd.randbytes(1000),
        "a/one.dat": rnd.randbytes(1500),
        "a/two.dat": rnd.randbytes(1700),
        "a/b/three.dat": rnd.randbytes(900),
    }
    tarball = _tarball(tmp_path, files, "tree")
    m = make_mount(emu.url)
    sh(["tar", "xf", str(tarball), "-C", str(m.path / PROTOCOLS)])
    on_server = server_files(emu)
    for rel, data in files.items():
        assert on_server[rel] == (len(data), md5(data))
        assert (m.path / PROTOCOLS / rel).read_bytes() == data
        assert os.stat(m.path / PROTOCOLS / rel).st_mtime_ns == 1_500_000_000_000_000_000
    mark = emu.mark()
    # --overwrite: open the existing files with O_TRUNC (tar's default unlinks them first,
    # which needs --allow-delete)
    sh(["tar", "xf", str(tarball), "--overwrite", "-C", str(m.path / PROTOCOLS)])
    assert [p for method, p in api(emu.since(mark)) if method == "PUT"] == []
    assert server_files(emu) == on_server
