"""Integrity of the journal across restarts (review8i), through the runtime API (no mount)
against the emulator, like ``test_tree.py``: each test says what it showed failing before its
fix.  A "crash" here is a runtime closed without its uploads done, or the journal's state on
disk as a kill -9 at a given step leaves it; the next ``Runtime`` on the same cache resumes."""

from __future__ import annotations

import contextlib

import pytest
import requests

from tests.conftest import ADMIN
from tests.mount.helpers import wait_for
from xnatfs.options import Options
from xnatfs.runtime import Runtime
from xnatfs.xnat.auth import Credentials

PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"
#: a time in the past, to the nanosecond (rsync and make compare nanoseconds)
SET_NS = 1_500_000_000_123_456_789


def server_status(emu, name):
    r = requests.get(f"{emu.url}{PROTOCOLS_URI}/{name}", auth=ADMIN, timeout=30)
    return r.status_code, r.content


@contextlib.contextmanager
def xnat_refusing(rt):
    """XNAT answers 503 to everything while the block runs (the folder's listing is loaded
    first); it answers again when the block ends."""
    rt.tree.listdir(PROTOCOLS)
    rt.emu.faults.error_rate = 1.0
    rt.emu.faults.error_status = 503
    try:
        yield
    finally:
        rt.emu.faults.error_rate = 0.0


def write_pending(writer, path, data):
    """``path`` written and closed while XNAT refuses it: a version pending in the journal."""
    handle = writer.create(path)
    handle.write(0, data)
    with pytest.raises(Exception):  # noqa: B017 - the 503's error; kept pending
        handle.flush()
    handle.close()


def restarted(rt, options):
    """The runtime stopped (its uploads left pending) and a new one on the same cache."""
    rt.close()
    again = Runtime(options, Credentials(*ADMIN))
    again.start()
    again.emu = rt.emu
    return again


@pytest.fixture
def runtimes(make_emulator, tmp_path):
    """Factory of runtimes on one emulator and one cache directory, closed after the test."""
    emu = make_emulator()
    options = Options(url=emu.url, cache_dir=tmp_path / "cache", prefetch=0)
    made = []

    def make():
        rt = Runtime(options, Credentials(*ADMIN))
        rt.start()
        rt.emu = emu
        made.append(rt)
        return rt

    yield make, options
    for rt in made:
        with contextlib.suppress(Exception):
            rt.close()


def test_a_time_set_on_a_pending_file_survives_a_restart_and_its_upload(runtimes):
    """``cp -p`` (or ``touch -d``, ``rsync -a``) of a file while XNAT is down: the time was
    kept in memory only (``LocalFile.mtime_ns``); after a restart the file showed the time it
    was journalled, and kept that one once uploaded (rsync and make saw it changed)."""
    make, options = runtimes
    rt = make()
    path = f"{PROTOCOLS}/dated.txt"
    with xnat_refusing(rt):
        write_pending(rt.writer, path, b"dated\n")
        rt.writer.set_mtime(path, SET_NS)  # utimens of the pending file
        assert rt.tree.mtime_ns(rt.tree.lookup(path)) == SET_NS
    rt = restarted(rt, options)  # XNAT answers again: the upload resumes
    wait_for(lambda: not rt.writer.status(), 30, what="the resumed upload")
    assert server_status(rt.emu, "dated.txt") == (200, b"dated\n")
    rt.tree.invalidate(PROTOCOLS)
    assert rt.tree.mtime_ns(rt.tree.lookup(path)) == SET_NS


def test_a_time_set_while_the_uploader_holds_the_entry_is_not_reverted(runtimes):
    """The uploader writes its own copy of an entry (state, tries) after each attempt; a
    time set on the file meanwhile must not be overwritten on disk by that older copy."""
    make, options = runtimes
    rt = make()
    path = f"{PROTOCOLS}/dated2.txt"
    with xnat_refusing(rt):
        write_pending(rt.writer, path, b"dated too\n")
        entry = rt.writer.journal.pending_for(path)
        rt.writer.set_mtime(path, SET_NS)
        rt.writer.journal.update(entry)  # the uploader's copy, taken before the utimens
    rt = restarted(rt, options)
    wait_for(lambda: not rt.writer.status(), 30, what="the resumed upload")
    rt.tree.invalidate(PROTOCOLS)
    assert rt.tree.mtime_ns(rt.tree.lookup(path)) == SET_NS
