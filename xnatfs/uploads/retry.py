"""Retry policy of uploads: the one table that says which failures are worth another attempt.

Why a table of its own: the client's ``retryable`` flag answers a different question ("may the
client re-send this request at once, inside one call?"; a 500 is not, a write is never). For an
upload the question is "may XNAT still take these bytes later?", and the answer is yes for
almost everything: XNAT answers 500 for transient trouble (a busy database, a catalog lock), a
load balancer answers 502/503/504, a session may expire in the middle of a body. Giving up on
those left user bytes ``failed`` in the journal forever (issue 18). So an upload is retried in
the background, with backoff, until XNAT has it, *unless* the failure is one that re-sending
the same bytes to the same place cannot fix:

=====================================================  =========  ===============================
failure                                                verdict    why
=====================================================  =========  ===============================
401 after the client's re-login (``Unauthorized``)     permanent  credentials are wrong
403 (``Forbidden``)                                    permanent  no permission on the project
404 (``NotFound``): the parent resource/session        permanent  nothing to upload into
409 (``Conflict``; a ``duplicates`` answer, §4.5)      permanent  a different file is there
413 Payload Too Large                                  permanent  the server's size limit
400/406/417/422 (``BadRequest``): a bad name or body   permanent  XNAT refuses the request
no credentials (``CredentialsError``)                  permanent  nothing to log in with
local EINVAL/ENOENT/EISDIR/ENAMETOOLONG                permanent  bad target, data file gone
500, 502, 503, 504, 429 (``ServerError``, any 5xx)     transient  server trouble passes
timeouts (``XnatTimeout``)                             transient  a slow server
connection refused/reset/dropped (``Unreachable``)     transient  the network comes back
a login page after the re-login (``NotXnatResponse``)  transient  §5.1/§10.8 session races
the server does not show the bytes yet                 transient  listings lag (§1.8)
an import's POST whose answer was lost                 permanent  a second POST: a second session
local ESPIPE/EIO/EPIPE/EAGAIN/... from a cut body      transient  the next attempt re-reads
anything else                                          transient  bytes kept; retrying is cheap
=====================================================  =========  ===============================

Unknown failures count as transient on purpose: the backoff is capped (``Uploader.max_delay``),
so a hopeless retry costs one request every few minutes, while a wrong "permanent" loses the
user's upload. ``classify_text`` applies the same table to the text of an error recorded in a
journal by an older version (which had only the text), so that entries it marked ``failed`` for a
transient reason are re-queued on start.

The client's error classes (``xnatfs/xnat/errors.py``) are matched by *name* along the
exception's MRO, with its ``status``: ``uploads`` may not import ``xnatfs.xnat``
(tests/unit/test_layers.py), and ``tests/unit/test_uploader.py`` checks that every name used here
exists there, so a rename cannot silently change a verdict.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import FrozenSet, Optional, Set

__all__ = [
    "Verdict",
    "classify",
    "classify_text",
    "PERMANENT_STATUSES",
    "PERMANENT_ERRNOS",
    "ERROR_CLASSES",
]

#: HTTP statuses that re-sending the same upload cannot fix (see the table above)
PERMANENT_STATUSES: FrozenSet[int] = frozenset(
    {400, 401, 403, 404, 406, 409, 410, 413, 417, 414, 422}
)
#: local errors that re-sending cannot fix: the target is unusable or the bytes are gone
PERMANENT_ERRNOS: FrozenSet[int] = frozenset(
    {errno.EINVAL, errno.ENOENT, errno.EISDIR, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM}
)


@dataclass(frozen=True)
class Verdict:
    """What to do after a failed attempt."""

    #: try again later (with backoff) rather than mark the entry ``failed``
    retry: bool
    #: the table row that decided, for the log line and the tests
    rule: str


#: client error class name -> verdict (None: decided by the status below)
ERROR_CLASSES = {
    "CredentialsError": False,  # no credentials: nothing to log in with
    "Unauthorized": False,  # 401 after the client's own re-login
    "Forbidden": False,  # 403
    "NotFound": False,  # 404: the parent resource/session is gone
    "Conflict": False,  # 409 or a 200 {"duplicates": [...]} (§4.5)
    "BadRequest": False,  # 400/406/417/422: a bad name or body
    "XnatTimeout": True,  # a slow server
    "Unreachable": True,  # refused, reset, a body cut in the middle
    "NotXnatResponse": True,  # a login page after the re-login (§5.1, §10.8), a proxy page
    "ServerError": True,  # 5xx, 429
}


def _class_names(exc: BaseException) -> Set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def classify(exc: BaseException) -> Verdict:
    """The verdict for an exception raised by ``put`` or ``verify``."""
    names = _class_names(exc)
    if "XnatError" in names:
        status = getattr(exc, "status", None)
        if isinstance(status, int) and status in PERMANENT_STATUSES:
            return Verdict(False, f"HTTP {status}")
        for name, retry in ERROR_CLASSES.items():
            if name in names:
                return Verdict(retry, name)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return Verdict(True, f"HTTP {status}")
        return Verdict(True, "other XNAT error")
    explicit = getattr(exc, "retryable", None)
    if isinstance(explicit, bool):  # UploadNotVerified, and callers' own exception types
        # before the errno: an import whose answer was lost is an OSError (ETIMEDOUT for
        # close()) that must not be sent again (a second session)
        return Verdict(explicit, "declared by the exception")
    if isinstance(exc, OSError) and exc.errno is not None:
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        return Verdict(exc.errno not in PERMANENT_ERRNOS, f"local {code}")
    return Verdict(True, "unknown")


#: ``str(XnatError)`` is ``"METHOD URL -> STATUS Reason: message"`` (errors.py)
_STATUS_TEXT = re.compile(r" -> (\d{3})\b")
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")
_PERMANENT_WORDS = (
    "no usable credentials",
    "unknown upload target",
    "target unknown",
    "file exists (duplicates",
    "earlier write failed",
    "not sent again",  # an import whose answer was lost (tree/uploading.py ImportUnsure)
    "not overwritten, your version",  # a lost update refused (tree/uploading.py ChangedOnXnat)
    "not replaced (replacing another",  # tree/uploading.py NotReplaced
)


def classify_text(text: str) -> Verdict:
    """The verdict for an error known only by its recorded text (``Entry.last_error`` written
    by an older version). Unrecognised text is transient, as in :func:`classify`."""
    lowered = text.lower()
    for words in _PERMANENT_WORDS:
        if words in lowered:
            return Verdict(False, f"text: {words}")
    m = _STATUS_TEXT.search(text)
    status: Optional[int] = int(m.group(1)) if m else None
    if status is not None:
        return Verdict(status not in PERMANENT_STATUSES, f"HTTP {status}")
    m = _ERRNO_TEXT.search(text)
    if m:
        code = int(m.group(1))
        return Verdict(code not in PERMANENT_ERRNOS, f"local {errno.errorcode.get(code, code)}")
    return Verdict(True, "unknown")
