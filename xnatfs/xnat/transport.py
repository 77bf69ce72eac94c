"""The client's transport: one pooled HTTP session, its login, and the one way a request is sent.

``Transport`` is the base of :class:`~xnatfs.xnat.client.XnatClient` (the listings, file
transfers and object calls build on ``_call``/``_rows``/``_write``); what follows is the policy
of every call the client makes.

It knows nothing of files or paths; it speaks ``/data/...`` (``docs/XNAT-API.md``) and returns
``models`` records.  It is the only module of xnatfs that imports requests
(docs/ARCHITECTURE.md §8), and
``Transport._send`` is the one place where requests/urllib3/socket exceptions become :mod:`errors`.

Policy in one place:

* a name lookup is bounded by the connect timeout (``resolver.py``: a resolver that hangs is
  ``Unreachable`` after it, a connection failure to the breaker; an IP literal is never looked
  up, an answer is kept 30 s);
* every call has a whole-response deadline (``deadline``, the mount's ``--timeout``): each
  request's connect/read timeouts are cut to what is left of it, a document body is read by
  ``body.read_body`` against it (a server that trickles a listing cannot hold a caller, issue 17
  §1), and a wait for the login lock is bounded by it too; ``_send`` has no default for either;
* document bodies are capped (``body.MAX_DOCUMENT_BYTES`` decoded) and gzip/deflate are inflated
  by us with ``max_length``, never by urllib3 (a gzip bomb costs at most the cap, issue 17 §4);
* GET/HEAD are retried on connection errors and 429/500/502/503/504 with jittered exponential
  backoff (``Retry-After`` honoured), bounded by ``retries`` and the deadline; writes are
  never retried here (the upload journal decides);
* every HTTP exchange holds a slot of one adaptive limiter (``limiter.py``, ``--max-requests``,
  issue 13 §2): a streamed download until its response is closed; it halves on 429/502/503/
  504/timeouts/refused connections, pauses the whole client while XNAT is down or asks to wait
  (``Retry-After``), and regrows by about one request per round trip;
* a path that would leave ``/data/`` (``..``/``.`` segments, ``//host``, another host) is refused
  before any request (issue 17 §8), so the session cookie only goes where XNAT objects are;
* a 401, a redirect to the login page or a 200 HTML login page (§5.1, §10.8) makes the client log
  in again, once, and repeat the call; many threads may see the 401 together and only one logs in;
* HTML is never taken for data (§10.8); a download is never returned short (Content-Length is
  checked against the bytes received) and never decoded: files are asked for as stored
  (``Accept-Encoding: identity``), an answer with another Content-Encoding is refused;
* an upload's answer is owed from its last body byte on (``watchdog.RequestDeadline``): sending
  is bounded per send, so a body that takes longer than the deadline to send is not cut.

Thread-safety: one client is shared by all FUSE worker threads.  ``_login_lock`` serialises
logins and guards ``_jsession``/``_generation``; the stats have their own lock.  Nothing else is
mutable after ``start()``.  No background thread exists before ``start()`` (the process may
daemonize after construction, docs/ARCHITECTURE.md §9): the heartbeat starts there, the header
watchdog
(``watchdog.py``, its own lock) with the first request, the resolver's threads with the first
lookup of a name; ``close()`` ends them (a lookup that hangs is not waited for).

Never logged: passwords, the login form, ``Authorization``/``Cookie`` headers, session ids.
"""

from __future__ import annotations

import collections
import contextlib
import http.cookiejar
import json
import logging
import random
import re
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import quote, unquote, urlencode, urlsplit

import requests
import requests.adapters
import urllib3.exceptions

from .. import __version__
from .. import deadline as _call_deadline
from . import body as _body
from . import breaker as _breaker
from . import limiter as _limiter
from . import parse
from . import resolver as _resolver
from . import watchdog as _watchdog
from .auth import Credentials
from .errors import (
    TRANSIENT_STATUSES,
    BadRequest,
    HostDown,
    NotXnatResponse,
    ServerDown,
    Unreachable,
    XnatError,
    XnatTimeout,
    error_for_status,
)

__all__ = ["Transport", "ClientOptions", "ClientStats", "check_contained"]

#: one logger for the whole client, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.xnat.client")

_Self = TypeVar("_Self", bound="Transport")


Sink = Callable[[bytes], None]
Params = Dict[str, str]


_EXPIRY_RE = re.compile(r'^"?(\d+),(\d+)"?$')
_DEFAULT_HEARTBEAT = 420.0  # xnatpy's default when the server sends no expiry cookie (§5.1)
_MAX_HEARTBEAT = 86400.0  # whatever the server's cookie says
_ERROR_BODY_LIMIT = 65536
#: downloads ask for the bytes as stored, so Content-Length is the file size (§3.1)
_IDENTITY = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class ClientOptions:
    """Client settings; every default is documented here and nowhere else."""

    #: HTTP connections kept per host; size it to the FUSE worker threads
    pool_size: int = 16
    #: seconds to establish a TCP/TLS connection, the lookup of the server's name included
    #: (``resolver.py``: a DNS server that does not answer fails the request after it)
    connect_timeout: float = 5.0
    #: seconds without a byte from the server before a request (or a body) times out
    read_timeout: float = 30.0
    #: extra attempts for GET/HEAD on connection errors and 429/500/502/503/504
    retries: int = 3
    #: seconds a call may spend in total, retries, backoff, login and the whole body included
    #: (for a streamed download: until its headers arrive; the body is then bounded per read;
    #: for an upload: sending is bounded per send, the answer by this much after the last byte)
    deadline: float = 60.0
    #: first backoff step in seconds; doubles each try, with jitter
    backoff_base: float = 0.5
    #: longest single backoff (also caps an honoured ``Retry-After``)
    backoff_max: float = 20.0
    #: TLS verification: True, False (testing only) or a CA bundle path
    verify: Union[bool, str] = True
    #: keep the JSESSION alive with ``GET /data/JSESSION`` from ``start()`` on
    heartbeat: bool = True
    #: a non-browser UA, so XNAT answers 401 rather than a login page (§5.1)
    user_agent: str = f"xnatfs/{__version__}"
    #: bytes per chunk handed to a download sink
    chunk_size: int = 1 << 20
    #: latency samples kept for ``stats``
    latency_samples: int = 256
    #: requests in flight at most, every caller included (``--max-requests``); the adaptive
    #: limit (``limiter.py``, AIMD) stays between 1 and this
    max_requests: int = 16
    #: longest mount-wide pause of the limiter while XNAT is down or asks to wait: one probe
    #: per pause at worst, and at most this long unanswered after XNAT is back
    pause_max: float = 10.0


class ClientStats:
    """Thread-safe counters: requests by method/status, bytes, retries, latency samples."""

    def __init__(self, samples: int) -> None:
        self._lock = threading.Lock()
        self._requests: Dict[str, int] = collections.Counter()
        self._errors: Dict[str, int] = collections.Counter()
        self._latency: "collections.deque[float]" = collections.deque(maxlen=samples)
        self._bytes_in = 0
        self._bytes_out = 0
        self._retries = 0
        self._logins = 0

    def request(self, method: str, status: Union[int, str], seconds: float) -> None:
        with self._lock:
            self._requests[f"{method} {status}"] += 1
            self._latency.append(seconds)

    def error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def bytes_in(self, n: int) -> None:
        with self._lock:
            self._bytes_in += n

    def bytes_out(self, n: int) -> None:
        with self._lock:
            self._bytes_out += n

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

    def login(self) -> None:
        with self._lock:
            self._logins += 1

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            lat = sorted(self._latency)
            return {
                "requests": dict(self._requests),
                "errors": dict(self._errors),
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
                "retries": self._retries,
                "logins": self._logins,
                "latency_samples": len(lat),
                "latency_p50": _quantile(lat, 0.5),
                "latency_p90": _quantile(lat, 0.9),
                "latency_p99": _quantile(lat, 0.99),
                "latency_max": lat[-1] if lat else None,
            }


def _quantile(ordered: List[float], q: float) -> Optional[float]:
    """Nearest-rank quantile of sorted samples; None without samples."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _BlockAllCookies(http.cookiejar.DefaultCookiePolicy):
    """The session's jar stores nothing: the client sends its own JSESSIONID header, so a
    cookie can never follow a redirect to another host, nor leak between logins."""

    def set_ok(self, cookie, request):
        return False

    def return_ok(self, cookie, request):
        return False


class _Session(requests.Session):
    """A ``Session`` whose own ``verify`` (a CA bundle path, or False) wins over the
    environment.  requests merges ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` *over*
    ``Session.verify`` (``trust_env``), so ``--ca-bundle`` was silently ignored wherever those
    are set (conda, many institutes: issue 17 §6).  With the default ``True`` the environment
    still chooses the bundle, as for curl."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def _no_auth(r: requests.PreparedRequest) -> requests.PreparedRequest:
    """Set as ``Session.auth`` so requests never adds ``~/.netrc`` basic auth by itself
    (``trust_env``) behind the credential checks of ``auth.py``."""
    return r


#: longest close() waits for the heartbeat thread, a login under way and the logout, together:
#: the logout is a courtesy (XNAT ends an idle session itself), and a server that is down held
#: every unmount ~8 s while the limiter's pause ran out first
_LOGOUT_S = 3.0


class _CountingBody:
    """An upload body read from a file object in chunks, exactly ``size`` bytes.

    ``__len__`` lets requests send a Content-Length (not chunked, which XNAT handles badly),
    ``__iter__`` streams without holding the file in memory.  urllib3 iterates it in the
    sending thread, so when the last chunk has been handed to the socket it tells the request's
    :class:`~.watchdog.RequestDeadline`: the answer is owed from then on, not from when the
    request began (a body that takes longer than ``--timeout`` to send is not cut).
    """

    def __init__(self, fileobj: Any, size: int, chunk: int, counter: Callable[[int], None]):
        self._f = fileobj
        self._size = size
        self._chunk = chunk
        self._count = counter

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        left = self._size
        while left > 0:
            data = self._f.read(min(self._chunk, left))
            if not data:
                raise ValueError(f"upload body ended {left} bytes short of the declared size")
            left -= len(data)
            self._count(len(data))
            yield data
        armed = _watchdog.REQUEST_DEADLINE.get()
        if armed is not None:
            armed[0].body_sent()


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = parse.parse_http_date(value)
    return max(0.0, when - time.time()) if when is not None else None


#: answers that may mean "XNAT is down" (a proxy in front of a stopped XNAT, a Tomcat without
#: its database): the breaker counts them when they come from different paths (``breaker.py``).
#: Not 503 nor 429: "too busy, come back later" is the limiter's (its pauses, Retry-After)
_DOWN_STATUSES = frozenset({500, 502, 504})

#: answers that mean "too much": the adaptive limit backs off on them (issue 13 §2)
_OVERLOAD_STATUSES = frozenset({429, 502, 503, 504})


def _limiter_outcome(resp: requests.Response) -> "Tuple[_limiter.Outcome, Optional[float]]":
    """What an answer tells the limiter, and the ``Retry-After`` it asks for (seconds)."""
    if resp.status_code in _OVERLOAD_STATUSES:
        return _limiter.Outcome.OVERLOAD, _parse_retry_after(resp.headers.get("Retry-After"))
    return _limiter.Outcome.OK, None


def _is_read_timeout(exc: BaseException) -> bool:
    """requests wraps a body read timeout as ConnectionError(ReadTimeoutError(...))."""
    timeouts = (
        urllib3.exceptions.ReadTimeoutError,
        socket.timeout,
        requests.exceptions.ReadTimeout,
    )
    return any(isinstance(e, timeouts) for e in _chain(exc))


def _chain(exc: BaseException, reason: bool = False) -> List[BaseException]:
    """``exc`` and what it wraps (its first argument when that is an exception, else
    ``reason`` when asked for, else its cause or context), six deep at most: requests and
    urllib3 wrap the error that says what happened two to four times."""
    found: List[BaseException] = []
    cur: Optional[BaseException] = exc
    while cur is not None and len(found) < 6:
        found.append(cur)
        inner = getattr(cur, "reason", None) if reason else None
        if not isinstance(inner, BaseException):
            first = cur.args[0] if cur.args else None
            inner = first if isinstance(first, BaseException) else None
        cur = inner or cur.__cause__ or cur.__context__
    return found


def _no_connection(exc: BaseException) -> bool:
    """No connection was made: refused, unreachable, DNS, connect timeout (urllib3's
    ``NewConnectionError``/``ConnectTimeoutError`` somewhere in the chain).  A connection that
    broke mid-answer (a reset, a body cut short) is not: the server was there."""
    refused = (
        urllib3.exceptions.NewConnectionError,
        urllib3.exceptions.ConnectTimeoutError,
        requests.exceptions.ConnectTimeout,
        ConnectionRefusedError,
        socket.gaierror,
    )
    return any(isinstance(e, refused) for e in _chain(exc, reason=True))


def _translate(
    exc: BaseException,
    method: str,
    url: str,
    timeout: Tuple[float, float],
    deadline: Optional[float] = None,
) -> XnatError:
    """THE boundary: a requests/urllib3/socket exception → an :mod:`errors` instance."""
    R = requests.exceptions
    if isinstance(exc, XnatError):
        return exc
    if isinstance(exc, _body.BodyDeadline):
        return XnatTimeout(method, url, None, f"answer not complete in time: {exc}")
    if isinstance(exc, _body.BodyTooLarge):
        return NotXnatResponse(method, url, None, f"refused: {exc}")
    if isinstance(exc, _body.BadEncoding):
        return NotXnatResponse(method, url, None, str(exc))
    if (
        deadline is not None
        and time.monotonic() >= deadline
        and (
            _is_read_timeout(exc)
            or isinstance(exc, (R.ConnectionError, urllib3.exceptions.HTTPError))
        )
    ):
        # a read timeout cut to the deadline, or the watchdog shut a socket whose status
        # line and headers were still trickling in
        return XnatTimeout(method, url, None, "no complete answer within the deadline")
    if isinstance(exc, R.ConnectTimeout):
        return Unreachable(method, url, None, f"no connection within {timeout[0]:g}s")
    if isinstance(exc, R.SSLError):
        # a certificate problem does not fix itself by retrying
        return Unreachable(method, url, None, f"TLS error: {_tls_reason(exc)}", retryable=False)
    if isinstance(
        exc, (R.InvalidURL, R.MissingSchema, R.InvalidSchema, R.URLRequired, R.InvalidHeader)
    ) or (isinstance(exc, ValueError) and not isinstance(exc, R.RequestException)):
        return XnatError(method, url, None, f"invalid request: {_short(exc)}")
    if _is_read_timeout(exc):
        return XnatTimeout(method, url, None, f"no data for {timeout[1]:g}s")
    if isinstance(exc, R.TooManyRedirects):
        return NotXnatResponse(method, url, None, "too many redirects")
    if isinstance(
        exc,
        (
            R.ChunkedEncodingError,
            R.ContentDecodingError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.DecodeError,
        ),
    ):
        return Unreachable(method, url, None, f"connection broken: {_short(exc)}")
    if isinstance(exc, (R.ConnectionError, urllib3.exceptions.HTTPError, OSError)):
        return Unreachable(method, url, None, _short(exc))
    # not a transport failure we know: report it, but do not invite retries
    return XnatError(method, url, None, f"{type(exc).__name__}: {_short(exc)}")


def check_contained(method: str, uri: str, base: str) -> None:
    """Refuse (before sending) a write whose server path leaves the object it was built for.

    ``uri`` is the path as it will be sent, ``base`` the object's own path (``<resource>/files``
    for an upload).  HTTP libraries and servlet containers collapse ``.``/``..`` segments, in
    the raw or the percent-decoded path, and Tomcat does after dropping a segment's ``;`` path
    parameters (``..;``), so a ``..`` in a name would move the request to another object (issue
    17 §3; ``parse.has_dot_segment``).  Raises :class:`BadRequest` (EINVAL, never retried)
    naming the URL.
    """
    decoded_uri, decoded_base = unquote(uri), unquote(base.rstrip("/"))
    bad = parse.has_dot_segment(uri.partition("?")[0]) or parse.has_dot_segment(
        base.partition("?")[0]
    )
    bad = bad or "\\" in decoded_uri or "\0" in decoded_uri
    if uri.startswith(("http://", "https://")):  # _url() keeps it under the base URL
        inside = True
    else:
        inside = (decoded_base + "/").startswith("/data/") and decoded_uri.startswith(
            decoded_base + "/"
        )
    if bad or not inside:
        raise BadRequest(
            method,
            uri,
            None,
            f"refused before sending: the path leaves {base} (a '..', '\\' or "
            f"NUL in a name, or a URI outside /data/)",
        )


def _safe_path(path: str) -> bool:
    """A request path below ``/data/`` (or its old spelling ``/REST/``) with no ``.``/``..``
    segment in any spelling (``parse.has_dot_segment``: percent-decoded or not, ``..;``;
    ``//host/...`` would be a network-path reference to another host); the client never asks
    for anything else."""
    if path.startswith("//") or not path.startswith(("/data/", "/REST/")):
        return False
    return not parse.has_dot_segment(path)


# What a newcomer can do about the two TLS failures met first: an https:// URL for a server
# that speaks plain HTTP, and a certificate signed by a site CA the system does not know.
_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": "the server did not answer in TLS: does it speak plain http://?",
    "CERTIFICATE_VERIFY_FAILED": (
        "the certificate is not trusted here: give the site's CA with --ca-bundle FILE"
    ),
}


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason ("[SSL: X] what") and, for the usual ones, what to do about it.

    urllib3 wraps it in a pool repr ("HTTPSConnectionPool(host=...): Max retries exceeded
    ... (Caused by SSLError(SSLError(1, '[SSL: ...")), cut at 160 characters before the
    reason; the reason alone is what the user can act on."""
    text = str(exc)
    m = re.search(r"\[SSL: ([A-Z_]+)\] ([^'\"(]*)", text)
    if not m:
        return _short(exc)
    reason = f"{m.group(2).strip(' :.')} ({m.group(1)})"
    hint = _TLS_HINTS.get(m.group(1))
    return f"{reason}; {hint}" if hint else reason


def _short(exc: BaseException) -> str:
    """The useful part of a wrapped urllib3 message ("[Errno 111] Connection refused")."""
    text = str(exc)
    for pattern in (
        r"\[Errno -?\d+\] [^'\")]*",
        r"IncompleteRead\([^)]*\)",
        r"RemoteDisconnected\([^)]*\)",
        r"Connection (?:broken|aborted|reset)[^'\"(]*",
        r"(?:Read )?timed out",
    ):
        m = re.search(pattern, text)
        if m:
            return m.group(0).strip(" :.")
    return text[:160]


class _LoginSession:
    """The session half of :class:`Transport`: log in (§5.1, §8.1), log in again once after
    a 401 (one thread for all), read the session's lifetime and keep it alive.  It uses the
    state that ``Transport.__init__`` sets and the request methods Transport defines."""

    options: ClientOptions
    base_url: str
    _credentials: Credentials
    _timeout: Tuple[float, float]
    _stats: ClientStats
    _login_lock: threading.Lock
    _jsession: Optional[str]
    _generation: int
    _heartbeat_interval: float
    _heartbeat_wake: threading.Event
    _breaker: "_breaker.Breaker"
    _closing: threading.Event
    _closed: bool
    _url: Callable[[str], str]
    _send: Callable[..., requests.Response]
    _call: Callable[..., requests.Response]

    # ---------------------------------------------------------------- session

    def _locked_login(self, deadline: Optional[float] = None) -> None:
        """``PUT /data/services/auth`` with the form (§5.1, §8.1) → JSESSIONID.
        Caller holds self._login_lock."""
        if deadline is None:
            deadline = time.monotonic() + self.options.deadline
        method, url = "PUT", self._url("/data/services/auth")
        creds = self._credentials
        form = {"username": creds.username, "password": creds.password}
        resp = self._send(
            method, url, data=form, timeout=self._timeout, jsession=None, deadline=deadline
        )
        body = resp.content  # already read: _send does not stream
        resp.close()
        if resp.status_code in (404, 405, 501):
            # very old servers: basic auth against /data/JSESSION gives the same cookie
            method, url = "POST", self._url("/data/JSESSION")
            resp = self._send(
                method,
                url,
                timeout=self._timeout,
                jsession=None,
                auth=(creds.username, creds.password),
                deadline=deadline,
            )
            body = resp.content
            resp.close()
        if resp.status_code != 200:
            err = error_for_status(
                method, url, resp.status_code, parse.error_text(body) or "login failed"
            )
            log.info("login as %s: %s", creds.username, err)
            raise err
        if parse.looks_like_html(body):
            raise NotXnatResponse(
                method, url, 200, "login answered with an HTML page; is this the XNAT base URL?"
            )
        jsession = self._cookie(resp, "JSESSIONID")
        if not jsession:
            text = body.decode("utf-8", "replace").strip()
            if text and len(text) < 200 and not any(c.isspace() for c in text):
                jsession = text  # xnatpy does the same when no cookie was set (§8.1)
        if not jsession:
            raise NotXnatResponse(method, url, 200, "login gave no session id")
        self._jsession = jsession
        self._generation += 1
        self._note_expiry(resp)
        self._stats.login()
        log.debug("logged in to %s as %s", self.base_url, creds.username)

    def _cookie(self, resp: requests.Response, name: str) -> Optional[str]:
        """The cookie ``name`` (``JSESSIONID``, ``SESSION_EXPIRATION_TIME``) an answer set.
        ``resp.cookies.get`` raised requests' ``CookieConflictError`` (not an XnatError: a
        traceback at mount, EIO on every call, a dead heartbeat thread) when a server (or a
        proxy in front of it) set two, for different paths; the one whose path is the longest
        prefix of the base URL's ``/data/`` is the one that server would read, else the last
        one set."""
        base = (urlsplit(self.base_url).path.rstrip("/") or "") + "/data/"
        found = [c for c in resp.cookies if c.name == name and c.value]
        if not found:
            return None
        fitting = [c for c in found if base.startswith((c.path or "/").rstrip("/") + "/")]
        best = max(fitting, key=lambda c: len(c.path or "")) if fitting else found[-1]
        return best.value

    def _deadline(self) -> float:
        """Now + ``deadline``, or the end of the filesystem call being served if sooner."""
        mine = time.monotonic() + self.options.deadline
        outer = _call_deadline.current()
        return mine if outer is None else min(mine, outer)

    def _acquire_login_lock(self, deadline: Optional[float]) -> None:
        """Queue on the login lock no longer than the caller's deadline: a login that hangs
        must not hold every other caller past its ``--timeout`` (issue 17 §1)."""
        left = (deadline - time.monotonic()) if deadline is not None else self.options.deadline
        if left <= 0 or not self._login_lock.acquire(timeout=left):
            raise XnatTimeout(
                "PUT",
                self._url("/data/services/auth"),
                None,
                "waited for a login by another thread until the deadline",
            )

    def _relogin(self, seen_generation: int, deadline: Optional[float] = None) -> None:
        """Log in again unless another thread already did since ``seen_generation``."""
        self._acquire_login_lock(deadline)
        try:
            if self._closed:
                raise XnatError("", self.base_url, None, "client is closed")
            if self._generation != seen_generation and self._jsession is not None:
                return
            log.info("session on %s expired; logging in again", self.base_url)
            self._locked_login(deadline)
        finally:
            self._login_lock.release()

    def _current_session(self, deadline: Optional[float] = None) -> Tuple[Optional[str], int]:
        """(jsession, generation), logging in first if nobody has (lazy start)."""
        self._acquire_login_lock(deadline)
        try:
            if self._jsession is None and not self._closed:
                self._locked_login(deadline)
            return self._jsession, self._generation
        finally:
            self._login_lock.release()

    def _note_expiry(self, resp: requests.Response) -> None:
        """Read ``SESSION_EXPIRATION_TIME="<lastAccessMillis>,<timeoutMillis>"`` (§5.1)."""
        raw = self._cookie(resp, "SESSION_EXPIRATION_TIME")
        m = _EXPIRY_RE.match(raw.strip()) if raw else None
        if m:
            timeout = int(m.group(2)) / 1000.0
            # at most a day: a server's "1,10^22" made the heartbeat thread's wait overflow
            # (OverflowError: the thread died, the session then lapsed unrenewed)
            self._heartbeat_interval = min(max(timeout / 2.0 - 20.0, 10.0), _MAX_HEARTBEAT)

    def _heartbeat_loop(self) -> None:
        """Renew the session every ``heartbeat_interval``; while the breaker is open, also be
        its probe when one is due, so that a mount nobody uses notices XNAT is back (its
        ``status`` said "down" until the next call otherwise, and uploads waited for one)."""
        breaker = self._breaker
        while not self._closing.is_set():
            due = breaker.next_check_in()
            self._heartbeat_wake.wait(self._heartbeat_interval if due is None else max(due, 0.05))
            self._heartbeat_wake.clear()
            if self._closing.is_set():
                return
            due = breaker.next_check_in()
            if due is not None and due > 0:
                continue  # woken by the opening: wait for the probe's turn
            try:
                resp = self._call("GET", "/data/JSESSION")
                self._note_expiry(resp)
            except XnatError as err:
                # while XNAT is down the breaker's two lines say it all
                quiet = isinstance(err, ServerDown) or breaker.is_open
                log.log(logging.DEBUG if quiet else logging.WARNING, "heartbeat: %s", err)

    def heartbeat(self) -> None:
        """One ``GET /data/JSESSION`` now (what the heartbeat thread does); renews the
        session, logging in again if it had expired."""
        resp = self._call("GET", "/data/JSESSION")
        self._note_expiry(resp)


def _http_session(opts: ClientOptions, resolver: "_resolver.Resolver") -> "_Session":
    """The client's requests session: one pool of ``pool_size`` connections whose status
    line and headers are bounded by the request's deadline (``watchdog.py``) and whose name
    lookup by the connect timeout (``resolver.py``); no cookies kept, no retries."""
    http = _Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=2, pool_maxsize=opts.pool_size, max_retries=0, pool_block=False
    )
    adapter.poolmanager.pool_classes_by_scheme = _resolver.pool_classes(
        _watchdog.POOL_CLASSES, resolver, opts.connect_timeout
    )
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    http.verify = opts.verify
    http.auth = _no_auth
    http.cookies.set_policy(_BlockAllCookies())
    http.headers["User-Agent"] = opts.user_agent
    http.headers["Accept"] = "*/*"
    # only what body.read_body can inflate with a bound (never br/zstd)
    http.headers["Accept-Encoding"] = "gzip, deflate"
    return http


def _shut_all(leases: Iterable[_watchdog.Shuttable]) -> None:
    """Shut the connections of streamed downloads.  Each is the lease of its connection
    (``watchdog.Lease``): a download whose last read gave its connection back to the pool,
    not yet unregistered, shuts nothing."""
    for lease in leases:
        with contextlib.suppress(OSError):  # already shut or closed: nothing left to end
            lease.shutdown(socket.SHUT_RDWR)


class Transport(_LoginSession):
    """A session with one XNAT server and the policy of every request sent in it (see the
    module docstring); the calls of :class:`~xnatfs.xnat.client.XnatClient` build on it.
    The constructor does no I/O and starts no thread."""

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        options: Optional[ClientOptions] = None,
        *,
        resolver: Optional[_resolver.Resolver] = None,
    ) -> None:
        self.options = options or ClientOptions()
        #: scheme://host[:port][/context] with no trailing slash; uris are appended to it
        self.base_url = url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise XnatError("", url, None, "the server URL must look like https://host[/path]")
        self._credentials = credentials
        opts = self.options
        self._timeout: Tuple[float, float] = (opts.connect_timeout, opts.read_timeout)

        #: looks the server's name up within the connect timeout (``resolver.py``); tests
        #: give one with a lookup of their own
        self._resolver = resolver or _resolver.Resolver()
        self._http = _http_session(opts, self._resolver)
        #: ends a response whose status line and headers outlast the request's deadline
        self._watchdog = _watchdog.Watchdog()
        #: the one cap on requests in flight (issue 13 §2): a slot per HTTP exchange
        self._limiter = _limiter.RequestLimiter(
            opts.max_requests, backoff_base=opts.backoff_base, backoff_max=opts.pause_max
        )

        #: fails calls at once while XNAT is known to be down (``breaker.py``)
        self._breaker = _breaker.Breaker(self.base_url, probe_max=opts.pause_max)
        self._stats = ClientStats(opts.latency_samples)
        #: guards _jsession, _generation, _heartbeat_interval; held during a login
        self._login_lock = threading.Lock()
        self._jsession: Optional[str] = None
        #: bumped by every successful login; a caller that saw a 401 under generation g logs
        #: in again only if nobody did since g
        self._generation = 0
        self._heartbeat_interval = _DEFAULT_HEARTBEAT
        self._closing = threading.Event()
        #: wakes the heartbeat thread: at close, and when the breaker opens (it probes)
        self._heartbeat_wake = threading.Event()
        self._breaker.on_down.append(self._heartbeat_wake.set)
        self._heartbeat_thread: Optional[threading.Thread] = None
        self._closed = False
        #: sockets of file downloads whose body is being read; ``close()`` shuts them down so
        #: a body that trickles for ever (each byte inside read_timeout) cannot hold the exit
        self._streams_lock = threading.Lock()
        self._streams: Dict[int, _watchdog.Shuttable] = {}

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Log in (JSESSION, §5.1/§8.1) and start the heartbeat thread.

        Raises Unauthorized on bad credentials, Unreachable/XnatTimeout when the server does not
        answer, NotXnatResponse when the URL is not an XNAT.
        """
        if self._closed:
            raise XnatError("", self.base_url, None, "client is closed")
        with self._login_lock:
            if self._jsession is None:
                self._locked_login()
        if self.options.heartbeat and self._heartbeat_thread is None:
            t = threading.Thread(target=self._heartbeat_loop, name="xnatfs-heartbeat", daemon=True)
            self._heartbeat_thread = t
            t.start()

    def stop_transfers(self) -> None:
        """End the downloads under way (their connections are shut) and every retry and
        heartbeat from now on: the first step of an unmount, taken by the content cache's
        close before it waits for its downloads (``close`` still logs out after it)."""
        self._closing.set()
        self._heartbeat_wake.set()
        with self._streams_lock:
            _shut_all(self._streams.values())

    def close(self) -> None:
        """Stop the heartbeat, log out (``DELETE /data/JSESSION``, §10.16) and close the pool.
        Never raises; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.stop_transfers()
        # one budget for the heartbeat's end, a login under way and the logout: on a server
        # that hangs each of them took its own 3 s (or, for the login, its whole deadline)
        until = time.monotonic() + _LOGOUT_S
        t = self._heartbeat_thread
        if t is not None and t is not threading.current_thread():
            # while XNAT is down the heartbeat is the breaker's probe, and a probe a hung
            # server never answers held every unmount for connect + read timeout (35 s); a
            # daemon thread, it ends with the process
            t.join(timeout=_LOGOUT_S)
        jsession = None
        if self._login_lock.acquire(timeout=max(0.0, until - time.monotonic())):
            try:
                jsession, self._jsession = self._jsession, None
            finally:
                self._login_lock.release()
        left = until - time.monotonic()
        if jsession and left > 0.05:
            try:
                resp = self._send(
                    "DELETE",
                    self._url("/data/JSESSION"),
                    jsession=jsession,
                    timeout=(min(self.options.connect_timeout, left), left),
                    deadline=time.monotonic() + min(self.options.deadline, left),
                )
                resp.close()
                log.debug("logged out of %s (%s)", self.base_url, resp.status_code)
            except XnatError as err:
                log.info("logout: %s", err)
        elif jsession:
            log.info("logout of %s skipped: XNAT did not answer in time", self.base_url)
        self._http.close()
        self._watchdog.close()
        self._resolver.close()

    def __enter__(self: _Self) -> _Self:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"XnatClient({self.base_url!r}, user={self._credentials.username!r})"

    @property
    def stats(self) -> Dict[str, Any]:
        """A snapshot of the counters (see :class:`ClientStats`)."""
        return self._stats.snapshot()

    @property
    def limiter(self) -> Dict[str, Any]:
        """The request limiter's state (``limiter.RequestLimiter.snapshot``)."""
        return self._limiter.snapshot()

    @property
    def server(self) -> Dict[str, Any]:
        """Is XNAT up, down (failing at once) or being checked (``breaker.Breaker.snapshot``)."""
        return self._breaker.snapshot()

    def on_server_back(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever XNAT answers again after the breaker opened (the
        uploader then tries its queued entries at once)."""
        self._breaker.on_up.append(callback)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: max(timeout/2 - 20 s, 10 s) from the server's
        ``SESSION_EXPIRATION_TIME`` cookie, or 420 s when it sent none (§5.1)."""
        return self._heartbeat_interval

    # ---------------------------------------------------------------- transport

    def _url(self, uri: str) -> str:
        """Base URL + a server path (``/data/...``), percent-encoding what must be (§10.17).

        Refuses (XnatError, not retryable, before any request) a path that is not plainly below
        the base URL: another host, ``//host``, a ``.``/``..`` segment in any spelling
        (``%2e%2e``, ``..%2F``, ``..;``).  HTTP libraries collapse ``..`` (issue 17 §3, §8), so
        such a path would reach another object, or another site, with the session cookie.  A
        ``;`` is always sent as ``%3B``: raw, Tomcat reads it as a path parameter and drops it
        with what follows (a file ``a;b`` would be asked for as ``a``)."""
        if uri.startswith(("http://", "https://")):
            if not uri.startswith(self.base_url + "/"):
                raise XnatError("", uri, None, f"refused: URL is not under {self.base_url}")
            uri = uri[len(self.base_url) :]
        if not uri.startswith("/"):
            uri = "/" + uri
        path, sep, query = uri.partition("?")
        if not _safe_path(path):
            raise XnatError(
                "",
                self.base_url + uri,
                None,
                "refused: the path is not plainly below /data/ ('.', '..', '//')",
            )
        path = quote(path, safe="/%:@!$&'()*+,=-._~")
        return self.base_url + path + (sep + query if sep else "")

    def _send(
        self,
        method: str,
        url: str,
        *,
        timeout: Tuple[float, float],
        jsession: Optional[str],
        data: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        stream: bool = False,
        auth: Optional[Tuple[str, str]] = None,
        deadline: Union[float, _watchdog.RequestDeadline],
    ) -> requests.Response:
        """One HTTP exchange, no policy.  ``timeout`` and ``deadline`` (a ``time.monotonic``
        value) have no default on purpose: both timeouts are cut to what is left of the
        deadline, and unless ``stream`` the whole body is read here, within the deadline and
        the document cap (``body.read_body``).

        An upload body (:class:`_CountingBody`) moves the deadline to its last byte sent +
        ``options.deadline``: sending is bounded per send by the socket timeout, the answer
        (headers and body) by that moved deadline.  A caller that passes a
        :class:`~.watchdog.RequestDeadline` sees where it ended.

        The exchange holds one slot of the mount-wide cap (``limiter.py``) from before the
        request to its end, body included; a streamed response gives it back when closed.

        Long because: the one place every requests/urllib3/socket failure becomes an error of
        ``errors.py``, slot and deadline handling around it; split, the order would be lost."""
        if not isinstance(deadline, _watchdog.RequestDeadline):
            deadline = _watchdog.RequestDeadline(deadline, self.options.deadline)
        holder = deadline
        hdrs = dict(headers or {})
        if jsession:
            hdrs["Cookie"] = f"JSESSIONID={jsession}"
        started = time.monotonic()
        left = holder.at - started
        err: XnatError
        if left <= 0:
            err = XnatTimeout(method, url, None, "no time left for this request")
            self._stats.error(type(err).__name__)
            raise err
        full_read_timeout = timeout[1]
        try:
            probe = self._breaker.admit(method, url)
        except ServerDown as down:
            self._stats.error(type(down).__name__)
            raise
        try:
            slot = self._limiter.acquire(holder.at)
        except _limiter.SlotUnavailable as exc:
            if probe:
                self._breaker.probe_done()
            # a pause: retryable (listings seen before stay shown), never retried in the call
            err = (
                ServerDown(method, url, None, str(exc))
                if exc.paused
                else XnatTimeout(method, url, None, str(exc))
            )
            # no breaker line said why: each call failed by a pause has its own line
            err.reported = False
            self._stats.error(type(err).__name__)
            raise err from None
        started = time.monotonic()  # latency samples: the server's time, not the queue's
        left = holder.at - started
        timeout = (max(0.001, min(timeout[0], left)), max(0.001, min(timeout[1], left)))
        armed = _watchdog.REQUEST_DEADLINE.set((holder, self._watchdog))
        handed_over = False
        outcome = _limiter.Outcome.NEUTRAL
        retry_after: Optional[float] = None
        try:
            # always streamed: a non-streamed body is read below, by us, within the deadline
            resp = self._http.request(
                method,
                url,
                data=data,
                headers=hdrs,
                stream=True,
                timeout=timeout,
                allow_redirects=False,
                auth=auth,
            )
            if stream:
                # the deadline bounded the wait for the headers; a download's body is bounded
                # per read, as before (its own size checks are the content cache's)
                sock = _body.socket_of(resp.raw)
                if sock is not None:
                    sock.settimeout(full_read_timeout)
            else:
                try:
                    # holder.at: for an upload, its last body byte + the deadline (the
                    # journal decides about a lost answer)
                    content = _body.read_body(
                        resp.raw,
                        resp.headers.get("Content-Encoding", ""),
                        holder.at,
                        read_timeout=full_read_timeout,
                    )
                except BaseException:
                    resp.close()
                    raise
                # what Response.content sets once it has read the body (requests' own state,
                # which typeshed does not declare): .content, .json() answer from these bytes
                vars(resp).update(_content=content, _content_consumed=True)
                self._stats.bytes_in(len(content))
            outcome, retry_after = _limiter_outcome(resp)
            if stream:
                self._hand_slot_to(resp, slot, outcome, retry_after)
                handed_over = True
            failure = (
                _breaker.Failure.ANSWER
                if resp.status_code in _DOWN_STATUSES
                else _breaker.Failure.NONE
            )
            self._breaker.record(failure, urlsplit(url).path, f"HTTP {resp.status_code}", probe)
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            err = _translate(exc, method, url, timeout, holder.at)
            if isinstance(err, XnatTimeout) or (isinstance(err, Unreachable) and err.retryable):
                outcome = _limiter.Outcome.OVERLOAD  # a slow, refusing or restarting server
            err = self._note_down(err, url, probe, exc)
            self._stats.request(method, type(err).__name__, time.monotonic() - started)
            self._stats.error(type(err).__name__)
            raise err from None
        finally:
            _watchdog.REQUEST_DEADLINE.reset(armed)
            if not handed_over:
                self._limiter.release(slot, outcome, retry_after)
        self._stats.request(method, resp.status_code, time.monotonic() - started)
        return resp

    def _note_down(self, err: XnatError, url: str, probe: bool, cause: BaseException) -> XnatError:
        """Tell the breaker what a failed exchange says about the server: no connection,
        no answer in time, or nothing (a TLS error or a refused body are no outage).  The
        error to raise: ``HostDown`` for a connection failure once the breaker is open."""
        if isinstance(err, Unreachable) and err.retryable and err.status is None:
            failure = (
                _breaker.Failure.CONNECTION if _no_connection(cause) else _breaker.Failure.ANSWER
            )
        elif isinstance(err, XnatTimeout):
            failure = _breaker.Failure.ANSWER
        elif isinstance(err, NotXnatResponse):
            failure = _breaker.Failure.NONE  # the server answered, wrongly
        else:
            if probe:
                self._breaker.probe_done()
            return err
        self._breaker.record(failure, urlsplit(url).path, err.message or str(err), probe)
        if failure is _breaker.Failure.CONNECTION and self._breaker.is_open:
            # the call that opened the breaker, or a failed probe, says what the calls
            # failing at once say (EHOSTDOWN), not EIO
            return HostDown(err.method, err.url, None, err.message)
        return err

    def _hand_slot_to(
        self,
        resp: requests.Response,
        slot: "_limiter.Slot",
        outcome: "_limiter.Outcome",
        retry_after: Optional[float],
    ) -> None:
        """A streamed response keeps its slot until it is closed (every caller closes it in a
        ``finally``); should one be dropped unclosed, the slot returns when it is collected."""
        limiter = self._limiter
        # a weak reference: the closure is stored on the response, and holding the response
        # (through its bound ``close``) made a cycle that only the cyclic collector could free,
        # at any allocation of any thread (see ``RequestLimiter.release_orphan``)
        ref = weakref.ref(resp)

        def close_and_release() -> None:
            try:
                live = ref()
                if live is not None:
                    requests.Response.close(live)
            finally:
                limiter.release(slot, outcome, retry_after)

        vars(resp)["close"] = close_and_release  # this response's close releases its slot
        weakref.finalize(resp, limiter.release_orphan, slot, outcome, retry_after)

    def _call(
        self,
        method: str,
        uri: str,
        *,
        params: Optional[Mapping[str, str]] = None,
        data: Any = None,
        body_factory: Optional[Callable[[], Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        stream: bool = False,
        idempotent: Optional[bool] = None,
        ok: Tuple[int, ...] = (200, 201, 202, 204),
        deadline: Optional[float] = None,
    ) -> requests.Response:
        """Send with the client's policy; return a successful response (caller closes it when
        ``stream``), else raise the typed error.

        ``body_factory`` makes a fresh request body per attempt (a rewound file), needed to
        repeat a write after a re-login.

        Long because: the retry loop is one state machine (attempt, re-login, backoff,
        deadline) whose branches share its variables; it reads best in one piece.
        """
        if self._closed:
            raise XnatError(method, self.base_url + uri, None, "client is closed")
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        # the query is encoded here, not by requests, so every error and log line shows the
        # same complete URL
        url = self._url(uri)
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, quote_via=quote, safe="/,:")
        opts = self.options
        if deadline is None:
            deadline = self._deadline()
        attempt = 0
        relogged = False
        # a write can be sent again (after a re-login) only if its body can be made again
        repeatable = data is None or body_factory is not None
        while True:
            attempt += 1
            try:
                jsession, generation = self._current_session(deadline)
            except XnatError as failed:
                self._log_failure(failed)
                raise
            body = body_factory() if body_factory is not None else data
            sent = _watchdog.RequestDeadline(deadline, opts.deadline)
            try:
                resp = self._send(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    stream=stream,
                    timeout=self._timeout,
                    jsession=jsession,
                    deadline=sent,
                )
            except XnatError as failed:
                # connection errors only: a read timeout is not retried here, so a stalled
                # server costs one read_timeout, not retries x read_timeout
                if (
                    idempotent
                    and isinstance(failed, Unreachable)
                    and failed.retryable
                    and self._backoff(failed, attempt, deadline)
                ):
                    continue
                self._log_failure(failed)
                raise
            status = resp.status_code
            # after a long upload, a re-login and the repeat are owed from its last byte on
            deadline = sent.at

            if self._wants_login(resp) and not relogged and repeatable:
                resp.close()
                relogged = True
                self._relogin(generation, deadline)
                continue

            # a 500 on a GET is usually XNAT's passing trouble (issue 18 §0.5): retried too
            if idempotent and (status in TRANSIENT_STATUSES or status == 500):
                err = self._status_error(method, resp)
                if self._backoff(err, attempt, deadline):
                    continue
                self._log_failure(err)
                raise err

            if status not in ok:
                err = self._status_error(method, resp)
                self._log_failure(err)
                raise err

            if not stream and method != "HEAD" and parse.looks_like_html(resp.content):
                # §10.8: a 200 HTML page is never data; a login page means the session is gone
                if parse.looks_like_login_page(resp.content) and not relogged and repeatable:
                    relogged = True
                    self._relogin(generation, deadline)
                    continue
                err = NotXnatResponse(method, url, status, "HTML page where XNAT data was expected")
                self._log_failure(err)
                raise err
            return resp

    @staticmethod
    def _wants_login(resp: requests.Response) -> bool:
        """401, or a redirect to the login page (browser-style answer, §5.1)."""
        if resp.status_code == 401:
            return True
        if resp.status_code in (301, 302, 303, 307, 308):
            return "login" in resp.headers.get("Location", "").lower()
        return False

    def _status_error(self, method: str, resp: requests.Response) -> XnatError:
        """The typed error for an error answer; reads (at most 64 KiB of) the body."""
        url = resp.url or ""
        try:
            if resp.raw is not None and not vars(resp).get("_content_consumed", False):
                # bounded in bytes and time like any document (an error page is no exception)
                body = _body.read_body(
                    resp.raw,
                    resp.headers.get("Content-Encoding", ""),
                    time.monotonic() + min(self.options.read_timeout, 5.0),
                    limit=_ERROR_BODY_LIMIT,
                )
                self._stats.bytes_in(len(body))
            else:
                body = resp.content or b""
        except Exception:  # noqa: BLE001 - a broken error body is still the same error
            body = b""
        finally:
            resp.close()
        status = resp.status_code
        if 300 <= status < 400:
            where = resp.headers.get("Location", "?")
            return NotXnatResponse(
                method, url, status, f"redirected to {where}; use that as the server URL?"
            )
        return error_for_status(
            method,
            url,
            status,
            parse.error_text(body),
            retry_after=_parse_retry_after(resp.headers.get("Retry-After")),
        )

    def _backoff(self, err: XnatError, attempt: int, deadline: float) -> bool:
        """Sleep before retry number ``attempt`` if allowed; False when out of tries/time."""
        opts = self.options
        if attempt > opts.retries or self._closing.is_set():
            return False
        if isinstance(err, ServerDown) or self._breaker.is_open:
            return False  # the next try would fail at once, or wait for nothing
        delay = min(opts.backoff_max, opts.backoff_base * (2 ** (attempt - 1)))
        delay = random.uniform(delay / 2.0, delay)
        if err.retry_after is not None:
            delay = max(delay, min(err.retry_after, opts.backoff_max))
        if time.monotonic() + delay >= deadline:
            return False
        level = logging.DEBUG if attempt == 1 else logging.INFO if attempt == 2 else logging.WARNING
        log.log(level, "%s; try %d of %d, retry in %.1fs", err, attempt, opts.retries + 1, delay)
        self._stats.retry()
        if self._closing.wait(delay):
            return False
        return True

    @staticmethod
    def _log_failure(err: XnatError) -> None:
        """One line per failed call; expected outcomes (404/409) stay at DEBUG, and so do
        calls failed at once while XNAT is down (the breaker logged that once)."""
        if err.status in (404, 409) or getattr(err, "reported", False):
            log.debug("%s", err)
        else:
            log.info("%s", err)

    # ---------------------------------------------------------------- JSON helpers

    def _get_json(self, uri: str, params: Optional[Params] = None) -> Any:
        q = {"format": "json"}
        q.update(params or {})
        resp = self._call("GET", uri, params=q)
        refused = _body.json_refusal(resp.content)
        if refused:
            # 64 MiB of tiny rows would parse into ~2 GB of Python objects (issue 17 §4)
            err = NotXnatResponse("GET", resp.url, resp.status_code, f"refused: {refused}")
            self._log_failure(err)
            raise err
        try:
            return json.loads(resp.content.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise NotXnatResponse("GET", resp.url, resp.status_code, "answer is not JSON") from None
        except RecursionError:  # valid JSON nested past the recursion limit: no ValueError
            raise NotXnatResponse(
                "GET", resp.url, resp.status_code, "JSON nested too deeply"
            ) from None

    def _rows(self, uri: str, params: Optional[Params] = None) -> Tuple[List[Dict[str, str]], Any]:
        doc = self._get_json(uri, params)
        try:
            rows, left_out = parse.without_unencodable(parse.rows_from_json(doc))
        except parse.BadDocument as exc:
            raise NotXnatResponse("GET", self._url(uri), 200, str(exc)) from None
        if left_out:
            log.warning(
                "%s: %d row(s) left out of the listing: a name that is not valid Unicode "
                "(a lone surrogate)",
                self._url(uri),
                left_out,
            )
        return rows, doc

    def _rows_with_columns(self, uri: str, columns: str) -> List[Dict[str, str]]:
        """A listing with ``columns=``; if a server rejects the column list (400), ask again
        for its default columns, so a missing ``last_modified`` only loses the mtime."""
        try:
            return self._rows(uri, {"columns": columns})[0]
        except XnatError as err:
            if err.status != 400:
                raise
            log.debug("%s: columns refused, using the default columns", uri)
            return self._rows(uri)[0]

    def _write(
        self,
        method: str,
        uri: str,
        params: Optional[Params] = None,
        ok: Tuple[int, ...] = (200, 201, 202, 204),
        **kw: Any,
    ) -> requests.Response:
        """A write: sent once (never retried here: the upload journal decides)."""
        return self._call(method, uri, params=params, idempotent=False, ok=ok, **kw)
