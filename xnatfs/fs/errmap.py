"""The one table from exceptions to errno values (rclone ``translateError``).

Only ``OSError`` may escape a FUSE op (mfusepy turns anything else into EINVAL), so every op funnels
its exceptions through :func:`errno_for`.  A timeout is never ENOENT, and anything unexpected is
EIO plus one ERROR line naming the path, the URL and the status.
"""

from __future__ import annotations

import errno
import logging
from typing import Optional

from xnatfs.xnat import errors as xe

log = logging.getLogger(__name__)

#: XNAT error class -> errno, most specific first
_TABLE = (
    (xe.NotFound, errno.ENOENT),
    (xe.Unauthorized, errno.EACCES),
    (xe.Forbidden, errno.EACCES),
    # 409, and XNAT's 200 {"duplicates": [...]} to an upload without overwrite=true (§4.5,
    # FileList.handlePost; docs/FIDELITY.md): another client made the file first
    (xe.Conflict, errno.EEXIST),
    (xe.BadRequest, errno.EINVAL),
    # not sent: XNAT cannot be connected to (xnat/breaker.py).  "Host is down", as a CIFS mount
    # says of its dead server: EIO would read as a disk fault, ENETUNREACH blames the network.
    # A server that answers errors (500/503 to everything) stays EIO, as each answer was.
    (xe.HostDown, errno.EHOSTDOWN),
    (xe.XnatTimeout, errno.ETIMEDOUT),
)


def errno_for(exc: BaseException) -> int:
    """The errno an op should answer for ``exc``."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, xe.XnatError):
        for cls, code in _TABLE:
            if isinstance(exc, cls):
                return code
        return errno.EIO
    return errno.EIO


#: attribute calls: ``ls``/``cp`` ask for ``security.*``, ACLs and capabilities on every file
_XATTR_OPS = frozenset({"getxattr", "listxattr", "setxattr", "removexattr"})


def is_refusal(op: str, code: int) -> bool:
    """An expected answer, not a failure, so not counted in the stats' ``errors`` (issue 16
    §5): a missing name (``ENOENT``), a missing attribute (``ENODATA``) and the ``ENOTSUP`` that
    every ``ls -l`` gets for the ``security.*`` attributes xnatfs does not serve."""
    if code in (errno.ENOENT, errno.ENODATA):
        return True
    return op in _XATTR_OPS and code == errno.ENOTSUP


def describe(op: str, path: str, exc: BaseException) -> str:
    """One log line, subject first: ``read /P/x.dcm: GET <url> -> 503 ...: <text>``."""
    return f"{op} {path}: {exc}"


#: errno values that are ordinary answers (a missing name, a refused attribute...), not failures
_QUIET = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENODATA,
        errno.EROFS,
        errno.ENOTSUP,
        errno.EEXIST,
        errno.ENOTEMPTY,
    }
)
#: ops that commit a written file: EEXIST there is XNAT's "duplicates" answer (a file of that
#: name appeared on XNAT meanwhile) and the bytes stay in the journal, so it is a failure
_COMMIT_OPS = frozenset({"flush", "fsync", "release"})
#: ops that change XNAT or the upload journal (``open`` for writing too: the wrapper says so).
#: When XNAT (or the breaker on its behalf) fails one of these, that is a change the user asked
#: for and did not get: it has its own ERROR line, whatever the errno
CHANGES = frozenset(
    {
        "mkdir",
        "rmdir",
        "unlink",
        "rename",
        "create",
        "write",
        "truncate",
        "flush",
        "fsync",
        "release",
        "setxattr",
        "utimens",
    }
)


def log_failure(
    op: str, path: str, exc: BaseException, code: int, change: Optional[bool] = None
) -> None:
    """Log a failed op once (``change``: the op changes XNAT or the journal; by default, when
    ``op`` is one of ``CHANGES``).

    Quiet (DEBUG): the ordinary answers of a look (ENOENT and friends, the kernel asks for
    names that are not there all the time), an error marked ``reported``: a failed ``write``
    whose later ``flush``/``release`` answer its errno again (``tree.local.AlreadyReported``),
    and a call the open circuit breaker failed (``ServerDown``: the breaker logged the outage
    once; a line per ``stat`` would flood).  But an XNAT error that fails a change (a mkdir,
    rm, mv, close... that XNAT refused, that timed out, that the breaker held back) is an
    ERROR line of its own, naming the path, the URL and why: the user's change was not made,
    or is only in the journal, and one line per failed call says so (the client's retries
    are not lines of their own).  Before, a mkdir or rm failed by the open breaker, or a mv
    that XNAT answered 404 or "duplicates" for, had no line at all."""
    if change is None:
        change = op in CHANGES
    if change and isinstance(exc, xe.XnatError):
        log.error("%s", describe(op, path, exc))
        return
    quiet = code in _QUIET and not (op in _COMMIT_OPS and code == errno.EEXIST)
    if getattr(exc, "reported", False) or quiet:
        log.debug("%s", describe(op, path, exc))
    elif isinstance(exc, (OSError, xe.XnatError)):
        log.error("%s", describe(op, path, exc))
    else:
        log.error(
            "%s: unexpected %s",
            describe(op, path, exc),
            type(exc).__name__,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
