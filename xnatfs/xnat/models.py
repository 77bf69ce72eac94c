"""Typed records for what XNAT lists.  Raw XNAT JSON stops here: the client turns ResultSet rows
(where every value is a string, ``docs/XNAT-API.md`` §1.1, §10.9) into these dataclasses, and the
layers above never see a dict from the server.

Times are POSIX seconds (float) or ``None`` when XNAT gave nothing usable.  ``uri`` fields are
server paths that already carry the ``/data`` prefix but not the context path (the client adds
the base URL), so they can be passed straight back to the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional


@dataclass(frozen=True)
class Project:
    id: str
    name: str = ""
    secondary_id: str = ""
    description: str = ""
    #: ``/data/projects/{ID}``
    uri: str = ""
    mtime: Optional[float] = None
    #: every column the server sent, as strings (for ``user.xnat.*`` xattrs)
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Subject:
    id: str
    label: str
    #: the primary (owning) project, which may differ from the project it was listed under
    #: when the subject is shared (``docs/XNAT-API.md`` §10.1)
    project: str = ""
    #: project-scoped: ``/data/projects/{P}/subjects/{ID}``
    uri: str = ""
    mtime: Optional[float] = None
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Experiment:
    id: str
    label: str
    project: str = ""
    subject_id: str = ""
    xsi_type: str = ""
    date: str = ""
    #: ``/data/experiments/{ID}`` (accession-ID addressing works everywhere, §0.1)
    uri: str = ""
    mtime: Optional[float] = None
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Scan:
    #: scan IDs are strings, not necessarily integers (§10.18)
    id: str
    type: str = ""
    series_description: str = ""
    xsi_type: str = ""
    quality: str = ""
    #: ``/data/experiments/{E}/scans/{ID}``
    uri: str = ""
    mtime: Optional[float] = None
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Assessor:
    id: str
    label: str
    xsi_type: str = ""
    #: ``/data/experiments/{E}/assessors/{ID}``
    uri: str = ""
    mtime: Optional[float] = None
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Resource:
    #: numeric ``xnat_abstractresource_id`` as a string; resource rows have no ID/URI (§1.7)
    id: str
    label: str
    format: str = ""
    content: str = ""
    tags: str = ""
    #: ``None`` when XNAT has not computed the stats (empty string in the listing)
    file_count: Optional[int] = None
    file_size: Optional[int] = None
    #: ``<parent uri>/resources/{id}``
    uri: str = ""
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class FileEntry:
    #: path relative to the resource root, sub-folders kept: the part of URI after ``/files/``
    #: (§1.8); ``Name`` is only the basename
    path: str
    size: int
    #: the server's URI, never rebuilt (§1.8); XNAT sends it raw, and it is kept here
    #: percent-encoded for the wire (``parse.wire_uri``) so that any name round-trips
    uri: str
    #: MD5 hex from the ``digest`` column; "" when the site has checksums off
    digest: str = ""
    collection: str = ""
    format: str = ""
    content: str = ""
    tags: str = ""
    #: listings carry no per-file time; filled from ``Last-Modified`` when known
    mtime: Optional[float] = None
    #: why this row cannot be served ("" when it can): a size outside 0..2^63-1 or not a
    #: number, a URI that leaves ``/data/`` (issue 17 §8); the file then answers EIO
    problem: str = ""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PrearchiveSession:
    project: str
    timestamp: str
    name: str
    folder_name: str = ""
    subject: str = ""
    status: str = ""
    #: ``/data/prearchive/projects/{P}/{timestamp}/{folder}``: the listing's ``url`` lacks the
    #: ``/data`` prefix (§10.20); the client adds it
    uri: str = ""
    mtime: Optional[float] = None
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class RemoteStat:
    """What a HEAD (or the headers of a GET) says about one file (§3.1)."""

    size: Optional[int]
    mtime: Optional[float]
    content_type: str = ""
