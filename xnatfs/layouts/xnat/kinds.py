"""The kinds of node in XNAT's layout and what the shape of the hierarchy says about them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, Tuple

from xnatfs.view.node import Ref


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
    PREARCHIVE = "prearchive"  # MNT/.prearchive
    PRE_PROJECT = "prearchive-project"  # MNT/.prearchive/P
    PRE_TIMESTAMP = "prearchive-timestamp"
    PRE_SESSION = "prearchive-session"
    CONTROL = "control"  # MNT/.xnatfs
    #: generated files: ``.xnat.json``, ``.zip`` (made at lookup, true size), ``.xnatfs/stats``
    VIRTUAL = "virtual"


class Gen(enum.Enum):
    """Recipes of generated files (``view.node.Generated.what``)."""

    JSON = "json"  # .xnat.json: the object's fields
    ZIP = "zip"  # .zip: XNAT's own zip download (§3.3)
    STATS = "stats"  # .xnatfs/stats
    METRICS = "metrics"  # .xnatfs/metrics


@dataclass(frozen=True)
class Timestamp(Ref):
    """A prearchive timestamp folder's timestamp (its sessions are those listed with it)."""

    value: str


#: kinds whose children are fixed names, so listing them costs no request
FIXED_CHILDREN: Mapping[Kind, Tuple[Tuple[str, Kind], ...]] = {
    Kind.PROJECT: (("resources", Kind.RESOURCES), ("subjects", Kind.SUBJECTS)),
    Kind.SUBJECT: (("experiments", Kind.EXPERIMENTS), ("resources", Kind.RESOURCES)),
    Kind.EXPERIMENT: (
        ("assessors", Kind.ASSESSORS),
        ("resources", Kind.RESOURCES),
        ("scans", Kind.SCANS),
    ),
    Kind.SCAN: (("resources", Kind.RESOURCES),),
    Kind.ASSESSOR: (("resources", Kind.RESOURCES),),
    Kind.RESOURCE: (("files", Kind.FILES),),
    Kind.PRE_SESSION: (("scans", Kind.SCANS),),
}

#: object directories that carry an unlisted ``.xnat.json``
JSON_KINDS = frozenset(
    {
        Kind.PROJECT,
        Kind.SUBJECT,
        Kind.EXPERIMENT,
        Kind.SCAN,
        Kind.ASSESSOR,
        Kind.RESOURCE,
        Kind.PRE_SESSION,
    }
)
#: directories that carry an unlisted ``.zip`` bundle (XNAT's own zip download, §3.3)
ZIP_KINDS = frozenset({Kind.EXPERIMENT, Kind.SCAN, Kind.RESOURCE})

#: directories where files or objects can be made (``writes.Writer``)
WRITABLE_DIRS = frozenset(
    {Kind.FILES, Kind.RESOURCES, Kind.SUBJECTS, Kind.EXPERIMENTS, Kind.SCANS, Kind.PRE_PROJECT}
)

JSON_NAME = ".xnat.json"
ZIP_NAME = ".zip"
PREARCHIVE_NAME = ".prearchive"
CONTROL_NAME = ".xnatfs"
