"""PageCacheTrust: which opens may keep the kernel's pages of earlier opens (fs/keepcache.py)."""

from __future__ import annotations

from xnatfs.fs.keepcache import PageCacheTrust


def test_a_clean_download_keeps_its_pages_for_the_next_open():
    trust = PageCacheTrust()
    assert not trust.keep_cache("/f", "v1", False, 0)  # a download: drop, on probation
    assert trust.keep_cache("/f", "v1", True, 0)  # nothing failed since: keep
    assert trust.keep_cache("/f", "v1", True, 5)  # verified opens since: keep
    assert not trust.keep_cache("/g", "v1", True, 5)  # per path (the kernel's inode)


def test_pages_read_before_a_failed_check_are_dropped():
    trust = PageCacheTrust()
    assert not trust.keep_cache("/f", "v1", False, 3)  # a download (or a large entry hashed)
    assert not trust.keep_cache("/f", "v1", True, 4)  # an attempt failed meanwhile: drop
    assert trust.keep_cache("/f", "v1", True, 4)  # the drop made the pages clean
    assert not trust.keep_cache("/f", "v1", False, 4)  # suspect again
    assert not trust.keep_cache("/f", "v1", False, 5)  # a second suspect open: keeps count 4
    assert not trust.keep_cache("/f", "v1", True, 5)
    assert not trust.keep_cache("/f", "v2", True, 5)  # another version of the file
    assert trust.keep_cache("/f", "v2", True, 5)


def test_a_forgotten_path_costs_one_drop_never_a_kept_page():
    trust = PageCacheTrust(limit=2)
    assert not trust.keep_cache("/a", "v", False, 0)
    for path in ("/b", "/c"):
        assert not trust.keep_cache(path, "v", True, 0)
    assert trust.keep_cache("/c", "v", True, 0) and trust.keep_cache("/b", "v", True, 0)
    assert not trust.keep_cache("/a", "v", True, 0)  # forgotten (least recent): dropped


def test_an_open_of_another_version_is_read_apart_while_the_old_one_is_open():
    trust = PageCacheTrust()
    assert trust.opened("/f", "v1", True, 0) == (False, False)  # first open: pages dropped
    assert trust.opened("/f", "v1", True, 0) == (True, False)  # same version: kept
    # the file changed on XNAT while both are open: the new version neither drops the old
    # version's pages nor reads through them
    assert trust.opened("/f", "v2", False, 0) == (True, True)
    assert trust.opened("/g", "v2", True, 0) == (False, False)  # per path
    trust.closed("/f", "v1")
    assert trust.opened("/f", "v2", True, 0) == (True, True)  # one old open still open
    trust.closed("/f", "v1")
    # the old version's opens are gone: the new one drops its pages and uses the page cache
    assert trust.opened("/f", "v2", True, 0) == (False, False)
    assert trust.opened("/f", "v2", True, 0) == (True, False)
    trust.closed("/f", "v2")
    trust.closed("/f", "v2")
    trust.closed("/f", "v2")  # one release too many changes nothing
    assert trust.opened("/f", "v1", True, 0) == (False, False)
