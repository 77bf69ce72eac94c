"""Asking a running mount to do something, through the mount itself.

A mount has no socket of its own: a request reaches the daemon as a file-system call on the
path it is about, which needs no address, works for every user who can see the path, and
fails cleanly on any other file system.  The one request today is *refresh*: forget the
cached listings at and below a folder (or of a file's folder), so that what another client
changed on XNAT shows now rather than after ``--listing-ttl``.

It is a ``getxattr`` of an attribute no listing names (``listxattr`` does not return it, so
``getfattr -d``, ``cp -a`` and ``rsync -X`` never ask for it by accident), because a
``setxattr`` is refused by the kernel itself on a read-only mount (``EROFS``), where a
pipeline needs it as much; ``setxattr`` works as well on a writable mount.
"""

from __future__ import annotations

import errno
import os

#: the attribute whose read (or write) refreshes a path's listings
REFRESH_XATTR = "user.xnatfs.refresh"
#: what that read answers: constant, since getfattr asks for the size first and then the value
REFRESHED = b"refreshed"


class NotAMount(OSError):
    """The path is not in an xnatfs mount (or the daemon is too old to refresh)."""


def refresh(path: str) -> None:
    """Make the mount holding ``path`` forget the listings at and below it.

    Raises ``NotAMount`` for a path on another file system, ``OSError`` for the mount's own
    answer (``ENOENT``, ``ETIMEDOUT``, ...)."""
    try:
        os.getxattr(path, REFRESH_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            raise NotAMount(exc.errno, "not in an xnatfs mount", path) from None
        raise
    _list_folder(path)


def _list_folder(path: str) -> None:
    """List the refreshed folder (a file's: its folder) once, to its end.

    Why: a name looked up as missing is held so by the kernel for ``negative_timeout``, and
    libfuse's high-level API has no call that reaches such an entry (``fuse_invalidate_path``
    needs a node, and a missing name has none).  A listing does: each entry of a READDIRPLUS
    answer replaces the kernel's entry of that name, a missing-name one included
    (``fuse_direntplus_link``), so a file another client added shows to a direct ``stat`` at
    once.  It costs the folder's own listing, the one request a refresh is documented to
    cost (the next ``ls`` or lookup in the folder would load it anyway).  With
    ``--names-only-listings`` (no READDIRPLUS) it does nothing more than an ``ls``."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    with os.scandir(folder) as entries:
        for _ in entries:
            pass
