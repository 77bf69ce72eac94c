"""The path rule's text layer: splitting mount paths and escaping source names into file names.

XNAT names may hold characters that a path cannot (``/``, NUL).  They are escaped reversibly with
``%2F`` and ``%00``.  The names ``.`` and ``..`` (a hostile or odd server can list them) become
``%2E`` and ``%2E%2E``, so a directory never shows a second ``.``/``..`` entry (issue 17 §8).  A
``%`` is written ``%25`` only where it would otherwise read as one of these escapes (followed by
``25``, ``2F``, ``00`` or ``2E``, either case): ``50%_mask.nii.gz`` stays ``50%_mask.nii.gz``,
and the mapping stays a bijection.  Everything else, Unicode and control characters included, is
shown exactly as XNAT has it (DESIGN §1.1, docs/LAYOUT.md); logs escape the latter.
"""

from __future__ import annotations

import errno
import functools
import re
from typing import Tuple

PathParts = Tuple[str, ...]

#: paths whose ``split_path`` is kept (a few hundred bytes each)
SPLIT_CACHE = 4096

#: the longest file name (bytes, UTF-8) XNAT can store: its archive is on a POSIX disk
NAME_MAX = 255

_CODES = "25|2F|2f|00|2E|2e"
_UNESCAPE_RE = re.compile(f"%({_CODES})")
_UNESCAPES = {"25": "%", "2F": "/", "2f": "/", "00": "\0", "2E": ".", "2e": "."}
#: a ``%`` that :func:`unescape_name` would read as the start of an escape
_AMBIGUOUS_PERCENT_RE = re.compile(f"%(?={_CODES})")
_DOTS = {".": "%2E", "..": "%2E%2E"}


def escape_name(name: str) -> str:
    """XNAT name -> file name.  ``"a/b"`` -> ``"a%2Fb"``, ``".."`` -> ``"%2E%2E"``,
    ``"%2F"`` -> ``"%252F"``; ``"50%.txt"`` and every name without ``/``, NUL or such a ``%``
    that is not ``.``/``..`` are unchanged.

    Why only such a ``%``: the path rule shows a name as XNAT has it wherever it can (DESIGN
    §1.1), and escaping every ``%`` listed ``50%_mask.nii.gz`` as ``50%25_mask.nii.gz``, so a
    file copied in under its own name was listed under another.  A ``%`` is escaped first,
    judged by the two characters after it in the XNAT name: those stay plain characters unless
    they are ``/``, NUL or ``%``, whose escapes start with ``%`` and so never read as a code.
    """
    if name in _DOTS:
        return _DOTS[name]
    if "%" in name:
        name = _AMBIGUOUS_PERCENT_RE.sub("%25", name)
    if "/" in name or "\0" in name:
        name = name.replace("/", "%2F").replace("\0", "%00")
    return name


def canonical_name(name: str) -> str:
    """The file name :func:`escape_name` gives the XNAT name ``name`` stands for: ``"50%25.txt"``
    (how earlier versions listed ``50%.txt``) -> ``"50%.txt"``, ``"a%2fb"`` -> ``"a%2Fb"``."""
    return escape_name(unescape_name(name))


def unescape_name(name: str) -> str:
    """File name -> XNAT name; the inverse of :func:`escape_name`."""
    if "%" not in name:
        return name
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(1)], name)


@functools.lru_cache(maxsize=SPLIT_CACHE)
def split_path(path: str) -> PathParts:
    """``"/P/subjects/S"`` -> ``("P", "subjects", "S")``: file names, still escaped.

    Empty components (double slashes, a trailing slash) are dropped; FUSE never sends them but
    tests and the CLI might.  Kept for the last ``SPLIT_CACHE`` paths (a tuple of str: nothing
    a caller can change): one file's LOOKUP, OPEN and read-ahead split the same path.
    """
    return tuple(p for p in path.split("/") if p)


def join_path(parts: PathParts) -> str:
    return "/" + "/".join(parts)


def check_write_name(name: str, path: str = "") -> str:
    """The XNAT name a *written* file name stands for; ``OSError(EINVAL)`` if it could change
    the request path.

    A written name becomes part of an upload URL (``<resource>/files/<relpath>``, §4.5).  After
    unescaping, ``..%2F..%2Fresources%2FX%2Ffiles%2Fa`` would be ``../../resources/X/files/a``,
    and HTTP libraries collapse ``..`` before sending (issue 17 §3): the bytes would land on
    another object.  So a name is refused when its XNAT form is ``.`` or ``..``, also once cut
    at its first ``;`` (``..;``: Tomcat drops a segment's ``;`` path parameters before it
    resolves ``..``, docs/SECURITY.md), or holds a ``/`` (decoded ``%2F``), a NUL, a backslash
    (some servlet containers treat ``\\`` as ``/``) or another control character, or bytes
    that are not UTF-8 (EINVAL); or longer than ``NAME_MAX`` bytes (ENAMETOOLONG).  Checked
    before any request is made.
    """
    xnat = unescape_name(name)
    bad = ""
    if xnat in ("", ".", "..") or xnat.partition(";")[0] in (".", ".."):
        bad = "is a relative path segment"
    elif "/" in xnat:
        bad = "holds '/' (%2F)"
    elif "\\" in xnat:
        bad = "holds a backslash"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in xnat):
        bad = "holds a control character"
    elif any("\ud800" <= c <= "\udfff" for c in xnat):
        # bytes that are not UTF-8 (the kernel's name decoded with surrogateescape): XNAT
        # names files in UTF-8, and no URL names these; before, close() failed with an
        # unexpected UnicodeEncodeError (and the journal could not record the file)
        bad = "is not valid UTF-8"
    if bad:
        raise OSError(
            errno.EINVAL, f"name {name!r} {bad}: refused for writing to XNAT", path or name
        )
    if len(xnat.encode("utf-8")) > NAME_MAX:
        # XNAT keeps a file under its name on its own disk, whose names are at most 255
        # bytes: the upload failed with 500s at close() (EIO), then was left to the upload
        # journal's retries (a 5xx is transient); a local disk answers this at create, and
        # cp/tar report it and go on
        raise OSError(
            errno.ENAMETOOLONG,
            f"name longer than {NAME_MAX} bytes: refused for writing to XNAT",
            path or name,
        )
    return xnat
