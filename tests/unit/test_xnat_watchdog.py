"""The watchdog that bounds a response's status line and headers (issue 17 §1)."""
from __future__ import annotations

import socket
import time

from xnatfs.xnat.watchdog import Watchdog


def test_an_armed_socket_is_shut_down_at_its_deadline_and_a_blocked_recv_returns():
    dog = Watchdog()
    a, b = socket.socketpair()
    try:
        a.settimeout(30)  # a per-read timeout far beyond the deadline
        dog.arm(time.monotonic() + 0.2, a)
        t0 = time.monotonic()
        assert a.recv(10) == b""  # shut down: the blocked recv ends
        assert time.monotonic() - t0 < 10  # generous; without the watchdog: 30 s
        assert dog.fired == 1
    finally:
        a.close()
        b.close()


def test_a_disarmed_socket_is_left_alone():
    dog = Watchdog()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        dog.disarm(dog.arm(time.monotonic() + 0.1, a))
        dog.arm(time.monotonic() + 0.3, c)  # a later deadline: once it fired, a's had passed
        c.settimeout(10)
        assert c.recv(1) == b""
        a.sendall(b"x")
        b.settimeout(10)
        assert b.recv(1) == b"x" and dog.fired == 1
    finally:
        for s in (a, b, c, d):
            s.close()
