"""Where the XNAT username and password come from.

Order (docs/LAYOUT.md §1.4): a ``.netrc`` file (``netrc_path``, else ``$NETRC``, else ``~/.netrc``),
else
an interactive prompt when stdin is a terminal, else ``XNATFS_USER``/``XNATFS_PASSWORD``.  Never
from the command line: argv is visible to every user through ``ps``.

A ``.netrc`` readable or writable by group or others is refused, not silently used: it holds a
password in clear (the check Python's ``netrc`` applies only to the default file, and that
xnatpy skips, §5.2, §10.14).  Lookup is by ``host:port`` first (xnatpy's key, §5.2), then by
host alone, then the ``default`` entry.

Alias tokens (§5.1) are ordinary credentials here: alias as username, secret as password.

Nothing in this module logs a password, a netrc line or its contents.
"""

from __future__ import annotations

import getpass
import io
import locale
import logging
import netrc
import os
import stat
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, TextIO, Tuple
from urllib.parse import urlsplit

from .errors import CredentialsError

__all__ = [
    "Credentials",
    "resolve_credentials",
    "netrc_lookup",
    "read_netrc",
]

log = logging.getLogger(__name__)

#: environment variables read when no netrc entry and no terminal are available
ENV_USER = "XNATFS_USER"
ENV_PASSWORD = "XNATFS_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    """A username and password (or alias token and secret).  ``repr`` masks the password, so
    the object can be logged or shown in a traceback without leaking it."""

    username: str
    password: str = field(repr=False)
    #: where they came from, for messages: ``netrc:/home/u/.netrc``, ``prompt``, ``env``
    source: str = ""

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***', source={self.source!r})"

    __str__ = __repr__


def _host_keys(url: str) -> Tuple[str, str]:
    """(``host:port``, ``host``) for a server URL; the port part only when the URL has one."""
    parts = urlsplit(url if "//" in url else "//" + url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    hostport = f"{host}:{port}" if port else host
    return hostport, host


#: largest netrc read: a few hundred entries are a few KiB; a bigger "netrc" is a mistake (a
#: link to a log or an image), read only up to this
MAX_NETRC_BYTES = 1 << 20


def _check_netrc_stat(path: str, st: os.stat_result) -> None:
    """Refuse a netrc that is not a regular file, that others may read (or write), or that
    another user owns.  Raises :class:`CredentialsError` naming the file and the fix."""
    if not stat.S_ISREG(st.st_mode):
        raise CredentialsError(message=f"refusing to use {path}: it is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            message=(
                f"refusing to use {path}: it is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CredentialsError(
            message=f"refusing to use {path}: it is owned by uid {st.st_uid}, not by you"
        )


def read_netrc(path: str) -> str:
    """The text of the netrc at ``path``, checked on the descriptor it is read from.

    One ``open``, then ``fstat`` of that descriptor, then the read: a check of the name and a
    second open (as ``netrc.netrc(path)`` does) let the file be swapped in between, so the
    file read was not the file checked.  A symbolic link is followed (dotfile managers link
    ``~/.netrc``): what is checked is the file it reaches, which must be ours and private.
    ``O_NONBLOCK`` keeps a FIFO put there from holding the open; it is then refused as not a
    regular file.  Raises :class:`FileNotFoundError` for a missing file (the caller decides),
    :class:`CredentialsError` for anything else."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CredentialsError(message=f"cannot read {path}: {exc.strerror}") from None
    try:
        _check_netrc_stat(path, os.fstat(fd))
        chunks = []
        size = 0
        while size <= MAX_NETRC_BYTES:
            chunk = os.read(fd, 64 << 10)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise CredentialsError(message=f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_NETRC_BYTES:
        raise CredentialsError(
            message=f"refusing to use {path}: larger than {MAX_NETRC_BYTES >> 20} MiB"
        )
    raw = b"".join(chunks)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # what netrc.netrc does too: the locale's encoding next
        return raw.decode(locale.getpreferredencoding(False), errors="replace")


class _NetrcText(netrc.netrc):
    """``netrc.netrc`` parsed from text already read (``netrc.netrc(path)`` opens the file
    by name itself).  ``_parse(file, fp, default_netrc)`` has this signature in every Python
    xnatfs supports (3.9-3.13); ``default_netrc=False``: the permission checks are ours."""

    def __init__(self, path: str, text: str) -> None:
        self.hosts: dict = {}
        self.macros: dict = {}
        # private, so typeshed does not declare it: taken from the class as what it is
        parse = vars(netrc.netrc)["_parse"]
        parse(self, path, io.StringIO(text), False)


def netrc_lookup(path: str, url: str) -> Optional[Tuple[str, str]]:
    """(login, password) for ``url`` from the netrc file at ``path``, or ``None``.

    The file is read once and checked on its descriptor (:func:`read_netrc`).  A syntax
    error is reported with file and line but without the offending text.  A missing file is
    :class:`CredentialsError`.
    """
    try:
        return _lookup(path, url)
    except FileNotFoundError:
        raise CredentialsError(message=f"netrc file {path} does not exist") from None


def _lookup(path: str, url: str) -> Optional[Tuple[str, str]]:
    """:func:`netrc_lookup`, a missing file raised as :class:`FileNotFoundError`."""
    text = read_netrc(path)
    try:
        parsed = _NetrcText(path, text)
    except netrc.NetrcParseError as exc:
        raise CredentialsError(
            message=f"cannot parse {path} (line {exc.lineno}); fix the file's syntax"
        ) from None
    hostport, host = _host_keys(url)
    # look at ``hosts`` directly: ``authenticators()`` would fall back to "default" before we
    # had a chance to try the bare host name
    for key in (hostport, host):
        entry = parsed.hosts.get(key)
        if entry:
            login, _account, password = entry
            if login and password:
                return login, password
    entry = parsed.hosts.get("default")
    if entry and entry[0] and entry[2]:
        return entry[0], entry[2]
    return None


def _default_netrc(env: Mapping[str, str]) -> Tuple[str, bool]:
    """(path, explicit?) of the netrc to consult."""
    if env.get("NETRC"):
        return os.path.expanduser(env["NETRC"]), True
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".netrc"), False


def resolve_credentials(
    url: str,
    netrc_path: Optional[str] = None,
    interactive: bool = True,
    env: Mapping[str, str] = os.environ,
    *,
    stdin: Optional[TextIO] = None,
    prompt_user: Optional[Callable[[str], str]] = None,
    prompt_password: Optional[Callable[[str], str]] = None,
) -> Credentials:
    """Find credentials for the XNAT at ``url``; raise :class:`CredentialsError` if none.

    Long because: the sources are tried in one documented order (netrc, prompt, environment),
    each a few lines; the order is the point, so it stays in one place.

    ``netrc_path`` overrides ``$NETRC``/``~/.netrc``; an explicitly named file (argument or
    ``$NETRC``) that is missing is an error, a missing ``~/.netrc`` is not.  A netrc that exists
    but has no entry for the host falls through to the next source.  ``stdin``,
    ``prompt_user`` and ``prompt_password`` exist for tests (defaults: ``sys.stdin``, ``input``
    and ``getpass.getpass``).
    """
    # 1. netrc
    if netrc_path:
        path, explicit = os.path.expanduser(netrc_path), True
    else:
        path, explicit = _default_netrc(env)
    try:
        # no exists() first: the file is opened once (read_netrc), absent or not
        found = _lookup(path, url)
    except FileNotFoundError:
        if explicit:
            raise CredentialsError(message=f"netrc file {path} does not exist") from None
        log.debug("no %s", path)
    else:
        if found:
            log.debug("credentials for %s from %s", _host_keys(url)[0], path)
            return Credentials(found[0], found[1], source=f"netrc:{path}")
        log.debug("%s has no entry for %s", path, _host_keys(url)[0])

    # 2. interactive prompt
    stream = stdin if stdin is not None else sys.stdin
    try:
        tty = bool(stream is not None and stream.isatty())
    except (ValueError, OSError):  # closed stdin
        tty = False
    if interactive and tty:
        ask_user = prompt_user or input
        ask_password = prompt_password or getpass.getpass
        host = _host_keys(url)[0]
        default_user = env.get(ENV_USER) or ""
        try:
            user = (
                ask_user(
                    f"XNAT user for {host}" + (f" [{default_user}]" if default_user else "") + ": "
                ).strip()
                or default_user
            )
            if user:
                password = ask_password(f"Password for {user}@{host}: ")
                if password:
                    return Credentials(user, password, source="prompt")
        except (EOFError, KeyboardInterrupt):
            raise CredentialsError(message="no credentials: the prompt was interrupted") from None

    # 3. environment
    env_user, env_password = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if env_user and env_password:
        return Credentials(env_user, env_password, source="env")

    host = _host_keys(url)[0]
    raise CredentialsError(
        message=(
            f"no credentials for {host}: add 'machine {host} login USER password PASS' to "
            f"{path} (mode 600), or set {ENV_USER}/{ENV_PASSWORD}"
        )
    )
