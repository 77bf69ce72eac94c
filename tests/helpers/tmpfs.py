"""A small tmpfs of its own for a test: a disk that really fills up (real ENOSPC)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_tmpfs(where: Path, size: str, lazy: bool = True) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. ``"64k"``) at ``where`` (created)
    for the ``with`` block, then unmount it: ``lazy``, a test's leftover open files do not
    block that; else the unmount must succeed (nothing may hold the file system any more).
    Root only: skipped, with the reason, where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        if lazy:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)
        else:
            subprocess.run(["umount", str(where)], capture_output=True, timeout=30, check=True)
