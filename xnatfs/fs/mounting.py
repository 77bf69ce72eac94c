"""The mount table (is a path mounted, is it a stale ENOTCONN mount, unmount it) and the one
mount harness, :class:`MountDaemon`: spawn ``xnatfs mount --foreground`` with the credentials on
its stdin, wait for its mount (with a deadline, noticing an early exit), stop it (unmount, then
signals, every step bounded).

Used by the CLI before mounting (a crashed daemon leaves "Transport endpoint is not connected",
docs/FUSE.md §3.5), by ``xnatfs mount``/``umount``/``demo``, by the tests' ``Mount`` fixture and
by the benchmarks' ``MountProc``.  Every external command runs with a timeout.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union


def _unescape_mountinfo(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal (``\\040``);
    the one decoder of mount points (the benchmarks use it too)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entry(path: str) -> Optional[List[str]]:
    """The ``/proc/self/mountinfo`` fields of the mount at ``path`` (the last one), or None."""
    # abspath, never realpath: realpath stats the mount point, which waits on the daemon (and
    # deadlocks when called from the daemon's own FUSE init)
    target = os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
                    found = fields
    except OSError:
        return None
    return found


def is_mounted(path: str) -> bool:
    return mount_entry(path) is not None


def xnatfs_mounts() -> List[str]:
    """Mount points of the xnatfs mounts in this mount namespace (type ``fuse.xnatfs``), for
    the commands that act on "a mount" without being told which (``xnatfs cache``)."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                fstype = line.split(" - ", 1)[1].split()[0]
                if fstype == "fuse.xnatfs":
                    out.append(_unescape_mountinfo(fields[4]))
    except OSError:
        return []
    return out


def is_stale(path: str) -> bool:
    """A FUSE mount whose daemon is gone answers ENOTCONN.  ``statvfs``, not ``stat``: the
    kernel answers ``stat`` of the mount root from its attribute cache (attr_timeout) without
    asking the dead daemon, so a dead mount can look alive to ``stat`` for a minute."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _fusermount() -> List[str]:
    for name in ("fusermount3", "fusermount"):
        exe = shutil.which(name)
        if exe:
            return [exe]
    return []


def unmount(path: str, *, lazy: bool = False, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Unmount with fusermount3 (fusermount, then umount as fallbacks).

    ``lazy`` detaches even when a process still has its cwd inside (``-z``).
    """
    fm = _fusermount()
    if fm:
        cmd = fm + (["-uz"] if lazy else ["-u"]) + [path]
    else:
        cmd = ["umount"] + (["-l"] if lazy else []) + [path]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _command_lines() -> Iterator[Tuple[int, List[bytes]]]:
    """(pid, argv) of every process this user can see."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                yield int(entry), fh.read().split(b"\0")
        except OSError:
            continue


def daemon_pids(path: str) -> List[int]:
    """PIDs of xnatfs daemons serving ``path`` (``xnatfs ... mount URL PATH --foreground``)."""
    target = os.fsencode(os.path.abspath(path))
    return [
        pid
        for pid, argv in _command_lines()
        if target in argv and b"--foreground" in argv and b"xnatfs" in argv
    ]


def wait_gone(pids: List[int], timeout: float) -> List[int]:
    """Wait (up to ``timeout``) until the processes ``pids`` have exited; those still running.

    Each is waited for on its pidfd (readable once the process has ended, zombie or reaped:
    Linux >= 5.3), so the wait ends when the last one does, not at the next poll."""
    deadline = time.monotonic() + timeout
    alive = []
    for pid in pids:
        if not _running(pid):
            continue
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone between the check and the open
        try:
            ready = select.poll()
            ready.register(fd, select.POLLIN)
            ready.poll(max(0.0, deadline - time.monotonic()) * 1000)
        finally:
            os.close(fd)
        if _running(pid):
            alive.append(pid)
    return alive


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited daemon whose parent has not reaped it yet, e.g. the
    process that spawned a foreground mount, is done)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    # the state follows the command name, which is in parentheses and may hold spaces
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def _unmount_helpers(path: str) -> List[int]:
    """PIDs of fusermount processes whose command line names ``path``: with ``auto_unmount`` a
    helper stays behind each daemon and unmounts the path *by name* when the daemon dies."""
    target = os.fsencode(os.path.abspath(path))
    return [
        pid
        for pid, argv in _command_lines()
        if argv and os.path.basename(argv[0]).startswith(b"fusermount") and target in argv
    ]


def clear_stale(path: str, timeout: float = 10.0) -> bool:
    """Remove a dead mount left at ``path`` by a crashed daemon; True if one was removed.

    Also waits (up to ``timeout``) for the dead daemon's auto-unmount helper to finish: it
    unmounts by path, so if it ran after a new mount it would take that one down instead.
    """
    deadline = time.monotonic() + timeout
    removed = False
    if is_mounted(path) and is_stale(path):
        unmount(path, lazy=True)
        removed = True
    if removed or not is_mounted(path):
        # a healthy mount keeps its helper for life; only a dead daemon's helper is waited for
        # (polling: a process we did not start cannot be waited on)
        while _unmount_helpers(path) and time.monotonic() < deadline:
            time.sleep(0.05)
    if is_mounted(path) and is_stale(path):
        unmount(path, lazy=True)
        removed = True
    return removed


def set_read_ahead(path: str, kb: int) -> bool:
    """Raise the kernel read-ahead of the mount at ``path`` so libfuse3 gets 1 MiB reads
    instead of 128 KiB (docs/FUSE.md §2.2).  Root only; False (and a debug line) when not
    permitted.

    Call it only after FUSE INIT was answered — the kernel sets read-ahead to the smaller of
    the current value and libfuse's reply while it handles INIT, undoing an earlier write — and
    never by stat'ing the mount from the daemon itself: a daemon thread waiting on its own
    mount cannot be killed (the connection only aborts when the daemon exits).  The adapter
    calls it when the first request after INIT arrives.
    """
    import logging

    entry = mount_entry(path)
    if entry is None:
        return False
    bdi = f"/sys/class/bdi/{entry[2]}/read_ahead_kb"
    try:
        with open(bdi, "w", encoding="ascii") as fh:
            fh.write(str(int(kb)))
        return True
    except OSError as exc:
        logging.getLogger(__name__).debug("read_ahead_kb of %s not set (%s): %s", path, bdi, exc)
        return False


def wait_mounted(path: str, deadline: float, alive=lambda: True, interval: float = 0.05) -> bool:
    """Wait until ``path`` is a mount that answers ``stat``, the daemon died, or the deadline.

    Returns True when mounted.  Polling with a short interval: the kernel offers no event for
    a new mount that a plain process could wait on.
    """
    while time.monotonic() < deadline:
        if not alive():
            return False
        if is_mounted(path) and _answers(path):
            return True
        time.sleep(interval)
    return False


# ------------------------------------------------------------------------------- the harness
#: how long ``xnatfs mount`` (and ``xnatfs demo``) wait for the daemon's mount to answer; an
#: internal bound, not a user knob: a daemon that is up answers in well under a second, and one
#: whose server is slow is bounded by ``--timeout`` before that
MOUNT_WAIT_S = 60.0


def xnatfs_argv(url: str, mountpoint: Union[str, Path], *options: str) -> List[str]:
    """``python -m xnatfs mount URL MNT --foreground --credentials-stdin OPTIONS...``."""
    return [
        sys.executable,
        "-m",
        "xnatfs",
        "mount",
        url,
        str(mountpoint),
        "--foreground",
        "--credentials-stdin",
        *options,
    ]


def log_tail(path: Union[str, Path], lines: int = 15, missing: str = "(no log)") -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return missing


def open_log(path: "str | Path", mode: int = 0o600) -> int:
    """A descriptor appending to the daemon's log ``path``, created ``mode``; refused (an
    ``OSError`` naming the path and why) when ``path`` is a symbolic link, not a regular file,
    owned by another user or hard-linked elsewhere.

    ``open(path, "ab")`` followed a link planted at the path (in a shared log folder, or
    ``<cache-dir>/logs``) and ``chmod`` by path changed the target's mode: the mount, often
    run by root, appended its log to any file the link named and made it 0600.  ``O_NOFOLLOW``
    refuses the link; the checks on the opened file (``fstat``) refuse a file someone else
    made there beforehand, who could read or change what the mount logs, or a hard link to
    another file; the mode is set on the descriptor, never by path."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the open (refused below)
        fd = os.open(path, flags | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"log file {path} is a symbolic link: refused") from None
        raise
    try:
        st = os.fstat(fd)
        why = ""
        if not stat.S_ISREG(st.st_mode):
            why = "is not a regular file"
        elif st.st_uid != os.geteuid():
            why = f"is owned by uid {st.st_uid}, not by you"
        elif st.st_nlink != 1:
            why = f"has {st.st_nlink} hard links"
        if why:
            raise OSError(errno.EPERM, f"log file {path} {why}: refused")
        os.set_blocking(fd, True)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


class MountFailed(Exception):
    """The daemon exited, or its mount did not answer by the deadline; ``str()`` says which,
    with the tail of its log."""

    def __init__(self, message: str, returncode: Optional[int], tail: str) -> None:
        super().__init__(message)
        self.returncode, self.tail = returncode, tail


class MountDaemon:
    """One daemon process and its mount point.

    ``start()`` spawns ``argv`` in a new session (a Ctrl-C of the caller's terminal is not the
    daemon's) with stdout and stderr appended to ``log_path``, and writes the credentials as
    one JSON line on its stdin (never argv or the environment: issue 17 §7).  ``wait()`` polls
    the mount table: the kernel has no event a plain process could wait on for a new mount.
    """

    def __init__(
        self,
        argv: Sequence[str],
        mountpoint: Union[str, Path],
        log_path: Union[str, Path],
        credentials: Mapping[str, str],
        env: Optional[Mapping[str, str]] = None,
        log_mode: Optional[int] = None,
    ) -> None:
        self.argv, self.path = list(argv), os.path.abspath(mountpoint)
        self.log_path, self.credentials = Path(log_path), dict(credentials)
        self.env, self.log_mode = env, log_mode
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "MountDaemon":
        """Spawn the daemon; ``OSError`` when the log file is refused (``open_log``)."""
        log_fd = open_log(self.log_path, self.log_mode if self.log_mode is not None else 0o600)
        with os.fdopen(log_fd, "ab") as log_fh:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=log_fh,
                stderr=log_fh,
                env=dict(self.env) if self.env is not None else None,
                start_new_session=True,
                close_fds=True,
            )
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(self.credentials).encode() + b"\n")
            self.proc.stdin.close()
        except BrokenPipeError:  # it died at once: wait() reports its exit and log
            pass
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    def wait(
        self,
        timeout: float = MOUNT_WAIT_S,
        *,
        answers: Optional[Callable[[], bool]] = None,
        tail_lines: int = 15,
    ) -> None:
        """Return once the mount is there and ``answers()`` (default: ``statvfs`` reaches the
        daemon); raise :class:`MountFailed` when the daemon exits first or at the deadline
        (the daemon is left running: :meth:`stop` is the caller's).

        ``answers()`` is asked before the mount table, never after: over a dead mount (a
        daemon killed with -9) the table still listed the dead mount when it was read, the
        new daemon then cleared it, and ``statvfs`` answered for the bare directory below, so
        ``xnatfs mount`` returned before its mount was there and the next ``ls`` showed an
        empty directory (seen once in CI).  In this order an answer means the dead mount is
        gone (it answers nothing), and the table read after it lists only the new one."""
        deadline = time.monotonic() + timeout
        check = answers or (lambda: _answers(self.path))
        while True:
            if not self.alive():
                rc = self.proc.returncode if self.proc is not None else None
                tail = self.tail(tail_lines)
                raise MountFailed(f"xnatfs exited rc={rc}:\n{tail}", rc, tail)
            if check() and is_mounted(self.path):
                return
            if time.monotonic() > deadline:
                tail = self.tail(tail_lines)
                raise MountFailed(f"mount did not appear within {timeout:g}s:\n{tail}", None, tail)
            time.sleep(0.02)

    def stop(
        self, grace: float = 20.0, timeout: float = 20.0, term_wait: float = 5.0
    ) -> Optional[int]:
        """Unmount (``fusermount3 -u``, then ``-uz``, then ``umount -l``, while it is still
        mounted), give the daemon ``grace`` seconds to exit, then SIGTERM (``term_wait``
        seconds), then SIGKILL; every command bounded by ``timeout``.  Returns the exit status
        (None: none)."""
        for cmd in (["fusermount3", "-u"], ["fusermount3", "-uz"], ["umount", "-l"]):
            if not is_mounted(self.path):
                break
            if shutil.which(cmd[0]):
                try:
                    subprocess.run(
                        cmd + [self.path], capture_output=True, timeout=timeout, check=False
                    )
                except subprocess.TimeoutExpired:
                    continue
        return self.end(grace, term_wait)

    def end(self, grace: float = 10.0, term_wait: float = 5.0) -> Optional[int]:
        """The process alone: wait ``grace``, then SIGTERM (``term_wait``), then SIGKILL."""
        if self.proc is None:
            return None
        for sig, wait in ((None, grace), (signal.SIGTERM, term_wait), (signal.SIGKILL, 5.0)):
            if sig is not None and self.proc.poll() is None:
                try:
                    self.proc.send_signal(sig)
                except ProcessLookupError:
                    break
            try:
                return self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()


def _answers(path: str) -> bool:
    """The mount reaches its daemon: ``statvfs``, not ``stat``, which the kernel may answer
    from its attribute cache."""
    try:
        os.statvfs(path)
        return True
    except OSError:
        return False
