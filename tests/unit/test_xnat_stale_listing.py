"""Stale-while-slow listings in ``Engine.cached`` (``view/engine.py``, issue 18 §0.3), with a
fake client and a fake clock: no sockets, no FUSE.  The mount-level proof is
tests/reliability/test_stalled_server.py."""

from __future__ import annotations

import threading
import time
from typing import List

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.cache.meta import MetaCache
from xnatfs.tree.tree import Tree
from xnatfs.xnat import errors
from xnatfs.xnat.models import Project

TTL = 10.0
FS_TIMEOUT = 4.0  # stale_grace = 1 s


class FakeClient:
    """``list_projects`` answers ``projects``; while ``gate`` is clear it hangs (a stopped
    server), or raises ``error`` when set."""

    base_url = "http://fake"

    def __init__(self) -> None:
        self.projects: List[str] = ["P1"]
        self.gate = threading.Event()
        self.gate.set()
        self.error: Exception = None  # type: ignore[assignment]
        self.calls = 0

    def list_projects(self) -> List[Project]:
        self.calls += 1
        assert self.gate.wait(30), "test forgot to open the gate"
        if self.error is not None:
            raise self.error
        return [Project(id=p, uri=f"/data/projects/{p}") for p in self.projects]

    def list_prearchive(self, project=None):
        return []


@pytest.fixture
def setup():
    clock = FakeClock()
    client = FakeClient()
    tree = Tree(client, MetaCache(ttl=TTL, timer=clock), content=None, fs_timeout=FS_TIMEOUT)
    yield tree, client, clock
    client.gate.set()
    tree.close()


def names(tree: Tree) -> List[str]:
    return sorted(n.name for n in tree.listdir("/") if not n.name.startswith("."))


def test_an_expired_listing_is_shown_at_once_while_the_server_hangs(setup):
    tree, client, clock = setup
    assert names(tree) == ["P1"] and client.calls == 1
    clock.now += TTL + 1
    client.gate.clear()  # the server stops answering
    client.projects = ["P1", "P2"]
    t0 = time.monotonic()
    assert names(tree) == ["P1"]  # the listing seen before, after at most the grace
    first = time.monotonic() - t0
    assert first < tree.stale_grace + 2.0  # generous; before: until the server answered
    t0 = time.monotonic()
    for _ in range(5):
        assert names(tree) == ["P1"]
    assert time.monotonic() - t0 < 1.0  # known slow: no waiting at all
    assert client.calls == 2  # one refresh in flight, not one per call
    client.gate.set()  # the server answers again: the refresh lands
    end = time.monotonic() + 10
    while names(tree) != ["P1", "P2"] and time.monotonic() < end:
        time.sleep(0.01)
    assert names(tree) == ["P1", "P2"]


def test_a_refresh_that_fails_for_good_is_reported_and_forgets_the_listing(setup):
    tree, client, clock = setup
    names(tree)
    clock.now += TTL + 1
    client.error = errors.Forbidden("GET", "http://fake/data/projects", 403, "no")
    with pytest.raises(errors.Forbidden):
        names(tree)
    with pytest.raises(errors.Forbidden):  # not served from the old listing any more
        names(tree)


def test_a_transient_failure_keeps_the_listing_seen_before(setup):
    tree, client, clock = setup
    names(tree)
    clock.now += TTL + 1
    client.error = errors.ServerError(
        "GET", "http://fake/data/projects", 503, "busy", retryable=True
    )
    assert names(tree) == ["P1"]


def test_the_control_folder_never_waits_for_the_root_listing(setup):
    tree, client, clock = setup
    client.gate.clear()  # the very first root listing hangs
    stuck = threading.Thread(target=names, args=(tree,), daemon=True)
    stuck.start()
    end = time.monotonic() + 10
    while client.calls == 0 and time.monotonic() < end:
        time.sleep(0.01)
    t0 = time.monotonic()
    assert tree.lookup("/.xnatfs/stats").name == "stats"
    assert {n.name for n in tree.listdir("/.xnatfs")} == {"stats", "metrics"}
    assert time.monotonic() - t0 < 1.0
    client.gate.set()
    stuck.join(10)
