"""The mount command's refusals and crash recovery: one clear line each, no stale mount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ADMIN, Mount, needs_fuse
from tests.mount.helpers import end_demo
from xnatfs.fs.mounting import is_mounted

pytestmark = [needs_fuse]


def _mount_cmd(url, mnt, tmp_path, env_extra=None, stdin=None, args=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNATFS_") and k != "NETRC"}
    env.update({"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    env.update(env_extra or {})
    mnt.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "xnatfs", "mount", url, str(mnt), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _one_line(res):
    lines = [line for line in res.stderr.splitlines() if line.startswith("xnatfs:")]
    assert res.returncode == 1, res.stderr
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_wrong_password(shared_emulator, tmp_path):
    line = _one_line(
        _mount_cmd(
            shared_emulator.url,
            tmp_path / "m",
            tmp_path,
            {"XNATFS_USER": "admin", "XNATFS_PASSWORD": "wrong"},
        )
    )
    assert "login refused" in line and "admin" in line and "wrong" not in line
    assert not is_mounted(str(tmp_path / "m"))


def test_unreachable_server(tmp_path):
    line = _one_line(
        _mount_cmd(
            "http://127.0.0.1:9",
            tmp_path / "m",
            tmp_path,
            {"XNATFS_USER": "a", "XNATFS_PASSWORD": "b"},
            args=("--connect-timeout", "1", "--retries", "0"),
        )
    )
    assert "cannot reach" in line
    assert not is_mounted(str(tmp_path / "m"))


def test_netrc_readable_by_others_is_refused(shared_emulator, tmp_path):
    host = shared_emulator.url.split("//", 1)[1].split("/", 1)[0]
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {host} login admin password {ADMIN[1]}\n")
    netrc.chmod(0o644)
    line = _one_line(_mount_cmd(shared_emulator.url, tmp_path / "m", tmp_path))
    assert ".netrc" in line and "600" in line
    assert not is_mounted(str(tmp_path / "m"))


def test_missing_libfuse(shared_emulator, tmp_path):
    line = _one_line(
        _mount_cmd(
            shared_emulator.url,
            tmp_path / "m",
            tmp_path,
            {
                "XNATFS_USER": "admin",
                "XNATFS_PASSWORD": ADMIN[1],
                "FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse.so"),
            },
        )
    )
    assert "fuse3" in line


def test_background_mount_netrc_and_umount(shared_emulator, tmp_path):
    host = shared_emulator.url.split("//", 1)[1].split("/", 1)[0]
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {host} login admin password {ADMIN[1]}\n")
    netrc.chmod(0o600)
    mnt = tmp_path / "m"
    res = _mount_cmd(shared_emulator.url, mnt, tmp_path)
    try:
        assert res.returncode == 0, res.stderr
        assert is_mounted(str(mnt))
        assert "DEMO1" in os.listdir(mnt)
        # the password is in no argv of the mount's processes
        seen = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmdline = fh.read()
                except OSError:
                    continue
                if str(mnt).encode() in cmdline:
                    seen += 1
                    assert ADMIN[1].encode() not in cmdline
        assert seen >= 1
    finally:
        res = subprocess.run(
            [sys.executable, "-m", "xnatfs", "umount", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert res.returncode == 0, res.stderr
    assert not is_mounted(str(mnt))
    # umount returns when the daemon has finished (caches and journal closed), so a mount
    # or `xnatfs cache` right after finds the cache directory free
    from xnatfs.fs.mounting import daemon_pids

    assert daemon_pids(str(mnt)) == []


def test_kill_9_then_mount_again(shared_emulator, tmp_path):
    """A crash that leaves a dead mount behind ("Transport endpoint is not connected"): the
    auto-unmount helper is killed first, so the dead mount is certain, not a race against it."""
    from xnatfs.fs.mounting import _unmount_helpers, is_stale

    m = Mount(shared_emulator.url, tmp_path / "m", tmp_path / "c", tmp_path / "log", []).start()
    m2 = Mount(shared_emulator.url, tmp_path / "m", tmp_path / "c", tmp_path / "log2", [])
    try:
        for pid in _unmount_helpers(str(m.path)):
            os.kill(pid, signal.SIGKILL)
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        assert is_mounted(str(m.path)) and is_stale(str(m.path))
        m2.start()
        # before: failed once in CI ([] : the harness returned on the bare directory while
        # the new daemon cleared the dead mount; MountDaemon.wait, fixed)
        assert "DEMO1" in os.listdir(m2.path), m2.log_tail()
        m2.umount()
    finally:
        m2.cleanup()  # a failure above left the second daemon and its mount behind
        m.cleanup()


def test_sigterm_unmounts_and_exits_0(shared_emulator, tmp_path):
    m = Mount(shared_emulator.url, tmp_path / "m", tmp_path / "c", tmp_path / "log", []).start()
    try:
        os.kill(m.proc.pid, signal.SIGTERM)
        assert m.proc.wait(timeout=20) == 0, m.log_tail()
        deadline = time.monotonic() + 10
        while is_mounted(str(m.path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_mounted(str(m.path))
    finally:
        m.cleanup()


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_mount_goes_on(
    shared_emulator, tmp_path
):
    m = Mount(shared_emulator.url, tmp_path / "m", tmp_path / "c", tmp_path / "log", []).start()
    try:
        assert "DEMO1" in os.listdir(m.path)
        m.dump_threads(timeout=20)
        text = m.log_text()
        assert "most recent call first" in text, m.log_tail()
        assert "run_foreground" in text  # the main thread, inside the FUSE loop
        assert "DEMO1" in os.listdir(m.path)  # still serving
        assert m.proc.poll() is None
        m.umount()
    finally:
        m.cleanup()


def test_demo_command_mounts_and_stops_on_ctrl_c(tmp_path):
    """The README's first command ends in ``xnatfs demo``."""
    mnt = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xnatfs", "demo", str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(str(mnt)):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "demo did not mount"
            time.sleep(0.05)
        assert {"DEMO1", "DEMO2"} <= set(os.listdir(mnt))
        assert "résumé – notes.txt" in os.listdir(mnt / "DEMO1/resources/protocols/files")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "unmounted and stopped" in proc.stdout.read()
        assert not is_mounted(str(mnt))
    finally:
        end_demo(proc, mnt)


def _refused(url, tmp_path, env, args=()):
    """The mount command's one line; a mount it made anyway (the bug) is undone first."""
    mnt = tmp_path / "m"
    res = _mount_cmd(url, mnt, tmp_path, env, args=args)
    if is_mounted(str(mnt)):
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30, check=False)
    return _one_line(res)


def _planted(tmp_path):
    """A log folder another user may write in (a group's shared folder: no sticky bit, so the
    kernel's protected_symlinks does not apply) and a file of someone else's it should not
    touch."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    victim = tmp_path / "victim"
    victim.write_bytes(b"not a log\n")
    victim.chmod(0o644)
    return shared, victim


def test_a_log_file_that_is_a_symlink_is_refused(shared_emulator, tmp_path):
    """``--log-file`` was opened with ``open(path, "ab")`` and chmod'ed 0600 by path: a symlink
    planted at that path made the mount append its log to the link's target (any file the
    mounting user, often root, may write) and change that file's mode to 0600."""
    shared, victim = _planted(tmp_path)
    log = shared / "xnatfs.log"
    log.symlink_to(victim)
    env = {"XNATFS_USER": "admin", "XNATFS_PASSWORD": ADMIN[1]}
    line = _refused(shared_emulator.url, tmp_path, env, ("--log-file", log))
    assert "symbolic link" in line and str(log) in line, line
    assert victim.read_bytes() == b"not a log\n"
    assert victim.stat().st_mode & 0o777 == 0o644
    assert not is_mounted(str(tmp_path / "m"))


def test_the_default_log_folder_may_not_be_a_symlink(shared_emulator, tmp_path):
    """``<cache-dir>/logs`` was made with ``makedirs(exist_ok=True)`` and chmod'ed 0700 by
    path: a symlink there (to a folder of someone else's) was followed, the folder's mode
    changed and the log written into it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    cache = tmp_path / "cache" / "xnatfs"
    cache.mkdir(parents=True)
    (cache / "logs").symlink_to(elsewhere)
    env = {"XNATFS_USER": "admin", "XNATFS_PASSWORD": ADMIN[1]}
    line = _refused(shared_emulator.url, tmp_path, env)
    assert "logs" in line and "symbolic link" in line, line
    assert elsewhere.stat().st_mode & 0o777 == 0o755 and list(elsewhere.iterdir()) == []
    assert not is_mounted(str(tmp_path / "m"))


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another user needs root to make")
def test_a_log_file_of_another_user_is_refused(shared_emulator, tmp_path):
    """A log file that exists and belongs to another user (made there beforehand, or a hard
    link to one) is not appended to: that user could read or change what the mount logs."""
    shared, _ = _planted(tmp_path)
    log = shared / "xnatfs.log"
    log.write_bytes(b"theirs\n")
    os.chown(log, 65534, 65534)
    env = {"XNATFS_USER": "admin", "XNATFS_PASSWORD": ADMIN[1]}
    line = _refused(shared_emulator.url, tmp_path, env, ("--log-file", log))
    assert "owned by uid 65534" in line, line
    assert log.read_bytes() == b"theirs\n"
    assert not is_mounted(str(tmp_path / "m"))


@pytest.mark.skipif(os.geteuid() != 0, reason="a folder of another user needs root to make")
def test_a_cache_folder_of_another_user_is_refused(shared_emulator, tmp_path):
    """The cache folder holds the journal (what to upload, from which spool file), the index
    and the log: one another user owns is theirs to fill with links and entries, so the mount
    (here root) refuses it in one line before it writes anything there; before, it chmod'ed
    the folder 0700 (the other user, still its owner, could change it back) and used it."""
    cache = tmp_path / "cache" / "xnatfs"
    cache.mkdir(parents=True)
    os.chown(cache, 65534, 65534)
    env = {"XNATFS_USER": "admin", "XNATFS_PASSWORD": ADMIN[1]}
    for args in ((), ("--foreground",)):  # the command's check; the daemon's own
        line = _refused(shared_emulator.url, tmp_path, env, args)
        assert "owned by uid 65534" in line and str(cache) in line, (args, line)
        assert list(cache.iterdir()) == []
