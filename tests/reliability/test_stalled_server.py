"""A hung server (SIGSTOP, not dead) must not make cached paths slow (issue 18 §0.3).

Before: every expired listing on a path cost a full read timeout and each system call walked the
path again: ``ls`` of a cached directory took 330 s and ``md5sum`` of a cached file 90 s with
``--timeout 60``.  Now an expired listing is shown at once while it is refreshed in the
background (stale-while-slow), so every call on cached paths ends within ``--timeout`` and most
return at once; after SIGCONT the mount answers with fresh listings again.

The emulator runs in its own process so that it can be stopped; ``T`` is short to keep CI fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import needs_fuse
from tests.helpers.fsop import fs_op

T = 3.0  # the mount's --timeout
TTL = 1.0  # --listing-ttl: listings (and the kernel's attributes) expire quickly
SLACK = 2.0  # generous: process start and scheduling on a loaded 2-core machine
AT_ONCE = 0.5  # "returned at once"
SCAN = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1"
FILES = SCAN + "/resources/DICOM/files"


@pytest.fixture
def emulator_process(tmp_path, demo_template):
    """``python -m xnatfs.emulator`` in a child process; yields (url, pid)."""
    data = tmp_path / "emu"
    shutil.copytree(demo_template, data)
    out = tmp_path / "emulator.out"
    with open(out, "wb") as sink:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xnatfs.emulator",
                "--data",
                str(data),
                "--port",
                "0",
                "--seed",
                "empty",
                "--user",
                "admin",
                "--password",
                "admin-pw",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        for line in out.read_text(errors="replace").splitlines():
            if "listening on" in line:
                url = line.strip().rsplit(" ", 1)[-1]
        time.sleep(0.05)
    if url is None:
        proc.kill()
        pytest.fail(f"the emulator did not start: {out.read_text(errors='replace')[-2000:]}")
    yield url, proc.pid
    try:
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@needs_fuse
def test_cached_paths_answer_within_the_timeout_while_the_server_is_stopped(
    emulator_process, make_mount
):
    url, pid = emulator_process
    m = make_mount(url, "--timeout", str(T), "--listing-ttl", str(TTL), "--read-only")
    files = m.path / FILES
    # warm: every listing on the way, and the content of two files
    names = fs_op("listdir", files)["names"]
    assert len(names) >= 2, names
    wanted = {}
    for name in names[:2]:
        with open(files / name, "rb") as f:
            wanted[name] = hashlib.md5(f.read()).hexdigest()
    fs_op("listdir", m.path / SCAN)
    # let every listing and the kernel's attributes expire (the condition *is* elapsed time)
    time.sleep(TTL + 0.5)

    os.kill(pid, signal.SIGSTOP)
    try:
        timings = []
        for _ in range(2):
            for kind, path in (
                ("listdir", files),
                ("stat", files / names[0]),
                ("read", files / names[0]),
                ("read", files / names[1]),
                ("listdir", m.path / SCAN),
                ("stat", m.path / "DEMO1"),
                ("listdir", m.path / "DEMO1" / "subjects"),
                ("stat", m.path / ".xnatfs" / "stats"),
            ):
                res = fs_op(kind, path, timeout=120)
                timings.append((kind, str(path), res["seconds"]))
                assert res["errno"] == 0, (kind, path, res, m.log_tail())
                assert res["seconds"] < T + SLACK, (kind, path, res)
        slow = [t for t in timings if t[2] >= AT_ONCE]
        print(
            f"stalled server: {len(timings)} calls, {len(slow)} waited >= {AT_ONCE}s, "
            f"max {max(t[2] for t in timings):.2f}s (--timeout {T:g})"
        )
        assert len(slow) <= len(timings) // 4, f"too many calls waited: {slow}"
        # the cached bytes are the right ones
        for name, digest in wanted.items():
            with open(files / name, "rb") as f:
                assert hashlib.md5(f.read()).hexdigest() == digest
    finally:
        os.kill(pid, signal.SIGCONT)

    # recovered: a listing never seen before loads, and the slow state ends in the log
    res = fs_op("listdir", m.path / "DEMO1" / "subjects" / "SUBJ01" / "experiments", timeout=60)
    assert res["errno"] == 0 and res["names"], res
    end = time.monotonic() + 30
    while "answers again" not in m.log_text() and time.monotonic() < end:
        fs_op("listdir", files)
        time.sleep(0.2)
    assert "answers again" in m.log_text(), m.log_tail()
