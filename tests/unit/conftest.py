"""Fixtures shared by the unit tests."""
from __future__ import annotations

import os
import subprocess

import pytest


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs for real ENOSPC (root only; the tests run as root in CI); skipped, with
    the reason, where it cannot be mounted.  The patched-pwrite tests cover ENOSPC elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "tiny"
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                          str(where)], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=30, check=True)
