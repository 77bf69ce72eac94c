"""What an upload goes to: a frozen record, persisted in the journal's sidecars.

Two kinds (``docs/LAYOUT.md`` §1.3):

- ``file``: PUT the bytes to ``<resource_uri>/files/<relpath>`` (``overwrite`` when it
  replaces a file XNAT has).  ``relpath`` is the name as XNAT has it, raw: the file's URI
  (its name percent-encoded, as XNAT's listing gives it) is ``xnat.parse.file_uri``'s, made
  where requests are (this module knows no URL rules);
- ``import``: POST an archive to the import service (``project``, ``subject``, ``dest``,
  ``content_type``), which makes sessions of it.

``listing`` is the mount path (as parts) of the folder whose listing shows the file once
XNAT has it: the writer invalidates it then.

The JSON shape is the one the journal has always written (a plain object with ``kind`` and
the fields of that kind), so sidecars of earlier versions load unchanged and a sidecar this
version writes is read by them.  Unknown kinds load too (as they did): the writer refuses to
upload them (EINVAL) and the entry stays listed as failed, its bytes kept.

This module imports nothing from the rest of xnatfs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["UploadTarget", "FILE", "IMPORT"]

FILE = "file"
IMPORT = "import"

_DEFAULT_ARCHIVE_TYPE = "application/zip"


@dataclass(frozen=True)
class UploadTarget:
    """Where the bytes of one journal entry go.  Frozen: use ``dataclasses.replace``."""

    #: ``file`` or ``import`` (anything else is kept but never uploaded)
    kind: str
    #: file: the resource's URI (``/data/.../resources/<label>``)
    resource_uri: str = ""
    #: file: path below the resource's ``files/`` (folders included)
    relpath: str = ""
    #: file: replace what XNAT has at that path
    overwrite: bool = False
    #: file: the MD5 of the bytes this version replaces (the mount's own earlier version of
    #: the file); "" when not known.  Another file found there is not replaced, with or
    #: without --allow-delete (``UploadPath._check_replaces``)
    replaces_md5: str = ""
    #: file: the MD5s XNAT held at this name when the user's change began (a file on XNAT
    #: opened to change in place, truncated, or renamed over; a local file renamed over, with
    #: its versions): what the user's version was made over.  With --allow-delete too, an
    #: upload that finds another MD5 there (another client stored it meanwhile) does not
    #: overwrite it (``UploadPath._check_replaces``).  () when not known: sidecars written
    #: before this field, or a listing without MD5s
    base_md5s: Tuple[str, ...] = ()
    #: mount path parts of the folder to refresh once XNAT has the bytes
    listing: Tuple[str, ...] = ()
    #: import: project the sessions go to
    project: str = ""
    #: import: subject (None lets XNAT take it from the archive)
    subject: Optional[str] = None
    #: import: ``/archive`` or ``/prearchive/projects/<P>``
    dest: str = ""
    #: import: MIME type of the archive
    content_type: str = _DEFAULT_ARCHIVE_TYPE

    @classmethod
    def file(
        cls, resource_uri: str, relpath: str, listing: Sequence[str] = (), overwrite: bool = False
    ) -> "UploadTarget":
        return cls(
            FILE,
            resource_uri=resource_uri,
            relpath=relpath,
            overwrite=overwrite,
            listing=tuple(listing),
        )

    @classmethod
    def archive_import(
        cls,
        project: str,
        dest: str,
        listing: Sequence[str] = (),
        subject: Optional[str] = None,
        content_type: str = _DEFAULT_ARCHIVE_TYPE,
    ) -> "UploadTarget":
        return cls(
            IMPORT,
            project=project,
            subject=subject,
            dest=dest,
            listing=tuple(listing),
            content_type=content_type,
        )

    @property
    def is_file(self) -> bool:
        return self.kind == FILE

    @property
    def is_import(self) -> bool:
        return self.kind == IMPORT

    def to_json(self) -> Dict[str, Any]:
        """The sidecar's ``target`` object: the fields of this kind, in the historical shape."""
        doc: Dict[str, Any] = {"kind": self.kind}
        if self.is_file:
            doc.update(
                resource_uri=self.resource_uri, relpath=self.relpath, overwrite=self.overwrite
            )
            if self.replaces_md5:
                doc["replaces_md5"] = self.replaces_md5
            if self.base_md5s:
                doc["base_md5s"] = list(self.base_md5s)
        elif self.is_import:
            doc.update(project=self.project, dest=self.dest, content_type=self.content_type)
            if self.subject is not None:
                doc["subject"] = self.subject
        else:
            doc.update(self._extra_fields())
        if self.listing:
            doc["listing"] = list(self.listing)
        return doc

    def _extra_fields(self) -> Dict[str, Any]:
        defaults = UploadTarget(self.kind)
        return {
            name: getattr(self, name)
            for name in ("resource_uri", "relpath", "overwrite", "project", "subject", "dest")
            if getattr(self, name) != getattr(defaults, name)
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "UploadTarget":
        """Read a sidecar's ``target`` (any version's shape: missing fields take defaults,
        unknown ones are ignored).  Raises ValueError on a shape that is not an object."""
        if not isinstance(doc, Mapping):
            raise ValueError("target is not an object")
        subject = doc.get("subject")
        return cls(
            kind=str(doc.get("kind", "")),
            resource_uri=str(doc.get("resource_uri", "")),
            relpath=str(doc.get("relpath", "")),
            overwrite=bool(doc.get("overwrite", False)),
            replaces_md5=str(doc.get("replaces_md5") or ""),
            base_md5s=_digests(doc.get("base_md5s")),
            listing=tuple(str(p) for p in (doc.get("listing") or ())),
            project=str(doc.get("project", "")),
            subject=None if subject is None else str(subject),
            dest=str(doc.get("dest") or ""),
            content_type=str(doc.get("content_type") or _DEFAULT_ARCHIVE_TYPE),
        )

    @classmethod
    def coerce(cls, target: "UploadTarget | Mapping[str, Any]") -> "UploadTarget":
        """``target`` itself, or a mapping in the sidecar's shape read as one."""
        return target if isinstance(target, UploadTarget) else cls.from_json(target)


def _digests(value: Any) -> Tuple[str, ...]:
    """A sidecar's list of MD5s; () for anything else (absent in older sidecars)."""
    return tuple(str(d) for d in value if d) if isinstance(value, list) else ()
