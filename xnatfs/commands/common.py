"""What every command shares: the one-line user error, URL checks, logging, the FUSE library."""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Any
from urllib.parse import urlsplit


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


def check_url(url: str) -> str:
    """An http(s) base URL without credentials, no trailing ``/``."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL: {url}")
    if parts.username or parts.password:
        raise UsageError(
            "credentials do not belong in the URL (they would be visible in the "
            "process list): use ~/.netrc, the prompt, or XNATFS_USER/XNATFS_PASSWORD"
        )
    return url


def plaintext_warning(url: str) -> str:
    """The warning for an ``http://`` server that is not this machine, else "": the login
    form (the password) and every session cookie and byte would cross the network readable
    by anyone on the path (docs/SECURITY.md: plain http is out of scope; https is verified)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or host == "localhost" or host.endswith(".localhost"):
        return ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return ""
    except ValueError:
        pass
    return (
        f"{url} is plain http: the password and every file cross the network unencrypted; use https"
    )


def setup_logging(level: str, stream: Any = None) -> None:
    from xnatfs.logfmt import SafeFormatter  # one line per record, controls escaped

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        SafeFormatter("%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # urllib3 logs full URLs at DEBUG, never credentials, but is noisy
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # mfusepy's own logger prints a traceback for every ENOENT at DEBUG; our ops log their
    # failures themselves (fs/errmap.py)
    logging.getLogger("fuse").setLevel(logging.WARNING)


def load_fuse() -> Any:
    """The libfuse3 binding, or a one-line ``UsageError`` naming the missing library."""
    from xnatfs.fs import fuselib

    try:
        return fuselib.load()
    except fuselib.FuseMissing as exc:
        raise UsageError(str(exc)) from None
