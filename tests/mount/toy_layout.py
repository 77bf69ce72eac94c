"""A toy layout: a dict of dicts shown through the view engine and the FUSE adapter (#14).

``ToyLayout`` is the whole layout (one class over ``view.layout.BaseLayout``): folders are dicts,
files are bytes.  Run as a script (``python toy_layout.py MNT CACHE``), it mounts ``TREE`` at MNT
and ``MIRROR`` at ``MNT/.mirror`` with the same ``Engine``, the same content cache and the same
``fs.ops.XnatOperations`` that serve XNAT, in the foreground, until unmounted.  Nothing here
knows XNAT.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

from xnatfs.cache.content import ContentKey
from xnatfs.view.layout import BaseLayout, Children, Listing, Loaded, Opened
from xnatfs.view.node import Generated, NodeInfo
from xnatfs.view.paths import PathParts

Tree = Dict[str, Union[bytes, "Tree"]]

EPOCH = 1_700_000_000.0
TREE: Tree = {
    "top.txt": b"top of the toy\n",
    "docs": {"readme.txt": b"hello from a dict\n", "empty.txt": b""},
    "data": {"deep": {"numbers.bin": bytes(range(256)) * 4096}},  # 1 MiB: several FUSE reads
}
MIRROR: Tree = {"only-here.txt": b"a second layout in the same mount\n"}
#: an unlisted name every folder answers: a document about the folder, sized at lookup
ABOUT = ".about.json"


class ToyLayout(BaseLayout):
    """Folders of ``tree`` (dicts) and their files (bytes), read through the content cache.
    ``loads`` counts listing loads (each folder is one "request")."""

    source = "the toy dict"

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.loads = 0
        self._root = NodeInfo(name="", kind="folder", is_dir=True, mtime=EPOCH)

    def _at(self, parts: PathParts) -> Union[bytes, Tree]:
        value: Union[bytes, Tree] = self.tree
        for name in parts:
            if not isinstance(value, dict) or name not in value:
                raise FileNotFoundError(2, "not in the toy tree", "/".join(parts))
            value = value[name]
        return value

    def root(self) -> NodeInfo:
        return self._root

    def children(self, parts: PathParts, node: NodeInfo) -> Children:
        return Loaded(parts, lambda: self._load(parts))

    def _load(self, parts: PathParts) -> Listing:
        self.loads += 1
        listing = Listing()
        folder = self._at(parts)
        assert isinstance(folder, dict)
        for name, value in folder.items():
            path = "/".join(parts + (name,))
            if isinstance(value, dict):
                listing.add(NodeInfo(name=name, kind="folder", is_dir=True, mtime=EPOCH, uri=path))
            else:
                listing.add(
                    NodeInfo(
                        name=name,
                        kind="file",
                        is_dir=False,
                        size=len(value),
                        mtime=EPOCH + len(value),
                        uri=path,
                        digest=hashlib.md5(value).hexdigest(),
                        attrs={"toy_path": path, "uri": path},
                    )
                )
        return listing

    def lookup(self, parts: PathParts, parent: NodeInfo, name: str) -> Optional[NodeInfo]:
        if name != ABOUT:
            return None
        return NodeInfo(
            name=name,
            kind="about",
            is_dir=False,
            mtime=EPOCH,
            uri=parent.uri,
            ref=Generated("about", parent),
        )

    def open(self, node: NodeInfo, path: str) -> Opened:
        if isinstance(node.ref, Generated):
            folder = self._at(tuple(p for p in node.uri.split("/") if p))
            doc = {"folder": node.uri, "entries": sorted(folder)}  # type: ignore[arg-type]
            return Opened(data=(json.dumps(doc) + "\n").encode(), direct_io=True)
        return Opened(key=self.content_key(node))

    def content_key(self, node: NodeInfo) -> Optional[ContentKey]:
        if node.is_dir or node.kind != "file":
            return None
        return ContentKey(uri=self.source_uri(node), size=node.size, digest=node.digest)

    def source_uri(self, node: NodeInfo) -> str:
        return f"toy:{id(self)}:{node.uri}"

    def fetch(self, uri: str, sink: Any) -> None:
        """The content cache's way to the bytes (``cache.content.Fetch``)."""
        value = self._at(tuple(p for p in uri.split(":", 2)[2].split("/") if p))
        assert isinstance(value, bytes)
        sink(value)

    def attributes(self, node: NodeInfo) -> Dict[str, str]:
        attrs = super().attributes(node)
        if not node.is_dir:
            attrs["layout"] = "toy"
        return attrs

    def cacheable(self, node: NodeInfo) -> bool:
        return node.kind == "file"


class ToyRuntime:
    """What ``fs.ops.XnatOperations`` needs of a runtime: options, tree, writer, note_error,
    note_fuse."""

    def __init__(self, cache_dir: Path) -> None:
        from xnatfs.cache.content import ContentCache
        from xnatfs.cache.meta import MetaCache
        from xnatfs.options import Options
        from xnatfs.view.engine import Engine

        self.options = Options(url="toy://dict", cache_dir=cache_dir)
        self.main, self.mirror = ToyLayout(TREE), ToyLayout(MIRROR)
        layouts = {f"toy:{id(self.main)}": self.main, f"toy:{id(self.mirror)}": self.mirror}

        def fetch(uri: str, sink: Any) -> None:
            layouts[uri.rsplit(":", 1)[0]].fetch(uri, sink)

        self.content = ContentCache(str(cache_dir / "content"), size_limit=64 << 20, fetch=fetch)
        self.content.start()
        self.tree = Engine(
            self.main,
            MetaCache(ttl=30.0),
            self.content,
            fs_timeout=20.0,
            mounts={".mirror": self.mirror},
        )
        self.writer = None
        self.errors: Dict[str, int] = {}
        self.calls: Dict[str, int] = {}

    def note_error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1

    def note_fuse(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def close(self) -> None:
        self.tree.close()
        self.content.close()


def main(mountpoint: str, cache_dir: str) -> int:
    from xnatfs.cli import fuse_kwargs
    from xnatfs.fs.fuselib import load
    from xnatfs.fs.ops import XnatFUSE, XnatOperations

    mfusepy = load()
    runtime = ToyRuntime(Path(cache_dir))
    try:
        XnatFUSE(
            XnatOperations(runtime),
            mountpoint,
            foreground=True,
            raw_fi=True,
            **fuse_kwargs(runtime.options, mfusepy),
        )
    except RuntimeError as exc:  # libfuse3 returns 7/8 after a clean unmount by signal
        if str(exc) not in ("7", "8"):
            raise
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
