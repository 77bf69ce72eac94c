"""Typed errors of the XNAT REST client.

Every failure the client reports is an :class:`XnatError`; requests/urllib3/socket exceptions are
translated in ``client.py`` at one boundary and never escape it.  Each subclass names the caller's
next move (retry later, log in again, give up, report EEXIST, ...), and ``retryable`` says whether
the same request may succeed if sent again later.

This module imports nothing from the rest of xnatfs and nothing from requests, so the layers
above (``fs/errmap.py``, the upload journal) can depend on it cheaply.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar, Dict, Optional, Type

__all__ = [
    "XnatError",
    "BadRequest",
    "NotFound",
    "Unauthorized",
    "Forbidden",
    "Conflict",
    "ServerError",
    "XnatTimeout",
    "Unreachable",
    "ServerDown",
    "HostDown",
    "NotXnatResponse",
    "CredentialsError",
    "error_for_status",
    "unanswered",
]


def _reason(status: Optional[int]) -> str:
    if status is None:
        return ""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class XnatError(Exception):
    """Root of every error the client raises.

    ``status`` is the HTTP status, or ``None`` when no response arrived (timeouts, refused
    connections) or the failure is local (credentials).  ``message`` is the server's own text
    (the ``<h3>`` of an XNAT status page, §5.1) or a short description of what went wrong.
    """

    #: may the same request succeed if sent again later?  Subclasses set the default; an
    #: instance may override it (e.g. a 500 is a ServerError but not worth retrying).
    retryable: bool = False
    #: already told in a log line of its own (the breaker's "is down"): the layers above do
    #: not log it again; an instance may say otherwise
    reported: bool = False

    def __init__(
        self,
        method: str = "",
        url: str = "",
        status: Optional[int] = None,
        message: str = "",
        *,
        retryable: Optional[bool] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.message = message
        #: seconds the server asked us to wait (``Retry-After`` on 429/503), if any
        self.retry_after = retry_after
        if retryable is not None:
            # instance attribute shadows the class default
            self.retryable = retryable
        super().__init__(method, url, status, message)

    @property
    def reason(self) -> str:
        return _reason(self.status)

    def __str__(self) -> str:
        if not self.method and not self.url:
            return self.message or self.__class__.__name__
        head = f"{self.method} {self.url}".strip()
        if self.status is not None:
            outcome = f"{self.status} {self.reason}".rstrip()
        else:
            outcome = self._no_status_text
        return f"{head} -> {outcome}: {self.message}" if self.message else f"{head} -> {outcome}"

    #: what ``str()`` says in place of "404 Not Found" when no status is known
    _no_status_text: ClassVar[str] = "failed"

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(method={self.method!r}, url={self.url!r}, "
            f"status={self.status!r}, message={self.message!r})"
        )

    def __reduce__(self):  # keep pickling (and copy) working with the keyword-only fields
        return (
            _rebuild,
            (
                self.__class__,
                self.method,
                self.url,
                self.status,
                self.message,
                self.__dict__.get("retryable"),
                self.retry_after,
            ),
        )


def _rebuild(cls, method, url, status, message, retryable, retry_after):
    return cls(method, url, status, message, retryable=retryable, retry_after=retry_after)


class BadRequest(XnatError):
    """400, 406, 417, 422 ...: the server refused the request as malformed (§4.6)."""


class NotFound(XnatError):
    """404: the object is missing, or invisible to this user (§4.6)."""


class Unauthorized(XnatError):
    """401: bad credentials, or a session that could not be renewed."""


class Forbidden(XnatError):
    """403: authenticated but not allowed."""


class Conflict(XnatError):
    """409, or a 200 ``{"duplicates":[...]}`` answer to an upload without overwrite (§4.5)."""


class ServerError(XnatError):
    """5xx or 429.  500/502/503/504/429 are retryable; the client retries GET/HEAD on those."""

    retryable = True


class XnatTimeout(XnatError):
    """The server accepted the connection but sent nothing (headers or body) for
    ``read_timeout`` seconds."""

    retryable = True
    _no_status_text = "timed out"


class Unreachable(XnatError):
    """No connection (refused, DNS, connect timeout, TLS), or it broke mid-answer (reset,
    a body shorter than its Content-Length)."""

    retryable = True
    _no_status_text = "unreachable"


class ServerDown(Unreachable):
    """Not sent: the server is known to be down (``breaker.py``) or the mount holds requests
    back (``limiter.py``).  Retryable (it may answer later: listings seen before are kept, an
    upload stays pending), but never retried within the call: that would only wait.  Logged
    once by the breaker when it opens, so ``reported``: not one line per failed call."""

    reported = True


class HostDown(ServerDown):
    """``ServerDown`` while the server cannot even be connected to (refused, DNS, connect
    timeout), not merely answering errors: the filesystem says "Host is down" (EHOSTDOWN)."""


def unanswered(exc: BaseException) -> bool:
    """A request that failed without XNAT's answer (timed out, connection refused or broken):
    if it was a change, XNAT may have made it all the same.  Not ``ServerDown``: never sent."""
    return isinstance(exc, (XnatTimeout, Unreachable)) and not isinstance(exc, ServerDown)


class NotXnatResponse(XnatError):
    """An answer that is not XNAT data: HTML where JSON was expected (§10.8), broken JSON.

    Usually a proxy, a login page (wrong URL or expired session that re-login did not fix) or a
    base URL that is not an XNAT at all.
    """


class CredentialsError(XnatError):
    """No usable credentials (missing, or an unsafe ``.netrc``).  Local: no request was sent."""


_BY_STATUS: Dict[int, Type[XnatError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    406: BadRequest,
    409: Conflict,
    410: NotFound,
    417: BadRequest,
    422: BadRequest,
    429: ServerError,
}

#: statuses on which an idempotent request is worth sending again
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


def error_for_status(
    method: str,
    url: str,
    status: int,
    message: str = "",
    retry_after: Optional[float] = None,
) -> XnatError:
    """Build the typed error for an HTTP error status (the one status → class table)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else XnatError
    # a 500 too: XNAT's passing trouble as often as not (the client retries a GET's 500, the
    # upload table calls it transient); "not retryable" made a listing seen before be forgotten
    # at the first 500 of its refresh, so a server answering 500 for a minute made cached
    # folders fail as well (EIO) instead of showing what was seen
    retryable = (status in TRANSIENT_STATUSES or status == 500) if cls is ServerError else None
    return cls(method, url, status, message, retryable=retryable, retry_after=retry_after)
