"""What every emulator handler shares: the request context, errors, response writers, result
sets, request bodies, file serving and archive streaming.

Why one module: the archive handlers (``listings``, ``objects``, ``files``, ``uploads``,
``services``) and the prearchive/import handlers answer with the same shapes (Restlet error pages,
XNAT ResultSets in json/csv/html/xml, files with the §3.1 headers, streamed zips), so each shape
is written once here and a handler only decides *what* to answer.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from werkzeug.wrappers import Request, Response

from . import formats
from .store import FileRow, Store, UserRow

CHUNK = 1024 * 1024

#: query parameters that are never column filters (§1.2)
RESERVED_PARAMS = {
    "format",
    "columns",
    "sortBy",
    "sortOrder",
    "limit",
    "offset",
    "all",
    "req_format",
    "xsiType",
    "removeFiles",
    "overwrite",
    "extract",
    "inbody",
    "content",
    "tags",
    "event_reason",
    "event_type",
    "event_action",
    "event_id",
    "update-stats",
    "accessible",
    "owner",
    "member",
    "collaborator",
    "recent",
    "favorite",
    "activeSince",
    "structure",
    "compression",
    "locator",
    "file_stats",
    "cache_file_stats",
    "CSRF",
    "description",
    "triggerPipelines",
    "pullDataFromHeaders",
    "fixScanTypes",
    "allowDataDeletion",
    "label",
    "_",
    "file_format",
    "file_content",
    "project",
    "accept-not-found",
}

#: a request body passes through this (the server's faults may cut it)
BodyFilter = Callable[[Request, Iterator[bytes]], Iterator[bytes]]


class HttpError(Exception):
    """Answer ``status`` with the Restlet HTML status page carrying ``message``."""

    def __init__(self, status: int, message: str = "", headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message or formats.HTTP_REASONS.get(status, "Error")
        self.headers = headers or {}


class DropConnection(ConnectionResetError):
    """Raised inside a request/response body to make cheroot close the socket (fault drop)."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "emulator fault: connection dropped")


@dataclass
class AppConfig:
    context_path: str = ""
    site_id: str = "XNAT"
    data_dir: Path = Path(".")
    #: as behind nginx with its default request buffering: a chunked upload reaches "XNAT"
    #: with a Content-Length, so it is stored; off, it is refused with 500 as XNAT's Restlet
    #: 1.1 does (docs/XNAT-API.md §4.5)
    buffering_proxy: bool = False
    #: off: listings and catalogs carry no MD5, as on a site with checksums off
    #: (docs/XNAT-API.md §1.8: the ``digest`` column is empty)
    checksums: bool = True


@dataclass
class Ctx:
    """One authenticated request as a handler sees it.

    ``path`` is the path below ``/data`` (with its leading ``/``, e.g. ``/prearchive/projects/P``).
    """

    request: Request
    store: Store
    user: UserRow
    config: AppConfig
    path: str = ""
    body_filter: Optional[BodyFilter] = None

    def body_chunks(self) -> Iterator[bytes]:
        """Stream the raw request body; faults may cut it (DropConnection), a short body is a
        400.

        A chunked body (``Transfer-Encoding: chunked``, no Content-Length: cheroot decodes
        it) ends only at its terminating zero-size chunk; a connection that drops before it
        makes cheroot's reader fail, and that is a truncated body too (nothing is stored),
        never the end of the file."""
        request = self.request
        stream = request.environ["wsgi.input"]
        length = request.content_length
        got = 0

        def gen() -> Iterator[bytes]:
            nonlocal got
            while length is None or got < length:
                want = CHUNK if length is None else min(CHUNK, length - got)
                try:
                    buf = stream.read(want)
                except (OSError, ValueError) as exc:
                    if length is None:
                        raise HttpError(
                            400, f"The chunked request body was truncated after {got} bytes."
                        ) from exc
                    buf = b""
                if not buf:
                    break
                got += len(buf)
                yield buf
            if length is not None and got < length:
                raise HttpError(400, f"The request body was truncated ({got} of {length} bytes).")

        it = gen()
        if self.body_filter is not None:
            it = self.body_filter(request, it)
        return it

    def spool_body(self) -> Path:
        """The body in a temp file of the data dir (same filesystem as the archive); the caller
        deletes it."""
        fd, tmp = self.store.new_temp()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self.body_chunks():
                    out.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp)

    def resultset(
        self,
        rows: Sequence[dict[str, Any]],
        columns: Sequence[str],
        meta: dict[str, str],
        **kw: Any,
    ) -> Response:
        return resultset(self.request, list(rows), list(columns), meta, **kw)


# -------------------------------------------------------------------------------- simple answers
def error_response(status: int, message: str, headers: Optional[dict[str, str]] = None) -> Response:
    r = Response(
        formats.error_page(status, message), status=status, content_type="text/html;charset=UTF-8"
    )
    for k, v in (headers or {}).items():
        r.headers[k] = v
    return r


def text_response(
    body: str | bytes, status: int = 200, content_type: str = "text/plain"
) -> Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return Response(data, status=status, content_type=content_type)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj).encode("utf-8"), status=status, content_type="application/json")


def uri_list_response(request: Request, uris: Sequence[str]) -> Response:
    """``text/uri-list``, each URI CRLF-terminated (§6, §7.3); ``format=txt`` -> the first URI
    as text/plain."""
    if (request.args.get("format") or "").lower() == "txt":
        return text_response(uris[0] if uris else "")
    return text_response("".join(u + "\r\n" for u in uris), content_type="text/uri-list")


# ------------------------------------------------------------------------------------ requests
def truthy(value: Optional[str]) -> bool:
    """isQueryVariableTrue: anything but false/0 is true (§1.2)."""
    return value is not None and value.lower() not in ("false", "0")


def form_params(request: Request) -> dict[str, str]:
    """Query parameters, then form fields of a form body (the query wins), as XNAT merges them."""
    out = {k: request.args[k] for k in request.args}
    if (request.mimetype or "") in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for k in request.form:
            out.setdefault(k, request.form[k])
    return out


def response_format(request: Request, default: str = "json") -> str:
    fmt = request.args.get("format")
    if fmt:
        return fmt.lower()
    accept = request.headers.get("Accept", "")
    if "text/html" in accept:
        return "html"
    return default


# ------------------------------------------------------------------------------------ result sets
def _column(available: set[str], name: str) -> Optional[str]:
    """``name`` as spelled in the table (XNAT matches column names case-insensitively)."""
    if name in available:
        return name
    return next((c for c in available if c.lower() == name.lower()), None)


def resultset(
    request: Request,
    rows: list[dict[str, Any]],
    columns: list[str],
    meta: dict[str, str],
    honour_columns: bool = True,
    always: Sequence[str] = ("ID", "URI"),
    column_props: Optional[list[dict[str, str]]] = None,
    extra_when_columns: Sequence[str] = (),
) -> Response:
    """Apply columns=, filters, sortBy/sortOrder, limit/offset and write the table (§1.2)."""
    args = request.args
    available = set(columns)
    for r in rows:
        available.update(r.keys())
        break
    # filters: any query parameter naming a column (wildcards allowed)
    for key, value in args.items(multi=True):
        if key in RESERVED_PARAMS and key not in ("label", "project"):
            continue
        col = _column(available, key)
        if col is None:
            continue
        pats = [v for v in value.split(",")]
        rows = [
            r for r in rows if any(fnmatch.fnmatchcase(formats.cell(r.get(col)), p) for p in pats)
        ]
    if honour_columns and args.get("columns"):
        wanted = [c.strip() for c in args["columns"].split(",") if c.strip()]
        out: list[str] = []
        for c in wanted:
            found = _column(available, c)
            if found and found not in out:
                out.append(found)
        for c in list(extra_when_columns) + list(always):
            if c in available and c not in out:
                out.append(c)
        columns = out
    sort_by = args.get("sortBy")
    if sort_by:
        desc = (args.get("sortOrder") or "ASC").upper() == "DESC"
        rows = sorted(rows, key=lambda r: formats.cell(r.get(sort_by)), reverse=desc)
    total = len(rows)
    offset = args.get("offset")
    limit = args.get("limit")
    try:
        if offset:
            rows = rows[int(offset) :]
        if limit and limit != "*":
            rows = rows[: int(limit)]
    except ValueError:
        raise HttpError(400, "Invalid limit or offset") from None
    if "totalRecords" in meta:
        meta = dict(meta, totalRecords=str(total))
    return write_table(request, rows, columns, meta, column_props)


def write_table(
    request: Request,
    rows: list[dict[str, Any]],
    columns: list[str],
    meta: dict[str, str],
    column_props: Optional[list[dict[str, str]]] = None,
) -> Response:
    """The ResultSet in the format the request asks for (json by default)."""
    fmt = response_format(request)
    if fmt == "csv":
        return Response(formats.resultset_csv(rows, columns), content_type="text/csv")
    if fmt == "html":
        return Response(
            formats.resultset_html(rows, columns, meta.get("title", "")), content_type="text/html"
        )
    if fmt == "xml":
        return Response(formats.resultset_xml(rows, columns, meta), content_type="text/xml")
    if fmt in ("json", "jsonp"):
        return Response(
            formats.resultset_json(rows, columns, meta, column_props),
            content_type="application/json",
        )
    raise HttpError(400, f"Unsupported format: {fmt}")


# ------------------------------------------------------------------------------------ files
#: Content-Type of an archive file by extension (everything else is application/octet-stream)
FILE_TYPES = {
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".html": "text/html",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".tiff": "image/tiff",
    ".tif": "image/tiff",
    ".txt": "text/plain",
    ".xml": "text/xml",
}

#: the prearchive's own (shorter) table, as it always answered
PREARCHIVE_FILE_TYPES = {
    ".txt": "text/plain",
    ".xml": "text/xml",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".pdf": "application/pdf",
}


def header_name(name: str) -> str:
    """A file name for Content-Disposition: latin-1 as is, else its UTF-8 bytes (as XNAT)."""
    try:
        name.encode("latin-1")
        return name.replace('"', "")
    except UnicodeEncodeError:
        return name.encode("utf-8").decode("latin-1").replace('"', "")


def file_iter(fh: Any, chunk: int = CHUNK) -> Iterator[bytes]:
    try:
        while True:
            buf = fh.read(chunk)
            if not buf:
                return
            yield buf
    finally:
        fh.close()


def file_response(
    request: Request, path: Path, name: str, types: dict[str, str] = FILE_TYPES
) -> Response:
    """GET/HEAD of one file (§3.1): streamed, Content-Length, no ETag, Range ignored."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - streamed; closed by the response's iterator
    except FileNotFoundError:
        raise HttpError(404, "Unable to find file.") from None
    st = os.fstat(fh.fileno())
    ext = os.path.splitext(name)[1].lower()
    ctype = types.get(ext, "application/octet-stream")
    if request.method == "HEAD":
        fh.close()
        body: Iterable[bytes] = []
    else:
        body = file_iter(fh)
    resp = Response(body, status=200, content_type=ctype, direct_passthrough=True)
    resp.headers["Content-Length"] = str(st.st_size)
    resp.headers["Last-Modified"] = formats.http_date(st.st_mtime)
    resp.headers["Cache-Control"] = "must-revalidate"
    resp.headers["Content-Disposition"] = f'attachment; filename="{header_name(name)}";'
    return resp


# ------------------------------------------------------------------------------------ archives
def archive_response(
    request: Request, entries: list[tuple[str, Path, FileRow]], fmt: str, name: str
) -> Response:
    """Archive files as a streamed zip/tar/tar.gz, chunked, no Content-Length (§3.3, §10.11);
    ``entries`` are (name in the archive, local path, catalog row)."""
    if fmt == "zip":
        gen = _zip_stream(entries)
        ctype, ext = "application/zip", "zip"
    else:
        gz = fmt in ("tar.gz", "tgz")
        gen = _tar_stream(entries, gz)
        ctype, ext = ("application/x-gzip", "tar.gz") if gz else ("application/x-tar", "tar")
    resp = Response(
        gen if request.method != "HEAD" else [],
        status=200,
        content_type=ctype,
        direct_passthrough=True,
    )
    resp.headers["Content-Disposition"] = f'attachment; filename="{header_name(name)}.{ext}";'
    return resp


def spooled_archive(entries: Sequence[tuple[str, Path]], filename: str, kind: str) -> Response:
    """Prearchive folders as a zip / tar / tar.gz of ``entries`` (name, path), built in a temp
    file (deflated, file modes kept) and streamed without Content-Length, as XNAT does (§3.3)."""
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - streamed, closed by the response
    if kind == "zip":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, path in entries:
                zf.write(path, name)
        ctype, ext = "application/zip", "zip"
    else:
        gz = kind in ("tar.gz", "tgz")
        with (
            tarfile.open(fileobj=tmp, mode="w:gz") if gz else tarfile.open(fileobj=tmp, mode="w")
        ) as tf:
            for name, path in entries:
                tf.add(str(path), arcname=name)
        ctype = "application/x-gzip" if gz else "application/x-tar"
        ext = "tar.gz" if gz else "tar"
    tmp.seek(0)
    resp = Response(file_iter(tmp, 1 << 16), 200, content_type=ctype, direct_passthrough=True)
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}.{ext}";'
    return resp


class _Sink:
    """Non-seekable write target that hands its bytes to a generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b: bytes) -> int:
        if b:
            self.parts.append(bytes(b))
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Nothing to release: ``take`` hands the bytes on (zipfile's writer protocol)."""

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def _zip_stream(entries: list[tuple[str, Path, FileRow]]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for arcname, path, f in entries:
            info = zipfile.ZipInfo(arcname, time.localtime(f.mtime)[:6])
            info.compress_type = zipfile.ZIP_STORED
            with open(path, "rb") as fin, zf.open(info, "w", force_zip64=f.size > 2**31) as out:
                while True:
                    buf = fin.read(CHUNK)
                    if not buf:
                        break
                    out.write(buf)
                    data = sink.take()
                    if data:
                        yield data
            data = sink.take()
            if data:
                yield data
    data = sink.take()
    if data:
        yield data


def _tar_stream(entries: list[tuple[str, Path, FileRow]], gz: bool) -> Iterator[bytes]:
    comp = zlib.compressobj(6, zlib.DEFLATED, 31) if gz else None

    def emit(b: bytes) -> bytes:
        return comp.compress(b) if comp is not None else b

    for arcname, path, f in entries:
        ti = tarfile.TarInfo(arcname)
        ti.size = f.size
        ti.mtime = int(f.mtime)
        ti.mode = 0o644
        yield emit(ti.tobuf(format=tarfile.PAX_FORMAT))
        sent = 0
        with open(path, "rb") as fin:
            while True:
                buf = fin.read(CHUNK)
                if not buf:
                    break
                sent += len(buf)
                out = emit(buf)
                if out:
                    yield out
        pad = (-sent) % tarfile.BLOCKSIZE
        if pad:
            yield emit(b"\0" * pad)
    tail = emit(b"\0" * (tarfile.BLOCKSIZE * 2))
    if comp is not None:
        tail += comp.flush()
    yield tail
