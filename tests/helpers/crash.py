"""A process killed at the k-th step that changes the disk, for crash-ordering tests of the
upload journal (``xnatfs/uploads/journal.py``): monkeypatch the module's ``os`` with
``CrashingOs(k)`` and run one operation for every k until it completes."""

from __future__ import annotations

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
