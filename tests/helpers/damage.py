"""Damaging a cached file and reading it back through a mount: the two page-cache integrity
tests (an ordinary mount and a zero-message-opens one) do the same steps."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest


def flip_a_bit(path: Path, offset: int) -> None:
    """One bit of ``path`` at ``offset`` flipped in place (a damaged cache entry)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def damaged_page_then_eio(path: Path, data: bytes, start: int) -> None:
    """Open ``path`` (whose stored copy is damaged after ``start``), read the damaged page
    first — served at once, while the MD5 check the open started runs, so it is now in the
    kernel's page cache — then the rest: the verdict is EIO (at once, or at the end)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        middle = os.pread(fd, 1 << 20, start)
        assert middle != data[start : start + len(middle)], "the damaged byte was served"
        with pytest.raises(OSError) as err:
            b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        assert err.value.errno == errno.EIO
    finally:
        os.close(fd)
