"""Pure functions that turn what XNAT sends into ``models`` records.

No I/O, no requests, no logging of bodies: everything here is a function of its arguments, so it
is unit-tested without sockets.  Raw XNAT JSON stops here (docs/ARCHITECTURE.md §2): ResultSet rows,
where every
value is a string (``docs/XNAT-API.md`` §1.1, §10.9), become frozen dataclasses.

Time values become POSIX seconds.  XNAT writes server-local times without a zone (java.sql
``Timestamp.toString()``); we read those as UTC, which is what the stock Docker deployments run
and, more importantly, is stable: the same string always gives the same number.
"""

from __future__ import annotations

import calendar
import csv
import email.utils
import functools
import html
import io
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote, unquote

from .body import MAX_DOCUMENT_OBJECTS, json_refusal
from .models import (
    Assessor,
    Experiment,
    FileEntry,
    PrearchiveSession,
    Project,
    RemoteStat,
    Resource,
    Scan,
    Subject,
)

__all__ = [
    "parse_time",
    "parse_http_date",
    "parse_int",
    "rows_from_json",
    "without_unencodable",
    "rows_from_csv",
    "server_root",
    "BadDocument",
    "looks_like_html",
    "looks_like_login_page",
    "error_text",
    "parse_uri_list",
    "quote_segment",
    "file_relpath",
    "wire_uri",
    "file_uri",
    "project_from_row",
    "subject_from_row",
    "experiment_from_row",
    "scan_from_row",
    "assessor_from_row",
    "resource_from_row",
    "file_from_row",
    "prearchive_from_row",
    "remote_stat_from_headers",
]

Row = Mapping[str, str]

# --------------------------------------------------------------------------------------------
# scalars

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}

#: zone abbreviations java.util.Date.toString() commonly prints (§2.1 ``start_date``); offsets in
#: hours.  Unknown names are read as UTC rather than failing: a wrong hour beats no mtime.
_ZONES = {
    "UTC": 0,
    "GMT": 0,
    "UT": 0,
    "Z": 0,
    "WET": 0,
    "WEST": 1,
    "BST": 1,
    "CET": 1,
    "CEST": 2,
    "MET": 1,
    "MEST": 2,
    "EET": 2,
    "EEST": 3,
    "MSK": 3,
    "IST": 5.5,
    "JST": 9,
    "KST": 9,
    "AEST": 10,
    "AEDT": 11,
    "ACST": 9.5,
    "AWST": 8,
    "NZST": 12,
    "NZDT": 13,
    "EST": -5,
    "EDT": -4,
    "CST": -6,
    "CDT": -5,
    "MST": -7,
    "MDT": -6,
    "PST": -8,
    "PDT": -7,
    "AKST": -9,
    "AKDT": -8,
    "HST": -10,
}

# 2019-03-05 | 2019-03-05 16:46:37 | ...37.103 | ...44.225298 | 2021-04-08T19:28:45Z | +02:00
_ISO_RE = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$",
    re.IGNORECASE,
)
# Thu Apr 08 19:28:45 UTC 2021 (java.util.Date.toString(), §10.9)
_JAVA_RE = re.compile(
    r"^[A-Za-z]{3},?\s+([A-Za-z]{3})\s+(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:\s+([A-Za-z]{1,6}|[+-]\d{4}|GMT[+-]\d{1,2}(?::?\d{2})?))?\s+(\d{4})$"
)
# prearchive timestamp yyyyMMdd_HHmmssSSS (§7.1)
_PREARC_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})(\d{3})?$")


def _offset_seconds(zone: Optional[str]) -> Optional[float]:
    """Seconds east of UTC for a zone token; ``None`` for an unknown name."""
    if not zone:
        return 0.0
    z = zone.upper()
    if z in _ZONES:
        return _ZONES[z] * 3600.0
    m = re.match(r"^(?:GMT)?([+-])(\d{1,2}):?(\d{2})?$", z)
    if m:
        sign = -1.0 if m.group(1) == "-" else 1.0
        return sign * (int(m.group(2)) * 3600 + int(m.group(3) or 0) * 60)
    return None


def _epoch(
    year: int,
    month: int,
    day: int,
    hh: int = 0,
    mm: int = 0,
    ss: int = 0,
    frac: str = "",
    offset: float = 0.0,
) -> Optional[float]:
    if not (1 <= month <= 12 and 1 <= day <= 31 and hh < 24 and mm < 60 and ss <= 60):
        return None
    try:
        secs = calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return secs + (float("0." + frac) if frac else 0.0) - offset


def parse_time(value: Optional[str]) -> Optional[float]:
    """XNAT date/time text → POSIX seconds, or ``None`` when empty or not understood.

    Accepts the forms XNAT emits (§1.1, §2.1, §7.1, §10.9): ``2019-03-05``,
    ``2019-03-05 16:46:37.103`` (any 0-9 fraction digits), ISO-8601 with ``T``/zone,
    ``Thu Apr 08 19:28:45 UTC 2021``, the prearchive ``20211229_101128996`` and HTTP dates.
    Times without a zone are UTC.
    """
    if value is None:
        return None
    s = str(value).strip()
    if not s:
        return None
    m = _ISO_RE.match(s)
    if m:
        y, mo, d, hh, mi, ss, frac, zone = m.groups()
        off = _offset_seconds(zone)
        return _epoch(
            int(y),
            int(mo),
            int(d),
            int(hh or 0),
            int(mi or 0),
            int(ss or 0),
            frac or "",
            off if off is not None else 0.0,
        )
    m = _JAVA_RE.match(s)
    if m:
        mon, d, hh, mi, ss, frac, zone, y = m.groups()
        month = _MONTHS.get(mon.lower())
        if month is None:
            return None
        off = _offset_seconds(zone)
        return _epoch(
            int(y),
            month,
            int(d),
            int(hh),
            int(mi),
            int(ss),
            frac or "",
            off if off is not None else 0.0,
        )
    m = _PREARC_RE.match(s)
    if m:
        y, mo, d, hh, mi, ss, ms = m.groups()
        return _epoch(int(y), int(mo), int(d), int(hh), int(mi), int(ss), ms or "")
    return parse_http_date(s)


def parse_http_date(value: Optional[str]) -> Optional[float]:
    """An RFC 7231 date (``Last-Modified``) → POSIX seconds, or ``None``."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError):
        return None


def parse_int(value: Any) -> Optional[int]:
    """A listing number (always a string, §10.9) → int; ``""``/garbage → ``None``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    s = str(value).strip()
    if not s:
        return None
    try:
        return int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            return None
        return int(f) if f == f and abs(f) != float("inf") else None


# --------------------------------------------------------------------------------------------
# bodies


class BadDocument(ValueError):
    """The body is not the document shape we expected (caller turns it into NotXnatResponse)."""


#: most elements (start tags) a catalog XML document may hold before it is parsed, and most
#: lines of a ``text/uri-list`` answer: the 64 MiB byte cap (``body.MAX_DOCUMENT_BYTES``) alone
#: let 16,000,000 empty elements become a 1.4 GB tree; one per file, as the cap of JSON rows
MAX_DOCUMENT_ELEMENTS = MAX_DOCUMENT_OBJECTS


def loads_json(text: "str | bytes") -> Any:
    """``json.loads`` of a server's answer within the caps of ``body.json_refusal``, every
    failure :class:`BadDocument`.  Besides ``ValueError``, a document nested deeper than the
    interpreter's recursion limit raises ``RecursionError`` (``[`` x 100,000 is 200 KB of valid
    JSON), which is no ``ValueError`` and escaped every caller as an unexpected error."""
    raw = bytes(text) if isinstance(text, (bytes, bytearray)) else text.encode("utf-8", "replace")
    refused = json_refusal(raw)
    if refused:
        raise BadDocument(f"refused: {refused}")
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else text)
    except RecursionError:
        raise BadDocument("JSON nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise BadDocument(f"not JSON: {exc}") from None


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


def rows_from_json(doc: Any) -> List[Dict[str, str]]:
    """``{"ResultSet":{"Result":[...]}}`` (§1.1) → list of str→str dicts.

    Accepts an already decoded document or the body text/bytes.  Raises :class:`BadDocument`
    on anything else, so a proxy page or a truncated body never reads as an empty listing.
    """
    if isinstance(doc, (bytes, bytearray)):
        doc = bytes(doc).decode("utf-8", errors="replace")
    if isinstance(doc, str):
        doc = loads_json(doc)
    try:
        result = doc["ResultSet"]["Result"]
    except (TypeError, KeyError):
        raise BadDocument("no ResultSet.Result in the answer") from None
    if not isinstance(result, list):
        raise BadDocument("ResultSet.Result is not a list")
    rows = []
    for item in result:
        if not isinstance(item, dict):
            raise BadDocument("ResultSet.Result holds a non-object row")
        # a str cell as it is without a call (most are: 18,000 calls for a 2,000-file listing)
        rows.append({str(k): v if v.__class__ is str else _cell(v) for k, v in item.items()})
    return rows


#: a UTF-16 surrogate: JSON can carry a lone one (``"\\ud800"``), UTF-8 cannot encode it
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def without_unencodable(rows: List[Dict[str, str]]) -> "tuple[List[Dict[str, str]], int]":
    """(the rows, how many were left out): a row with a lone surrogate in any cell is left out.

    Such a name can be neither a file name (the kernel takes bytes: readdir could not encode
    it) nor a URL (``quote`` encodes UTF-8): one row like it made the whole listing fail with
    an unexpected ``UnicodeEncodeError``, every sibling unreachable (a hostile server's
    ``"\\ud800"`` is valid JSON)."""
    # one search per row over its cells joined: a surrogate is in one cell iff in the join
    kept = [r for r in rows if not _SURROGATE_RE.search("".join(r.values()))]
    return kept, len(rows) - len(kept)


def server_root(doc: Any) -> str:
    """The ``serverRoot`` of a files listing's ``Columns`` (the context path, §1.8), or ""."""
    try:
        for col in doc["ResultSet"].get("Columns") or []:
            if isinstance(col, dict) and col.get("key") == "URI":
                return _cell(col.get("serverRoot"))
    except (TypeError, KeyError, AttributeError):
        pass
    return ""


def rows_from_csv(text: str) -> List[Dict[str, str]]:
    """A ``format=csv`` listing (§1.2: header row, then rows) → list of str→str dicts."""
    reader = csv.DictReader(io.StringIO(text))
    return [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]


_HTML_START = (b"<html", b"<!doctype")
_LOGIN_MARKERS = (b"login", b"j_username", b"log in", b"sign in")


def looks_like_html(body: bytes) -> bool:
    """Does the body start like an HTML page (§10.8)?  Leading whitespace/BOM are skipped."""
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(_HTML_START)


#: how much of an HTML answer is looked at for the login form: a real login page has a long
#: head (scripts, styles) before it; a streamed download holds this much back to decide
LOGIN_PAGE_WINDOW = 65536


def looks_like_login_page(body: bytes) -> bool:
    """An HTML body that is XNAT's login form (the 200-with-a-login-page trap, §5.1); looks at
    the first ``LOGIN_PAGE_WINDOW`` bytes."""
    if not looks_like_html(body):
        return False
    low = body[:LOGIN_PAGE_WINDOW].lower()
    # a Restlet error status page carries <h3>; a login page has a form and the word login
    if b"status page" in low and b"<h3>" in low:
        return False
    return any(m in low for m in _LOGIN_MARKERS)


_H3_RE = re.compile(rb"<h3[^>]*>(.*?)</h3>", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"<[^>]+>")


def error_text(body: bytes, limit: int = 200) -> str:
    """A one-line message from an error body: the ``<h3>`` of a Restlet status page (§5.1),
    else the start of a plain-text body; "" for other HTML or binary bodies."""
    if not body:
        return ""
    m = _H3_RE.search(body[:65536])
    if m:
        text = m.group(1).decode("utf-8", errors="replace")
        text = html.unescape(_TAG_RE.sub("", text))
    elif looks_like_html(body):
        return ""
    else:
        try:
            text = body[: limit * 4].decode("utf-8")
        except UnicodeDecodeError:
            return ""
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_uri_list(body: str) -> List[str]:
    """A ``text/uri-list`` answer (§6, §7.3) → the URIs (CRLF lines, ``#`` comments skipped).

    Read line by line, at most :data:`MAX_DOCUMENT_ELEMENTS` lines that are not blank (an
    import or archive answers a few): ``splitlines()`` of 61 MiB of 3-byte lines made a list of
    21,000,000 strings (~1.5 GB) before a line was looked at (``io.StringIO`` would copy the
    text at 4 bytes a character).  Raises :class:`BadDocument` beyond."""
    out: List[str] = []
    for count, match in enumerate(_LINE_RE.finditer(body), 1):
        if count > MAX_DOCUMENT_ELEMENTS:
            raise BadDocument(f"more than {MAX_DOCUMENT_ELEMENTS} lines in a uri-list")
        line = match.group().strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


#: a line of a uri-list (CRLF, or either alone), blank ones never matched
_LINE_RE = re.compile(r"[^\r\n]+")


def quote_segment(value: str) -> str:
    """Percent-encode one path segment (an ID, a label, a scan ID with ``/``, §10.17-18)."""
    return quote(str(value), safe="")


#: where a file URI's path below its resource starts: ``.../resources/<id or label>/files/``
_RESOURCE_FILES_RE = re.compile(r"/resources/[^/]+/files/")


def file_relpath(uri: str) -> str:
    """The path relative to the resource root: the part of ``URI`` after the first
    ``/resources/<id>/files/`` (§1.8), sub-folders kept.  XNAT builds ``URI`` by plain
    concatenation, so it is raw (not percent-encoded: a name with a space comes back with the
    space; pyxnat had to learn to encode these URIs itself, pyxnat PR #29); the relative path
    is taken as it is.

    Why not the first ``/files/``: an object above the resource may be called ``files`` (a
    project ID, a scan ID): project ``files`` showed ``x.txt`` of its resource ``R`` as
    ``files/resources/R/files/resources/129/files/x.txt``."""
    m = _RESOURCE_FILES_RE.search(uri)
    if m is not None:
        return uri[m.end() :]
    i = uri.find("/files/")
    return uri[i + 7 :] if i >= 0 else uri.rsplit("/", 1)[-1]


#: characters left alone when a raw server URI is made fit for a request line; not ``;``,
#: which would start a path parameter (``has_dot_segment``)
_URI_SAFE = "/:@!$&'()*+,=-._~"


def wire_uri(raw: str) -> str:
    """A raw server URI (spaces, ``%``, ``?``, ``;``, non-ASCII as they are) percent-encoded
    for the request line; the client's ``_url`` leaves existing ``%XX`` alone after this.

    A ``;`` in a listed URI is part of a name (XNAT concatenates names into URIs raw, §1.8):
    sent raw, Tomcat would take it and what follows for a path parameter and drop them, so
    ``.../files/..;`` (a file named ``..;``) would name the resource itself."""
    return quote(raw, safe=_URI_SAFE)


def file_uri(resource_uri: str, relpath: str) -> str:
    """The URI of file ``relpath`` (its path below the resource's ``files/``, as XNAT names it:
    raw) in the resource at ``resource_uri`` (a URI this client built: encoded already), in
    the form XNAT's listing row of that file gets (``FileEntry.uri``, ``wire_uri``): the one
    rule for naming a file this mount wrote, in requests (a download of XNAT's copy), the
    times index (keyed by the listing's URI) and ``user.xnat.uri``.

    Its name is percent-encoded here, never raw (§1.8: XNAT's own URI is raw; §10.17): the
    client's ``_url`` cuts a path at ``?`` and leaves ``%XX`` alone, so ``a?b.txt`` raw was
    asked for as ``a`` and ``e%41f.txt`` as ``eAf.txt``, another file."""
    return f"{resource_uri.rstrip('/')}/files/{wire_uri(relpath)}"


#: what servlet containers split a path at: ``/``, and ``\`` where it is taken for one
_SEGMENT_SEP_RE = re.compile(r"[/\\]")
#: a segment that is ``.`` or ``..`` in a path with nothing to decode, split or cut
_PLAIN_DOT_SEGMENT_RE = re.compile(r"(?:\A|/)\.\.?(?:/|\Z)")  # \Z: ``$`` matches before a "\n"
#: the characters that give a path another reading than its raw one (``has_dot_segment``)
_REREAD = ("%", ";", "\\")


def has_dot_segment(path: str) -> bool:
    """Whether a segment of ``path`` is ``.`` or ``..`` as some server on the way may read it:
    raw or percent-decoded once (``%2e%2E``; ``%2F`` and ``%5C`` then separate segments),
    split at ``/`` or ``\\``, and cut at its first ``;``.

    Tomcat (XNAT's servlet container) drops a segment's path parameters (``;`` and what
    follows) before it resolves ``.``/``..``: ``.../files/..;/..;/B/...`` reaches project B
    (the known ``/..;/`` traversal), so ``..;x`` counts as ``..``; a decoding proxy or
    container may do it after decoding (``..%3B``).  Empty segments are not refused: they are
    merged, they never climb.  Checks of listed URIs (``uri_problem``) and of request paths
    (``transport.check_contained``, ``_safe_path``) use this one reading."""
    if "." not in path and "%" not in path:
        return False  # no dot in any spelling (object paths): one scan of the string
    if not any(c in path for c in _REREAD):
        # nothing to decode, no ``\`` to split at, no ``;`` to cut at: the raw reading is the
        # only one; one regex instead of two splits and a decode per segment (every file
        # row's URI: RESULTS.md, "Listing rows")
        return _PLAIN_DOT_SEGMENT_RE.search(path) is not None
    for form, decode in ((path, True), (unquote(path), False)):
        for seg in _SEGMENT_SEP_RE.split(form):
            head = seg.partition(";")[0]
            if (unquote(head) if decode else head) in (".", ".."):
                return True
    return False


def _strip_context(uri: str) -> str:
    """Server URIs normally start with ``/data``; drop a context path if one slipped in (§0)."""
    if uri and not uri.startswith(("/data/", "/REST/")):
        i = uri.find("/data/")
        if i > 0:
            return uri[i:]
    return uri


def _mtime(row: Row) -> Optional[float]:
    """``last_modified`` if the server sent one, else ``insert_date`` (§9 cache hints)."""
    return parse_time(row.get("last_modified")) or parse_time(row.get("insert_date"))


# --------------------------------------------------------------------------------------------
# rows → models


def project_from_row(row: Row) -> Project:
    pid = row.get("ID") or row.get("id") or ""
    return Project(
        id=pid,
        name=row.get("name", ""),
        secondary_id=row.get("secondary_ID", ""),
        description=row.get("description", ""),
        uri=f"/data/projects/{quote_segment(pid)}",
        mtime=_mtime(row),
        fields=dict(row),
    )


def subject_from_row(row: Row, project: str) -> Subject:
    """A subject row listed under ``project``.  ``uri`` is project-scoped by accession ID; the
    ``project`` column is the *primary* project, which differs for shared subjects (§10.1)."""
    sid = row.get("ID", "")
    return Subject(
        id=sid,
        label=row.get("label", "") or sid,
        project=row.get("project", "") or project,
        uri=f"/data/projects/{quote_segment(project)}/subjects/{quote_segment(sid)}",
        mtime=_mtime(row),
        fields=dict(row),
    )


def experiment_from_row(row: Row) -> Experiment:
    eid = row.get("ID", "") or row.get("xnat:subjectassessordata/id", "")
    return Experiment(
        id=eid,
        label=row.get("label", "") or eid,
        project=row.get("project", ""),
        subject_id=row.get("subject_ID", ""),
        xsi_type=row.get("xsiType", ""),
        date=row.get("date", ""),
        uri=f"/data/experiments/{quote_segment(eid)}",
        mtime=_mtime(row),
        fields=dict(row),
    )


def scan_from_row(row: Row, experiment_uri: str) -> Scan:
    """Scan IDs are strings (§10.18); the uri is built under the experiment it was listed in."""
    sid = row.get("ID", "")
    return Scan(
        id=sid,
        type=row.get("type", ""),
        series_description=row.get("series_description", ""),
        xsi_type=row.get("xsiType", ""),
        quality=row.get("quality", ""),
        uri=f"{experiment_uri.rstrip('/')}/scans/{quote_segment(sid)}",
        mtime=_mtime(row),
        fields=dict(row),
    )


def assessor_from_row(row: Row, experiment_uri: str) -> Assessor:
    aid = row.get("ID", "") or row.get("xnat:imageassessordata/id", "")
    return Assessor(
        id=aid,
        label=row.get("label", "") or aid,
        xsi_type=row.get("xsiType", ""),
        uri=f"{experiment_uri.rstrip('/')}/assessors/{quote_segment(aid)}",
        mtime=_mtime(row),
        fields=dict(row),
    )


def resource_from_row(row: Row, parent_uri: str) -> Resource:
    """Resource rows have no ID/URI (§1.7): the key is ``xnat_abstractresource_id`` (prearchive
    resource rows have only a label, §7.2, so the label stands in)."""
    rid = row.get("xnat_abstractresource_id", "") or row.get("label", "")
    return Resource(
        id=rid,
        label=row.get("label", "") or rid,
        format=row.get("format", ""),
        content=row.get("content", ""),
        tags=row.get("tags", ""),
        file_count=parse_int(row.get("file_count")),
        file_size=parse_int(row.get("file_size")),
        uri=f"{parent_uri.rstrip('/')}/resources/{quote_segment(rid)}",
        fields=dict(row),
    )


#: the largest size a file can have (st_size is a signed 64-bit number)
MAX_FILE_SIZE = (1 << 63) - 1
#: a whole number, optionally written "20.0"; a sign is checked by the range test
_SIZE_RE = re.compile(r"^[+-]?\d{1,30}(?:\.0*)?$")


def listed_size(value: Any) -> "tuple[int, str]":
    """A listing's ``Size`` → (bytes, problem).  Empty is 0 (sites without sizes); anything
    else must be a whole number in 0..2^63-1 (issue 17 §8: -5 and 10^23 were shown, the
    latter wrapped); otherwise (0, why)."""
    text = "" if value is None else str(value).strip()
    if not text:
        return 0, ""
    if not _SIZE_RE.match(text):
        return 0, f"listed size {text[:40]!r} is not a byte count"
    n = int(text.split(".", 1)[0])
    if not 0 <= n <= MAX_FILE_SIZE:
        return 0, f"listed size {text[:40]!r} is outside 0..2^63-1"
    return n, ""


def uri_problem(raw: str) -> str:
    """Why a server-given file URI must not be requested, or "" (issue 17 §8): it must be a
    plain path below ``/data/`` on the same server — no scheme or ``//host``, no ``.``/``..``
    segment in any spelling (``has_dot_segment``: ``%2e%2e``, ``..;``) — or the session cookie
    would go with it somewhere else; and it must name a file of a resource, since ``rm`` sends
    a DELETE to it."""
    if "://" in raw or raw.startswith("//"):
        return "file URI names another server"
    path = _strip_context(raw.split("?", 1)[0])
    if not path.startswith(("/data/", "/REST/")):
        return "file URI is not below /data/"
    if has_dot_segment(path):
        return "file URI has a '.' or '..' segment (or '..;', '%2e%2e')"
    m = _RESOURCE_FILES_RE.search(path)
    if m is None or not path[m.end() :].strip("/"):
        # every file URI XNAT lists has this shape (§1.8); rm of a row whose URI named an
        # object (``/data/projects/P/subjects/S``) sent DELETE of that object, removeFiles=true
        return "file URI does not name a file of a resource (.../resources/<id>/files/<name>)"
    return ""


def _canonical_object(path: str) -> List[str]:
    """The segments of an object path (raw, as XNAT writes it) in one spelling, so that the
    forms XNAT answers for one object compare equal (docs/XNAT-API.md §1.8, ``FileList`` and
    ``XNATCatalogTemplate.getBaseURI``): a context path or ``/REST`` before ``/data``, an
    ``/archive`` after it, an experiment below ``/projects/P[/subjects/S]`` (XNAT finds it by
    its ID, the project names none of it) as ``/data/experiments/E``, and an assessor's type
    folder (``.../assessors/A/out``, which XNAT adds) left out."""
    path = _strip_context(path)
    if path.startswith("/REST/"):
        path = "/data/" + path[len("/REST/") :]
    segs = path.strip("/").split("/")
    if segs[1:2] == ["archive"]:
        del segs[1]
    if (
        len(segs) >= 7
        and segs[1] == "projects"
        and segs[3] == "subjects"
        and segs[5] == "experiments"
    ):
        segs = ["data", "experiments"] + segs[6:]
    elif len(segs) >= 5 and segs[1] == "projects" and segs[3] == "experiments":
        segs = ["data", "experiments"] + segs[4:]
    if len(segs) == 6 and segs[1] == "experiments" and segs[3] == "assessors":
        if segs[5] in ("out", "in"):
            segs = segs[:5]
    return segs


@functools.lru_cache(maxsize=4096)
def _object_of(path: str) -> Tuple[str, ...]:
    """``_canonical_object`` kept per object path: the rows of a listing share a few (one per
    scan resource), and ``outside_listing`` asks for each row's."""
    return tuple(_canonical_object(path))


@functools.lru_cache(maxsize=1024)
def _listed_object(listed_in: str) -> Tuple[Tuple[str, ...], str]:
    """The object and the resource (label or number, or "") a listing was asked of, in
    ``_canonical_object``'s spelling: the same for every row of that listing."""
    listed = "/".join(unquote(seg) for seg in listed_in.rstrip("/").split("/"))
    head, sep, resource = listed.rpartition("/resources/")
    if not sep or "/" in resource:
        head, resource = listed, ""
    return tuple(_canonical_object(head)), resource


def outside_listing(raw: str, listed_in: str) -> str:
    """Why a listed file URI (``raw``, as the server wrote it) is not a file of the resource
    it was listed in (``listed_in``, the URI xnatfs asked for ``/files`` of), or "".

    The server could name any file it serves under the same session: project A's listing
    naming ``/data/projects/B/.../files/secret`` showed B's bytes as A's file, and ``rm`` of it
    (``--allow-delete``) would delete B's.  The object above ``/resources/`` must be the
    listed one (in any of its spellings, ``_canonical_object``) and the resource the listed
    one, except when xnatfs knows it by its label only (XNAT's URIs carry the number:
    prearchive rows, one made on this mount), where any resource of that object will do.  A
    segment ``ALL`` in ``listed_in`` (``.../scans/ALL``: every scan's files in one request)
    stands for any one segment, the resource then any."""
    path = _strip_context(raw.split("?", 1)[0])
    m = _RESOURCE_FILES_RE.search(path)
    if m is None:
        return ""  # uri_problem's case
    got = _object_of(path[: m.start()])
    got_resource = path[m.start() :].split("/")[2]
    want, resource = _listed_object(listed_in)
    same = len(got) == len(want) and all(w in (g, "ALL") for g, w in zip(got, want))
    if not same:
        return "file URI is not under the object it was listed in"
    if resource.isdigit() and resource != got_resource:
        return "file URI is not in the resource it was listed in"
    return ""


def file_from_row(row: Row, resource_uri: str = "") -> FileEntry:
    """A files-listing row (§1.8).  ``URI`` is taken verbatim; only when a server sends none
    (never seen) is it built from ``resource_uri`` and ``Name``.  A row with a bad size, a URI
    that leaves ``/data/`` or one outside ``resource_uri`` (the resource it was listed in)
    comes back with ``problem`` set: it is listed, never fetched."""
    raw = row.get("URI", "")
    problem = uri_problem(raw) if raw else ""
    if raw and resource_uri and not problem:
        problem = outside_listing(raw, resource_uri)
    uri = raw if problem else _strip_context(raw)  # refused ones shown as sent
    if uri:
        path, wire = file_relpath(uri), wire_uri(uri)
    else:  # its name below the resource it was listed in (encoded already), encoded once
        path = row.get("Name", "")
        wire = file_uri(resource_uri, path)
        problem = uri_problem(wire)
    size, size_problem = listed_size(row.get("Size"))
    digest = row.get("digest", "") or ""
    return FileEntry(
        path=path,
        size=size,
        problem=problem or size_problem or empty_size_problem(row.get("Size"), size, digest),
        uri=wire,
        digest=digest,
        collection=row.get("collection", ""),
        format=row.get("file_format", ""),
        content=row.get("file_content", ""),
        tags=row.get("file_tags", ""),
    )


#: the MD5 of no bytes: the only digest a file listed with size 0 (or none) may carry
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def empty_size_problem(listed: Any, size: int, digest: str) -> str:
    """Why a row listed as empty (size 0, or no size: read as 0) cannot be served, or "".

    The kernel never asks for a byte of a 0-byte file, so such a row reads as an empty file
    with success and its MD5 is never compared: a row whose MD5 is that of some bytes (not
    ``EMPTY_MD5``) read as empty, bytes that are not XNAT's.  XNAT lists every file's size
    (docs/XNAT-API.md §1.8), so the row contradicts itself: it answers EIO like any refused
    row.  An empty file listed with the empty file's MD5, or with none, stays readable."""
    if size != 0 or not digest or digest.strip().lower() == EMPTY_MD5:
        return ""
    text = "" if listed is None else str(listed)
    return f"listed size {text[:40]!r} says empty, but MD5 {digest[:40]!r} is not the empty file's"


def prearchive_from_row(row: Row) -> PrearchiveSession:
    """The listing's ``url`` lacks ``/data`` (§7.1, §10.20); add it."""
    url = row.get("url", "")
    if url and not url.startswith("/data/"):
        url = "/data" + (url if url.startswith("/") else "/" + url)
    return PrearchiveSession(
        project=row.get("project", ""),
        timestamp=row.get("timestamp", ""),
        name=row.get("name", ""),
        folder_name=row.get("folderName", ""),
        subject=row.get("subject", ""),
        status=row.get("status", ""),
        uri=url,
        mtime=parse_time(row.get("lastmod")) or parse_time(row.get("uploaded")),
        fields=dict(row),
    )


def remote_stat_from_headers(headers: Mapping[str, str]) -> RemoteStat:
    """``Content-Length``/``Last-Modified``/``Content-Type`` of a file answer (§3.1)."""
    return RemoteStat(
        size=parse_int(headers.get("Content-Length")),
        mtime=parse_http_date(headers.get("Last-Modified")),
        content_type=headers.get("Content-Type", "") or "",
    )


# --------------------------------------------------------------------------------------------
# per-file times from a resource catalog (issue 15 §1)

#: the catalog namespace of ``cat:entry`` (XNAT's catalog.xsd)
_CAT_NS = "{http://nrg.wustl.edu/catalog}"


def catalog_times(body: bytes) -> Dict[str, float]:
    """``relpath -> mtime`` from a resource catalog (``.../files?format=xcat``, §1.8).

    XNAT's file listing has no time column (``CatalogUtils.FILE_HEADERS``), but every catalog
    entry written by XNAT 1.6 or later carries the audit attributes ``createdTime`` (set when
    the entry is made: ``CatalogUtils.configureEntry``) and ``modifiedTime`` (set when it is
    replaced or moved to history).  The later of the two is the file's time.  The relative path
    is the entry's ``URI`` unless that is absolute, then ``cachePath``/``ID``
    (``CatalogUtils.getRelativePathForCatalogEntry``).  Entries without either time are left
    out (their files keep the object's time).  A DOCTYPE is refused: a catalog never has one,
    and entity expansion is how XML bodies attack parsers.
    """
    import xml.etree.ElementTree as ET

    head = body[:4096].lstrip()
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise BadDocument("catalog XML with a DOCTYPE/ENTITY refused")
    if not head.startswith(b"<"):
        raise BadDocument("answer is not a catalog XML document")
    elements = body.count(b"<") - body.count(b"</")
    if elements > MAX_DOCUMENT_ELEMENTS:
        raise BadDocument(f"refused: more than {MAX_DOCUMENT_ELEMENTS} XML elements")
    out: Dict[str, float] = {}
    try:
        for _event, elem in ET.iterparse(io.BytesIO(body), events=("end",)):
            if not (
                elem.tag == _CAT_NS + "entry" or elem.tag.endswith("}entry") or elem.tag == "entry"
            ):
                continue
            uri = elem.get("URI", "")
            rel = uri
            if not uri or uri.startswith("/") or "://" in uri:
                rel = elem.get("cachePath") or elem.get("ID") or ""
            times = [
                t
                for t in (parse_time(elem.get("modifiedTime")), parse_time(elem.get("createdTime")))
                if t is not None
            ]
            if rel and times:
                out[rel.lstrip("/")] = max(times)
            elem.clear()
    except ET.ParseError as exc:
        raise BadDocument(f"catalog XML does not parse: {exc}") from None
    return out
