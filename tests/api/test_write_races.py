"""Races of the write path found by review6, through the runtime API (no mount) against the
emulator, like ``test_tree.py``: each test says what it showed failing before its fix."""

from __future__ import annotations

import errno

import pytest
import requests

from tests.conftest import ADMIN
from xnatfs.options import Options
from xnatfs.runtime import Runtime
from xnatfs.xnat.auth import Credentials

PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"


@pytest.fixture
def runtime(make_emulator, tmp_path):
    emu = make_emulator()
    rt = Runtime(
        Options(url=emu.url, cache_dir=tmp_path / "cache", prefetch=0), Credentials(*ADMIN)
    )
    rt.start()
    rt.emu = emu  # type: ignore[attr-defined]
    yield rt
    rt.close()


def server_status(runtime, name):
    r = requests.get(f"{runtime.emu.url}{PROTOCOLS_URI}/{name}", auth=ADMIN, timeout=30)
    return r.status_code, r.content


def listed(runtime):
    runtime.tree.invalidate(PROTOCOLS)
    return {n.name for n in runtime.tree.listdir(PROTOCOLS)}


def test_rename_of_an_open_file_already_uploaded_by_fsync_does_not_lie(runtime):
    """write, fsync (the bytes go to XNAT at once), rename while still open, close: the
    save pattern of many programs.  The rename answered 0 and the file showed under the new
    name until the close, then vanished from it: XNAT had it under the old name only.  A
    rename must say what happened: it is XNAT's file now, and XNAT has no move."""
    writer = runtime.writer
    old, new = f"{PROTOCOLS}/draft.txt", f"{PROTOCOLS}/final.txt"
    handle = writer.create(old)
    handle.write(0, b"saved\n")
    handle.flush()  # fsync: uploaded and confirmed, the handle still open
    assert server_status(runtime, "draft.txt") == (200, b"saved\n")
    try:
        writer.rename(old, new)
        renamed = True
    except OSError as exc:
        assert exc.errno in (errno.EACCES, errno.EXDEV)
        renamed = False
    handle.close()
    names = listed(runtime)
    if renamed:  # then the new name must hold the bytes, on XNAT and in the listing
        assert "final.txt" in names, names
        assert server_status(runtime, "final.txt") == (200, b"saved\n")
    else:  # the old name is still the file's, as XNAT has it
        assert "draft.txt" in names and "final.txt" not in names
