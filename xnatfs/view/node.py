"""What a node of the mounted tree is: a fixed-shape ``NodeInfo`` and a typed reference.

``Engine.lookup`` returns a ``NodeInfo`` and ``Engine.open`` takes it back, so the object that was
stat'ed is the one opened and the path is not resolved twice (ratarmount ``FileInfo``).

The engine reads only ``name``, ``is_dir``, ``size``, ``mtime``, ``ref`` and ``mount``; every
other field belongs to the layout that made the node (XNAT's uses them all; a toy layout may
leave them empty).  ``kind`` is the layout's own tag (an enum of its own); the engine never
looks at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Ref:
    """What a node refers to, beyond its fields.  A closed set for the engine (``Record``,
    ``Generated``, ``Local``); a layout may subclass ``Ref`` for its own needs (the XNAT layout's
    prearchive ``Timestamp``) and the engine treats such a node like one with a ``Record``."""


@dataclass(frozen=True)
class Record(Ref):
    """The record the layout's source listed for this node (for XNAT: a ``xnat.models`` row)."""

    value: Any


@dataclass(frozen=True)
class Generated(Ref):
    """A file the layout makes (a document, a server-made bundle), not one listed by the source.

    ``what`` names the recipe (the layout's own enum); ``parent`` is the directory node it is
    made from, if any.  The engine never keeps a generated node in its node cache, and serves it
    with direct I/O (a document made again may change length).

    ``sized``: True means stat must show the true size (``shutil``, ``rsync``, ``zipfile``
    trust it): the engine opens the file at lookup (``Layout.open``) and sizes it: bytes are
    kept per path for as long as a listing is (so the read gives exactly what stat said); a
    ``ContentKey`` is downloaded into the content cache within the call's deadline and its
    file size taken (ETIMEDOUT if it is not there in time; the download goes on).  False: the
    size is whatever the layout put in the node (``.xnatfs/stats`` shows 0) and each open makes
    the bytes anew.
    """

    what: Hashable
    parent: Optional["NodeInfo"] = None
    sized: bool = True


@dataclass(frozen=True)
class Local(Ref):
    """A node of the overlay: something written on this mount that the source does not show
    yet.  ``file`` is the overlay's own record of a file (``tree.writes.LocalFile``); None for a
    folder made by ``mkdir`` (which has no children on the server: the engine lists it empty and
    adds the overlay's children)."""

    file: Any = None


@dataclass(frozen=True)
class NodeInfo:
    """One node.  Directories carry what is needed to list their children without walking up."""

    name: str
    #: the layout's tag for the node (XNAT: ``layouts.xnat.Kind``); opaque to the engine
    kind: Hashable
    is_dir: bool
    #: bytes; generated files that are not ``sized`` show 0 (they are served with direct_io)
    size: int = 0
    mtime: float = 0.0
    #: source URI of the object this node shows (XNAT: for a file, the file's URI verbatim)
    uri: str = ""
    project: str = ""
    subject: str = ""
    #: inside a folder tree loaded as one request (XNAT ``files/``): the path below its root
    subpath: Tuple[str, ...] = ()
    #: MD5 from the listing (files only)
    digest: str = ""
    #: XNAT: the node lives in the prearchive (different listing endpoints, §7.2)
    prearchive: bool = False
    #: what the node refers to (typed; None for plain folders)
    ref: Optional[Ref] = field(default=None, compare=False)
    #: extended attributes (served as ``user.xnat.<name>``), without the prefix
    attrs: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: the top-level mount name of the layout the node belongs to ("" for the main layout);
    #: set by the engine on every node ``Engine.lookup`` returns
    mount: str = field(default="", compare=False)
    #: shown to the mount's owner only (permission bits ``& 0o700``, ``fs/ops``): the mount's
    #: own control files (``.xnatfs/``), which tell what the owner does, not the archive
    private: bool = False

    @property
    def record(self) -> Any:
        """The source's record (``Record.value``), else None."""
        ref = self.ref
        return ref.value if isinstance(ref, Record) else None

    @property
    def is_local(self) -> bool:
        """Made on this mount and not (yet) shown by the source (the overlay's)."""
        return isinstance(self.ref, Local)

    @property
    def local_file(self) -> Any:
        """The overlay's record of a local file, else None."""
        ref = self.ref
        return ref.file if isinstance(ref, Local) else None
