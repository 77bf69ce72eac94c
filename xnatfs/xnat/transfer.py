"""The client's file transfers: streamed downloads of files and of the archives XNAT makes
(§3), and uploads of files into resources (§4.5).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any, Callable, Iterator, Mapping, Optional
from urllib.parse import quote

import requests

from .. import deadline as _call_deadline
from . import parse
from . import watchdog as _watchdog
from .errors import (
    Conflict,
    NotXnatResponse,
    Unauthorized,
    Unreachable,
    XnatError,
    XnatTimeout,
)
from .models import (
    RemoteStat,
)
from .transport import (
    _IDENTITY,
    Params,
    Sink,
    Transport,
    _CountingBody,
    _translate,
    check_contained,
)

__all__ = ["Transfer", "MIN_BODY_RATE"]

#: one logger for the whole client, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.xnat.client")

#: bytes a second a file's body must average, over ``read_timeout`` + size / this (time spent
#: in the sink not counted): a body that trickles (some bytes inside every ``read_timeout``,
#: so no read ever times out) held its download thread and request slot for as long as the
#: server liked, and every other reader queued behind it timed out
MIN_BODY_RATE = 16 * 1024


class _BodyDeadline:
    """The whole-body deadline of one file GET of known size, kept by the client's watchdog
    (which shuts the socket down when it passes: the blocked read returns).  Time the sink
    spends (a streamed file's flow control waiting for its reader) moves the deadline on: only
    the server's time counts."""

    def __init__(self, watchdog: Any, sock: Any, size: Optional[int], read_timeout: float):
        self._watchdog = watchdog
        self._sock = sock
        self._size = size
        self._started = time.monotonic()
        self._at = self._started + read_timeout + size / MIN_BODY_RATE if size is not None else None
        self._token = watchdog.arm(self._at, sock) if self._at is not None and sock else 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Around the sink: its time is not the server's."""
        if not self._token or self._at is None:
            yield
            return
        # disarmed while the sink runs: a watchdog firing meanwhile would cut a paused stream
        self._watchdog.disarm(self._token)
        began = time.monotonic()
        try:
            yield
        finally:
            self._at += time.monotonic() - began
            self._token = self._watchdog.arm(self._at, self._sock)

    def timeout(self, url: str, received: int) -> Optional[XnatTimeout]:
        """The error for a read that failed because the deadline passed, else None."""
        if not self._token or self._at is None or time.monotonic() < self._at:
            return None
        took = time.monotonic() - self._started
        return XnatTimeout(
            "GET",
            url,
            None,
            f"body slower than {MIN_BODY_RATE // 1024} KiB/s: {received} of {self._size} "
            f"bytes in {took:.1f}s; cut",
        )

    def disarm(self) -> None:
        if self._token:
            self._watchdog.disarm(self._token)
            self._token = 0


class _HtmlHead:
    """The first bytes of an answer that may be the login page, held back until it is known:
    ``feed`` returns what may go to the sink now, ``end`` what is left when the body ends;
    ``login_page`` is set when it was the page (nothing of it is passed on).

    Only the first chunk was looked at before: a real login page starts with a long head
    (scripts, styles) and is sent chunked, so its form came in a later chunk and the page was
    taken for the file's bytes (EIO at the size check, never a re-login).  Now up to
    ``parse.LOGIN_PAGE_WINDOW`` bytes are held (bounded: one window plus one chunk), only for
    an HTML answer without ``Content-Disposition``."""

    def __init__(self, active: bool) -> None:
        self.active, self.held, self.login_page = active, b"", False

    def feed(self, chunk: bytes) -> bytes:
        if not self.active:
            return chunk
        self.held += chunk
        return b"" if len(self.held) < parse.LOGIN_PAGE_WINDOW else self._decide()

    def end(self) -> bytes:
        return self._decide() if self.active else b""

    def _decide(self) -> bytes:
        self.active = False
        held, self.held = self.held, b""
        self.login_page = parse.looks_like_login_page(held)
        return b"" if self.login_page else held


class Transfer(Transport):
    """Download and upload calls of :class:`~xnatfs.xnat.client.XnatClient`."""

    # ---------------------------------------------------------------- downloads (§3)

    def download(
        self,
        file_uri: str,
        sink: Sink,
        headers: Optional[Mapping[str, str]] = None,
        on_headers: Optional[Callable[[Mapping[str, str]], None]] = None,
    ) -> RemoteStat:
        """Stream a file into ``sink`` in chunks of ``chunk_size``; return its RemoteStat.

        Retries (connection errors, 5xx) only while no byte has reached ``sink``; after that a
        failure raises (Unreachable/XnatTimeout, retryable) and the caller decides.  A body
        shorter than ``Content-Length`` is an error, never a short file.  A body that stalls
        raises XnatTimeout after ``read_timeout``.  Exceptions raised by ``sink`` propagate
        unchanged.  ``headers`` are added to the request; ``on_headers`` gets the headers of
        each successful answer before its first byte reaches ``sink`` (what it raises
        propagates, the answer closed): a cache proxy between us and XNAT speaks through them
        (``runtime.Runtime._fetch``).
        """
        return self._stream(file_uri, sink, params=None, headers=headers, on_headers=on_headers)

    def download_archive(self, uri: str, sink: Sink, format: str = "zip") -> RemoteStat:
        """Stream ``<uri>/files?format=zip|tar|tar.gz`` (§3.3) into ``sink``.  Such answers
        have no Content-Length (§10.11); ``size`` of the result is the byte count received."""
        if not uri.rstrip("/").endswith("/files"):
            uri = uri.rstrip("/") + "/files"
        # XNAT may compose a zip for longer than --timeout before its first byte (§3.3); the
        # stat waiting for it has its own deadline and the download goes on (README), so out of
        # a filesystem call its headers get the longest silence, read_timeout, if that is longer
        return self._stream(
            uri, sink, params={"format": format}, patience=self.options.read_timeout
        )

    def _stream(
        self,
        uri: str,
        sink: Sink,
        params: Optional[Params],
        patience: float = 0.0,
        headers: Optional[Mapping[str, str]] = None,
        on_headers: Optional[Callable[[Mapping[str, str]], None]] = None,
    ) -> RemoteStat:
        """``download``/``download_archive``: stream ``uri`` into ``sink``, retried only
        while no byte reached the sink, the socket registered so ``close()`` can end it.

        Long because: headers, login-page check, retry-before-first-byte and the short-body
        check share the response and its slot; apart they would pass both around."""
        opts = self.options
        deadline = self._deadline()
        if patience and _call_deadline.current() is None:
            deadline = max(deadline, time.monotonic() + patience)
        attempt = 0
        relogged = False
        while True:
            attempt += 1
            _, generation = self._current_session(deadline)
            # identity: Content-Length must be the file's size, and the bytes the file's bytes
            resp = self._call(
                "GET",
                uri,
                params=params,
                stream=True,
                headers={**(headers or {}), **_IDENTITY},
                deadline=deadline,
            )
            url = resp.url
            encoding = resp.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                # asked for as stored (§3.1): an encoded answer is refused before a byte is
                # read, never inflated by urllib3 (unbounded before urllib3 2.6) nor passed off
                # as the file; not retried, the server would answer the same
                resp.close()
                err = NotXnatResponse(
                    "GET",
                    url,
                    resp.status_code,
                    f"refused: the file came with Content-Encoding "
                    f"{encoding[:40]!r}, not as stored (Accept-Encoding: "
                    f"identity)",
                )
                self._stats.error(type(err).__name__)
                self._log_failure(err)
                raise err
            stat = parse.remote_stat_from_headers(resp.headers)
            if on_headers is not None:
                try:
                    on_headers(resp.headers)
                except BaseException:
                    resp.close()
                    raise
            received = 0
            login_page = False
            failure: Optional[XnatError] = None
            # the connection's lease, not its socket: the last read gives the connection back
            # to the pool before this thread can disarm (``watchdog.Lease``)
            sock = _watchdog.shuttable_of(resp.raw)
            with self._streams_lock:
                if sock is not None:
                    self._streams[id(resp)] = sock
                if self._closing.is_set() and sock is not None:
                    try:
                        # stop_transfers() has run: read nothing more
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            head = _HtmlHead(self._may_be_login_page(resp))
            body = _BodyDeadline(self._watchdog, sock, stat.size, opts.read_timeout)
            try:
                chunks = resp.iter_content(opts.chunk_size)
                ended = False
                while not ended:
                    try:
                        chunk = head.feed(next(chunks))
                    except StopIteration:
                        chunk, ended = head.end(), True
                    except Exception as exc:  # noqa: BLE001 - translation boundary for the body
                        failure = body.timeout(url, received) or _translate(
                            exc, "GET", url, self._timeout
                        )
                        break
                    if head.login_page:
                        login_page = True
                        failure = NotXnatResponse("GET", url, 200, "login page instead of the file")
                        break
                    if chunk:
                        received += len(chunk)
                        self._stats.bytes_in(len(chunk))
                        with body.paused():
                            sink(chunk)
            finally:
                body.disarm()
                with self._streams_lock:
                    self._streams.pop(id(resp), None)
                resp.close()
            if failure is None and stat.size is not None and received != stat.size:
                # never a short body passed off as the file (urllib3 usually notices first)
                failure = Unreachable(
                    "GET", url, 200, f"body ended after {received} of {stat.size} bytes"
                )
            if failure is None:
                return RemoteStat(received, stat.mtime, stat.content_type)
            self._stats.error(type(failure).__name__)
            if login_page and not relogged:
                relogged = True
                self._relogin(generation, deadline)
                continue
            if (
                received == 0
                and isinstance(failure, Unreachable)
                and failure.retryable
                and self._backoff(failure, attempt, deadline)
            ):
                continue
            self._log_failure(failure)
            raise failure

    @staticmethod
    def _may_be_login_page(resp: requests.Response) -> bool:
        """Could this 200 answer be the HTML login page where a file was expected?  A real
        ``.html`` file comes with ``Content-Disposition`` (§3.1); the login page does not."""
        ctype = resp.headers.get("Content-Type", "").lower()
        return "html" in ctype and not resp.headers.get("Content-Disposition")

    # ---------------------------------------------------------------- writes (never retried)

    def _rewindable(self, fileobj: Any, size: int) -> Callable[[], _CountingBody]:
        """A body factory that rewinds ``fileobj`` to where it was, so the write can be
        repeated once after a re-login; an unseekable stream gets one shot."""
        try:
            start: Optional[int] = fileobj.tell()
        except (AttributeError, OSError, ValueError):
            start = None
        used = [False]

        def factory() -> Any:
            if size == 0:
                return b""  # an empty iterable body would make requests send chunked
            if used[0]:
                if start is None:
                    raise Unauthorized(
                        "PUT", self.base_url, 401, "session expired during an unrepeatable upload"
                    )
                fileobj.seek(start)
            used[0] = True
            return _CountingBody(fileobj, size, self.options.chunk_size, self._stats.bytes_out)

        return factory

    def upload_file(
        self,
        resource_uri: str,
        relpath: str,
        fileobj: Any,
        size: int,
        overwrite: bool = False,
        content: Optional[str] = None,
        format: Optional[str] = None,
        tags: Optional[str] = None,
    ) -> str:
        """``PUT <resource>/files/<relpath>`` with the raw body streamed from ``fileobj``
        (§4.5); return the file's uri.  The resource is created by XNAT if missing.

        Raises Conflict when the file exists and ``overwrite`` is false (XNAT says so with a
        200 ``{"duplicates":[...]}``, not a 409).  XNAT refuses an empty body (400).
        """
        rel = relpath.lstrip("/")
        uri = f"{resource_uri.rstrip('/')}/files/{quote(rel, safe='/')}"
        check_contained("PUT", uri, f"{resource_uri.rstrip('/')}/files")
        params: Params = {"overwrite": "true" if overwrite else "false", "inbody": "true"}
        # note the clash (§10.7): format= here is the file's format attribute
        if content:
            params["content"] = content
        if format:
            params["format"] = format
        if tags:
            params["tags"] = tags
        resp = self._write(
            "PUT",
            uri,
            params,
            body_factory=self._rewindable(fileobj, size),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        text = resp.content.strip()
        if text.startswith(b"{"):
            try:
                dups = parse.loads_json(text).get("duplicates")
            except (parse.BadDocument, AttributeError):
                dups = None  # not XNAT's answer: the upload's check decides (tree/uploading.py)
            if dups:
                names = ", ".join(map(str, dups[:5] if isinstance(dups, list) else [dups]))
                raise Conflict(
                    "PUT",
                    resp.url,
                    resp.status_code,
                    f"file exists (duplicates: {names[:200]})",  # one bounded log line
                )
        return uri
