"""Fill a file system to its last block (a test's really full disk, on a ``small_tmpfs``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fill_up(where: Path, name: str = "filler") -> Path:
    """Write zeros into ``where/name`` until the file system refuses one more byte (ENOSPC);
    its path, to remove when the test gives the room back."""
    path = Path(where) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return path
