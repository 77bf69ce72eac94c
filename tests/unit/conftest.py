"""Fixtures shared by the unit tests."""

from __future__ import annotations

import time
from typing import List

import pytest

from tests.helpers.tmpfs import small_tmpfs
from xnatfs.cache.content import ContentCache


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs for real ENOSPC (root only; the tests run as root in CI); skipped, with
    the reason, where it cannot be mounted.  The patched-pwrite tests cover ENOSPC elsewhere."""
    with small_tmpfs(tmp_path / "tiny", "64k", lazy=False) as where:
        yield where


@pytest.fixture
def env(tmp_path):
    """A clean environment for the settings tests: no XNATFS_* variables from the machine
    running the tests, and HOME/XDG folders of the test's own."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


@pytest.fixture
def make_cache(tmp_path):
    """Factory: ``make_cache(fetch, size_limit=, directory=, **options)`` -> a started
    ``ContentCache`` fed by ``fetch`` (a fake server), closed after the test."""
    caches: List[ContentCache] = []

    def make(fetch, size_limit: int = 1 << 30, directory=None, **kw) -> ContentCache:
        cc = ContentCache(directory or tmp_path / "cc", size_limit=size_limit, fetch=fetch, **kw)
        cc.start()
        caches.append(cc)
        return cc

    yield make
    for cc in caches:
        cc.close(time.monotonic() + 5)
