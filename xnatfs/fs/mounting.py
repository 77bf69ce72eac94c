"""The mount table: is a path mounted, is it a stale (ENOTCONN) mount, unmount it.

Used by the CLI before mounting (a crashed daemon leaves "Transport endpoint is not connected",
fuse-notes.md §3.5) and by ``xnatfs umount``.  Every external command runs with a timeout.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from typing import List, Optional


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
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


def _unmount_helpers(path: str) -> List[int]:
    """PIDs of fusermount processes whose command line names ``path``: with ``auto_unmount`` a
    helper stays behind each daemon and unmounts the path *by name* when the daemon dies."""
    target = os.fsencode(os.path.abspath(path))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(b"fusermount") and target in argv:
            pids.append(int(entry))
    return pids


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
    instead of 128 KiB (fuse-notes.md §2.2).  Root only; False (and a debug line) when not
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
        if is_mounted(path):
            try:
                os.statvfs(path)  # reaches the daemon; stat may be answered from the cache
                return True
            except OSError:
                pass
        time.sleep(interval)
    return False
