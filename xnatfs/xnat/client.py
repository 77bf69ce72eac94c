"""The XNAT REST client: one pooled HTTP session, typed calls, typed errors.

It knows nothing of files or paths; it speaks ``/data/...`` (``xnat-rest-api.md``) and returns
``models`` records.  It is the only module of xnatfs that imports requests (STYLE §9), and
``_send`` is the one place where requests/urllib3/socket exceptions become :mod:`errors`.

Policy in one place:

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
daemonize after construction, STYLE §6): the heartbeat starts there, the header watchdog
(``watchdog.py``, its own lock) with the first request; ``close()`` ends both.

Never logged: passwords, the login form, ``Authorization``/``Cookie`` headers, session ids.
"""
from __future__ import annotations

import collections
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
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import quote, unquote, urlencode, urlsplit

import requests
import requests.adapters
import urllib3.exceptions

from .. import __version__
from .. import deadline as _call_deadline
from . import body as _body
from . import limiter as _limiter
from . import parse
from . import watchdog as _watchdog
from .auth import Credentials
from .errors import (
    NotXnatResponse,
    TRANSIENT_STATUSES,
    BadRequest,
    Conflict,
    NotFound,
    Unauthorized,
    Unreachable,
    XnatError,
    XnatTimeout,
    error_for_status,
)
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

__all__ = ["XnatClient", "ClientOptions", "ClientStats"]

log = logging.getLogger(__name__)

Sink = Callable[[bytes], None]
Params = Dict[str, str]

#: columns asked of the search-backed listings (§1.2: unknown names are ignored by XNAT)
SUBJECT_COLUMNS = "ID,label,project,insert_date,insert_user,last_modified,URI"
EXPERIMENT_COLUMNS = "ID,label,xsiType,date,project,subject_ID,insert_date,last_modified"
SCAN_COLUMNS = ("xnat_imagescandata_id,ID,type,quality,xsiType,note,series_description,"
                "insert_date,last_modified,URI")
ASSESSOR_COLUMNS = "ID,label,xsiType,project,date,insert_date,last_modified,URI"

_EXPIRY_RE = re.compile(r'^"?(\d+),(\d+)"?$')
_DEFAULT_HEARTBEAT = 420.0  # xnatpy's default when the server sends no expiry cookie (§5.1)
_ERROR_BODY_LIMIT = 65536
#: downloads ask for the bytes as stored, so Content-Length is the file size (§3.1)
_IDENTITY = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class ClientOptions:
    """Client settings; every default is documented here and nowhere else."""

    #: HTTP connections kept per host; size it to the FUSE worker threads
    pool_size: int = 16
    #: seconds to establish a TCP/TLS connection
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

    def set_ok(self, cookie, request):  # noqa: D401
        return False

    def return_ok(self, cookie, request):
        return False


class _Session(requests.Session):
    """A ``Session`` whose own ``verify`` (a CA bundle path, or False) wins over the
    environment.  requests merges ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` *over*
    ``Session.verify`` (``trust_env``), so ``--ca-bundle`` was silently ignored wherever those
    are set (conda, many institutes: issue 17 §6).  With the default ``True`` the environment
    still chooses the bundle, as for curl."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: D102
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def _no_auth(r: requests.PreparedRequest) -> requests.PreparedRequest:
    """Set as ``Session.auth`` so requests never adds ``~/.netrc`` basic auth by itself
    (``trust_env``) behind the credential checks of ``auth.py``."""
    return r


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


#: answers that mean "too much": the adaptive limit backs off on them (issue 13 §2)
_OVERLOAD_STATUSES = frozenset({429, 502, 503, 504})


def _limiter_outcome(resp: requests.Response) -> "Tuple[_limiter.Outcome, Optional[float]]":
    """What an answer tells the limiter, and the ``Retry-After`` it asks for (seconds)."""
    if resp.status_code in _OVERLOAD_STATUSES:
        return _limiter.Outcome.OVERLOAD, _parse_retry_after(resp.headers.get("Retry-After"))
    return _limiter.Outcome.OK, None


def _is_read_timeout(exc: BaseException) -> bool:
    """requests wraps a body read timeout as ConnectionError(ReadTimeoutError(...))."""
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, socket.timeout,
                            requests.exceptions.ReadTimeout)):
            return True
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = inner or exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


def _translate(exc: BaseException, method: str, url: str, timeout: Tuple[float, float],
               deadline: Optional[float] = None) -> XnatError:
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
    if deadline is not None and time.monotonic() >= deadline and (
            _is_read_timeout(exc) or isinstance(exc, (R.ConnectionError,
                                                      urllib3.exceptions.HTTPError))):
        # a read timeout cut to the deadline, or the watchdog shut a socket whose status
        # line and headers were still trickling in
        return XnatTimeout(method, url, None, "no complete answer within the deadline")
    if isinstance(exc, R.ConnectTimeout):
        return Unreachable(method, url, None, f"no connection within {timeout[0]:g}s")
    if isinstance(exc, R.SSLError):
        # a certificate problem does not fix itself by retrying
        return Unreachable(method, url, None, f"TLS error: {_short(exc)}", retryable=False)
    if isinstance(exc, (R.InvalidURL, R.MissingSchema, R.InvalidSchema, R.URLRequired,
                        R.InvalidHeader)) or (isinstance(exc, ValueError)
                                              and not isinstance(exc, R.RequestException)):
        return XnatError(method, url, None, f"invalid request: {_short(exc)}")
    if _is_read_timeout(exc):
        return XnatTimeout(method, url, None, f"no data for {timeout[1]:g}s")
    if isinstance(exc, R.TooManyRedirects):
        return NotXnatResponse(method, url, None, "too many redirects")
    if isinstance(exc, (R.ChunkedEncodingError, R.ContentDecodingError,
                        urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError)):
        return Unreachable(method, url, None, f"connection broken: {_short(exc)}")
    if isinstance(exc, (R.ConnectionError, urllib3.exceptions.HTTPError, OSError)):
        return Unreachable(method, url, None, _short(exc))
    # not a transport failure we know: report it, but do not invite retries
    return XnatError(method, url, None, f"{type(exc).__name__}: {_short(exc)}")


def check_contained(method: str, uri: str, base: str) -> None:
    """Refuse (before sending) a write whose server path leaves the object it was built for.

    ``uri`` is the path as it will be sent, ``base`` the object's own path (``<resource>/files``
    for an upload).  HTTP libraries and servlet containers collapse ``.``/``..`` segments, in
    the raw or the percent-decoded path, so a ``..`` in a name would move the request to another
    object (issue 17 §3).  Raises :class:`BadRequest` (EINVAL, never retried) naming the URL.
    """
    def segments(path: str) -> List[str]:
        return path.partition("?")[0].split("/")

    decoded_uri, decoded_base = unquote(uri), unquote(base.rstrip("/"))
    bad = any(seg in (".", "..") for form in (uri, decoded_uri, base, decoded_base)
              for seg in segments(form))
    bad = bad or "\\" in decoded_uri or "\0" in decoded_uri
    if uri.startswith(("http://", "https://")):  # _url() keeps it under the base URL
        inside = True
    else:
        inside = ((decoded_base + "/").startswith("/data/")
                  and decoded_uri.startswith(decoded_base + "/"))
    if bad or not inside:
        raise BadRequest(method, uri, None,
                         f"refused before sending: the path leaves {base} (a '..', '\\' or "
                         f"NUL in a name, or a URI outside /data/)")


def _safe_path(path: str) -> bool:
    """A request path below ``/data/`` (or its old spelling ``/REST/``) with no ``.``/``..``
    segment, percent-decoded or not (``//host/...`` would be a network-path reference to another
    host); the client never asks for anything else."""
    if path.startswith("//") or not path.startswith(("/data/", "/REST/")):
        return False
    for seg in unquote(path).split("/")[1:]:
        if seg in (".", ".."):
            return False
    return True


def _short(exc: BaseException) -> str:
    """The useful part of a wrapped urllib3 message ("[Errno 111] Connection refused")."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")]*", r"IncompleteRead\([^)]*\)",
                    r"RemoteDisconnected\([^)]*\)", r"Connection (?:broken|aborted|reset)[^'\"(]*",
                    r"(?:Read )?timed out"):
        m = re.search(pattern, text)
        if m:
            return m.group(0).strip(" :.")
    return text[:160]


class XnatClient:
    """A connection to one XNAT server (``url`` may include a context path, e.g.
    ``https://host/xnat``, §0).  The constructor does no I/O and starts no thread.

    Every public method raises only :class:`~xnatfs.xnat.errors.XnatError` subclasses (a
    download sink's own exceptions pass through untouched).
    """

    def __init__(self, url: str, credentials: Credentials,
                 options: Optional[ClientOptions] = None) -> None:
        self.options = options or ClientOptions()
        #: scheme://host[:port][/context] with no trailing slash; uris are appended to it
        self.base_url = url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise XnatError("", url, None, "the server URL must look like https://host[/path]")
        self._credentials = credentials
        opts = self.options
        self._timeout: Tuple[float, float] = (opts.connect_timeout, opts.read_timeout)

        http = _Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=2, pool_maxsize=opts.pool_size, max_retries=0, pool_block=False
        )
        # connections whose status line and headers are bounded by the request's deadline
        adapter.poolmanager.pool_classes_by_scheme = dict(_watchdog.POOL_CLASSES)
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        http.verify = opts.verify
        http.auth = _no_auth
        http.cookies.set_policy(_BlockAllCookies())
        http.headers["User-Agent"] = opts.user_agent
        http.headers["Accept"] = "*/*"
        # only what body.read_body can inflate with a bound (never br/zstd)
        http.headers["Accept-Encoding"] = "gzip, deflate"
        self._http = http
        #: ends a response whose status line and headers outlast the request's deadline
        self._watchdog = _watchdog.Watchdog()
        #: the one cap on requests in flight (issue 13 §2): a slot per HTTP exchange
        self._limiter = _limiter.RequestLimiter(opts.max_requests,
                                                backoff_base=opts.backoff_base,
                                                backoff_max=opts.pause_max)

        self._stats = ClientStats(opts.latency_samples)
        #: guards _jsession, _generation, _heartbeat_interval; held during a login
        self._login_lock = threading.Lock()
        self._jsession: Optional[str] = None
        #: bumped by every successful login; a caller that saw a 401 under generation g logs
        #: in again only if nobody did since g
        self._generation = 0
        self._heartbeat_interval = _DEFAULT_HEARTBEAT
        self._closing = threading.Event()
        self._heartbeat_thread: Optional[threading.Thread] = None
        self._closed = False
        #: sockets of file downloads whose body is being read; ``close()`` shuts them down so
        #: a body that trickles for ever (each byte inside read_timeout) cannot hold the exit
        self._streams_lock = threading.Lock()
        self._streams: Dict[int, socket.socket] = {}

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
            t = threading.Thread(target=self._heartbeat_loop, name="xnatfs-heartbeat",
                                 daemon=True)
            self._heartbeat_thread = t
            t.start()

    def close(self) -> None:
        """Stop the heartbeat, log out (``DELETE /data/JSESSION``, §10.16) and close the pool.
        Never raises; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        with self._streams_lock:
            # under the lock: a stream unregisters (under it) before its connection goes back
            # to the pool, so only sockets of downloads still reading are shut down
            for sock in self._streams.values():
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        t = self._heartbeat_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=self.options.connect_timeout + self.options.read_timeout)
        with self._login_lock:
            jsession, self._jsession = self._jsession, None
        if jsession:
            try:
                resp = self._send("DELETE", self._url("/data/JSESSION"), jsession=jsession,
                                  timeout=(self.options.connect_timeout,
                                           min(self.options.read_timeout, 10.0)),
                                  deadline=time.monotonic() + min(self.options.deadline, 10.0))
                resp.close()
                log.debug("logged out of %s (%s)", self.base_url, resp.status_code)
            except XnatError as err:
                log.info("logout: %s", err)
        self._http.close()
        self._watchdog.close()

    def __enter__(self) -> "XnatClient":
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
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: max(timeout/2 - 20 s, 10 s) from the server's
        ``SESSION_EXPIRATION_TIME`` cookie, or 420 s when it sent none (§5.1)."""
        return self._heartbeat_interval

    # ---------------------------------------------------------------- session

    def _locked_login(self, deadline: Optional[float] = None) -> None:
        """``PUT /data/services/auth`` with the form (§5.1, §8.1) → JSESSIONID.
        Caller holds self._login_lock."""
        if deadline is None:
            deadline = time.monotonic() + self.options.deadline
        method, url = "PUT", self._url("/data/services/auth")
        creds = self._credentials
        form = {"username": creds.username, "password": creds.password}
        resp = self._send(method, url, data=form, timeout=self._timeout, jsession=None,
                          deadline=deadline)
        body = resp.content  # already read: _send does not stream
        resp.close()
        if resp.status_code in (404, 405, 501):
            # very old servers: basic auth against /data/JSESSION gives the same cookie
            method, url = "POST", self._url("/data/JSESSION")
            resp = self._send(method, url, timeout=self._timeout, jsession=None,
                              auth=(creds.username, creds.password), deadline=deadline)
            body = resp.content
            resp.close()
        if resp.status_code != 200:
            err = error_for_status(method, url, resp.status_code,
                                   parse.error_text(body) or "login failed")
            log.info("login as %s: %s", creds.username, err)
            raise err
        if parse.looks_like_html(body):
            raise NotXnatResponse(method, url, 200,
                                  "login answered with an HTML page; is this the XNAT base URL?")
        jsession = resp.cookies.get("JSESSIONID")
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
            raise XnatTimeout("PUT", self._url("/data/services/auth"), None,
                              "waited for a login by another thread until the deadline")

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
        raw = resp.cookies.get("SESSION_EXPIRATION_TIME")
        m = _EXPIRY_RE.match(raw.strip()) if raw else None
        if m:
            timeout = int(m.group(2)) / 1000.0
            self._heartbeat_interval = max(timeout / 2.0 - 20.0, 10.0)

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self._heartbeat_interval):
            try:
                resp = self._call("GET", "/data/JSESSION")
                self._note_expiry(resp)
            except XnatError as err:
                log.warning("heartbeat: %s", err)

    def heartbeat(self) -> None:
        """One ``GET /data/JSESSION`` now (what the heartbeat thread does); renews the
        session, logging in again if it had expired."""
        resp = self._call("GET", "/data/JSESSION")
        self._note_expiry(resp)

    # ---------------------------------------------------------------- transport

    def _url(self, uri: str) -> str:
        """Base URL + a server path (``/data/...``), percent-encoding what must be (§10.17).

        Refuses (XnatError, not retryable, before any request) a path that is not plainly below
        the base URL: another host, ``//host``, a ``.``/``..`` segment in any spelling
        (``%2e%2e``, ``..%2F``).  HTTP libraries collapse ``..`` (issue 17 §3, §8), so such a
        path would reach another object, or another site, with the session cookie."""
        if uri.startswith(("http://", "https://")):
            if not uri.startswith(self.base_url + "/"):
                raise XnatError("", uri, None, f"refused: URL is not under {self.base_url}")
            uri = uri[len(self.base_url):]
        if not uri.startswith("/"):
            uri = "/" + uri
        path, sep, query = uri.partition("?")
        if not _safe_path(path):
            raise XnatError("", self.base_url + uri, None,
                            "refused: the path is not plainly below /data/ ('.', '..', '//')")
        path = quote(path, safe="/%:@!$&'()*+,;=-._~")
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
        request to its end, body included; a streamed response gives it back when closed."""
        if not isinstance(deadline, _watchdog.RequestDeadline):
            deadline = _watchdog.RequestDeadline(deadline, self.options.deadline)
        holder = deadline
        hdrs = dict(headers or {})
        if jsession:
            hdrs["Cookie"] = f"JSESSIONID={jsession}"
        started = time.monotonic()
        left = holder.at - started
        if left <= 0:
            err = XnatTimeout(method, url, None, "no time left for this request")
            self._stats.error(type(err).__name__)
            raise err
        full_read_timeout = timeout[1]
        try:
            slot = self._limiter.acquire(holder.at)
        except _limiter.SlotUnavailable as exc:
            err = (Unreachable(method, url, None, str(exc), retryable=False) if exc.paused
                   else XnatTimeout(method, url, None, str(exc)))
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
                method, url, data=data, headers=hdrs, stream=True,
                timeout=timeout, allow_redirects=False, auth=auth,
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
                        resp.raw, resp.headers.get("Content-Encoding", ""), holder.at,
                        read_timeout=full_read_timeout)
                except BaseException:
                    resp.close()
                    raise
                resp._content = content  # type: ignore[attr-defined]
                resp._content_consumed = True  # type: ignore[attr-defined]
                self._stats.bytes_in(len(content))
            outcome, retry_after = _limiter_outcome(resp)
            if stream:
                self._hand_slot_to(resp, slot, outcome, retry_after)
                handed_over = True
        except Exception as exc:  # the one translation boundary
            err = _translate(exc, method, url, timeout, holder.at)
            if isinstance(err, XnatTimeout) or (isinstance(err, Unreachable) and err.retryable):
                outcome = _limiter.Outcome.OVERLOAD  # a slow, refusing or restarting server
            self._stats.request(method, type(err).__name__, time.monotonic() - started)
            self._stats.error(type(err).__name__)
            raise err from None
        finally:
            _watchdog.REQUEST_DEADLINE.reset(armed)
            if not handed_over:
                self._limiter.release(slot, outcome, retry_after)
        self._stats.request(method, resp.status_code, time.monotonic() - started)
        return resp

    def _hand_slot_to(self, resp: requests.Response, slot: "_limiter.Slot",
                      outcome: "_limiter.Outcome", retry_after: Optional[float]) -> None:
        """A streamed response keeps its slot until it is closed (every caller closes it in a
        ``finally``); should one be dropped unclosed, the slot returns when it is collected."""
        limiter = self._limiter
        close = resp.close

        def close_and_release() -> None:
            try:
                close()
            finally:
                limiter.release(slot, outcome, retry_after)

        resp.close = close_and_release  # type: ignore[method-assign]
        weakref.finalize(resp, limiter.release, slot, outcome, retry_after)

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
            except XnatError as err:
                self._log_failure(err)
                raise
            body = body_factory() if body_factory is not None else data
            sent = _watchdog.RequestDeadline(deadline, opts.deadline)
            try:
                resp = self._send(method, url, data=body, headers=headers, stream=stream,
                                  timeout=self._timeout, jsession=jsession, deadline=sent)
            except XnatError as err:
                # connection errors only: a read timeout is not retried here, so a stalled
                # server costs one read_timeout, not retries x read_timeout
                if idempotent and isinstance(err, Unreachable) and err.retryable \
                        and self._backoff(err, attempt, deadline):
                    continue
                self._log_failure(err)
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
                err = NotXnatResponse(method, url, status,
                                      "HTML page where XNAT data was expected")
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
            if resp.raw is not None and not resp._content_consumed:  # type: ignore[attr-defined]
                # bounded in bytes and time like any document (an error page is no exception)
                body = _body.read_body(resp.raw, resp.headers.get("Content-Encoding", ""),
                                       time.monotonic() + min(self.options.read_timeout, 5.0),
                                       limit=_ERROR_BODY_LIMIT)
                self._stats.bytes_in(len(body))
            else:
                body = resp.content or b""
        except Exception:  # a broken error body is still the same error
            body = b""
        finally:
            resp.close()
        status = resp.status_code
        if 300 <= status < 400:
            where = resp.headers.get("Location", "?")
            return NotXnatResponse(method, url, status,
                                   f"redirected to {where}; use that as the server URL?")
        return error_for_status(method, url, status, parse.error_text(body),
                                retry_after=_parse_retry_after(resp.headers.get("Retry-After")))

    def _backoff(self, err: XnatError, attempt: int, deadline: float) -> bool:
        """Sleep before retry number ``attempt`` if allowed; False when out of tries/time."""
        opts = self.options
        if attempt > opts.retries or self._closing.is_set():
            return False
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
        """One line per failed call; expected outcomes (404/409) stay at DEBUG."""
        if err.status in (404, 409):
            log.debug("%s", err)
        else:
            log.info("%s", err)

    # ---------------------------------------------------------------- JSON helpers

    def _get_json(self, uri: str, params: Optional[Params] = None) -> Any:
        q = {"format": "json"}
        q.update(params or {})
        resp = self._call("GET", uri, params=q)
        if resp.content.count(b"{") > _body.MAX_DOCUMENT_OBJECTS:
            # 64 MiB of tiny rows would parse into ~2 GB of Python objects (issue 17 §4)
            err = NotXnatResponse("GET", resp.url, resp.status_code,
                                  f"refused: more than {_body.MAX_DOCUMENT_OBJECTS} JSON objects")
            self._log_failure(err)
            raise err
        try:
            return json.loads(resp.content.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise NotXnatResponse("GET", resp.url, resp.status_code,
                                  "answer is not JSON") from None

    def _rows(self, uri: str, params: Optional[Params] = None) -> Tuple[List[Dict[str, str]], Any]:
        doc = self._get_json(uri, params)
        try:
            return parse.rows_from_json(doc), doc
        except parse.BadDocument as exc:
            raise NotXnatResponse("GET", self._url(uri), 200, str(exc)) from None

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

    # ---------------------------------------------------------------- listings

    def list_projects(self) -> List[Project]:
        """Projects this user can read (§1.3)."""
        rows, _ = self._rows("/data/projects")
        return [parse.project_from_row(r) for r in rows if r.get("ID")]

    def list_subjects(self, project_id: str) -> List[Subject]:
        """Subjects listed in a project, shared ones included (§1.4, §10.1)."""
        uri = f"/data/projects/{parse.quote_segment(project_id)}/subjects"
        rows = self._rows_with_columns(uri, SUBJECT_COLUMNS)
        return [parse.subject_from_row(r, project_id) for r in rows if r.get("ID")]

    def list_experiments(self, project_id: str, subject_id: str) -> List[Experiment]:
        """Experiments of one subject within a project (§1.5); ``subject_id`` may be the
        accession ID or the label."""
        uri = (f"/data/projects/{parse.quote_segment(project_id)}/subjects/"
               f"{parse.quote_segment(subject_id)}/experiments")
        rows = self._rows_with_columns(uri, EXPERIMENT_COLUMNS)
        return [parse.experiment_from_row(r) for r in rows if r.get("ID")]

    def list_scans(self, experiment_uri: str) -> List[Scan]:
        """Scans of an experiment (§1.6); ``Scan.uri`` = ``<experiment_uri>/scans/<ID>``."""
        rows = self._rows_with_columns(f"{experiment_uri.rstrip('/')}/scans", SCAN_COLUMNS)
        return [parse.scan_from_row(r, experiment_uri) for r in rows if r.get("ID")]

    def list_assessors(self, experiment_uri: str) -> List[Assessor]:
        """Assessors of an experiment (§1.5, §9)."""
        rows = self._rows_with_columns(f"{experiment_uri.rstrip('/')}/assessors",
                                       ASSESSOR_COLUMNS)
        return [parse.assessor_from_row(r, experiment_uri) for r in rows if r.get("ID")]

    def list_resources(self, parent_uri: str) -> List[Resource]:
        """Resources of any object (§1.7); ``Resource.uri`` = ``<parent>/resources/<id>``."""
        rows, _ = self._rows(f"{parent_uri.rstrip('/')}/resources")
        return [parse.resource_from_row(r, parent_uri) for r in rows
                if r.get("xnat_abstractresource_id") or r.get("label")]

    def list_scan_resources(self, experiment_uri: str) -> Dict[str, List[Resource]]:
        """The resources of every scan of an experiment in one request (``resources?all=true``,
        §1.7): scan ID -> its resources, each ``Resource.uri`` =
        ``<experiment_uri>/scans/<ID>/resources/<id>`` as ``list_resources(scan.uri)`` gives.
        Rows of other categories (the experiment's own, assessors') are left out: the
        experiment's own rows differ from its plain listing in ``cat_desc`` (§1.7)."""
        rows, _ = self._rows(f"{experiment_uri.rstrip('/')}/resources", {"all": "true"})
        out: Dict[str, List[Resource]] = {}
        for r in rows:
            if r.get("category") != "scans" or not r.get("cat_id") or not (
                    r.get("xnat_abstractresource_id") or r.get("label")):
                continue
            scan_uri = f"{experiment_uri.rstrip('/')}/scans/{parse.quote_segment(r['cat_id'])}"
            out.setdefault(r["cat_id"], []).append(parse.resource_from_row(r, scan_uri))
        return out

    def list_files(self, resource_uri: str) -> List[FileEntry]:
        """Files of a resource (§1.8), sub-folders included; ``FileEntry.uri`` is the server's
        ``URI`` verbatim and ``path`` the part after ``/files/``."""
        rows, _ = self._rows(f"{resource_uri.rstrip('/')}/files")
        return [parse.file_from_row(r, resource_uri) for r in rows
                if r.get("URI") or r.get("Name")]

    def catalog_times(self, resource_uri: str) -> Dict[str, float]:
        """Per-file times of a resource from its catalog (``files?format=xcat``, §1.8): one
        request per resource, ``relpath -> mtime``; {} when the catalog keeps none."""
        resp = self._call("GET", f"{resource_uri.rstrip('/')}/files", params={"format": "xcat"})
        try:
            return parse.catalog_times(resp.content)
        except parse.BadDocument as exc:
            raise NotXnatResponse("GET", resp.url, resp.status_code, str(exc)) from None

    def get_object(self, uri: str) -> Dict[str, Any]:
        """``GET <uri>?format=json``: the raw ``{"items":[...]}`` document (§2.1)."""
        doc = self._get_json(uri)
        if not isinstance(doc, dict):
            raise NotXnatResponse("GET", self._url(uri), 200, "answer is not a JSON object")
        return doc

    # ---------------------------------------------------------------- prearchive (§7)

    def list_prearchive(self, project: Optional[str] = None) -> List[PrearchiveSession]:
        uri = "/data/prearchive/projects"
        if project:
            uri += "/" + parse.quote_segment(project)
        rows, _ = self._rows(uri)
        return [parse.prearchive_from_row(r) for r in rows if r.get("url")]

    def list_prearchive_scans(self, session_uri: str) -> List[Scan]:
        rows, _ = self._rows(f"{session_uri.rstrip('/')}/scans")
        return [parse.scan_from_row(r, session_uri) for r in rows if r.get("ID")]

    def list_prearchive_resources(self, scan_uri: str) -> List[Resource]:
        rows, _ = self._rows(f"{scan_uri.rstrip('/')}/resources")
        return [parse.resource_from_row(r, scan_uri) for r in rows
                if r.get("label") or r.get("xnat_abstractresource_id")]

    def list_prearchive_files(self, resource_uri: str) -> List[FileEntry]:
        rows, _ = self._rows(f"{resource_uri.rstrip('/')}/files")
        return [parse.file_from_row(r, resource_uri) for r in rows
                if r.get("URI") or r.get("Name")]

    # ---------------------------------------------------------------- downloads (§3)

    def head(self, file_uri: str) -> RemoteStat:
        """Size (``Content-Length``) and mtime (``Last-Modified``) of a file (§3.1)."""
        resp = self._call("HEAD", file_uri, headers=_IDENTITY)
        resp.close()
        return parse.remote_stat_from_headers(resp.headers)

    def download(self, file_uri: str, sink: Sink) -> RemoteStat:
        """Stream a file into ``sink`` in chunks of ``chunk_size``; return its RemoteStat.

        Retries (connection errors, 5xx) only while no byte has reached ``sink``; after that a
        failure raises (Unreachable/XnatTimeout, retryable) and the caller decides.  A body
        shorter than ``Content-Length`` is an error, never a short file.  A body that stalls
        raises XnatTimeout after ``read_timeout``.  Exceptions raised by ``sink`` propagate
        unchanged.
        """
        return self._stream(file_uri, sink, params=None)

    def download_archive(self, uri: str, sink: Sink, format: str = "zip") -> RemoteStat:
        """Stream ``<uri>/files?format=zip|tar|tar.gz`` (§3.3) into ``sink``.  Such answers
        have no Content-Length (§10.11); ``size`` of the result is the byte count received."""
        if not uri.rstrip("/").endswith("/files"):
            uri = uri.rstrip("/") + "/files"
        # XNAT may compose a zip for longer than --timeout before its first byte (§3.3); the
        # stat waiting for it has its own deadline and the download goes on (README), so out of
        # a filesystem call its headers get the longest silence, read_timeout, if that is longer
        return self._stream(uri, sink, params={"format": format},
                            patience=self.options.read_timeout)

    def _stream(self, uri: str, sink: Sink, params: Optional[Params],
                patience: float = 0.0) -> RemoteStat:
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
            resp = self._call("GET", uri, params=params, stream=True, headers=_IDENTITY,
                              deadline=deadline)
            url = resp.url
            encoding = resp.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                # asked for as stored (§3.1): an encoded answer is refused before a byte is
                # read, never inflated by urllib3 (unbounded before urllib3 2.6) nor passed off
                # as the file; not retried, the server would answer the same
                resp.close()
                err = NotXnatResponse("GET", url, resp.status_code,
                                      f"refused: the file came with Content-Encoding "
                                      f"{encoding[:40]!r}, not as stored (Accept-Encoding: "
                                      f"identity)")
                self._stats.error(type(err).__name__)
                self._log_failure(err)
                raise err
            stat = parse.remote_stat_from_headers(resp.headers)
            received = 0
            login_page = False
            failure: Optional[XnatError] = None
            sock = _body.socket_of(resp.raw)
            with self._streams_lock:
                if sock is not None:
                    self._streams[id(resp)] = sock
                if self._closed and sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)  # close() has run: read nothing more
                    except OSError:
                        pass
            try:
                chunks = resp.iter_content(opts.chunk_size)
                first = True
                while True:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    except Exception as exc:  # translation boundary for the body
                        failure = _translate(exc, "GET", url, self._timeout)
                        break
                    if first:
                        first = False
                        if self._is_login_body(resp, chunk):
                            login_page = True
                            failure = NotXnatResponse("GET", url, 200,
                                                      "login page instead of the file")
                            break
                    if chunk:
                        received += len(chunk)
                        self._stats.bytes_in(len(chunk))
                        sink(chunk)
            finally:
                with self._streams_lock:
                    self._streams.pop(id(resp), None)
                resp.close()
            if failure is None and stat.size is not None and received != stat.size:
                # never a short body passed off as the file (urllib3 usually notices first)
                failure = Unreachable("GET", url, 200,
                                      f"body ended after {received} of {stat.size} bytes")
            if failure is None:
                return RemoteStat(received, stat.mtime, stat.content_type)
            self._stats.error(type(failure).__name__)
            if login_page and not relogged:
                relogged = True
                self._relogin(generation, deadline)
                continue
            if received == 0 and isinstance(failure, Unreachable) and failure.retryable \
                    and self._backoff(failure, attempt, deadline):
                continue
            self._log_failure(failure)
            raise failure

    @staticmethod
    def _is_login_body(resp: requests.Response, first_chunk: bytes) -> bool:
        """A 200 HTML login page where a file was expected.  A real ``.html`` file comes with
        ``Content-Disposition`` (§3.1); the login page does not."""
        ctype = resp.headers.get("Content-Type", "").lower()
        if "html" not in ctype or resp.headers.get("Content-Disposition"):
            return False
        return parse.looks_like_login_page(first_chunk)

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
                    raise Unauthorized("PUT", self.base_url, 401,
                                       "session expired during an unrepeatable upload")
                fileobj.seek(start)
            used[0] = True
            return _CountingBody(fileobj, size, self.options.chunk_size, self._stats.bytes_out)

        return factory

    def _write(self, method: str, uri: str, params: Optional[Params] = None,
               ok: Tuple[int, ...] = (200, 201, 202, 204),
               **kw: Any) -> requests.Response:
        return self._call(method, uri, params=params, idempotent=False, ok=ok, **kw)

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
        resp = self._write("PUT", uri, params, body_factory=self._rewindable(fileobj, size),
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(size)})
        text = resp.content.strip()
        if text.startswith(b"{"):
            try:
                dups = json.loads(text.decode("utf-8")).get("duplicates")
            except (ValueError, UnicodeDecodeError, AttributeError):
                dups = None
            if dups:
                raise Conflict("PUT", resp.url, resp.status_code,
                               f"file exists (duplicates: {', '.join(map(str, dups))})")
        return uri

    def _put_id(self, uri: str, params: Params) -> str:
        """A create-by-PUT (§4.2-4.3): 201 new / 200 existing, body = accession ID."""
        resp = self._write("PUT", uri, params)
        return resp.content.decode("utf-8", "replace").strip()

    def create_subject(self, project: str, label: str) -> str:
        """Create (or find) a subject by label; returns its accession ID (§4.2)."""
        uri = (f"/data/projects/{parse.quote_segment(project)}/subjects/"
               f"{parse.quote_segment(label)}")
        check_contained("PUT", uri, f"/data/projects/{parse.quote_segment(project)}/subjects")
        return self._put_id(uri, {"xsiType": "xnat:subjectData"})

    def create_experiment(self, project: str, subject: str, label: str, xsi_type: str) -> str:
        """Create an experiment of ``xsi_type`` under a subject (ID or label); returns the
        experiment accession ID (§4.3)."""
        uri = (f"/data/projects/{parse.quote_segment(project)}/subjects/"
               f"{parse.quote_segment(subject)}/experiments/{parse.quote_segment(label)}")
        check_contained("PUT", uri, uri.rsplit("/", 1)[0])
        return self._put_id(uri, {"xsiType": xsi_type})

    def create_scan(self, experiment_uri: str, scan_id: str, xsi_type: str,
                    type: Optional[str] = None) -> str:
        """Create a scan (§4.3); returns its uri."""
        uri = f"{experiment_uri.rstrip('/')}/scans/{parse.quote_segment(scan_id)}"
        check_contained("PUT", uri, f"{experiment_uri.rstrip('/')}/scans")
        params = {"xsiType": xsi_type}
        if type:
            params["type"] = type
        self._write("PUT", uri, params)
        return uri

    def create_resource(self, parent_uri: str, label: str, format: Optional[str] = None,
                        content: Optional[str] = None) -> str:
        """Create an empty resource (§4.4); returns ``<parent>/resources/<label>``.
        Conflict if it exists."""
        uri = f"{parent_uri.rstrip('/')}/resources/{parse.quote_segment(label)}"
        check_contained("PUT", uri, f"{parent_uri.rstrip('/')}/resources")
        params: Params = {}
        if format:
            params["format"] = format
        if content:
            params["content"] = content
        self._write("PUT", uri, params)
        return uri

    def delete(self, uri: str) -> None:
        """``DELETE <uri>?removeFiles=true`` (§4.2-4.5).  A missing resource is a silent
        success on XNAT (§10.19); a missing file or object is NotFound."""
        check_contained("DELETE", uri, "/data")  # the uri came from a listing
        self._write("DELETE", uri, {"removeFiles": "true"}).close()

    def import_archive(
        self,
        fileobj: Any,
        size: int,
        project: str,
        subject: Optional[str] = None,
        dest: Optional[str] = None,
        session: Optional[str] = None,
        import_handler: str = "DICOM-zip",
        content_type: str = "application/zip",
        overwrite: Optional[str] = None,
    ) -> List[str]:
        """``POST /data/services/import`` with the archive as the raw body (§6); returns the
        created URIs (``/data/prearchive/...`` or ``/data/archive/...``).  ``dest=None`` lets
        the server choose (the project's prearchive settings)."""
        params: Params = {"import-handler": import_handler, "project": project}
        if subject:
            params["subject"] = subject
        if session:
            params["session"] = session
        if dest:
            params["dest"] = dest
        if overwrite:
            params["overwrite"] = overwrite
        resp = self._write("POST", "/data/services/import", params,
                           body_factory=self._rewindable(fileobj, size),
                           headers={"Content-Type": content_type, "Content-Length": str(size)})
        return parse.parse_uri_list(resp.content.decode("utf-8", "replace"))

    @staticmethod
    def _src(session_uri: str) -> str:
        """The ``src=`` form of a prearchive session: ``/prearchive/projects/...`` (§7.3)."""
        return session_uri[len("/data"):] if session_uri.startswith("/data/") else session_uri

    def archive_prearchive(self, session_uri: str, project: str, subject: str,
                           label: str) -> str:
        """Archive a prearchive session as ``project/subject/label`` (§7.3); returns the
        archived experiment's URI (``/data/archive/projects/P/subjects/S/experiments/E``)."""
        params = {"src": self._src(session_uri), "project": project, "subject": subject,
                  "session": label, "auto-archive": "false"}
        resp = self._write("POST", "/data/services/archive", params)
        uris = parse.parse_uri_list(resp.content.decode("utf-8", "replace"))
        if not uris:
            raise NotXnatResponse("POST", resp.url, resp.status_code,
                                  "archive answered with no URI")
        return uris[0]

    def get_prearchive(self, session_uri: str) -> Optional[PrearchiveSession]:
        """One session's status row (``GET <session>?format=json``, §7.2); None once it is gone
        (archived, moved, deleted)."""
        check_contained("GET", session_uri, "/data/prearchive")
        try:
            rows, _ = self._rows(session_uri)
        except NotFound:
            return None
        found = [parse.prearchive_from_row(r) for r in rows if r.get("url")]
        return found[0] if found else None

    def move_prearchive(self, session_uri: str, project: str) -> None:
        """Queue a move to ``project``'s prearchive (``POST /data/services/prearchive/move``,
        §7.3); XNAT answers at once with the session ``QUEUED_MOVING`` and moves it later."""
        self._write("POST", "/data/services/prearchive/move",
                    {"src": self._src(session_uri), "newProject": project}).close()

    def rebuild_prearchive(self, session_uri: str) -> None:
        """Queue a rebuild (``POST /data/services/prearchive/rebuild``, §7.3): the session goes
        ``QUEUED_BUILDING`` -> ``BUILDING`` -> ``READY``."""
        self._write("POST", "/data/services/prearchive/rebuild",
                    {"src": self._src(session_uri)}).close()

    def delete_prearchive(self, session_uri: str) -> None:
        """Delete a prearchive session (``DELETE <session>``, §7.2)."""
        check_contained("DELETE", session_uri, "/data/prearchive")
        self._write("DELETE", session_uri).close()
