"""A path resolver over a layout with no engine, no caching and no FUSE: enough to drive the
BIDS layout's contract (children/lookup/open) in-process against the emulator."""

from __future__ import annotations

import errno
import time
from typing import Any, List, Tuple

from xnatfs.view.layout import Fixed, Listing
from xnatfs.view.node import NodeInfo


class MiniView:
    def __init__(self, layout: Any) -> None:
        self.layout = layout

    def listing(self, parts: Tuple[str, ...], node: NodeInfo) -> Listing:
        desc = self.layout.children(parts, node)
        if isinstance(desc, Fixed):
            return desc.listing
        return desc.select(desc.load())

    def lookup(self, path: str) -> NodeInfo:
        parts = tuple(p for p in path.split("/") if p)
        node = self.layout.root()
        for i, name in enumerate(parts):
            found = self.layout.lookup(parts[:i], node, name)
            if found is None:
                listing = self.listing(parts[:i], node)
                found = listing.children.get(name)
            if found is None:
                raise OSError(errno.ENOENT, path)
            node = found
        return node

    def listdir(self, path: str) -> List[str]:
        parts = tuple(p for p in path.split("/") if p)
        return sorted(self.listing(parts, self.lookup(path)).children)

    def read(self, path: str, timeout: float = 60.0) -> bytes:
        node = self.lookup(path)
        opened = self.layout.open(node, path)
        if opened.data is not None:
            return opened.data
        handle = opened.handle
        if opened.key is not None:
            handle = self.layout.src.content.open(opened.key)
        deadline = time.monotonic() + timeout
        out = bytearray()
        try:
            while True:
                chunk = handle.read(len(out), 1 << 20, deadline)
                if not chunk:
                    return bytes(out)
                out += chunk
        finally:
            handle.close()
