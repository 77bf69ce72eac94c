"""Polite clients (issue 13 §2), through real mounts: one cap on requests in flight, and no
retry storm when XNAT goes away and comes back.

Concurrency is measured at the emulator (``Emulator.peak_active``: requests between their
arrival and their last chunk, so never more than a client had in flight).

The storm test's size is set by the environment (defaults keep it near 30 s on 2 cores):
``XNATFS_STORM_MOUNTS`` (default 6; the issue's figure is 16) and ``XNATFS_STORM_DOWN_S``
(seconds the server answers 503 to everything; default 6, the issue's is 10).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_fuse

pytestmark = [needs_fuse]

SUBJECTS = "DEMO1/subjects"

#: a child that keeps a mount busy: N threads list and stat folders (listing TTL 0: every
#: call reaches the server) until the stop file appears
_BUSY = r"""
import os, sys, threading, random
mnt, stop, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
dirs = [mnt + "/DEMO1/subjects/" + s + "/experiments/" + s + "_MR1/scans"
        for s in ("SUBJ01", "SUBJ02", "SUBJ03")] + [mnt + "/DEMO1/subjects", mnt + "/DEMO1"]
def loop(seed):
    rnd = random.Random(seed)
    while not os.path.exists(stop):
        d = rnd.choice(dirs)
        try:
            for name in os.listdir(d)[:3]:
                os.stat(os.path.join(d, name))
        except OSError:
            pass
ts = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
"""


def _stats(mnt: Path) -> dict:
    return json.loads((mnt / ".xnatfs" / "stats").read_text())


def test_max_requests_caps_what_the_server_sees(make_emulator, make_mount, tmp_path):
    """find, du, two cp -r and parallel readers at once: never more than 4 requests at the
    server, and every copied byte right."""
    emu = make_emulator(latency_ms=30)  # requests overlap: a greedy mount would exceed 4
    m = make_mount(emu.url, "--max-requests", "4", "--walk-ahead", "8", "--prefetch", "16")
    emu.emu.reset_peak()
    out = tmp_path / "copy"
    out.mkdir()
    cmds = [
        ["find", str(m.path / "DEMO1"), "-type", "f"],
        ["du", "-s", str(m.path / "DEMO1")],
        ["cp", "-r", str(m.path / SUBJECTS / "SUBJ01"), str(out / "a")],
        ["cp", "-r", str(m.path / SUBJECTS / "SUBJ02"), str(out / "b")],
        [
            sys.executable,
            "-c",
            "import os,sys\n"
            "for d,_,fs in os.walk(sys.argv[1]):\n"
            "  [open(os.path.join(d,f),'rb').read() for f in fs]",
            str(m.path / SUBJECTS),
        ],
    ]
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for c in cmds
    ]
    for c, p in zip(cmds, procs):
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, (c, err)
    peak = emu.emu.reset_peak()
    assert 2 <= peak <= 4, peak  # >= 2: the workload did press on the cap
    client_side = _stats(m.path)["limiter"]
    assert client_side["max_requests"] == 4 and client_side["peak_in_flight"] <= 4
    metrics = (m.path / ".xnatfs" / "metrics").read_text()
    assert "\nxnatfs_request_limit " in metrics and "\nxnatfs_requests_in_flight " in metrics
    # the copies are the server's bytes (a cap must not cost correctness)
    for rel in ("a", "b"):
        src = m.path / SUBJECTS / ("SUBJ01" if rel == "a" else "SUBJ02")
        for dirpath, _dirs, files in os.walk(out / rel):
            for f in files:
                copy = Path(dirpath) / f
                orig = src / copy.relative_to(out / rel)
                assert copy.read_bytes() == orig.read_bytes(), orig


def _count(emu) -> int:
    return len(emu.records())


def _attempts(mounts) -> int:
    """Requests the mounts sent (answered or not), from their own stats: a stopped server
    cannot count the connections it refused."""
    return sum(sum(_stats(m.path)["requests"]["requests"].values()) for m in mounts)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["503", "stopped"])
def test_no_retry_storm_when_xnat_restarts(make_emulator, make_mount, tmp_path, outage):
    """N busy mounts; the server answers 503 to everything for a while (``503``; counted at
    the server), or is stopped and started again on the same port (``stopped``: connections
    refused; counted by the mounts), then recovers.

    Bounds (per mount, ``--max-requests 8``, 8 busy threads):
    * during the outage, each overload round halves the window (8, 4, 2, 1) and from the
      second round on the whole mount pauses for a jittered, doubling delay (0.25-0.5 s,
      0.5-1 s, ...): at most 8+4+2+1 requests, then one per pause, i.e. about
      log2(down/0.25)+1 more; we allow 2x8 + 2*log2(down/0.25) + 6;
    * at the restart, every mount is in a pause of up to several seconds, so the first
      requests trickle in one per mount: at most N at once during the first 0.2 s (one probe
      each, while the server takes 250 ms per answer), not N x 8.
    """
    n = int(os.environ.get("XNATFS_STORM_MOUNTS", "6"))
    down = float(os.environ.get("XNATFS_STORM_DOWN_S", "6"))
    emu = make_emulator(latency_ms=20)
    mounts = [
        make_mount(
            emu.url,
            "--max-requests",
            "8",
            "--listing-ttl",
            "0",
            "--walk-ahead",
            "0",
            "--prefetch",
            "0",
            "--timeout",
            "30",
        )
        for _ in range(n)
    ]
    stop = tmp_path / "stop"
    busy = [
        subprocess.Popen([sys.executable, "-c", _BUSY, str(m.path), str(stop), "8"]) for m in mounts
    ]
    try:
        # steady state first: the mounts are busy and answered
        t0 = time.monotonic()
        before = _count(emu)
        deadline = time.monotonic() + 30
        while _count(emu) < before + 20 * n and time.monotonic() < deadline:
            time.sleep(0.05)
        steady_rate = (_count(emu) - before) / (time.monotonic() - t0)
        assert steady_rate > 0

        # the restarted server answers slowly (250 ms) at first: a mount whose pause ends at
        # once may rightly double its window after each answered request, and at 20 ms that
        # ramp alone reached 13 in flight within the 0.3 s once (CI); no request is answered
        # within the measured 0.2 s now, so what is in flight then is first probes only
        if outage == "503":
            emu.faults.update({"error_rate": 1.0, "error_status": 503})
            start_down = _count(emu)
            time.sleep(down)  # the outage itself: a measured window, not a wait for a condition
            during = _count(emu) - start_down
            emu.faults.update({"error_rate": 0.0, "latency_ms": 250})
        else:
            emu.stop()
            start_down = _attempts(mounts)
            time.sleep(down)  # the outage itself: a measured window
            during = _attempts(mounts) - start_down
            emu.restart(latency_ms=250)
        emu.emu.reset_peak()
        time.sleep(0.2)  # a measured window, shorter than one answer
        first_peak = emu.emu.reset_peak()
        emu.faults.update({"latency_ms": 20})

        per_mount_bound = 2 * 8 + 2 * math.log2(down / 0.25) + 6
        print(
            f"storm: {n} mounts, steady {steady_rate:.0f} req/s; {down:g}s {outage}: "
            f"{during} requests ({during / n:.1f}/mount, bound {per_mount_bound:.1f}); "
            f"restart: peak {first_peak} in flight in 0.2 s"
        )
        assert during <= n * per_mount_bound, (during, n * per_mount_bound)
        # a restarted XNAT forgot every session: a mount's first probe may be joined by its
        # re-login, so up to two requests per mount (without the limiter: its threads)
        assert first_peak <= 2 * n, first_peak
        # and the mounts did come back: requests succeed again after the outage
        deadline = time.monotonic() + 30
        mark = _count(emu)
        while time.monotonic() < deadline:
            if any(r[2] == 200 for r in emu.records()[mark:]):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no successful request within 30 s after the restart")
    finally:
        stop.touch()
        for p in busy:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
