"""The watchdog that bounds a response's status line and headers (issue 17 §1)."""

from __future__ import annotations

import socket
import threading
import time

from xnatfs.xnat.watchdog import RequestDeadline, Watchdog, unsent_bytes


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


def test_a_socket_is_shut_down_while_the_watchdog_still_owns_it():
    """Review of issue 17: the socket was popped under the lock but shut down after it, so its
    request could disarm meanwhile, return the connection to the pool and a new request reuse
    it; the late shutdown then killed the new request.  Disarming must wait for the shutdown."""
    dog = Watchdog()
    seen = {}

    class Sock:
        def shutdown(self, how):
            # another thread (the request disarming) tries to take the watchdog's lock now
            probe = threading.Thread(
                target=lambda: seen.update(free=dog._cond.acquire(blocking=False))
            )
            probe.start()
            probe.join()
            if seen["free"]:
                dog._cond.release()
            seen["done"] = True

    dog.arm(time.monotonic() - 1, Sock())  # already due
    end = time.monotonic() + 10
    while "done" not in seen and time.monotonic() < end:
        time.sleep(0.01)
    dog.close()
    assert seen.get("done"), "the watchdog never fired"
    assert seen["free"] is False, "a disarm could run between taking the socket and shutdown"


def test_an_upload_answer_is_owed_from_when_the_send_queue_emptied():
    """An upload's last ``send`` only fills the kernel's buffers: the answer's deadline counts
    from when they drained (bytes moving), and not at all longer once they stop moving."""
    a, b = socket.socketpair()
    try:
        # Linux, the only platform xnatfs runs on, always answers SIOCOUTQ for a socket
        assert unsent_bytes(a) is not None
        holder = RequestDeadline(time.monotonic() + 0.1, answer=5.0)
        holder.wait_drained(a, stall=1.0)  # nothing sent: no wait, no change
        assert holder.at < time.monotonic() + 1
        holder.body_sent()
        a.setblocking(False)
        queued = 0
        try:
            while True:
                queued += a.send(b"x" * 65536)
        except BlockingIOError:
            pass
        a.setblocking(True)
        assert unsent_bytes(a) > 0

        def drain():
            got = 0
            b.settimeout(10)
            while got < queued:
                got += len(b.recv(65536))
                time.sleep(0.01)  # a slow reader: the queue shrinks step by step

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        holder.wait_drained(a, stall=2.0)
        emptied = time.monotonic()
        reader.join(10)
        assert unsent_bytes(a) == 0
        assert emptied + 5.0 - 1.0 <= holder.at <= emptied + 5.0 + 0.01
    finally:
        a.close()
        b.close()


def test_a_small_body_is_looked_at_again_after_a_millisecond_not_fifty():
    """The first look after the last body byte usually finds it not yet acknowledged; the
    next look came 50 ms later, on every upload: a `tar x` of 4 KiB files spent ~50 ms of
    each close() here.  The looks now start at 1 ms and double up to ``POLL``."""
    a, b = socket.socketpair()
    try:
        # Linux, the only platform xnatfs runs on, always answers SIOCOUTQ for a socket
        assert unsent_bytes(a) is not None
        pauses = []
        b.settimeout(10)

        def sleep(seconds):
            pauses.append(seconds)
            if len(pauses) == 8:  # the peer reads the body only now
                assert b.recv(65536) == b"x" * 4096

        holder = RequestDeadline(time.monotonic() + 0.1, answer=5.0, sleep=sleep)
        holder.body_sent()
        a.sendall(b"x" * 4096)
        assert unsent_bytes(a) > 0
        holder.wait_drained(a, stall=60.0)
        assert unsent_bytes(a) == 0
        assert pauses[0] == RequestDeadline.POLL_FIRST <= 0.001
        assert pauses == sorted(pauses) and max(pauses) == RequestDeadline.POLL
        assert len(pauses) == 8  # it looked again right after the peer read
    finally:
        a.close()
        b.close()
