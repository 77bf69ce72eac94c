"""What a node of the mounted tree is: a fixed-shape ``NodeInfo`` record and the node kinds.

``Tree.lookup`` returns a ``NodeInfo`` and ``Tree.open`` takes it back, so the object that was
stat'ed is the one opened and the path is not resolved twice (ratarmount ``FileInfo``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Tuple


class Kind(enum.Enum):
    ROOT = "root"
    PROJECT = "project"
    SUBJECTS = "subjects"
    SUBJECT = "subject"
    EXPERIMENTS = "experiments"
    EXPERIMENT = "experiment"
    SCANS = "scans"
    SCAN = "scan"
    ASSESSORS = "assessors"
    ASSESSOR = "assessor"
    RESOURCES = "resources"
    RESOURCE = "resource"
    #: ``.../resources/R/files`` and every sub-folder below it
    FILES = "files"
    FILE = "file"
    PREARCHIVE = "prearchive"          # MNT/.prearchive
    PRE_PROJECT = "prearchive-project"  # MNT/.prearchive/P
    PRE_TIMESTAMP = "prearchive-timestamp"
    PRE_SESSION = "prearchive-session"
    CONTROL = "control"                # MNT/.xnatfs
    #: generated files: ``.xnat.json``, ``.zip`` (made at lookup, true size), ``.xnatfs/stats``
    VIRTUAL = "virtual"


#: kinds whose children are fixed names, so listing them costs no request
FIXED_CHILDREN: Mapping[Kind, Tuple[Tuple[str, Kind], ...]] = {
    Kind.PROJECT: (("resources", Kind.RESOURCES), ("subjects", Kind.SUBJECTS)),
    Kind.SUBJECT: (("experiments", Kind.EXPERIMENTS), ("resources", Kind.RESOURCES)),
    Kind.EXPERIMENT: (("assessors", Kind.ASSESSORS), ("resources", Kind.RESOURCES),
                      ("scans", Kind.SCANS)),
    Kind.SCAN: (("resources", Kind.RESOURCES),),
    Kind.ASSESSOR: (("resources", Kind.RESOURCES),),
    Kind.RESOURCE: (("files", Kind.FILES),),
    Kind.PRE_SESSION: (("scans", Kind.SCANS),),
}

#: object directories that carry an unlisted ``.xnat.json``
JSON_KINDS = frozenset({Kind.PROJECT, Kind.SUBJECT, Kind.EXPERIMENT, Kind.SCAN, Kind.ASSESSOR,
                        Kind.RESOURCE, Kind.PRE_SESSION})
#: directories that carry an unlisted ``.zip`` bundle (XNAT's own zip download, §3.3)
ZIP_KINDS = frozenset({Kind.EXPERIMENT, Kind.SCAN, Kind.RESOURCE})

#: directories where files or objects can be made (``writes.Writer``)
WRITABLE_DIRS = frozenset({Kind.FILES, Kind.RESOURCES, Kind.SUBJECTS, Kind.EXPERIMENTS,
                           Kind.SCANS, Kind.PRE_PROJECT})

JSON_NAME = ".xnat.json"
ZIP_NAME = ".zip"


@dataclass(frozen=True)
class NodeInfo:
    """One node.  Directories carry what is needed to list their children without walking up."""

    name: str
    kind: Kind
    is_dir: bool
    #: bytes; ``.xnatfs/`` files show 0 (they are served with direct_io)
    size: int = 0
    mtime: float = 0.0
    #: XNAT URI of the object this node shows (for a FILE: the file's URI verbatim)
    uri: str = ""
    project: str = ""
    subject: str = ""
    #: inside ``files/``: the sub-folder path below the resource root
    subpath: Tuple[str, ...] = ()
    #: MD5 from the listing (files only)
    digest: str = ""
    #: the node lives in the prearchive (different listing endpoints, §7.2)
    prearchive: bool = False
    #: the record XNAT listed for this node (a models.* dataclass) or the virtual file's recipe
    ref: Any = field(default=None, compare=False)
    #: ``user.xnat.*`` attributes, without the prefix
    attrs: Mapping[str, str] = field(default_factory=dict, compare=False)
