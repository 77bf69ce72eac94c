"""The XNAT REST client; it knows nothing of files, paths or FUSE.

Modules (imports point down; only the client's modules import requests):

- ``client``  :class:`XnatClient` and :class:`ClientOptions`: pooled session, JSESSION login and
              heartbeat, retries, typed listing/download/write calls.  Assembled from
              ``transport`` (session, login, the policy of ``_call``), ``listings``,
              ``transfer`` (downloads, uploads) and ``objects`` (create, delete, import,
              prearchive actions).
- ``auth``    :class:`Credentials` and :func:`resolve_credentials` (netrc, prompt, environment).
- ``parse``   pure functions: ResultSet rows → models, XNAT date formats → POSIX seconds.
- ``errors``  :class:`XnatError` and its subclasses; the only exceptions callers see.
- ``models``  the frozen records the client returns.
- ``resolver`` name lookups within the connect timeout (a small pool of daemon threads, answers
              kept 30 s); ``watchdog``, ``body``, ``breaker``, ``limiter``: the client's other
              bounds.
"""

from __future__ import annotations

from . import errors
from .auth import Credentials, resolve_credentials
from .client import ClientOptions, ClientStats, XnatClient
from .errors import (
    BadRequest,
    Conflict,
    CredentialsError,
    Forbidden,
    NotFound,
    NotXnatResponse,
    ServerError,
    Unauthorized,
    Unreachable,
    XnatError,
    XnatTimeout,
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

__all__ = [
    "XnatClient",
    "ClientOptions",
    "ClientStats",
    "Credentials",
    "resolve_credentials",
    "errors",
    "XnatError",
    "BadRequest",
    "NotFound",
    "Unauthorized",
    "Forbidden",
    "Conflict",
    "ServerError",
    "XnatTimeout",
    "Unreachable",
    "NotXnatResponse",
    "CredentialsError",
    "Project",
    "Subject",
    "Experiment",
    "Scan",
    "Assessor",
    "Resource",
    "FileEntry",
    "PrearchiveSession",
    "RemoteStat",
]
