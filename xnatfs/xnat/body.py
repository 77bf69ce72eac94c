"""Reading a (non-file) response body within a deadline and a size cap.

Why this exists (issue 17 §1, §4): requests reads a non-streamed body with only a per-read
timeout, so a server that sends one byte every few seconds holds the caller for as long as it
likes; and it inflates ``Content-Encoding: gzip`` without any bound, so a 1 MiB gzip listing
grew the daemon to 3.4 GB.  Here the body is read with ``read1`` (at most one ``recv`` per call),
the socket's timeout is set to what is left of the caller's deadline before every read, and
gzip/deflate are inflated by our own ``zlib.decompressobj`` with ``max_length``, counting the
decoded bytes against ``limit``.

No requests import here: the caller hands in the urllib3 response (``resp.raw``); failures are
the small exceptions below, which ``client.py`` turns into :mod:`errors` at its one boundary.
"""

from __future__ import annotations

import socket
import time
import zlib
from typing import Any, List, Optional

__all__ = [
    "BodyTooLarge",
    "BodyDeadline",
    "BadEncoding",
    "read_body",
    "socket_of",
    "MAX_DOCUMENT_BYTES",
    "MAX_DOCUMENT_OBJECTS",
    "MAX_DOCUMENT_VALUES",
    "json_refusal",
]

#: largest decoded listing/document (JSON, error page, login answer) the client will hold;
#: the biggest real listings (a files listing of a 100,000-file resource) are ~30 MiB
MAX_DOCUMENT_BYTES = 64 << 20
#: most JSON objects (``{``) a document may hold before it is parsed: the byte cap alone would
#: let 64 MiB of tiny rows become ~2 GB of Python objects; 500,000 minimal rows are ~150 MiB
MAX_DOCUMENT_OBJECTS = 500_000
#: most JSON values a document may hold before it is parsed, counted as its ``,``, ``[`` and
#: ``{`` (every value but a container's first follows a comma): the cap on objects alone let
#: 60 MiB of ``[],`` parse into 21,000,000 lists (1.5 GB), of ``"ab",`` into 1 GB of strings.
#: A real listing at the byte cap (~200,000 rows of ~10 columns) holds ~2,000,000; at this cap
#: the worst document parses into ~250 MB
MAX_DOCUMENT_VALUES = 4_000_000
#: bytes asked of the socket per read
_READ = 64 << 10
#: most bytes inflated in one step (zlib's output buffer grows to this, not to the cap)
_INFLATE_STEP = 1 << 20


class BodyTooLarge(ValueError):
    """The decoded body would exceed the cap."""


class BodyDeadline(TimeoutError):
    """The whole body did not arrive before the deadline."""


class BadEncoding(ValueError):
    """A Content-Encoding we did not ask for, or a corrupt compressed stream."""


def json_refusal(content: bytes) -> Optional[str]:
    """Why a JSON document must not be parsed (more objects or values than the caps), or
    None.  Counted in the bytes, before ``json.loads`` makes a Python object of each value; a
    ``,`` or ``{`` inside a string counts too, which only errs on the safe side."""
    if content.count(b"{") > MAX_DOCUMENT_OBJECTS:
        return f"more than {MAX_DOCUMENT_OBJECTS} JSON objects"
    if content.count(b",") + content.count(b"[") + content.count(b"{") > MAX_DOCUMENT_VALUES:
        return f"more than {MAX_DOCUMENT_VALUES} JSON values"
    return None


def socket_of(raw: Any) -> Optional[socket.socket]:
    """The socket under a urllib3 response (2.x: ``_connection.sock``; else via http.client)."""
    conn = getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:
        try:
            sock = raw._fp.fp.raw._sock  # http.client.HTTPResponse -> SocketIO -> socket
        except AttributeError:
            return None
    return sock if isinstance(sock, socket.socket) else None


def _decoder(encoding: str) -> Any:
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        # RFC 9110 says zlib-wrapped; 32+ also accepts a gzip header
        return zlib.decompressobj(32 + zlib.MAX_WBITS)
    raise BadEncoding(f"Content-Encoding {encoding!r} was not asked for")


def _keep(out: bytes, total: int, limit: int, parts: List[bytes]) -> int:
    """Append decoded ``out`` to ``parts`` unless it takes the total past the cap;
    returns the new decoded total."""
    total += len(out)
    if total > limit:
        raise BodyTooLarge(f"decoded body larger than {limit} bytes")
    parts.append(out)
    return total


def _inflate(
    dec: Any, data: bytes, encoding: str, limit: int, total: int, parts: List[bytes]
) -> int:
    """Decode ``data`` into ``parts`` in small steps, never past what the cap still allows
    (+1 to see the overflow); returns the new decoded total."""
    pending = data
    while pending:
        try:
            out = dec.decompress(pending, min(limit - total + 1, _INFLATE_STEP))
        except zlib.error as exc:
            raise BadEncoding(f"corrupt {encoding} body: {exc}") from None
        total = _keep(out, total, limit, parts)
        pending = dec.unconsumed_tail
        if dec.eof:
            break
    return total


def read_body(
    raw: Any,
    encoding: str,
    deadline: float,
    limit: int = MAX_DOCUMENT_BYTES,
    read_timeout: Optional[float] = None,
    clock: Any = time.monotonic,
) -> bytes:
    """The whole decoded body of ``raw`` (a urllib3 response opened with
    ``preload_content=False``), or an exception: :class:`BodyDeadline` when ``deadline``
    (a ``clock`` value) passes first, :class:`BodyTooLarge` past ``limit`` decoded bytes,
    :class:`BadEncoding` for an unknown or corrupt encoding.  Socket errors pass through."""
    dec = _decoder(encoding)
    sock = socket_of(raw)
    parts: List[bytes] = []
    total = 0
    while True:
        left = deadline - clock()
        if left <= 0:
            raise BodyDeadline(f"body not complete within the deadline ({total} bytes so far)")
        if sock is not None:
            try:
                sock.settimeout(min(left, read_timeout) if read_timeout else left)
            except OSError:
                pass
        try:
            data = raw.read1(_READ, decode_content=False)
        except (socket.timeout, TimeoutError) as exc:
            if deadline - clock() <= 0:
                raise BodyDeadline(
                    f"body not complete within the deadline ({total} bytes so far)"
                ) from None
            raise exc
        if not data:
            break
        if dec is None:
            total += len(data)
            if total > limit:
                raise BodyTooLarge(f"body larger than {limit} bytes")
            parts.append(data)
            continue
        total = _inflate(dec, data, encoding, limit, total, parts)
    if dec is not None:
        try:
            out = dec.flush()  # input is all consumed here: only a small remainder
        except zlib.error as exc:
            raise BadEncoding(f"corrupt {encoding} body: {exc}") from None
        total = _keep(out, total, limit, parts)
    return b"".join(parts)
