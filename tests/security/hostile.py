"""A hostile (or badly broken) XNAT server for the security suite (issue 17).

Just enough of the REST API for a mount to start and walk one project: login (§5.1), the
JSESSION heartbeat/logout, ``/data/projects``, one project ``H`` with no subjects... unless a
mode says otherwise, one project resource ``R`` (id 1) and its files listing, and the files.
Each *mode* breaks one thing, the way issue 17 describes it.  Every request is recorded (method,
path, whether it carried the session cookie), so a test can prove what was *not* asked.

It never imports xnatfs: it is the server side.  Served by cheroot in a thread on 127.0.0.1 with
an ephemeral port; ``HostileServer.mode`` may be changed between (not during) file operations.

Modes (``MODES``):

=====================  ==========================================================================
``ok``                 a sane server: 3 small files
``slow_login``         the login answer (``PUT /data/services/auth``) trickles
``slow_listing``       ``/data/projects`` body trickles 1 byte every ``trickle`` s, for ever
``slow_files``         the files listing trickles the same way (the projects listing is fine)
``gzip_bomb``          ``/data/projects`` is ~1 MiB of gzip that inflates to 1 GiB
``huge_listing``       ``/data/projects`` is an identity body of ``huge_bytes`` (default 256 MiB)
``many_rows``          ``/data/projects`` lists 3,000,000 tiny valid rows (~33 MB of JSON)
``listing_500``        the first ``fail_first`` GETs of ``/data/projects`` answer 500
``many_arrays``        ``/data/projects`` lists 21,000,000 empty arrays (``[],``: 60 MiB, and no
                       ``{`` but the first two; ~1.5 GB as Python objects)
``json_amplify``       project ``H``'s own document (its ``.xnat.json``) is 400 arrays deep around
                       200,000 zeros: 0.8 MB that ``indent=2`` prints as 161 MB
``deep_json``          ``/data/projects`` is valid JSON nested 100,000 arrays deep (200 KB), and
                       so is a file PUT's answer (``{"duplicates": [[[...``)
``catalog_elements``   the resource's catalog (``files?format=xcat``) is ~61 MiB of 16,000,000
                       empty elements: under the byte cap, ~1.4 GB as a parsed tree
``uri_list_bomb``      ``POST /data/services/import`` answers ~61 MiB of 3-byte lines
``names``              subjects labelled ``.``, ``..``, ``a/b``, ``new\\nline``; files ``..``,
                       ``evil\\nname.txt`` (size -5)
``sizes``              files with sizes -5, 10^23, ``abc``, 2^63 and one good file of 10 bytes
``uris``               file URIs ``/data/../../../etc/passwd``, ``//evil/...``, an absolute URL
                       to ``evil_url``, one outside ``/data/``, and one good file
``redirect``           ``/data/projects`` answers 302 to ``evil_url`` (another host; with
                       ``tls=`` set and an http ``evil_url``: https -> http)
``redirect_login``     the login (``PUT /data/services/auth``, ``POST /data/JSESSION``) answers
                       307 (method and body kept) to ``evil_url``
``redirect_writes``    every other PUT/POST/DELETE (uploads, creates, imports) answers 307 to
                       ``evil_url``
``file_endless``       file ``big.bin`` is listed as 1,000 bytes; its body never ends
``file_longer``        file ``big.bin`` is listed as 1,000 bytes; the body has 5,000
``file_gzip_bomb``     file ``big.bin`` (listed 1,000) comes gzip-encoded, inflating to 1 GiB
``file_gzip``          file ``big.bin`` (listed 1,000) comes gzip-encoded, inflating to 1,000
``file_slow``          file ``big.bin`` (listed 1,000) trickles 1 byte every ``trickle`` s
``file_bad_digest``    file ``big.bin`` (listed 1,000 with an MD5) has other bytes, every time
``slow_upload``        a file PUT's body is read at ~``upload_rate`` B/s, then answered at once
``slow_upload_answer`` the same, then the answer trickles for ever (``body_done`` is when the
                       body had all been read)
``custom``             the files listing is ``rows`` (``file_row`` dicts), a file's body is
                       ``bodies[<path below files/>]`` (else the good bytes); writes are recorded
                       and answered 200
=====================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from cheroot import wsgi

SESSION = "HOSTILESESSIONID0123456789"
PROJECT = "H"
GOOD_BYTES = b"good file\n"  # 10 bytes
#: what ``big.bin`` should hold in the ``file_*`` modes that list its MD5 (1,000 bytes)
BIG_BYTES = b"b" * 1000

#: the start of a login page as a real XNAT sends it: a long head (scripts, styles) in which
#: no login marker appears, in a chunk of its own
LOGIN_HEAD = (
    b"<!DOCTYPE html>\n<html>\n<head>\n<title>XNAT</title>\n"
    + b'<script type="text/javascript" src="/scripts/lib/jquery.js"></script>\n' * 200
    + b"</head>\n"
)
LOGIN_FORM = (
    b'<body id="page_body"><form name="form1" method="post" action="/j_spring_security_check">'
    b'<input type="text" name="j_username"><input type="password" name="j_password">'
    b'<button type="submit">Login</button></form></body>\n</html>\n'
)

MODES = (
    "ok",
    "slow_login",
    "slow_listing",
    "slow_files",
    "gzip_bomb",
    "huge_listing",
    "many_rows",
    "listing_500",
    "many_arrays",
    "json_amplify",
    "deep_json",
    "catalog_elements",
    "uri_list_bomb",
    "names",
    "sizes",
    "uris",
    "redirect",
    "redirect_login",
    "redirect_writes",
    "file_endless",
    "file_longer",
    "file_gzip_bomb",
    "file_gzip",
    "file_slow",
    "file_bad_digest",
    "slow_upload",
    "slow_upload_answer",
    "custom",
)

_BOMB: Dict[str, bytes] = {}
_BOMB_LOCK = threading.Lock()


def gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """``inflated`` zero bytes as one gzip member (1 GiB -> ~1 MiB); made once per process."""
    key = str(inflated)
    with _BOMB_LOCK:
        if key not in _BOMB:
            c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            zeros = b"\0" * (1 << 20)
            parts = [c.compress(zeros) for _ in range(inflated >> 20)]
            parts.append(c.flush())
            _BOMB[key] = b"".join(parts)
        return _BOMB[key]


@dataclass
class Request:
    method: str
    path: str
    query: str
    cookie: bool
    #: the request target as sent (still percent-encoded)
    raw: str = ""


def _many_rows(n: int = 3_000_000) -> bytes:
    """A valid listing of ``n`` minimal rows: small in bytes, huge as Python objects."""
    if "many" not in _BOMB:
        _BOMB["many"] = (
            b'{"ResultSet":{"Result":['
            + b",".join([b'{"ID":"x"}'] * n)
            + b'],"totalRecords":"'
            + str(n).encode()
            + b'"}}'
        )
    return _BOMB["many"]


def _many_arrays(n: int = 21_000_000) -> bytes:
    """A listing whose rows are ``n`` empty arrays: 60 MiB, under every cap on objects."""
    if "arrays" not in _BOMB:
        _BOMB["arrays"] = b'{"ResultSet":{"Result":[' + b"[]," * n + b"[]]}}"
    return _BOMB["arrays"]


def _many_elements(n: int = 16_000_000) -> bytes:
    """A catalog of ``n`` empty elements: 61 MiB, ~1.4 GB as an ElementTree."""
    if "elements" not in _BOMB:
        _BOMB["elements"] = (
            b'<cat:Catalog xmlns:cat="http://nrg.wustl.edu/catalog"><cat:entries>'
            + b"<a/>" * n
            + b"</cat:entries></cat:Catalog>"
        )
    return _BOMB["elements"]


def _rows(rows: List[Dict[str, Any]]) -> bytes:
    return json.dumps({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}).encode()


def file_row(name: str, size: Any, uri: Optional[str] = None, digest: str = "") -> Dict[str, Any]:
    base = f"/data/projects/{PROJECT}/resources/1/files/"
    return {
        "Name": name,
        "Size": str(size),
        "URI": uri if uri is not None else base + name,
        "collection": "R",
        "digest": digest,
        "file_tags": "",
        "file_format": "",
        "file_content": "",
        "cat_ID": "1",
    }


@dataclass
class HostileServer:
    """The server; ``start()`` then use ``url``; ``requests`` is what reached it."""

    mode: str = "ok"
    #: address to bind: 127.0.0.2 makes "another host" for redirects (all of 127/8 is loopback)
    host: str = "127.0.0.1"
    #: (certificate, key) PEM files: serve https (for the https -> http redirect case)
    tls: Optional[Tuple[str, str]] = None
    #: seconds between bytes of a trickled body
    trickle: float = 0.5
    #: GETs of /data/projects answered 500 in mode listing_500
    fail_first: int = 2
    huge_bytes: int = 256 << 20
    #: bytes per second a ``slow_upload*`` PUT body is read at (64 KiB steps)
    upload_rate: int = 1 << 20
    #: ``time.monotonic()`` when the last slow upload body had all been read (None: not yet)
    body_done: Optional[float] = None
    #: bytes of the last slow upload body read
    body_bytes: int = 0
    #: SO_RCVBUF of the server's sockets: small, so that a slow reader is felt by the client at
    #: once (an autotuned loopback buffer would take megabytes of an upload unread)
    rcvbuf: int = 64 << 10
    #: where redirects and absolute URIs point (another server; see ``evil`` in conftest)
    evil_url: str = "http://127.0.0.2:9/"
    #: mode ``custom``: the files listing of resource R, and bodies by path below ``files/``
    rows: List[Dict[str, Any]] = field(default_factory=list)
    bodies: Dict[str, bytes] = field(default_factory=dict)
    #: mode ``custom``: the body of every GET of a file after its first (the file changed on
    #: XNAT between two GETs, or a server that lies), by path below ``files/``
    later_bodies: Dict[str, bytes] = field(default_factory=dict)
    #: any mode: the login's answer instead of a session, as (status line, text/plain body)
    login_answer: Optional[Tuple[str, bytes]] = None
    #: any mode: the login's Set-Cookie headers instead of ``JSESSIONID=SESSION; Path=/``
    login_cookies: Optional[List[str]] = None
    #: mode ``custom``: more project IDs listed beside ``H`` (each empty)
    projects: List[str] = field(default_factory=list)
    #: any mode: the session has expired as a browser-facing XNAT shows it: every GET of a
    #: file answers 200 with the login page (§5.1), sent chunked (``LOGIN_HEAD``, in which no
    #: login marker appears, then the form), until the next login; ``login_pages`` counts them
    expired: bool = False
    login_pages: int = 0
    requests: List[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: Dict[str, int] = field(default_factory=dict)
    _server: Any = None
    _thread: Optional[threading.Thread] = None
    _stop: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HostileServer":
        self._server = wsgi.Server((self.host, 0), self._app, numthreads=16, server_name="hostile")
        if self.tls is not None:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            self._server.ssl_adapter = BuiltinSSLAdapter(*self.tls)
        self._server.prepare()
        import socket

        self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        port = self._server.bind_addr[1]
        self.url = f"{'https' if self.tls else 'http'}://{self.host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve, daemon=True, name="hostile-server"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # endless bodies end
        if self._server is not None:
            self._server.stop()
        if self._thread is not None:
            self._thread.join(10)

    def paths(self) -> List[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def count(self, key: str) -> int:
        with self._lock:
            return self._count.get(key, 0)

    # ------------------------------------------------------------------ bodies
    def _trickle(self, body: bytes) -> Iterator[bytes]:
        """The first byte of ``body`` now, then one every ``trickle`` s, for ever (padding:
        JSON allows trailing spaces, so only the deadline can end it)."""
        i = 0
        while not self._stop.is_set():
            yield body[i : i + 1] if i < len(body) else b" "
            i += 1
            self._stop.wait(self.trickle)

    def _endless(self, chunk: bytes = b"x" * 65536) -> Iterator[bytes]:
        while not self._stop.is_set():
            yield chunk

    def _read_slowly(self, environ: Dict[str, Any]) -> None:
        """Read a request body in 64 KiB steps at ``upload_rate`` (a server behind a slow
        link); note when it is all in."""
        left = int(environ.get("CONTENT_LENGTH") or 0)
        step = 64 << 10
        got = 0
        while left > 0 and not self._stop.is_set():
            data = environ["wsgi.input"].read(min(step, left))
            if not data:
                break
            left -= len(data)
            got += len(data)
            self._stop.wait(len(data) / self.upload_rate)
        with self._lock:
            self.body_bytes = got
            self.body_done = time.monotonic()

    def _huge(self, n: int) -> Iterator[bytes]:
        block = b" " * (1 << 20)
        sent = 0
        while sent < n and not self._stop.is_set():
            part = block[: min(len(block), n - sent)]
            sent += len(part)
            yield part

    # ------------------------------------------------------------------ the app
    def _app(self, environ: Dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        cookie = SESSION in environ.get("HTTP_COOKIE", "")
        with self._lock:
            self.requests.append(
                Request(method, path, query, cookie, environ.get("REQUEST_URI", ""))
            )
            self._count[f"{method} {path}"] = self._count.get(f"{method} {path}", 0) + 1
            n = self._count[f"{method} {path}"]
        mode = self.mode

        def send(
            status: str,
            body: Any,
            ctype: str = "application/json",
            headers: Tuple[Tuple[str, str], ...] = (),
            length: Optional[int] = None,
        ):
            hdrs = [("Content-Type", ctype)] + list(headers)
            if isinstance(body, bytes):
                hdrs.append(("Content-Length", str(len(body) if length is None else length)))
                start_response(status, hdrs)
                return [body]
            if length is not None:
                hdrs.append(("Content-Length", str(length)))
            start_response(status, hdrs)
            return body

        if mode == "redirect_login" and path in ("/data/services/auth", "/data/JSESSION"):
            return send(
                "307 Temporary Redirect",
                b"",
                "text/plain",
                (("Location", self.evil_url + path.lstrip("/")),),
            )
        if (
            mode == "redirect_writes"
            and method in ("PUT", "POST", "DELETE")
            and path != "/data/services/auth"
        ):
            return send(
                "307 Temporary Redirect",
                b"",
                "text/plain",
                (("Location", self.evil_url + path.lstrip("/")),),
            )
        if path == "/data/services/auth" and method == "PUT" and self.login_answer:
            return send(self.login_answer[0], self.login_answer[1], "text/plain")
        if path == "/data/services/auth" and method == "PUT":
            if mode == "slow_login":
                return send(
                    "200 OK",
                    self._trickle(SESSION.encode()),
                    "text/plain",
                    (("Set-Cookie", f"JSESSIONID={SESSION}; Path=/; HttpOnly"),),
                )
            self.expired = False  # a new session
            cookies = self.login_cookies or [f"JSESSIONID={SESSION}; Path=/; HttpOnly"]
            return send(
                "200 OK",
                SESSION.encode(),
                "text/plain",
                tuple(("Set-Cookie", c) for c in cookies),
            )
        if path == "/data/JSESSION":
            return send("200 OK", SESSION.encode(), "text/plain")
        if not cookie:
            return send("401 Unauthorized", b"login first", "text/plain")

        if path == "/data/projects":
            rows = _rows(
                [
                    {
                        "ID": pid,
                        "name": "hostile",
                        "secondary_ID": pid,
                        "description": "",
                        "URI": f"/data/projects/{pid}",
                    }
                    for pid in [PROJECT] + (self.projects if mode == "custom" else [])
                ]
            )
            if mode == "slow_listing":
                return send("200 OK", self._trickle(rows))
            if mode == "gzip_bomb":
                return send("200 OK", gzip_bomb(), headers=(("Content-Encoding", "gzip"),))
            if mode == "many_rows":
                return send("200 OK", _many_rows())
            if mode == "huge_listing":
                return send("200 OK", self._huge(self.huge_bytes), length=self.huge_bytes)
            if mode == "many_arrays":
                return send("200 OK", _many_arrays())
            if mode == "deep_json":
                depth = 100_000
                return send(
                    "200 OK",
                    b'{"ResultSet":{"Result":[' + b"[" * depth + b"]" * depth + b"]}}",
                )
            if mode == "listing_500" and n <= self.fail_first:
                return send(
                    "500 Internal Server Error",
                    b"<html><body><h3>Internal Server Error</h3></body></html>",
                    "text/html",
                )
            if mode == "redirect":
                return send(
                    "302 Found", b"", "text/plain", (("Location", self.evil_url + "data/projects"),)
                )
            return send("200 OK", rows)

        if path == f"/data/projects/{PROJECT}" and mode == "json_amplify":
            depth, zeros = 400, 200_000
            return send(
                "200 OK",
                b'{"items":[' + b"[" * depth + b",".join([b"0"] * zeros) + b"]" * depth + b"]}",
            )
        if path == f"/data/projects/{PROJECT}/subjects":
            rows = []
            if mode == "names":
                for i, label in enumerate((".", "..", "a/b", "new\nline", "plain")):
                    rows.append(
                        {
                            "ID": f"HS{i}",
                            "label": label,
                            "project": PROJECT,
                            "URI": f"/data/subjects/HS{i}",
                        }
                    )
            return send("200 OK", _rows(rows))
        if path.startswith(f"/data/projects/{PROJECT}/subjects/") and path.endswith("/experiments"):
            return send("200 OK", _rows([]))

        if path == f"/data/projects/{PROJECT}/resources":
            return send(
                "200 OK",
                _rows(
                    [
                        {
                            "xnat_abstractresource_id": "1",
                            "label": "R",
                            "format": "",
                            "content": "",
                            "tags": "",
                            "file_count": "",
                            "file_size": "",
                        }
                    ]
                ),
            )

        files_base = f"/data/projects/{PROJECT}/resources/1/files"
        if (
            method == "PUT"
            and path.startswith(files_base + "/")
            and mode in ("slow_upload", "slow_upload_answer")
        ):
            self._read_slowly(environ)
            if mode == "slow_upload_answer":
                return send("200 OK", self._trickle(b""), "text/plain")
            return send("200 OK", b"", "text/plain")
        if method == "PUT" and path.startswith(files_base + "/") and mode == "deep_json":
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            depth = 100_000
            return send("200 OK", b'{"duplicates":' + b"[" * depth + b"]" * depth + b"}")
        if path == files_base and mode == "catalog_elements" and "format=xcat" in query:
            return send("200 OK", _many_elements(), "text/xml")
        if path == "/data/services/import" and mode == "uri_list_bomb":
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            return send("200 OK", b"ab\n" * (21 << 20), "text/uri-list")
        if path == files_base:
            body = _rows(self._file_rows(mode))
            if mode == "slow_files":
                return send("200 OK", self._trickle(body))
            return send("200 OK", body)
        if path.startswith(files_base + "/") and method == "GET" and self.expired:
            with self._lock:
                self.login_pages += 1
            return send("200 OK", iter([LOGIN_HEAD, LOGIN_FORM]), "text/html;charset=UTF-8")
        if path.startswith(files_base + "/"):
            name = path[len(files_base) + 1 :]
            if mode == "custom":
                # PATH_INFO is the decoded path's bytes as latin-1 (PEP 3333)
                name = name.encode("latin-1").decode("utf-8", "surrogateescape")
                if method in ("PUT", "DELETE", "POST"):
                    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                    return send("200 OK", b"", "text/plain")
                body = self.bodies.get(name, GOOD_BYTES)
                if n > 1 and name in self.later_bodies:
                    body = self.later_bodies[name]
                return send("200 OK", body, "application/octet-stream")
            if name == "big.bin":
                if mode == "file_endless":
                    return send("200 OK", self._endless(), "application/octet-stream")
                if mode == "file_longer":
                    return send("200 OK", b"y" * 5000, "application/octet-stream")
                if mode == "file_gzip_bomb":
                    return send(
                        "200 OK",
                        gzip_bomb(),
                        "application/octet-stream",
                        (("Content-Encoding", "gzip"),),
                    )
                if mode == "file_gzip":
                    return send(
                        "200 OK",
                        zlib.compress(BIG_BYTES, wbits=16 + zlib.MAX_WBITS),
                        "application/octet-stream",
                        (("Content-Encoding", "gzip"),),
                    )
                if mode == "file_slow":
                    return send(
                        "200 OK",
                        self._trickle(BIG_BYTES),
                        "application/octet-stream",
                        length=len(BIG_BYTES),
                    )
                if mode == "file_bad_digest":
                    return send("200 OK", b"c" * len(BIG_BYTES), "application/octet-stream")
            return send("200 OK", GOOD_BYTES, "application/octet-stream")
        return send("404 Not Found", b"<html><body><h3>Not Found</h3></body></html>", "text/html")

    def _file_rows(self, mode: str) -> List[Dict[str, Any]]:
        if mode == "custom":
            return list(self.rows)
        if mode == "sizes":
            return [
                file_row("neg.bin", -5),
                file_row("huge.bin", 10**23),
                file_row("nan.bin", "abc"),
                file_row("over.bin", 2**63),
                file_row("good.txt", len(GOOD_BYTES)),
            ]
        if mode == "names":
            return [
                file_row("..", len(GOOD_BYTES)),
                file_row("evil\nname.txt", -5),
                file_row("good.txt", len(GOOD_BYTES)),
            ]
        if mode == "uris":
            return [
                file_row("passwd", 10, "/data/../../../etc/passwd"),
                file_row("net.bin", 10, "//evil/data/projects/H/resources/1/files/net.bin"),
                file_row(
                    "abs.bin", 10, self.evil_url + "data/projects/H/resources/1/files/abs.bin"
                ),
                file_row("root.bin", 10, "/etc/xnat/files/root.bin"),
                file_row("good.txt", len(GOOD_BYTES)),
            ]
        if mode == "file_bad_digest":
            return [
                file_row("big.bin", len(BIG_BYTES), digest=hashlib.md5(BIG_BYTES).hexdigest()),
                file_row("good.txt", len(GOOD_BYTES)),
            ]
        if mode.startswith("file_"):
            return [file_row("big.bin", 1000), file_row("good.txt", len(GOOD_BYTES))]
        return [file_row(f"f{i}.txt", len(GOOD_BYTES)) for i in range(3)]


def gunzip_size(blob: bytes) -> int:
    """Inflated size of a gzip blob (a test self-check; streams, bounded memory)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    n = 0
    for i in range(0, len(blob), 1 << 16):
        n += len(d.decompress(blob[i : i + (1 << 16)], 1 << 24))
        while d.unconsumed_tail:
            n += len(d.decompress(d.unconsumed_tail, 1 << 24))
    return n


__all__ = [
    "HostileServer",
    "MODES",
    "file_row",
    "SESSION",
    "PROJECT",
    "GOOD_BYTES",
    "BIG_BYTES",
    "gzip_bomb",
    "gunzip_size",
    "Request",
]


class TrickledHeadersServer:
    """A raw socket server whose answer's status line and headers arrive one byte every
    ``trickle`` seconds, for ever (no WSGI server can do that: they send headers at once)."""

    def __init__(self, trickle: float = 0.2) -> None:
        import socket

        self.trickle = trickle
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._threads: List[threading.Thread] = []

    def start(self) -> "TrickledHeadersServer":
        t = threading.Thread(target=self._accept, daemon=True, name="trickled-headers")
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        import socket

        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: Any) -> None:
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 60000
        try:
            conn.settimeout(5)
            conn.recv(65536)  # the request (small enough to come in one piece)
            for i in range(len(head)):
                if self._stop.wait(self.trickle if i else 0):
                    break
                conn.sendall(head[i : i + 1])
        except OSError:
            pass  # the client gave up: what the test wants
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        for t in self._threads:
            t.join(5)
