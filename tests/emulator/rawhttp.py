"""One raw HTTP exchange with the emulator: for requests ``requests`` will not send (a body cut
short of its ``Content-Length``, a chunked body without its last chunk)."""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def send_cut(url: str, request: bytes, timeout: float = 30.0) -> bytes:
    """Send ``request`` (head and whatever body), close our side, return all the server says
    until it closes (``b""`` when it just hangs up)."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.settimeout(timeout)
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            got = s.recv(65536)
            if not got:
                return reply
            reply += got
