"""The one mount harness (``xnatfs.fs.mounting.MountDaemon``, issue 14 item 5) with stand-in
daemons (small Python processes; no FUSE): an early exit is reported at once with its stderr
tail, a mount that never comes fails at its deadline, a daemon that ignores SIGTERM is killed,
and the credentials travel on stdin only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from xnatfs.fs import mounting

CREDS = {"username": "alice", "password": "s3cret-pw"}


def _daemon(tmp_path, code: str, mountpoint=None) -> mounting.MountDaemon:
    return mounting.MountDaemon(
        [sys.executable, "-c", code], mountpoint or tmp_path / "mnt", tmp_path / "daemon.log", CREDS
    ).start()


def test_an_early_exit_is_reported_at_once_with_the_log_tail(tmp_path):
    code = (
        "import json, sys; creds = json.loads(sys.stdin.readline()); "
        "print('login refused for', creds['username'], file=sys.stderr); sys.exit(3)"
    )
    daemon = _daemon(tmp_path, code)
    started = time.monotonic()
    with pytest.raises(mounting.MountFailed) as info:
        daemon.wait(timeout=60)
    assert time.monotonic() - started < 20  # not the 60 s deadline
    assert info.value.returncode == 3 and "rc=3" in str(info.value)
    assert "login refused for alice" in info.value.tail
    assert not any("s3cret" in arg for arg in daemon.argv)  # stdin only


def test_a_mount_that_never_comes_fails_at_the_deadline_and_stop_is_bounded(tmp_path):
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "sys.stdin.readline(); print('ready', flush=True); time.sleep(600)"
    )
    daemon = _daemon(tmp_path, code)
    with pytest.raises(mounting.MountFailed) as info:
        daemon.wait(timeout=0.5)
    assert info.value.returncode is None and "did not appear within 0.5s" in str(info.value)
    assert daemon.alive()
    started = time.monotonic()
    assert daemon.stop(grace=0.2, term_wait=0.5) == -signal.SIGKILL  # SIGTERM ignored: killed
    assert time.monotonic() - started < 30 and not daemon.alive()


def test_wait_returns_once_the_path_is_mounted_and_answers(tmp_path):
    # /proc is a mount point that answers statvfs: the stand-in "mounted" at once
    daemon = _daemon(
        tmp_path, "import sys, time; sys.stdin.readline(); time.sleep(600)", mountpoint="/proc"
    )
    try:
        daemon.wait(timeout=30)
        with pytest.raises(mounting.MountFailed):
            daemon.wait(timeout=0.2, answers=lambda: False)
    finally:
        assert daemon.end(grace=0) == -signal.SIGTERM
    log = (tmp_path / "daemon.log").read_text()
    assert log == ""  # nothing of the credentials in the log either
    assert json.dumps(CREDS) not in " ".join(daemon.argv)


def test_wait_over_a_dead_mount_returns_only_once_the_new_mount_is_there(tmp_path, monkeypatch):
    """A remount over a dead mount: the mount table lists the dead one (which answers
    nothing), the new daemon clears it (the bare directory answers ``statvfs``, not in the
    table), then mounts (in the table, answers).  Each look lets the world take its next
    step, as the daemon did between the two checks; ``wait`` returned having last seen the
    bare directory when it read the table first."""
    DEAD, BARE, NEW = 0, 1, 2
    world = {"now": DEAD, "last_seen": None}

    def look(true_at):
        seen = world["now"]
        world["now"], world["last_seen"] = min(NEW, seen + 1), seen
        return seen in true_at

    monkeypatch.setattr(mounting, "is_mounted", lambda path: look((DEAD, NEW)))
    daemon = _daemon(tmp_path, "import signal, sys; sys.stdin.readline(); signal.pause()")
    try:
        daemon.wait(timeout=30, answers=lambda: look((BARE, NEW)))
        assert world["last_seen"] == NEW  # before: BARE (the mount table read at DEAD)
    finally:
        daemon.end(grace=0)


def test_mountinfo_decoder_reads_escaped_mount_points():
    assert mounting._unescape_mountinfo(r"/mnt/a\040b\134c\011d") == "/mnt/a b\\c\td"


def test_wait_gone_returns_when_the_process_ends_and_names_those_still_running():
    from xnatfs.fs.mounting import wait_gone

    ended = subprocess.Popen(["sleep", "60"])
    lasting = subprocess.Popen(["sleep", "60"])
    try:
        ended.terminate()  # left unreaped: a zombie counts as gone
        assert wait_gone([ended.pid], 10) == []
        assert wait_gone([lasting.pid], 0.2) == [lasting.pid]
    finally:
        lasting.kill()
        lasting.wait()
        ended.wait()
