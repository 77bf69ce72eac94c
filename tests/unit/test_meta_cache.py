"""MetaCache: TTL with a fake clock, single flight per key, errors not cached, invalidation."""

from __future__ import annotations

import threading
from typing import List

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.cache.meta import MetaCache

WAIT = 10.0


def wait_for(predicate, what: str) -> None:
    """Poll ``predicate`` until true, failing after WAIT seconds (a deadline wait, not a sleep)."""
    tick = threading.Event()
    for _ in range(int(WAIT / 0.002)):
        if predicate():
            return
        tick.wait(0.002)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_ttl_expiry_with_fake_clock(clock):
    m = MetaCache(ttl=60.0, timer=clock)
    calls: List[int] = []

    def loader():
        calls.append(1)
        return ["SUBJ01", "SUBJ02"]

    assert m.get_or_load(("DEMO1",), loader) == ["SUBJ01", "SUBJ02"]
    clock.advance(59.9)
    assert m.get_or_load(("DEMO1",), loader) == ["SUBJ01", "SUBJ02"]
    assert m.peek(("DEMO1",)) == ["SUBJ01", "SUBJ02"]
    assert len(calls) == 1
    clock.advance(0.2)
    assert m.peek(("DEMO1",)) is None  # stale: peek never loads
    assert m.get_or_load(("DEMO1",), loader) == ["SUBJ01", "SUBJ02"]
    assert len(calls) == 2
    assert m.stats == {
        "hits": 1,
        "misses": 2,
        "loads": 2,
        "errors": 0,
        "joins": 0,
        "timeouts": 0,
        "refreshes": 0,
        "refreshes_refused": 0,
        "entries": 1,
        "in_flight": 0,
    }


def test_put_and_none_values(clock):
    m = MetaCache(ttl=10.0, timer=clock)
    m.put(("P",), None)  # a loader may return None; it is cached too
    assert m.get_or_load(("P",), lambda: pytest.fail("must not load")) is None
    m.put(("P", "S"), {"a": 1})
    assert m.peek(("P", "S")) == {"a": 1}
    assert ("P", "S") in m and ("Q",) not in m


def test_single_flight_per_key(clock):
    m = MetaCache(timer=clock)
    started, release = threading.Event(), threading.Event()
    calls: List[int] = []

    def slow_loader():
        calls.append(1)
        started.set()
        assert release.wait(WAIT)
        return "listing"

    results: List[str] = []
    leader = threading.Thread(target=lambda: results.append(m.get_or_load(("D",), slow_loader)))
    leader.start()
    assert started.wait(WAIT)
    followers = [
        threading.Thread(target=lambda: results.append(m.get_or_load(("D",), slow_loader)))
        for _ in range(15)
    ]
    for t in followers:
        t.start()
    wait_for(lambda: m.stats["joins"] == 15, "all followers to join the running load")
    # Another key is not held up by the running load.
    assert m.get_or_load(("E",), lambda: "other") == "other"
    release.set()
    for t in [leader] + followers:
        t.join(WAIT)
    assert results == ["listing"] * 16
    assert len(calls) == 1
    assert m.stats["loads"] == 2 and m.stats["in_flight"] == 0


def test_errors_reach_all_waiters_and_are_not_cached(clock):
    m = MetaCache(timer=clock)
    started, release = threading.Event(), threading.Event()
    boom = ConnectionError("GET /data/projects -> 503")

    def failing():
        started.set()
        assert release.wait(WAIT)
        raise boom

    errors: List[BaseException] = []

    def call():
        try:
            m.get_or_load(("P",), failing)
        except ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call)]
    threads[0].start()
    assert started.wait(WAIT)
    threads += [threading.Thread(target=call) for _ in range(3)]
    for t in threads[1:]:
        t.start()
    wait_for(lambda: m.stats["joins"] == 3, "the waiters to join the failing load")
    release.set()
    for t in threads:
        t.join(WAIT)
    assert errors == [boom] * 4
    assert m.peek(("P",)) is None
    assert m.get_or_load(("P",), lambda: "ok") == "ok"  # the next call loads again
    assert m.stats["errors"] == 1 and m.stats["loads"] == 2


def test_loader_asking_for_its_own_key_fails_fast(clock):
    m = MetaCache(timer=clock)

    def recursive():
        return m.get_or_load(("X",), recursive)

    with pytest.raises(RuntimeError):
        m.get_or_load(("X",), recursive)
    assert m.stats["in_flight"] == 0


def test_invalidate_and_invalidate_prefix(clock):
    m = MetaCache(timer=clock)
    for key in [
        ("DEMO1",),
        ("DEMO1", "SUBJ01"),
        ("DEMO1", "SUBJ01", "MR1"),
        ("DEMO1", "SUBJ02"),
        ("DEMO10",),
        ("DEMO2", "SUBJ01"),
        "not-a-tuple",
    ]:
        m.put(key, key)
    m.invalidate(("DEMO1", "SUBJ02"))
    assert m.peek(("DEMO1", "SUBJ02")) is None
    assert m.invalidate_prefix(("DEMO1", "SUBJ01")) == 2
    assert m.peek(("DEMO1", "SUBJ01")) is None and m.peek(("DEMO1", "SUBJ01", "MR1")) is None
    assert m.peek(("DEMO1",)) == ("DEMO1",)
    assert m.invalidate_prefix(("DEMO1",)) == 1
    assert m.peek(("DEMO10",)) == ("DEMO10",)  # parts compare whole, not as string prefixes
    assert m.peek(("DEMO2", "SUBJ01")) == ("DEMO2", "SUBJ01")
    assert m.peek("not-a-tuple") == "not-a-tuple"
    m.invalidate(("never", "there"))  # no error


def test_invalidation_during_load_is_not_stored(clock):
    """A listing loaded before a local change must not be cached after the change."""
    m = MetaCache(timer=clock)
    started, release = threading.Event(), threading.Event()

    def loader():
        started.set()
        assert release.wait(WAIT)
        return "old listing"

    out: List[str] = []
    t = threading.Thread(target=lambda: out.append(m.get_or_load(("P", "S"), loader)))
    t.start()
    assert started.wait(WAIT)
    m.invalidate_prefix(("P",))  # e.g. an upload into P/S finished
    release.set()
    t.join(WAIT)
    assert out == ["old listing"]  # the caller still gets its answer
    assert m.peek(("P", "S")) is None  # but the next lookup lists again


def test_maxsize_bounds_entries(clock):
    m = MetaCache(ttl=60, maxsize=3, timer=clock)
    for i in range(5):
        m.put(("k", i), i)
    assert len(m) == 3


# -- bounded waits and background loads (issue 17 §1, issue 18 §0.3) ------------------------------


def test_a_waiter_gives_up_at_its_timeout_while_the_load_goes_on():
    """A joiner of a hung load waits its own deadline, not the loader's: ETIMEDOUT, and the
    load still lands for the next caller."""
    import errno
    import time

    m = MetaCache(ttl=60)
    release = threading.Event()
    started = threading.Event()

    def slow_loader():
        started.set()
        release.wait(30)
        return "late"

    leader = threading.Thread(target=m.get_or_load, args=(("K",), slow_loader))
    leader.start()
    assert started.wait(10)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        m.get_or_load(("K",), lambda: "other", timeout=0.2)
    assert info.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - t0 < 10  # generous: the point is "not until the loader ends"
    assert m.stats["timeouts"] == 1
    release.set()
    leader.join(10)
    assert m.get_or_load(("K",), lambda: "other") == "late"


def test_load_async_runs_one_flight_on_the_executor_and_never_blocks():
    m = MetaCache(ttl=60)
    release = threading.Event()
    calls: List[int] = []
    jobs: list = []

    def loader():
        calls.append(1)
        release.wait(30)
        return "v"

    def submit(job):  # a fake executor: runs the job on a thread of its own
        t = threading.Thread(target=job)
        jobs.append(t)
        t.start()

    f1 = m.load_async(("K",), loader, submit)
    f2 = m.load_async(("K",), loader, submit)
    assert f1 is f2 and not f1.done.is_set() and len(jobs) == 1
    release.set()
    assert f1.done.wait(10) and f1.value == "v" and f1.error is None
    assert m.peek(("K",)) == "v" and len(calls) == 1
    done = m.load_async(("K",), loader, submit)  # fresh: answered at once, nothing submitted
    assert done.done.is_set() and done.value == "v" and len(jobs) == 1


def test_load_async_error_is_handed_over_not_cached():
    m = MetaCache(ttl=60)

    def boom():
        raise ValueError("down")

    f = m.load_async(("K",), boom, lambda job: job())
    assert f.done.is_set() and isinstance(f.error, ValueError)
    assert m.peek(("K",)) is None and m.stats["in_flight"] == 0


# ---------------------------------------------------------------------------- refresh
def test_refresh_stores_a_listing_fetched_after_the_mark_and_drops_what_it_replaces(clock):
    m = MetaCache(ttl=60.0, timer=clock)
    key = ("P", "resources", "R", "files")
    m.put(key, "listing before the upload")
    m.put(key + ("a", "\0node"), "node of a")
    m.put(("P", "resources", "R"), "parent")
    since = m.mark()
    assert m.refresh(key, "listing after the upload", since, prefixes=[key], keys=[key[:-1]])
    assert m.peek(key) == "listing after the upload"
    assert m.peek(key + ("a", "\0node")) is None and m.peek(("P", "resources", "R")) is None
    assert m.get_or_load(key, lambda: pytest.fail("must not load")) == "listing after the upload"
    assert m.stats["refreshes"] == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda m, key: m.invalidate(key),
        lambda m, key: m.invalidate_prefix(key[:2]),  # a folder above it
        lambda m, key: m.invalidate_prefix(()),
        lambda m, key: m.clear(),
    ],
)
def test_an_invalidation_after_the_mark_wins_over_the_refresh(clock, change):
    """A local change between the listing's request and its store (another upload confirmed,
    an rm) may be missing from it: the listing is not stored, the next call loads."""
    m = MetaCache(ttl=60.0, timer=clock)
    key = ("P", "resources", "R", "files")
    since = m.mark()
    change(m, key)
    assert not m.refresh(key, "maybe older than the change", since, prefixes=[key])
    assert m.peek(key) is None
    assert m.stats["refreshes_refused"] == 1


def test_an_invalidation_of_another_key_does_not_refuse_the_refresh(clock):
    m = MetaCache(ttl=60.0, timer=clock)
    key = ("P", "resources", "R", "files")
    since = m.mark()
    m.invalidate(("P", "resources", "OTHER", "files"))
    m.invalidate_prefix(("Q",))
    assert m.refresh(key, "fresh", since, prefixes=[key])
    assert m.peek(key) == "fresh"


def test_refresh_refuses_when_the_invalidations_since_its_mark_are_forgotten(clock):
    m = MetaCache(ttl=60.0, timer=clock)
    key = ("P", "files")
    since = m.mark()
    for i in range(5000):  # more than are remembered: one of them may have touched the key
        m.invalidate(("other", i))
    assert not m.refresh(key, "fresh", since)


def test_a_load_running_at_the_refresh_is_not_stored_over_it(clock):
    """The load may have begun before the upload the refreshed listing shows: stored after
    it, the listing without the new file would answer ENOENT for it."""
    m = MetaCache(ttl=60.0, timer=clock)
    key = ("P", "files")
    started, release = threading.Event(), threading.Event()

    def slow_loader():
        started.set()
        assert release.wait(WAIT)
        return "older listing"

    got: List[str] = []
    t = threading.Thread(target=lambda: got.append(m.get_or_load(key, slow_loader)))
    t.start()
    assert started.wait(WAIT)
    assert m.refresh(key, "newer listing", m.mark(), prefixes=[key])
    release.set()
    t.join(WAIT)
    assert got == ["older listing"]  # its caller gets what it asked for
    assert m.peek(key) == "newer listing"
