"""What the view engine holds without asking the source: nodes and names from the listings it
keeps, fresh or last seen.

A refresh (``fs/ops.py`` ``_refresh``) makes the kernel forget every name these listings gave
it: the kernel keeps a name for a whole listing TTL from its own lookup, which may outlive the
engine's fresh copy of the folder above it, so the last seen listings count too.  Nothing here
makes a request: a folder whose listing is not held is not looked into.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from xnatfs.view.layout import Fixed, Listing
from xnatfs.view.node import NodeInfo
from xnatfs.view.paths import PathParts, join_path, split_path

if TYPE_CHECKING:  # the engine imports this module
    from xnatfs.view.engine import Engine


def held_listing(engine: "Engine", parts: PathParts, node: NodeInfo) -> Optional[Listing]:
    """The children of folder ``node`` at ``parts`` as held (fixed, fresh or last seen)."""
    if not node.is_dir:
        return None
    children = engine.descriptor(parts, node)
    if children is None:
        return None
    if isinstance(children, Fixed):
        return children.listing
    value = engine.last_seen(children.key)
    if value is None:
        return None
    try:
        return children.select(value)
    except OSError:  # the folder is not in the listing held (gone since)
        return None


def held_node(engine: "Engine", parts: PathParts) -> Optional[NodeInfo]:
    """The node at ``parts`` as held: its own cached entry, else its folder's held listing
    (which outlives the entry: the entry of a folder expires a TTL after it was stored, while
    its listing is kept as last seen).  None when neither is held."""
    node = engine.peek_node(parts)
    if node is not None:
        return node
    if len(parts) <= 1 and (not parts or engine.layout_of(parts)[1]):
        return engine.node(parts)  # the root, a mounted view's root: made, never asked for
    parent = held_node(engine, parts[:-1])
    listing = None if parent is None else held_listing(engine, parts[:-1], parent)
    return None if listing is None else listing.children.get(parts[-1])


def known_below(engine: "Engine", path: str, limit: int = 50_000) -> List[str]:
    """Paths below ``path`` that a listing the engine holds names, at most ``limit``; [] when
    ``path`` itself is not held."""
    start = split_path(path)
    node = held_node(engine, start)
    if node is None:
        return []
    found: List[str] = []
    stack: List[Tuple[PathParts, NodeInfo]] = [(start, node)]
    while stack and len(found) < limit:
        parts, node = stack.pop()
        listing = held_listing(engine, parts, node)
        if listing is None:
            continue
        for name, child in listing.children.items():
            found.append(join_path(parts + (name,)))
            stack.append((parts + (name,), child))
    return found[:limit]
