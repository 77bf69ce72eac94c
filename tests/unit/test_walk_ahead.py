"""Walk-ahead (``policies.walk``) over the view engine and a toy layout whose listing loads are
recorded: what a depth-first walker gets loaded ahead of it, in which order, how many at
once, and that it stops at close."""

from __future__ import annotations

import threading
from typing import List

import pytest

from tests.helpers.waiting import wait_for
from tests.mount.toy_layout import ToyLayout
from xnatfs.cache.content import ContentCache
from xnatfs.cache.meta import MetaCache
from xnatfs.policies.walk import WalkAhead
from xnatfs.view.engine import Engine
from xnatfs.view.layout import Listing
from xnatfs.view.paths import PathParts

#: proj/subjects/S0..S5/exp/E0..E1/scans/1..2/f.dcm: a project as ``find`` walks it
TREE = {
    "proj": {
        "subjects": {
            f"S{s}": {
                "exp": {
                    f"E{e}": {"scans": {str(n): {"f.dcm": b"x"} for n in (1, 2)}} for e in (0, 1)
                }
            }
            for s in range(6)
        }
    }
}
FOLDERS = 1 + 1 + 1 + 6 * (1 + 1 + 2 * (1 + 1 + 2))  # root, proj, subjects, each subject's


class RecordingLayout(ToyLayout):
    """Records each listing load (its path) in order, and those the walk-ahead's threads made;
    ``gate`` holds the walk-ahead's loads (not the walker's) until set."""

    def __init__(self) -> None:
        super().__init__(TREE)
        self.order: List[PathParts] = []
        self.ahead: List[PathParts] = []
        self.gate = threading.Event()
        self.gate.set()
        self._order_lock = threading.Lock()

    def _load(self, parts: PathParts) -> Listing:
        by_walk_ahead = threading.current_thread().name.startswith("xnatfs-walk")
        if by_walk_ahead:
            assert self.gate.wait(30)
        with self._order_lock:
            self.order.append(parts)
            if by_walk_ahead:
                self.ahead.append(parts)
        return super()._load(parts)


@pytest.fixture
def walked(tmp_path):
    layout = RecordingLayout()
    content = ContentCache(str(tmp_path / "c"), size_limit=1 << 20, fetch=layout.fetch)
    content.start()
    eng = Engine(layout, MetaCache(ttl=60.0), content, fs_timeout=10.0)
    yield eng, layout
    eng.close()
    content.close()


def _idle(policy: WalkAhead) -> bool:
    with policy._lock:
        return policy._pending == 0


FIRST_SUBJECT = (
    "/",
    "/proj",
    "/proj/subjects",
    "/proj/subjects/S0",
    "/proj/subjects/S0/exp",
    "/proj/subjects/S0/exp/E0",
    "/proj/subjects/S0/exp/E0/scans",
)


def _wait_idle(policy: WalkAhead) -> None:
    wait_for(lambda: _idle(policy), timeout=30, what="walk-ahead idle")


def _past_first_subject_loads_held(eng: Engine, layout: RecordingLayout, policy: WalkAhead) -> int:
    """``policy`` added, the first subject walked and its loads ahead done, then the
    walk-ahead's loads held: how many it had made."""
    eng.add_policy(policy)
    _walk(eng, FIRST_SUBJECT)
    _wait_idle(policy)
    layout.gate.clear()
    return len(layout.ahead)


def _walk(eng: Engine, paths) -> None:
    """What ``find /proj`` does: each folder read before the ones below it."""
    for path in paths:
        eng.readdir(path)


def test_a_walk_that_moves_on_gets_the_next_subjects_loaded_as_deep_each_once(walked):
    """The walker went four levels below ``subjects`` in the first subject, then reads the
    second: the other subjects are loaded ahead as deep, each folder once, and the walk
    itself then loads nothing more."""
    eng, layout = walked
    policy = WalkAhead(2)
    eng.add_policy(policy)
    _walk(eng, FIRST_SUBJECT + ("/proj/subjects/S1",))
    _wait_idle(policy)
    ahead = set(layout.ahead)
    assert ("proj", "subjects", "S5", "exp", "E1", "scans") in ahead
    assert ("proj", "subjects", "S3", "exp") in ahead
    others = [p for p in ahead if p[2:3] != ("S0",)]
    assert not any(len(p) > 6 for p in others), "no deeper than the walker went"
    before = len(layout.order)
    for folder in sorted(ahead):  # the walker reaches them
        eng.listdir("/" + "/".join(folder))
    assert len(layout.order) == before, "the walker found every folder loaded"
    assert len(layout.order) == len(set(layout.order)), "no folder loaded twice"
    assert len(layout.order) <= FOLDERS


def test_browsing_into_one_child_crawls_no_sibling(walked):
    """``ls`` one level after another into the first subject (a walk, by the rule of the
    two folders above): one level below each folder read (the subjects' own listings), not
    a folder inside another subject."""
    eng, layout = walked
    policy = WalkAhead(2)
    eng.add_policy(policy)
    _walk(eng, FIRST_SUBJECT)
    _wait_idle(policy)
    assert ("proj", "subjects", "S3") in layout.ahead
    assert not [p for p in layout.ahead if len(p) > 3 and p[2] != "S0"], layout.ahead


def test_depth_bounds_how_far_below_the_walk_it_loads(walked):
    eng, layout = walked
    policy = WalkAhead(2, depth=1)
    eng.add_policy(policy)
    _walk(eng, FIRST_SUBJECT + ("/proj/subjects/S1",))
    _wait_idle(policy)
    ahead = set(layout.ahead)
    assert ("proj", "subjects", "S4") in ahead  # the next subjects, one level
    assert ("proj", "subjects", "S4", "exp") not in ahead


def test_the_folder_the_walker_reaches_next_is_loaded_first(walked):
    """Served in path order (depth first, by name, as walkers go), not in the order queued:
    with one thread and the loads held, the queue's order shows once released."""
    eng, layout = walked
    policy = WalkAhead(1)
    start = _past_first_subject_loads_held(eng, layout, policy)
    eng.readdir("/proj/subjects/S1")  # the walker's own load is not held
    assert policy._pending >= 5
    layout.gate.set()
    _wait_idle(policy)
    ahead = layout.ahead[start:]
    # the one worker took the first queued before the rest arrived; after it, path order
    assert ahead[1:] == sorted(ahead[1:]), ahead
    assert len(ahead) >= 10


def test_at_most_queue_listings_wait(walked):
    eng, layout = walked
    policy = WalkAhead(1, queue=3)
    _past_first_subject_loads_held(eng, layout, policy)
    eng.readdir("/proj/subjects/S1")  # four more subjects to queue, three places
    with policy._lock:
        assert policy._pending == 3
    layout.gate.set()
    _wait_idle(policy)


def test_close_drops_what_is_queued_and_ends_the_workers(walked):
    eng, layout = walked
    policy = WalkAhead(2)
    start = _past_first_subject_loads_held(eng, layout, policy)
    eng.readdir("/proj/subjects/S1")
    assert policy._pending >= 4
    policy.close()
    layout.gate.set()  # the two held loads finish; those queued never start
    for worker in policy._workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    assert len(layout.ahead) - start <= 2
    _walk(eng, ("/proj/subjects/S2", "/proj/subjects/S3"))  # a walk after close queues nothing
    assert len(layout.ahead) - start <= 2
