"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram to $NOTIFY_SOCKET.

``systemd/xnatfs@.service`` is ``Type=notify``: systemd considers the mount started only when
xnatfs sends ``READY=1``, which it does from ``XnatOperations.init()`` — i.e. once the kernel's
FUSE INIT arrived, so the mount answers (docs/FUSE.md §3.2).  ``NotifyAccess=main`` means the
message must come from the main process (any of its threads), which the foreground mount is.

Outside systemd ($NOTIFY_SOCKET unset) every call is a cheap no-op.  Nothing here raises: a
readiness message that cannot be delivered must never take the filesystem down; the result is
returned (and logged at DEBUG) instead.  Imports nothing from xnatfs.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"


def _address(value: str) -> Optional[str]:
    """``$NOTIFY_SOCKET`` -> a socket address: ``@name`` is Linux's abstract namespace (a
    leading NUL byte); anything else must be an absolute path."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd >= 253 in VMs): not for a FUSE daemon


def sd_notify(message: str, env: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``message`` (``"READY=1"``, ``"STATUS=..."``, ``"STOPPING=1"``; several
    ``KEY=VALUE`` lines may be joined with ``\\n``) to the service manager.

    Returns True when the datagram was sent, False when not under systemd or on any error.
    Never raises and never blocks for long (the socket is non-blocking).
    """
    try:
        value = (os.environ if env is None else env).get(ENV_SOCKET, "")
        if not value or not message:
            return False
        address = _address(value)
        if address is None:
            log.debug("sd_notify: unsupported %s=%r", ENV_SOCKET, value)
            return False
        data = message.encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sent = sock.sendto(data, address)
        return sent == len(data)
    except Exception as exc:  # noqa: BLE001 - by contract: report, never raise
        log.debug("sd_notify to $%s failed: %s", ENV_SOCKET, exc)
        return False


def notify_ready(status: str = "") -> bool:
    """``READY=1`` (plus a ``STATUS=`` line shown by ``systemctl status``)."""
    return sd_notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
