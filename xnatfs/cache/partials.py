"""Whose partial files are whose, when several processes share one cache directory.

A partial file is named ``<key hex>.<tag><n>.part``; ``tag`` is the owning process's (8 hex
digits, ``ContentStore``).  Each process holding a cache open keeps ``owners/<tag>.lock`` locked
(``flock``, exclusive) for as long as it runs, so a start (a second mount, ``xnatfs cache
usage``/``prune``/``verify``) removes only the partials of processes that are gone: a locked tag
is alive, and its downloads are still being written.  Before this, every start removed every
partial file, and the running mount's downloads ended in ENOENT at their adoption, which its
readers got in the middle of a file.

Partials of a tag with no lock file (left by an older version, or by a crash before the lock
was taken) are removed, as they always were.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from typing import Dict, Optional

from xnatfs.private import private_dir

#: one logger for the whole content cache, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.cache.content")

_TAG_LEN = 8
_LOCK = ".lock"


class PartialOwners:
    """The lock that marks this process's partial files as alive, and the sweep of the dead."""

    def __init__(self, owners_dir: str, partial_dir: str, tag: str) -> None:
        self._owners = owners_dir
        self._partials = partial_dir
        self.tag = tag
        self._fd: Optional[int] = None
        private_dir(owners_dir)

    def _lock_path(self, tag: str) -> str:
        return os.path.join(self._owners, tag + _LOCK)

    def claim(self) -> None:
        """Lock this process's tag (before any partial file of it is made)."""
        path = self._lock_path(self.tag)
        while self._fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:  # a sweep took it for a dead owner's between our open and our lock
                os.close(fd)

    def release(self) -> None:
        """This process is done with the cache: its lock goes (its partials are gone by now)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self._lock_path(self.tag))
        except OSError:
            pass
        os.close(fd)

    def alive(self, tag: str, known: Dict[str, bool]) -> bool:
        """``_alive`` for other kinds of leftovers named by tag (the BIDS view's conversion
        folders, ``xnatfs.bids.convert``); ``known`` memoises answers within one sweep."""
        return self._alive(tag, known)

    def _alive(self, tag: str, known: Dict[str, bool]) -> bool:
        """Does a running process hold ``tag``?  A dead owner's lock file is removed."""
        if tag == self.tag:
            return True
        if tag in known:
            return known[tag]
        path = self._lock_path(tag)
        alive = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                alive = True
            else:
                os.unlink(path)  # under its lock: a new owner of the name sees the change
            finally:
                os.close(fd)
        known[tag] = alive
        return alive

    def sweep(self) -> int:
        """Remove the partial files (and lock files) of owners that are gone; how many files."""
        known: Dict[str, bool] = {}
        removed = 0
        for name in os.listdir(self._partials):
            parts = name.split(".")
            tag = parts[1][:_TAG_LEN] if len(parts) == 3 else ""
            if tag and self._alive(tag, known):
                continue
            path = os.path.join(self._partials, name)
            try:
                os.unlink(path)
                removed += 1
                log.debug("content cache: removed leftover partial %s", name)
            except OSError as exc:
                log.warning("content cache: cannot remove leftover partial %s: %s", path, exc)
        for name in os.listdir(self._owners):
            if name.endswith(_LOCK):
                self._alive(name[: -len(_LOCK)], known)  # removes the lock files of the dead
        return removed
