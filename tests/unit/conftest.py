"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest

from tests.helpers.tmpfs import small_tmpfs


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs for real ENOSPC (root only; the tests run as root in CI); skipped, with
    the reason, where it cannot be mounted.  The patched-pwrite tests cover ENOSPC elsewhere."""
    with small_tmpfs(tmp_path / "tiny", "64k", lazy=False) as where:
        yield where
