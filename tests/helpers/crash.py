"""Stand-ins for a module's ``os``: a process killed at the k-th step that changes the disk,
for crash-ordering tests of the upload journal (``xnatfs/uploads/journal.py``: monkeypatch the
module's ``os`` with ``CrashingOs(k)`` and run one operation for every k until it completes),
and a disk that refuses the next writes (``FullDiskOs``)."""

from __future__ import annotations

import errno
import os


class Crash(BaseException):
    """The process dies here (BaseException: ``except OSError`` cleanups do not run)."""


class CrashingOs:
    """Stands in for ``os`` in journal.py: the k-th mutating call dies instead of running."""

    MUTATING = {"open", "write", "fsync", "replace", "rename", "unlink", "fchmod"}

    def __init__(self, crash_at: int) -> None:
        self.crash_at = crash_at
        self.calls = 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in self.MUTATING:
            return real

        def wrapper(*args, **kwargs):
            self.calls += 1
            if self.calls == self.crash_at:
                raise Crash(f"killed at {name}{args[:1]}")
            return real(*args, **kwargs)

        return wrapper


class FullDiskOs:
    """Stands in for a module's ``os``: its next ``refusals`` writes (``write`` and ``pwrite``)
    fail with ``code`` (ENOSPC, or EDQUOT: a quota is not in ``statvfs``, so only a write
    sees it), as on a full disk; everything else is the real ``os``."""

    def __init__(self, refusals: int, code: int = errno.ENOSPC) -> None:
        self.refusals = refusals
        self.code = code

    def __getattr__(self, name):
        return getattr(os, name)

    def _refuse(self) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise OSError(self.code, os.strerror(self.code))

    def write(self, fd, data):
        self._refuse()
        return os.write(fd, data)

    def pwrite(self, fd, data, offset):
        self._refuse()
        return os.pwrite(fd, data, offset)
