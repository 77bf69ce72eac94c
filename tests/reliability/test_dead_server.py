"""A dead server (every connection refused) fails calls at once, not one ``--timeout`` each.

The emulator is stopped (its port closed) under a live mount and started again on the same
port.  Before the breaker (``xnatfs/xnat/breaker.py``) each call on an uncached path waited
for its retries and the limiter's pauses: 2-12 s per call with ``--timeout 10``, and listings
seen before failed with ``EIO`` once the limiter paused (the pause's error was taken for a
permanent one and the stale listing forgotten).  Now, once the breaker is open, such calls are
``EHOSTDOWN`` at once, cached paths answer, a write stays in the journal and reaches XNAT when
it is back, and the log has one line for the outage and one for the recovery.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import requests

from tests.conftest import ADMIN, needs_fuse
from tests.helpers.fsop import fs_op
from tests.helpers.waiting import wait_for
from tests.reliability.conftest import mount_stats, umount_timed

T = 10.0  # the mount's --timeout
AT_ONCE = 0.5  # "failed at once" (process start of the probe child is not in it)
SCAN = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1"
FILES = SCAN + "/resources/DICOM/files"
PROTOCOLS = "DEMO1/resources/protocols/files"


def _stats(m) -> dict:
    """The mount's ``.xnatfs/stats`` (never needs XNAT)."""
    stats = mount_stats(m.path)
    assert stats is not None
    return stats


def _server(m) -> dict:
    """The mount's "server" stats."""
    return _stats(m)["server"]


def _status(m) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "status", str(m.path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _write(path, data: bytes) -> dict:
    """Write and close ``path`` in a child process (bounded): {"errno", "seconds"}."""
    code = (
        "import json, os, sys, time\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    with open(sys.argv[1], 'wb') as f:\n"
        "        f.write(bytes.fromhex(sys.argv[2]))\n"
        "    e = 0\n"
        "except OSError as exc:\n"
        "    e = exc.errno\n"
        "print(json.dumps({'errno': e, 'seconds': time.monotonic() - t}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(path), data.hex()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@needs_fuse
def test_a_dead_server_fails_calls_at_once_and_the_mount_recovers(make_emulator, make_mount):
    emu = make_emulator()
    # nothing fetched ahead: which paths are uncached is the test's choice
    m = make_mount(
        emu.url,
        *("--timeout", str(T), "--listing-ttl", "1"),
        *("--walk-ahead", "0", "--prefetch", "0", "--bulk-zip", "0"),
    )
    names = fs_op("listdir", m.path / FILES)["names"]
    assert len(names) >= 3, names
    assert fs_op("read", m.path / FILES / names[0])["errno"] == 0  # cached content
    assert fs_op("listdir", m.path / PROTOCOLS)["errno"] == 0
    fs_op("listdir", m.path / "DEMO1" / "subjects")
    assert _server(m)["state"] == "up"
    cold = [m.path / FILES / n for n in names[1:3]]
    assert all(os.getxattr(p, "user.xnat.cache_state") != b"cached" for p in cold)

    emu.stop()
    # the first call meets the refused connections itself: within its deadline
    first = fs_op("listdir", m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments")
    assert first["errno"] in (errno.EIO, errno.EHOSTDOWN), first
    assert first["seconds"] < T, first
    wait_for(lambda: _server(m)["state"] != "up", 30, what="the breaker to open")

    timed = []
    for kind, path, want in (
        ("listdir", m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments", errno.EHOSTDOWN),
        ("stat", m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments" / "x", errno.EHOSTDOWN),
        ("read", cold[0], errno.EHOSTDOWN),
        ("read", cold[1], errno.EHOSTDOWN),
        ("listdir", m.path / FILES, 0),  # seen before: shown
        ("read", m.path / FILES / names[0], 0),  # cached
        ("stat", m.path / "DEMO1", 0),
    ):
        res = fs_op(kind, path, timeout=120)
        timed.append((kind, path.name, res["errno"], round(res["seconds"], 3)))
        assert res["errno"] == want, (kind, path, res, m.log_tail())
    print(f"dead server, breaker open: {timed}")
    assert max(t[3] for t in timed) < AT_ONCE, timed

    data = b"written while XNAT was down\n" * 100
    wrote = _write(m.path / PROTOCOLS / "down.txt", data)
    print(f"write + close while down: {wrote}")
    assert wrote["errno"] in (errno.EHOSTDOWN, errno.EIO), wrote
    assert wrote["seconds"] < T, wrote
    status = _status(m)
    assert "server: DOWN" in status and "down.txt" in status, status
    assert "xnatfs_server_up 0" in (m.path / ".xnatfs" / "metrics").read_text()

    emu.restart()
    back = time.monotonic()
    # the next call after the probe's wait goes as the probe and closes the breaker
    wait_for(
        lambda: (
            fs_op("listdir", m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments")["errno"] == 0
        ),
        60,
        what="a listing after the server came back",
    )
    wait_for(lambda: _server(m)["state"] == "up", 30, what="the breaker to close")
    wait_for(
        lambda: any(r[0] == "PUT" and "down.txt" in r[1] and r[2] < 300 for r in emu.records()),
        60,
        what="the journalled write to reach XNAT",
    )
    print(f"recovered in {time.monotonic() - back:.1f}s, upload included")
    assert fs_op("read", m.path / PROTOCOLS / "down.txt")["size"] == len(data)
    log = m.log_text()
    assert log.count(" is down (") == 1, log[-4000:]
    assert log.count(" answers again after ") == 1, log[-4000:]
    assert "server: up" in _status(m)
    metrics = (m.path / ".xnatfs" / "metrics").read_text()
    assert "xnatfs_server_up 1" in metrics and "xnatfs_server_down_total 1" in metrics


@needs_fuse
def test_unmount_while_the_server_is_dead_is_quick_and_keeps_the_write(make_emulator, make_mount):
    emu = make_emulator()
    m = make_mount(emu.url, "--timeout", "60")  # the default deadline
    assert fs_op("listdir", m.path / PROTOCOLS)["errno"] == 0
    emu.stop()
    wrote = _write(m.path / PROTOCOLS / "kept.txt", b"kept in the journal\n")
    assert wrote["errno"] in (errno.EHOSTDOWN, errno.EIO), wrote
    res, took = umount_timed(m.path)
    print(f"write+close while down: {wrote['seconds']:.2f}s; umount while down: {took:.2f}s")
    assert res.returncode == 0, res.stderr
    assert m.proc.wait(timeout=30) == 0, m.log_tail()
    assert "kept.txt" in res.stderr and "not on XNAT" in res.stderr, res.stderr
    assert took < 10, took


@needs_fuse
def test_a_server_answering_500_to_everything_then_recovering(make_emulator, make_mount):
    """A Tomcat whose database is gone answers 500 to every request for a while: folders seen
    before still list, the rest fails at once (EIO, as each 500 was), and the mount recovers
    by itself when the 500s stop."""
    emu = make_emulator()
    m = make_mount(
        emu.url,
        *("--timeout", str(T), "--listing-ttl", "1"),
        *("--walk-ahead", "0", "--prefetch", "0", "--bulk-zip", "0"),
    )
    # what reading the stats itself keeps (the control folder's node)
    floor = _stats(m)["listing_cache"]["entries"]
    names = fs_op("listdir", m.path / FILES)["names"]
    fs_op("listdir", m.path / "DEMO1" / "subjects")
    # every listing on the way expires (--listing-ttl 1): the mount then holds none fresh
    wait_for(
        lambda: _stats(m)["listing_cache"]["entries"] <= floor,
        10,
        what="the mount's listings to expire",
    )
    emu.faults.error_status = 500
    emu.faults.error_rate = 1.0
    timed = []
    for kind, path in (
        ("listdir", m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments"),
        ("listdir", m.path / "DEMO1" / "subjects" / "SUBJ03" / "experiments"),
        ("listdir", m.path / FILES),
        ("read", m.path / FILES / names[1]),
        ("stat", m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments" / "x"),
        ("listdir", m.path / FILES),
        ("listdir", m.path / "DEMO1" / "subjects"),
    ):
        res = fs_op(kind, path, timeout=120)
        timed.append((kind, path.name, res["errno"], round(res["seconds"], 3)))
    print(f"500 to everything: {timed}")
    for _kind, name, code, seconds in timed:
        assert code == (0 if name in ("files", "subjects") else errno.EIO), timed
        assert seconds < T, timed
    # once the breaker is open, the calls after it fail at once
    wait_for(lambda: _server(m)["state"] != "up", 30, what="the breaker to open")
    assert max(t[3] for t in timed[3:]) < AT_ONCE, timed
    emu.faults.error_rate = 0.0
    wait_for(
        lambda: (
            fs_op("listdir", m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments")["errno"] == 0
        ),
        60,
        what="a listing after the 500s stopped",
    )
    wait_for(lambda: _server(m)["state"] == "up", 30, what="the breaker to close")
    assert fs_op("read", m.path / FILES / names[1])["errno"] == 0
    assert m.log_text().count(" is down (") == 1


@needs_fuse
def test_each_change_failed_while_down_has_its_own_error_line(make_emulator, make_mount):
    """mkdir, rmdir, rm and mv while the breaker holds requests back: each answers EHOSTDOWN
    at once, leaves nothing half-done, and has ONE ERROR line in the daemon's log naming the
    path, the URL and "XNAT down"; the reads failed meanwhile add none (the outage's line
    told).  Before, those changes were logged at DEBUG only (the breaker's error is
    ``reported``): a user's failed mkdir or rm had no line at all."""
    emu = make_emulator()
    put = requests.put(f"{emu.url}/data/projects/DEMO1/subjects/EMPTY", auth=ADMIN, timeout=30)
    assert put.status_code in (200, 201), put.text
    m = make_mount(
        emu.url,
        *("--timeout", str(T), "--allow-delete"),
        *("--walk-ahead", "0", "--prefetch", "0", "--bulk-zip", "0"),
    )
    subjects, readme = m.path / "DEMO1" / "subjects", m.path / PROTOCOLS / "README.txt"
    assert "EMPTY" in fs_op("listdir", subjects)["names"]
    assert fs_op("listdir", subjects / "EMPTY")["errno"] == 0
    assert fs_op("read", readme)["errno"] == 0
    emu.stop()
    fs_op("listdir", subjects / "SUBJ02" / "experiments")
    wait_for(lambda: _server(m)["state"] != "up", 30, what="the breaker to open")
    for _ in range(3):  # reads: no line of their own
        assert fs_op("stat", subjects / "SUBJ03" / "experiments" / "x")["errno"] == errno.EHOSTDOWN
    changes = [
        ("mkdir", subjects / "NEWSUBJ", None),
        ("rmdir", subjects / "EMPTY", None),
        ("unlink", readme, None),
        ("rename", readme, m.path / PROTOCOLS / "README2.txt"),
    ]
    for kind, path, to in changes:
        res = fs_op(kind, path, to=to)
        assert res["errno"] == errno.EHOSTDOWN and res["seconds"] < AT_ONCE, (kind, res)
    errors = [ln for ln in m.log_text().splitlines() if " ERROR " in ln]
    for kind, path, _to in changes:
        op = {"mkdir": "mkdir", "rmdir": "rmdir", "unlink": "unlink", "rename": "rename"}[kind]
        mine = [ln for ln in errors if f"{op} /{path.relative_to(m.path)}: " in ln]
        assert len(mine) == 1, (kind, errors)  # before: none
        assert "http://" in mine[0] and "XNAT down" in mine[0], mine[0]
    assert len(errors) == len(changes), errors  # the reads: none
    # nothing half-done: no phantom folder, nothing gone, no second name
    names = fs_op("listdir", subjects)["names"]
    assert "NEWSUBJ" not in names and "EMPTY" in names, names
    files = fs_op("listdir", m.path / PROTOCOLS)["names"]
    assert "README.txt" in files and "README2.txt" not in files, files
