"""PageCacheTrust: which opens may keep the kernel's pages of earlier opens (fs/keepcache.py)."""
from __future__ import annotations

from xnatfs.fs.keepcache import PageCacheTrust


def test_pages_are_kept_only_after_a_verified_open_dropped_them():
    trust = PageCacheTrust()
    assert not trust.keep_cache("/f", None)          # a download: its pages are suspect
    assert not trust.keep_cache("/f", "v1")          # first verified open drops them
    assert trust.keep_cache("/f", "v1")              # later verified opens keep them
    assert trust.keep_cache("/f", "v1")
    assert not trust.keep_cache("/f", None)          # an unverified open again (a damaged entry)
    assert not trust.keep_cache("/f", "v1")
    assert trust.keep_cache("/f", "v1")
    assert not trust.keep_cache("/f", "v2")          # another version of the file
    assert trust.keep_cache("/f", "v2")
    assert not trust.keep_cache("/g", "v2")          # per path (the kernel's inode)


def test_a_forgotten_path_costs_one_drop_never_a_kept_page():
    trust = PageCacheTrust(limit=2)
    for path in ("/a", "/b", "/c"):
        assert not trust.keep_cache(path, "v")
    assert trust.keep_cache("/c", "v") and trust.keep_cache("/b", "v")
    assert not trust.keep_cache("/a", "v")           # evicted (least recent): dropped again
