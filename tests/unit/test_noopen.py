"""``fs.noopen`` without a mount: the handles reads use when the kernel opens files alone, and
when the kernel's pages of a path must go (never a wrong byte, issue 17 §5)."""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import pytest

from xnatfs.fs import noopen
from xnatfs.fs.noopen import ImplicitHandles, Invalidator

WAIT = 10.0


@dataclass(frozen=True)
class Key:
    """Stands in for ``ContentKey``: what ``on_taint`` names is ``hexname()``."""

    name: str

    def hexname(self) -> str:
        return "hex-" + self.name


@dataclass
class Handle:
    key: Key
    verified: bool
    closed: int = 0

    @property
    def content_version(self) -> Tuple[Key, bool]:
        return self.key, self.verified

    def close(self) -> None:
        self.closed += 1


@dataclass
class Cache:
    """``trusted``/``state`` of the content cache, per key name."""

    states: Dict[str, str] = field(default_factory=dict)
    trust: Dict[str, bool] = field(default_factory=dict)

    def trusted(self, key: Key) -> bool:
        return self.trust.get(key.name, False)

    def state(self, key: Key) -> str:
        return self.states.get(key.name, "absent")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class World:
    """An ``ImplicitHandles`` whose opener makes ``Handle``s: verified ones unless the path
    is in ``unverified``; drops are recorded (and confirmed only when the test says)."""

    def __init__(self, limit: int = 4, idle: float = 30.0) -> None:
        self.cache = Cache()
        self.clock = Clock()
        self.unverified: set = set()
        self.opened: List[Handle] = []
        self.drops: List[str] = []
        self.handles = ImplicitHandles(
            self._open, self.cache, self.drops.append, limit=limit, idle=idle, clock=self.clock
        )

    def _open(self, path: str) -> Tuple[Handle, bool]:
        handle = Handle(Key(path), path not in self.unverified)
        self.opened.append(handle)
        return handle, not path.endswith(".json")


def use(w: World, path: str) -> Handle:
    """One read of ``path`` without an open: the handle it used (released after it)."""
    with w.handles.reading(path) as handle:
        return handle


def test_one_handle_per_path_and_the_oldest_retired_past_the_limit():
    w = World(limit=2)
    a = use(w, "/a")
    assert use(w, "/a") is a
    use(w, "/b")
    use(w, "/a")  # /a is now the most recent
    use(w, "/c")
    assert [h.key.name for h in w.opened if h.closed] == ["/b"]
    assert w.drops == []  # verified pages stay
    assert w.handles.snapshot()["kept"] == 2


def test_an_unverified_handle_keeps_its_path_on_probation_until_its_key_is_trusted():
    w = World(limit=1)
    w.unverified.add("/f")
    w.cache.states["/f"] = "downloading"
    use(w, "/f")
    use(w, "/g")  # retires /f while its download runs: the pages may stay for now
    assert w.drops == [] and w.handles.snapshot()["probation"] == 1
    w.cache.states["/f"], w.cache.trust["/f"] = "cached", True
    w.handles.sweep()
    assert w.drops == [] and w.handles.snapshot()["probation"] == 0


def test_pages_of_a_key_that_never_verifies_are_dropped():
    w = World(limit=1)
    w.unverified.add("/s")  # streamed (never in the cache) or a download that failed
    use(w, "/s")
    use(w, "/t")
    assert w.drops == ["/s"]
    assert w.handles.snapshot()["probation"] == 0


def test_a_taint_poisons_the_path_until_its_pages_are_dropped_and_a_while_after():
    w = World()
    w.unverified.add("/x")
    w.cache.states["/x"] = "downloading"
    first = use(w, "/x")
    w.handles.tainted(Key("/x").hexname())
    assert first.closed == 1 and w.drops == ["/x"]
    for _ in range(2):  # not dropped yet; then dropped, but POISON_MIN has not passed
        with pytest.raises(OSError) as err:
            use(w, "/x")
        assert err.value.errno == errno.EIO
        w.handles.dropped("/x")
    assert w.handles.snapshot()["poisoned_now"] == 1
    w.clock.now += noopen.POISON_MIN
    assert w.handles.snapshot()["poisoned_now"] == 0
    again = use(w, "/x")
    assert again is not first and not again.closed


def test_a_taint_of_another_key_changes_nothing():
    w = World()
    w.unverified.add("/x")
    w.cache.states["/x"] = "downloading"
    use(w, "/x")
    w.handles.tainted(Key("/y").hexname())
    assert w.drops == [] and w.handles.snapshot()["poisoned_now"] == 0


def test_a_failed_read_poisons_its_path():
    w = World()
    use(w, "/r")
    w.handles.read_failed("/r")
    assert w.drops == ["/r"]
    with pytest.raises(OSError):
        use(w, "/r")


def test_a_changed_key_drops_the_pages_and_retires_the_handle():
    w = World()
    old = use(w, "/c")
    assert w.handles.knows("/c") and not w.handles.knows("/elsewhere")
    w.handles.changed("/c", Key("/c"))  # the same key: nothing to do
    assert w.drops == [] and not old.closed
    w.handles.changed("/c", Key("/c-v2"))
    assert w.drops == ["/c"] and old.closed == 1
    assert use(w, "/c") is not old


def test_idle_handles_are_closed_and_generated_ones_dropped():
    w = World(idle=30.0)
    kept = use(w, "/k")
    doc = use(w, "/d.json")  # not cacheable
    w.clock.now += 10
    use(w, "/k")
    w.clock.now += 25  # /d.json idle for 35 s, /k for 25 s
    w.handles.sweep()
    assert doc.closed == 1 and not kept.closed
    assert w.drops == ["/d.json"]


@pytest.mark.parametrize("retire", ["limit", "changed", "taint", "failed read", "idle", "unmount"])
def test_a_handle_retired_under_a_read_is_closed_when_that_read_is_done(retire):
    """Closed under a read, the handle's fd number could go to a file opened meanwhile and
    the read would serve that file's bytes: whatever retires it, the close waits."""
    w = World(limit=1, idle=30.0)
    with w.handles.reading("/r") as handle:
        with w.handles.reading("/r") as again:  # a second read of the same path at once
            assert again is handle
        if retire == "limit":
            use(w, "/other")
        elif retire == "changed":
            w.handles.changed("/r", Key("/r-v2"))
        elif retire == "taint":
            w.handles.tainted(Key("/r").hexname())
        elif retire == "failed read":
            w.handles.read_failed("/r")
        elif retire == "idle":
            w.clock.now += 31
            w.handles.sweep()
        else:
            w.handles.close()
        assert w.handles.snapshot()["kept"] == (1 if retire == "limit" else 0)
        assert handle.closed == 0
    assert handle.closed == 1


def test_the_invalidator_drops_retries_a_failure_and_sweeps():
    calls: List[str] = []
    dropped: List[str] = []
    sweeps = threading.Semaphore(0)
    fail_once = {"/bad"}
    done = threading.Event()

    def notify(path: str) -> int:
        calls.append(path)
        if path in fail_once:
            fail_once.discard(path)
            return -errno.EIO
        return 0 if path != "/gone" else -errno.ENOENT

    def on_dropped(path: str) -> None:
        dropped.append(path)
        if {"/a", "/gone", "/bad"} <= set(dropped):
            done.set()

    inv = Invalidator(notify, on_dropped, sweeps.release, every=0.05)
    inv.start()
    try:
        for path in ("/a", "/gone", "/bad"):
            inv.request(path)
        assert done.wait(WAIT), (calls, dropped)
        assert calls.count("/bad") == 2  # failed, then asked again at a sweep
        assert sweeps.acquire(timeout=WAIT)
    finally:
        inv.close()


def test_told_documents_serve_what_the_kernel_was_told_and_refresh_what_was_read():
    forgotten: List[str] = []
    drops: List[str] = []
    stamps = iter(range(1, 100))
    docs = noopen.ToldDocuments(
        forgotten.append, drops.append, limit=2, clock_ns=lambda: next(stamps)
    )
    first = b'{"n": 1}'
    assert docs.reader("/stats") is None
    assert docs.tell("/stats", first, fresh=True) == 1
    assert docs.tell("/stats", first, fresh=True) == 1  # the same bytes: the same mtime
    assert docs.tell("/doc.json", b"{}", fresh=False) == 2
    assert docs.reader("/stats").read(0, 100) == first  # type: ignore[union-attr]
    assert docs.reader("/doc.json").span(1, 5) == b"}"  # type: ignore[union-attr]
    docs.refresh()  # only the read document made anew at each open is refreshed
    assert forgotten == drops == ["/stats"]
    docs.refresh()  # not read since
    assert forgotten == ["/stats"]
    assert docs.tell("/stats", b'{"n": 22}', fresh=True) == 3  # new bytes: a new mtime
    docs.tell("/third", b"x", fresh=False)  # over the limit: the oldest told is forgotten
    assert docs.reader("/doc.json") is None and docs.reader("/third") is not None


def test_a_read_that_failed_while_retiring_another_handle_holds_nothing_open():
    """(From the review helper.)  Closing the handle retired past the limit raised in the
    middle of a read's opening: that read fails and must not keep its own handle held, or the
    handle would never be closed once retired in turn."""
    w = World(limit=1)
    a = use(w, "/a")

    def fails() -> None:
        raise OSError(errno.EIO, "close failed")

    a.close = fails  # type: ignore[method-assign]
    with pytest.raises(OSError):
        use(w, "/b")  # /b is kept; retiring /a raised
    b = w.opened[-1]
    use(w, "/c")  # /b, held by no read, is retired and closed
    assert b.key.name == "/b" and b.closed == 1


def test_a_retired_handle_outlives_a_failed_read_of_its_successor():
    """(From the review helper.)  Two reads hold /a when it is retired; a read of the new /a
    handle fails meanwhile: the old one closes with its last read, not before."""
    w = World(limit=1)
    with w.handles.reading("/a") as a, w.handles.reading("/a") as again:
        assert again is a
        use(w, "/b")  # /a retired past the limit while two reads use it
        assert not a.closed
        with pytest.raises(OSError):
            with w.handles.reading("/a") as b:
                raise OSError(errno.EIO, "a read of the new /a handle failed")
        assert not a.closed
    assert a.closed == 1 and b is not a
