"""``ContentKey``: the identity of one version of one remote file in the content cache.

A key is (uri, size, digest, mtime) plus its ``kind``: a file XNAT stores, or an archive XNAT
makes on request (``docs/XNAT-API.md`` §3.3).  The cache fetches each kind with its own
callable and never looks into a URI to tell them apart.

This module imports nothing from the rest of xnatfs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Optional, Union

#: ``ContentKey.kind`` of a file XNAT stores
FILE = "file"
#: ``ContentKey.kind`` of an archive XNAT makes on request (``<object>/files?format=zip``, §3.3)
ARCHIVE = "archive"
#: the JSON of a key's fields, made once (``json.dumps`` builds an encoder per call: ~7 of a
#: key's ~19 us, 2,000 keys at a bulk zip's first open); the same text as ``json.dumps``
_KEY_JSON = json.JSONEncoder(ensure_ascii=False)
#: what turns an object's URI into the URI of its zip (§3.3); ``archive_object_uri`` undoes it
_ARCHIVE_SUFFIX = "/files?format=zip"


def archive_uri(object_uri: str) -> str:
    """The URI of the zip XNAT makes of everything below ``object_uri`` (§3.3)."""
    return object_uri.rstrip("/") + _ARCHIVE_SUFFIX


def archive_object_uri(uri: str) -> str:
    """The object whose zip ``uri`` (made by :func:`archive_uri`) is."""
    return uri[: -len(_ARCHIVE_SUFFIX)] if uri.endswith(_ARCHIVE_SUFFIX) else uri


@dataclass(frozen=True)
class ContentKey:
    """Identity of one version of one remote file; any field change means another cache entry."""

    #: Server-relative file URI, as passed to ``fetch``.
    uri: str
    #: Size from the listing in bytes; None (or negative) if the listing did not say.
    size: Optional[int]
    #: MD5 hex digest from the listing (``digest``); "" if the server gave none.
    digest: str = ""
    #: Modification time from the listing (any JSON-able value), "" / None if unknown; for an
    #: archive, what identifies its content (XNAT's zips: a digest of the listings of what
    #: they hold, ``layouts.xnat.layout.zip_key``).
    mtime: Union[float, int, str, None] = None
    #: FILE (fetched with ``fetch``) or ARCHIVE (made by XNAT, fetched with
    #: ``fetch_archive``).  Not part of ``hexname``: an archive's URI differs anyway, and
    #: entries cached before the field existed keep their names.
    kind: str = FILE
    #: The server the bytes come from (its base URL), for a key that has no digest: two
    #: servers may list the same path with the same size and time and other bytes (a staging
    #: clone, checksums off), and one user's mounts of both share one cache.  With a digest
    #: the bytes are checked against it, so entries stay shared between servers (and keep
    #: the names they had before this field).  Part of ``hexname`` only then.
    origin: str = ""

    @classmethod
    def archive(
        cls, object_uri: str, mtime: Union[float, int, str, None] = None, origin: str = ""
    ) -> "ContentKey":
        """The zip of everything below ``object_uri``: size and digest unknown until made."""
        return cls(
            uri=archive_uri(object_uri),
            size=None,
            digest="",
            mtime=mtime,
            kind=ARCHIVE,
            origin=origin,
        )

    def hexname(self) -> str:
        """sha256 of the key: the on-disk name and the index key; stable across processes."""
        return self._hexname

    @functools.cached_property
    def _hexname(self) -> str:
        # computed once per key object: open, state and prefetch all ask for it
        fields = [self.uri, self.size, self.digest, self.mtime]
        if self.origin and not self.digest:
            fields.append(self.origin)
        blob = _KEY_JSON.encode(fields)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()
