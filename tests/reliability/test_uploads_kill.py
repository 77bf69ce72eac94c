"""``kill -9`` of the daemon in the middle of a big upload, then a remount on the same cache
directory (issue 18): the upload resumes from the journal and the file ends on XNAT whole, with
the right MD5, exactly once.

Size: ``XNATFS_RELIABILITY_BIG_MIB`` (default 64 for CI; the issue's figure is 200).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import requests

from tests.conftest import ADMIN, Mount, needs_fuse
from tests.mount.helpers import dicom_zip
from tests.reliability.conftest import (
    FILES,
    env_float,
    mount_stats,
    server_listing,
    successful_puts,
    wait_for,
)

pytestmark = [needs_fuse]


def _uploading(journal, emu) -> bool:
    """The close() took the bytes into the journal and a request is being answered (the PUT:
    the folder's listing was read before).  The sidecar no longer says ``uploading`` on disk
    (uploader.py, "Durability"): the attempt's start is not written down."""
    return any(journal.glob("*.data")) and emu.emu.peak_active >= 1


def _import_sent(journal) -> bool:
    """An import's POST is recorded as going out (``sent_at``, written before its first byte)."""
    for sidecar in journal.glob("*.json"):
        try:
            if json.loads(sidecar.read_text()).get("sent_at"):
                return True
        except (OSError, ValueError):
            continue
    return False


def test_kill_9_during_a_big_upload_resumes_after_remount(make_emulator, tmp_path, record):
    mib = int(env_float("XNATFS_RELIABILITY_BIG_MIB", 64))
    emu = make_emulator()
    src = tmp_path / "big.bin"
    h = hashlib.md5()
    with open(src, "wb") as fh:
        for _ in range(mib):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            fh.write(chunk)
    want = (mib << 20, h.hexdigest())
    cache = tmp_path / "cache"
    journal = cache / "uploads" / "journal"
    m = Mount(emu.url, tmp_path / "mnt", cache, tmp_path / "m1.log", []).start()
    m2 = None
    try:
        os.listdir(m.path / FILES)
        mark = emu.mark()
        # the server holds each request a moment, so the PUT is surely under way at the kill
        emu.faults.latency_ms = 1000
        emu.emu.reset_peak()
        cp = subprocess.Popen(
            ["cp", str(src), str(m.path / FILES / "big.bin")], stderr=subprocess.DEVNULL
        )
        wait_for(lambda: _uploading(journal, emu), 120, "the upload to start", interval=0.01)
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        cp.wait(timeout=60)
        emu.faults.latency_ms = 0
        killed_at = time.monotonic()
        before = (server_listing(emu.url) or {}).get("big.bin")
        assert before is None, "the upload finished before the kill: nothing was tested"
        m.cleanup()

        m2 = Mount(emu.url, tmp_path / "mnt", cache, tmp_path / "m2.log", []).start()
        wait_for(
            lambda: (
                (server_listing(emu.url) or {}).get("big.bin") == want
                and not (mount_stats(m2.path) or {}).get("uploads", True)
            ),
            180,
            "the resumed upload",
        )
        resume_s = time.monotonic() - killed_at
        accepted = successful_puts(emu.since(mark)).get("big.bin", 0)
        with open(m2.path / FILES / "big.bin", "rb") as fh:
            got = hashlib.md5()
            while chunk := fh.read(1 << 20):
                got.update(chunk)
        left = sorted(os.listdir(journal))
        record(
            mib=mib,
            kills=1,
            accepted_puts=accepted,
            resume_s=round(resume_s, 1),
            lost=0 if accepted else 1,
            journal_left=len(left),
            read_back_ok=got.hexdigest() == want[1],
        )
        assert accepted == 1  # sent whole once after the restart, never twice
        assert got.hexdigest() == want[1]
        assert left == []
        m2.umount()
        m2 = None
    finally:
        emu.faults.latency_ms = 0
        if m2 is not None:
            m2.cleanup()
        m.cleanup()


def _settled(mnt):
    """(True, uploads) once every upload the mount lists is failed (none: all on XNAT)."""
    uploads = (mount_stats(mnt) or {}).get("uploads")
    if uploads is None or any(u["state"] != "failed" for u in uploads):
        return None
    return True, uploads


def _prearchive(url: str) -> list:
    r = requests.get(
        f"{url}/data/prearchive/projects/DEMO1", params={"format": "json"}, auth=ADMIN, timeout=30
    )
    r.raise_for_status()
    return sorted(row["url"] for row in r.json()["ResultSet"]["Result"])


def test_kill_9_during_an_import_does_not_import_it_twice(make_emulator, tmp_path, record):
    """``cp study.zip MNT/.prearchive/DEMO1/`` and the daemon killed while XNAT imports it
    (review8i).  The next mount sent the archive again (the journal's entry was simply
    pending), and XNAT made a second session of it.  Now the journal records the POST before
    it goes; the next mount does not send it again: the file shows failed, and its error
    names the session XNAT made meanwhile."""
    emu = make_emulator()
    zpath = tmp_path / "study.zip"
    dicom_zip(zpath, "KILLEDIMPORT")
    before = _prearchive(emu.url)
    cache = tmp_path / "cache"
    journal = cache / "uploads" / "journal"
    m = Mount(emu.url, tmp_path / "mnt", cache, tmp_path / "m1.log", []).start()
    m2 = None
    try:
        dest = m.path / ".prearchive" / "DEMO1"
        os.listdir(dest)
        mark = emu.mark()
        emu.faults.latency_ms = 3000  # XNAT still busy with it at the kill
        cp = subprocess.Popen(["cp", str(zpath), str(dest)], stderr=subprocess.DEVNULL)
        # the POST on the wire: the journal says it went and XNAT holds a request
        wait_for(
            lambda: _import_sent(journal) and not emu.emu.wait_idle(timeout=0.05),
            60,
            "the import to be sent",
            interval=0.01,
        )
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        cp.wait(timeout=60)
        m.cleanup()
        wait_for(lambda: len(_prearchive(emu.url)) > len(before), 30, "XNAT's import")
        emu.faults.latency_ms = 0

        m2 = Mount(emu.url, tmp_path / "mnt", cache, tmp_path / "m2.log", []).start()
        uploads = wait_for(lambda: _settled(m2.path), 60, "the import to settle")[1]
        made = sorted(set(_prearchive(emu.url)) - set(before))
        posts = [p for mm, p, *_ in emu.since(mark) if mm == "POST" and "/services/import" in p]
        record(kills=1, import_posts=len(posts), sessions_made=len(made))
        assert len(made) == 1, made  # before: 2, the second from the next mount
        assert len(posts) == 1
        (failed,) = uploads  # before: none, sent again and "done"
        assert "not sent again" in failed["last_error"]
        assert made[0].rsplit("/", 2)[-2] in failed["last_error"]  # the session it made
        state = os.getxattr(
            m2.path / ".prearchive" / "DEMO1" / "study.zip", "user.xnat.cache_state"
        )
        assert state == b"failed"
        m2.umount()
        m2 = None
    finally:
        emu.faults.latency_ms = 0
        if m2 is not None:
            m2.cleanup()
        m.cleanup()
