"""``policies.prefetch.Prefetch``: which files an open asks the cache for, and how often."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from xnatfs.cache.key import ContentKey
from xnatfs.policies.prefetch import Prefetch
from xnatfs.view.layout import Listing
from xnatfs.view.node import NodeInfo


class Content:
    """Records what ``prefetch`` was asked (the cache's side is tests/unit/test_content_cache)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[List[str], Optional[str]]] = []

    def prefetch(self, keys: Any, after: Optional[ContentKey] = None) -> int:
        self.calls.append(([k.uri for k in keys], after.uri if after else None))
        return 0


class View:
    """One folder of ``n`` files, ``f000``..."""

    def __init__(self, n: int) -> None:
        self.listing_ = Listing()
        for i in range(n):
            self.listing_.add(NodeInfo(f"f{i:03d}", "file", False, size=1, uri=f"/f{i:03d}"))
        self.content = Content()

    def node(self, parts: Tuple[str, ...]) -> NodeInfo:
        return NodeInfo("dir", "folder", True)

    def listing(self, parts: Tuple[str, ...], folder: NodeInfo) -> Listing:
        return self.listing_

    def content_key(self, node: NodeInfo) -> ContentKey:
        return ContentKey(node.uri, node.size, "")

    def open(self, policy: Prefetch, i: int) -> bool:
        name = f"f{i:03d}"
        return policy.on_open(self, ("dir", name), self.listing_.children[name])  # type: ignore[arg-type]


def names(a: int, b: int) -> List[str]:
    return [f"/f{i:03d}" for i in range(a, b)]


def test_a_reader_going_through_a_folder_asks_once_per_half_window() -> None:
    view, policy = View(40), Prefetch(8)
    for i in range(40):
        assert view.open(policy, i)
    # the first open queues a whole window; later ones only when 4 or fewer are left ahead,
    # each time up to a full window ahead of the reader (every file asked for exactly once)
    assert view.content.calls == [
        (names(1, 9), "/f000"),
        (names(9, 13), "/f004"),
        (names(13, 17), "/f008"),
        (names(17, 21), "/f012"),
        (names(21, 25), "/f016"),
        (names(25, 29), "/f020"),
        (names(29, 33), "/f024"),
        (names(33, 37), "/f028"),
        (names(37, 40), "/f032"),
    ]


def test_a_jump_or_going_back_queues_a_new_window() -> None:
    view, policy = View(40), Prefetch(8)
    for i in (0, 1, 0, 30, 0):
        view.open(policy, i)
    assert view.content.calls == [
        (names(1, 9), "/f000"),  # the second open of f000 finds this window still queued
        (names(31, 39), "/f030"),  # jumped past the window
        (names(1, 9), "/f000"),  # went back before it (a second pass): asked again
    ]


def test_a_listing_loaded_anew_is_taken_up_at_the_next_refill() -> None:
    view, policy = View(10), Prefetch(8)
    for i in range(3):
        view.open(policy, i)
    assert view.content.calls == [(names(1, 9), "/f000")]
    view.listing_ = View(30).listing_  # the folder's listing expired and came back longer
    for i in range(3, 30):
        view.open(policy, i)
    asked = [uri for uris, _ in view.content.calls for uri in uris]
    assert asked[: len(names(1, 9))] == names(1, 9)
    # the new listing's window starts again after the reader (the cache skips what it has)
    assert view.content.calls[1] == (names(5, 13), "/f004")
    assert set(asked) == set(names(1, 30))
