"""The private folders and files of a cache folder: ours, or refused (docs/SECURITY.md).

Every folder the mount makes under ``--cache-dir`` (``content`` and its ``index``, ``partial``,
``owners``; ``bids`` and its ``tmp``; ``uploads`` and its ``spool`` and ``journal``; ``logs``)
goes through :func:`private_dir`, and every file it opens there by name (``lock``,
``times.db``) through :func:`private_file`, and the SQLite databases (``times.db``,
``content/index/cache.db``) and the files SQLite makes beside them through
:func:`refuse_planted_db` before SQLite opens them.

Why: ``os.makedirs(exist_ok=True)`` and ``chmod`` by name follow a symbolic link and adopt a
folder someone else made, and ``open(name, "a+")`` follows a link and creates its target.  A
cache folder that was once open to others (its mode is *fixed* at start, so what was planted
before stays) could thus hold a ``content`` that sent every byte the mount caches into another
user's folder, or a ``lock`` that had the mount (often root) create a file wherever the link
pointed.  What is refused raises :class:`NotPrivate` (a ``PermissionError``) naming the path
and what to do; the daemon prints it as one line (``commands/daemon.py``).

Our own folder with a mode that is too open (an older version, a umask) is made 0700, on the
folder opened, never by name again; another user's folder or a link is never changed.

This module imports nothing from the rest of xnatfs (the upload journal uses it).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO

__all__ = ["NotPrivate", "open_cache_lock", "private_dir", "private_file", "refuse_planted_db"]


class NotPrivate(PermissionError):
    """A folder or file under the cache folder that another local user could have planted or
    may change: a symbolic link, not the kind expected, or not ours.  ``strerror`` is the
    one line to show (it names the path and the fix)."""

    def __init__(self, path: "os.PathLike[str] | str", why: str, code: int = errno.EPERM) -> None:
        fix = (
            "move it away (someone may have planted it) and start again, or use another --cache-dir"
        )
        super().__init__(code, f"{os.fspath(path)} {why}: refused; {fix}")


def _why_not_ours(st: os.stat_result, want: int) -> str:
    """What is wrong with a file or folder of type ``want`` (``S_IFDIR``, ``S_IFREG``) with
    status ``st`` (of the thing itself, never of a link's target), or ""."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if stat.S_IFMT(st.st_mode) != want:
        return "is not a folder" if want == stat.S_IFDIR else "is not a regular file"
    me = os.geteuid()
    if st.st_uid != me:
        return f"is owned by uid {st.st_uid}, not by you (uid {me})"
    if want == stat.S_IFREG and st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    return ""


def private_dir(path: "os.PathLike[str] | str") -> str:
    """Create ``path`` (and its parents) if missing and make it 0700; return it as a string.

    A symbolic link at ``path``, anything but a folder, or a folder another user owns is
    refused (:class:`NotPrivate`).  The checks and the ``chmod`` are of the folder opened
    (``O_NOFOLLOW``, ``fstat``, ``fchmod``), not of the name again."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass  # something that is no folder (a dangling link, a file): refused below
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            why = _why_not_ours(os.lstat(path), stat.S_IFDIR)
            if why:
                raise NotPrivate(path, why, exc.errno) from None
        raise
    try:
        why = _why_not_ours(os.fstat(fd), stat.S_IFDIR)
        if why:
            raise NotPrivate(path, why)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return os.fspath(path)


def private_file(path: "os.PathLike[str] | str", flags: int = os.O_RDWR, mode: int = 0o600) -> int:
    """A descriptor of the file at ``path`` (created ``mode`` if missing), opened with
    ``flags``; refused (:class:`NotPrivate`, nothing created elsewhere) when ``path`` is a
    symbolic link, not a regular file, another user's, or hard-linked elsewhere.
    ``O_NONBLOCK`` keeps a FIFO planted there from holding the open (it is then refused)."""
    all_flags = flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, all_flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotPrivate(path, "is a symbolic link", exc.errno) from None
        raise
    try:
        why = _why_not_ours(os.fstat(fd), stat.S_IFREG)
        if why:
            raise NotPrivate(path, why)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_cache_lock(cache_dir: "os.PathLike[str] | str") -> IO[str]:
    """``<cache-dir>/lock``, opened for ``flock`` (a mount holds it shared, ``xnatfs cache``
    exclusively to clear it), through :func:`private_file`: ``open(name, "a+")`` followed a
    link planted there and created its target as the mount's user (often root)."""
    return os.fdopen(private_file(os.path.join(cache_dir, "lock"), os.O_RDWR), "r+")


def refuse_planted_db(path: "os.PathLike[str] | str") -> None:
    """Refuse (:class:`NotPrivate`) the SQLite database at ``path``, or its ``-wal``, ``-shm``
    or ``-journal`` file, if one is a symbolic link, not a regular file or not ours; a missing
    one is fine.  SQLite opens them by name itself: they are checked before it does."""
    base = os.fspath(path)
    for name in (base, base + "-wal", base + "-shm", base + "-journal"):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        why = _why_not_ours(st, stat.S_IFREG)
        if why:
            raise NotPrivate(name, why)
