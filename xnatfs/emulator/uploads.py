"""File uploads into a resource (§4.5, §10.4-§10.6): multipart parts, raw bodies streamed into
the store, and ``extract=true`` archives unpacked into the resource root.

Why streamed: a raw body goes from the socket through the store's temp file into place, so a
cut connection (the server's faults) stores nothing and a large upload never sits in memory.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Response

from .serving import CHUNK, Ctx, HttpError, text_response, truthy
from .store import InvalidInput, ResourceRow, TruncatedUpload, validate_relpath

#: the media types XNAT reads as "a file in the body" (``RequestUtil.supported_upload_types``:
#: Restlet's names of its ``MediaType`` constants)
_FILE_IN_BODY_TYPES = frozenset(
    {
        "text/*",
        "text/plain",
        "text/xml",
        "text/csv",
        "application/*",
        "application/octet-stream",
        "application/dicom",
        "application/zip",
        "application/x-gtar",
        "application/x-gzip",
        "application/x-tar",
        "application/pdf",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/msword",
        "image/*",
        "image/bmp",
        "image/gif",
        "image/x-icon",
        "image/jpeg",
        "image/png",
        "image/svg+xml",
        "image/tiff",
        "video/*",
        "video/x-msvideo",
        "video/mp4",
        "video/mpeg",
        "video/quicktime",
        "video/x-ms-wmv",
    }
)


def _no_data(ctx: Ctx) -> HttpError:
    """XNAT's answer to an upload without content (docs/XNAT-API.md §4.5): when the request
    says its body is the file (``inbody=true``, or a file media type, as xnatpy and pyxnat
    send) ``SecureResource.getFileWritersAndLoadParams`` throws on an entity of size 0 and
    ``FileList`` turns that into a 500; only a request that names no file at all gets 400."""
    req = ctx.request
    if truthy(req.args.get("inbody")) or (req.mimetype or "").lower() in _FILE_IN_BODY_TYPES:
        return HttpError(
            500, "In-body File posts must include the file directly as the body of the message."
        )
    return HttpError(400, f"You tried to {req.method} to {req.path} but didn't provide any data.")


@dataclass
class _Put:
    """One upload request's settings, shared by each file it stores; ``duplicates`` collects
    the names that already existed (``overwrite`` off)."""

    res: ResourceRow
    overwrite: bool
    extract: bool
    meta: dict[str, str]
    duplicates: list[str]


def upload(ctx: Ctx, res: ResourceRow, relpath: str) -> Response:
    args = ctx.request.args
    overwrite = truthy(args.get("overwrite"))
    extract = truthy(args.get("extract"))
    meta = {
        "format": args.get("format", ""),
        "content": args.get("content", ""),
        "tags": args.get("tags", ""),
    }
    ctype = (ctx.request.mimetype or "").lower()
    duplicates: list[str] = []
    put = _Put(res, overwrite, extract, meta, duplicates)
    if ctype == "multipart/form-data":
        _multipart(ctx, put, relpath)
    else:
        _raw(ctx, put, relpath)
    if duplicates:
        # Not 409: 200 + a JSON-ish body with text/html content type (§4.5, §10.5).
        return Response(
            json.dumps({"duplicates": duplicates}).encode(), status=200, content_type="text/html"
        )
    return text_response("")


def _multipart(
    ctx: Ctx,
    put: _Put,
    relpath: str,
) -> None:
    request = ctx.request
    if truthy(request.args.get("inbody")):
        raise HttpError(406, "Cannot combine multipart/form-data with inbody=true.")
    try:
        files = request.files
    except ClientDisconnected:
        raise HttpError(400, "The request body was truncated.") from None
    parts = [fs for key in files for fs in files.getlist(key) if fs.filename or relpath]
    if not parts:
        raise _no_data(ctx)
    for fs in parts:
        name = (
            relpath
            if (relpath and len(parts) == 1)
            else (relpath.rstrip("/") + "/" if relpath else "")
            + os.path.basename(fs.filename or "upload")
        )
        fd, tmp = ctx.store.new_temp()
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(fs.stream, out, CHUNK)
        fs.close()
        try:
            _store_upload(ctx, put, name, Path(tmp))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _raw(
    ctx: Ctx,
    put: _Put,
    relpath: str,
) -> None:
    request = ctx.request
    if (request.mimetype or "").lower() == "application/x-www-form-urlencoded" and not truthy(
        request.args.get("inbody")
    ):
        request.form  # noqa: B018 - parsed as a form: no file content (§4.5)
        raise _no_data(ctx)
    if not relpath:
        raise HttpError(400, "A raw upload needs a file name in the URL.")
    if request.content_length == 0:
        raise _no_data(ctx)
    if put.extract and _is_archive_name(relpath):
        tmp = ctx.spool_body()
        try:
            if tmp.stat().st_size == 0:
                raise _no_data(ctx)
            _store_upload(ctx, put, relpath, tmp)
        finally:
            if tmp.exists():
                tmp.unlink()
        return
    try:
        rel = validate_relpath(relpath)
    except InvalidInput as e:
        raise HttpError(400, str(e)) from None
    if request.content_length is None and not ctx.config.buffering_proxy:
        _refuse_unknown_size(ctx, put)
    if not put.overwrite and ctx.store.get_file(put.res.id, rel) is not None:
        for _ in ctx.body_chunks():  # drain so the connection stays usable
            pass
        put.duplicates.append(rel)
        return
    chunks = ctx.body_chunks()
    first = next(chunks, b"")
    if not first:  # e.g. a chunked body with no data
        raise _no_data(ctx)
    stream = _IterReader(itertools.chain([first], chunks))
    try:
        stored = ctx.store.put_file(
            put.res.id,
            rel,
            stream,
            put.overwrite,
            expected_size=request.content_length,
            format=put.meta["format"],
            content=put.meta["content"],
            tags=put.meta["tags"],
        )
    except TruncatedUpload as e:
        raise HttpError(400, str(e)) from None
    if not stored:
        put.duplicates.append(rel)


def _store_upload(
    ctx: Ctx,
    put: _Put,
    relpath: str,
    tmp: Path,
) -> None:
    st = ctx.store
    if put.extract and _is_archive_name(relpath):
        # extract=true ignores the URL sub-path: content lands in the resource root (§10.6)
        stage = Path(tempfile.mkdtemp(dir=st.tmp_dir))
        try:
            names = _extract_archive(tmp, relpath, stage)
            for name in names:
                if not put.overwrite and st.get_file(put.res.id, name) is not None:
                    put.duplicates.append(name)
                    continue
                st.put_file_from_path(
                    put.res.id,
                    name,
                    stage / name,
                    put.overwrite,
                    move=True,
                    format=put.meta["format"],
                    content=put.meta["content"],
                    tags=put.meta["tags"],
                )
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return
    try:
        rel = validate_relpath(relpath)
    except InvalidInput as e:
        raise HttpError(400, str(e)) from None
    if tmp.stat().st_size == 0:
        raise HttpError(400, "You tried to upload an empty file.")
    if not st.put_file_from_path(
        put.res.id,
        rel,
        tmp,
        put.overwrite,
        move=True,
        format=put.meta["format"],
        content=put.meta["content"],
        tags=put.meta["tags"],
    ):
        put.duplicates.append(rel)


def _refuse_unknown_size(ctx: Ctx, put: _Put) -> None:
    """A body without Content-Length (chunked): XNAT's Restlet 1.1 gives it the size -1 and
    ``SecureResource.getFileWritersAndLoadParams`` refuses any in-body file whose size is
    below 1 unless it is sent as application/zip; the answer is a 500, after the servlet
    container has read the body, and nothing is stored (docs/XNAT-API.md §4.5)."""
    if (ctx.request.mimetype or "").lower() == "application/zip":
        return
    for _ in ctx.body_chunks():  # Tomcat reads (and drops) the body before the answer
        pass
    raise HttpError(
        500,
        "In-body File posts must include the file directly as the body of the message "
        "(not as part of multi-part form data). The request entity size is -1 but the "
        "media type is not application/zip (i.e. streaming compressed upload).",
    )


class _IterReader:
    """File-like ``read(n)`` over an iterator of chunks (so the store can stream a body)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._buf = b""
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                chunk = next(self._it)
            except StopIteration:
                break
            self.total += len(chunk)
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _is_archive_name(name: str) -> bool:
    n = name.lower()
    return n.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".zar"))


def _extract_archive(src: Path, name: str, dest: Path) -> list[str]:
    """Unpack into ``dest``; refuse corrupt archives and unsafe member paths (400)."""
    out: list[str] = []
    try:
        if name.lower().endswith((".zip", ".zar")):
            with zipfile.ZipFile(src) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    rel = validate_relpath(info.filename)
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout, CHUNK)
                    out.append(rel)
        else:
            with tarfile.open(src, "r:*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    rel = validate_relpath(m.name)
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    member = tf.extractfile(m)
                    assert member is not None
                    with member, open(target, "wb") as fout:
                        shutil.copyfileobj(member, fout, CHUNK)
                    out.append(rel)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, InvalidInput) as e:
        raise HttpError(400, f"Unable to extract archive {name}: {e}") from None
    return out
