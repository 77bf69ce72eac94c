"""A second layout is one class (#14): a dict of dicts (``toy_layout.ToyLayout``) mounted for
real through /dev/fuse with the same view engine and the same FUSE adapter (``fs/ops.py``) that
serve XNAT, plus a second toy under ``MNT/.mirror`` (the way ``.bids`` is mounted): listing,
attributes (stat size and mode, an xattr), reads, unlisted generated names, ENOENT, EROFS."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FUSE_SKIP_REASON, HAVE_FUSE, _mounted
from tests.mount.helpers import wait_for
from tests.mount.toy_layout import ABOUT, EPOCH, MIRROR, TREE

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason=FUSE_SKIP_REASON)

SCRIPT = Path(__file__).with_name("toy_layout.py")


@pytest.fixture
def toy(tmp_path):
    mnt, cache, log = tmp_path / "mnt", tmp_path / "cache", tmp_path / "toy.log"
    mnt.mkdir()
    cache.mkdir(mode=0o700)
    env = dict(os.environ)
    # the script imports xnatfs (installed, or the checkout first on PYTHONPATH) and nothing
    # from tests/
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(mnt), str(cache)],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or (_mounted(mnt) and os.listdir(mnt)),
            timeout=30,
            what="the toy mount",
        )
        assert proc.poll() is None, log.read_text(errors="replace")
        yield mnt
    finally:
        if _mounted(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=20)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(timeout=5)
        assert rc == 0, log.read_text(errors="replace")


def test_a_dict_of_dicts_mounts_through_the_same_engine_and_adapter(toy):
    # listing: the dict's keys, plus the mounted second layout's name at the root
    assert sorted(os.listdir(toy)) == sorted(list(TREE) + [".mirror"])
    assert sorted(os.listdir(toy / "docs")) == sorted(TREE["docs"])
    assert os.listdir(toy / "data" / "deep") == ["numbers.bin"]
    # attributes: sizes, modes, the layout's mtime, an xattr
    st = os.stat(toy / "docs" / "readme.txt")
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o777 == 0o644
    assert st.st_size == len(TREE["docs"]["readme.txt"])
    assert st.st_mtime == EPOCH + st.st_size
    assert stat.S_ISDIR(os.stat(toy / "data").st_mode)
    assert os.stat(toy / "docs" / "empty.txt").st_size == 0
    assert os.getxattr(toy / "docs" / "readme.txt", "user.xnat.toy_path") == b"docs/readme.txt"
    assert os.getxattr(toy / "top.txt", "user.xnat.layout") == b"toy"
    # reads: small, empty, and 1 MiB (many FUSE reads, served from the content cache)
    assert (toy / "docs" / "readme.txt").read_bytes() == TREE["docs"]["readme.txt"]
    assert (toy / "docs" / "empty.txt").read_bytes() == b""
    big = TREE["data"]["deep"]["numbers.bin"]
    assert (toy / "data" / "deep" / "numbers.bin").read_bytes() == big
    # kept in the content cache once the download is adopted (just after the last byte)
    wait_for(
        lambda: (
            os.getxattr(toy / "data" / "deep" / "numbers.bin", "user.xnat.cache_state") == b"cached"
        ),
        timeout=20,
        what="the toy file in the content cache",
    )
    # an unlisted generated name: stat gives the size read gives
    about = toy / "docs" / ABOUT
    assert ABOUT not in os.listdir(toy / "docs")
    data = about.read_bytes()
    assert about.stat().st_size == len(data)
    assert json.loads(data) == {"folder": "docs", "entries": sorted(TREE["docs"])}
    # ENOENT, ENOTDIR
    for missing in (toy / "nope", toy / "docs" / "nope.txt", toy / "data" / "deep" / "x" / "y"):
        with pytest.raises(FileNotFoundError):
            os.stat(missing)
    with pytest.raises(NotADirectoryError):
        os.listdir(toy / "top.txt")


def test_a_second_layout_under_a_hidden_name_is_read_only(toy):
    mirror = toy / ".mirror"
    assert stat.S_ISDIR(mirror.stat().st_mode)
    assert os.listdir(mirror) == list(MIRROR)
    assert (mirror / "only-here.txt").read_bytes() == MIRROR["only-here.txt"]
    assert (mirror / ABOUT).read_bytes()  # the mounted layout answers its unlisted names
    with pytest.raises(FileNotFoundError):
        os.stat(mirror / "top.txt")  # the main layout's names are not there
    with pytest.raises(OSError) as info:
        (mirror / "new.txt").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
