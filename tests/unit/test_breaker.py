"""The circuit breaker (xnatfs/xnat/breaker.py): when it opens, what fails at once, one probe
at a time with a doubling wait, and one log line per outage and per recovery.

The clock and the random source are injected; no test waits for real time.
"""

from __future__ import annotations

import logging

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.fs.errmap import errno_for
from xnatfs.xnat.breaker import ANSWER_THRESHOLD, THRESHOLD, Breaker, Failure
from xnatfs.xnat.errors import HostDown, ServerDown

URL = "http://xnat/data/projects"


def make():
    clock = FakeClock()
    return Breaker("http://xnat", clock=clock, rand=lambda: 1.0), clock


def fail(b: Breaker, n: int, failure=Failure.CONNECTION, path="/data/projects", probe=False):
    for _ in range(n):
        b.record(failure, path, "[Errno 111] Connection refused", probe)


def test_connection_failures_open_it_and_calls_then_fail_at_once():
    b, _ = make()
    fail(b, THRESHOLD - 1)
    assert b.admit("GET", URL) is False  # still closed
    fail(b, 1)
    with pytest.raises(HostDown) as caught:
        b.admit("GET", URL)
    assert errno_for(caught.value) == 112  # EHOSTDOWN, "Host is down"
    assert caught.value.retryable and caught.value.reported
    snap = b.snapshot()
    assert snap["state"] == "down" and snap["times_down"] == 1
    assert snap["calls_failed_fast"] == 1 and "refused" in snap["last_error"]


def test_an_answer_between_failures_resets_the_count():
    b, _ = make()
    fail(b, THRESHOLD - 1)
    b.record(Failure.NONE, "/data/projects")
    fail(b, THRESHOLD - 1)
    assert b.admit("GET", URL) is False
    b.record(Failure.NONE, "/data/projects")
    fail(b, ANSWER_THRESHOLD - 2, Failure.ANSWER, "/data/a")
    fail(b, 1, Failure.ANSWER, "/data/b")  # two paths, but one answer short of the count
    assert b.admit("GET", URL) is False
    b.record(Failure.NONE, "/data/projects")
    fail(b, ANSWER_THRESHOLD - 1, Failure.ANSWER, "/data/c")
    assert b.admit("GET", URL) is False


def test_server_errors_of_one_folder_do_not_open_it_two_folders_do():
    """A listing that always answers 500, or the files of one broken resource (a prefetch of
    eight), are that object's trouble, not an outage."""
    b, _ = make()
    fail(b, ANSWER_THRESHOLD, Failure.ANSWER, "/data/projects/P/subjects")
    files = "/data/experiments/E1/scans/1/resources/DICOM/files/"
    for n in range(2 * ANSWER_THRESHOLD):
        fail(b, 1, Failure.ANSWER, f"{files}{n}.dcm")
    b.record(Failure.NONE, "/data/projects")
    for n in range(2 * ANSWER_THRESHOLD):
        fail(b, 1, Failure.ANSWER, f"{files}{n}.dcm")
    assert b.admit("GET", URL) is False
    fail(b, 1, Failure.ANSWER, "/data/projects/Q/subjects")
    with pytest.raises(ServerDown) as caught:
        b.admit("GET", URL)
    assert not isinstance(caught.value, HostDown)
    assert errno_for(caught.value) == 5  # EIO, as each 500 was


def test_one_probe_at_a_time_with_a_doubling_wait_then_closed_by_an_answer(caplog):
    caplog.set_level(logging.WARNING, logger="xnatfs.xnat.client")
    b, clock = make()
    came_back = []
    b.on_up.append(lambda: came_back.append(True))
    fail(b, THRESHOLD)
    waits = []
    for _ in range(7):
        with pytest.raises(ServerDown):
            b.admit("GET", URL)
        before = clock.now
        while True:  # the first caller after the wait is the probe
            clock.advance(0.25)
            try:
                probe = b.admit("GET", URL)
                break
            except ServerDown:
                pass
        waits.append(clock.now - before)
        assert probe is True
        with pytest.raises(ServerDown):  # the others still fail while it is out
            b.admit("GET", URL)
        fail(b, 1, probe=True)
    # 1, 2, 4, 8, 10, 10, 10 s (rand 1.0: the whole step; at most the client's pause_max)
    assert [round(w) for w in waits] == [1, 2, 4, 8, 10, 10, 10], waits
    clock.advance(10)
    assert b.admit("GET", URL) is True
    b.record(Failure.NONE, "/data/projects", probe=True)
    assert b.admit("GET", URL) is False and b.snapshot()["state"] == "up"
    assert came_back == [True]
    lines = [r.getMessage() for r in caplog.records]
    assert sum(" is down (" in m for m in lines) == 1, lines
    assert sum(" answers again after " in m for m in lines) == 1, lines


def test_a_probe_refused_before_sending_lets_the_next_caller_probe():
    b, clock = make()
    fail(b, THRESHOLD)
    assert b.next_check_in() == pytest.approx(1.0)
    clock.advance(5)
    assert b.next_check_in() == 0.0
    assert b.admit("GET", URL) is True
    # while it is out the heartbeat looks again a second later, it does not spin
    assert b.next_check_in() == 1.0
    b.probe_done()
    assert b.admit("GET", URL) is True


def test_only_a_connection_never_made_counts_as_the_host_being_down():
    """A reset or a body cut mid-answer (the server was there) is an answer-kind failure:
    under the upload fault tests (a quarter of the bodies cut) counting them as "host down"
    opened the breaker every few seconds and closes failed with EHOSTDOWN."""
    import http.client

    import requests
    import urllib3

    from xnatfs.xnat.transport import _no_connection

    refused = urllib3.exceptions.NewConnectionError(None, "[Errno 111] Connection refused")
    wrapped = requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/data/projects", refused)
    )
    assert _no_connection(wrapped)
    broken = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError(
            "Connection aborted.", http.client.RemoteDisconnected("closed")
        )
    )
    assert not _no_connection(broken)
