"""SharedChecks: a call shared only by callers that asked before it began; bounded waits.

Calls are held at events the test opens, so who shares what is decided, not timed.
"""

from __future__ import annotations

import threading
from typing import List

import pytest

from xnatfs.uploads.checks import SharedChecks

WAIT = 10.0


class Listing:
    """``fn`` for the checks: call number n returns n; each call waits for its own gate."""

    def __init__(self) -> None:
        self.calls = 0
        self.gates: List[threading.Event] = [threading.Event() for _ in range(10)]
        self.started = [threading.Event() for _ in range(10)]
        self.fail: List[BaseException] = []

    def __call__(self) -> int:
        self.calls += 1
        n = self.calls
        self.started[n].set()
        assert self.gates[n].wait(WAIT), "test forgot to open a gate"
        if self.fail:
            raise self.fail.pop(0)
        return n


def _until(predicate) -> None:
    """Wait for ``predicate`` (another thread's progress), at most WAIT seconds."""
    tick = threading.Event()
    for _ in range(int(WAIT / 0.001)):
        if predicate():
            return
        tick.wait(0.001)
    pytest.fail("condition not reached in time")


def _in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_callers_arriving_during_a_call_share_the_next_one_not_that_one():
    """A listing whose request began before an upload's PUT returned may not show it: the
    callers that arrive while call 1 runs get call 2, made once call 1 is done, one for all."""
    checks, listing = SharedChecks(timeout=WAIT), Listing()
    first, out1 = _in_thread(lambda: checks.fetch("R", listing))
    assert listing.started[1].wait(WAIT)
    later = [_in_thread(lambda: checks.fetch("R", listing)) for _ in range(3)]
    _until(lambda: checks.stats["shared"] == 2)  # the three queued: one makes, two share
    assert listing.calls == 1
    listing.gates[1].set()
    first.join(WAIT)
    assert out1 == {"value": 1}
    assert listing.started[2].wait(WAIT)
    listing.gates[2].set()
    for t, out in later:
        t.join(WAIT)
        assert out == {"value": 2}
    assert listing.calls == 2 and checks.stats == {"calls": 2, "shared": 2}


def test_one_caller_at_a_time_makes_its_own_call():
    checks, listing = SharedChecks(timeout=WAIT), Listing()
    for n in (1, 2, 3):
        listing.gates[n].set()
        assert checks.fetch("R", listing) == n
    assert checks._keys == {}  # nothing left behind


def test_other_keys_do_not_wait():
    checks, listing = SharedChecks(timeout=WAIT), Listing()
    t, out = _in_thread(lambda: checks.fetch("R", listing))
    assert listing.started[1].wait(WAIT)
    other = Listing()
    other.gates[1].set()
    assert checks.fetch("OTHER", other) == 1
    listing.gates[1].set()
    t.join(WAIT)


def test_the_shared_calls_error_goes_to_every_caller_that_shared_it():
    checks, listing = SharedChecks(timeout=WAIT), Listing()
    first, _ = _in_thread(lambda: checks.fetch("R", listing))
    assert listing.started[1].wait(WAIT)
    later = [_in_thread(lambda: checks.fetch("R", listing)) for _ in range(2)]
    _until(lambda: checks.stats["shared"] == 1)
    listing.fail.append(ConnectionError("503"))  # call 1 fails
    listing.fail.append(TimeoutError("slow"))  # call 2 fails
    listing.gates[1].set()
    listing.gates[2].set()
    first.join(WAIT)
    for t, out in later:
        t.join(WAIT)
        assert isinstance(out["error"], TimeoutError)
    listing.gates[3].set()
    assert checks.fetch("R", listing) == 3  # and the next caller makes a fresh call


def test_a_call_that_never_ends_holds_the_next_callers_no_longer_than_the_timeout():
    checks, listing = SharedChecks(timeout=0.2), Listing()
    stuck, _ = _in_thread(lambda: checks.fetch("R", listing))
    assert listing.started[1].wait(WAIT)
    listing.gates[2].set()
    assert checks.fetch("R", listing) == 2  # made after the timeout, not never
    listing.gates[1].set()
    stuck.join(WAIT)


def test_a_sharer_waits_no_longer_than_the_timeout():
    checks, listing = SharedChecks(timeout=0.2), Listing()
    stuck, _ = _in_thread(lambda: checks.fetch("R", listing))
    assert listing.started[1].wait(WAIT)
    maker, _ = _in_thread(lambda: checks.fetch("R", listing))  # makes call 2 after 0.2 s
    _until(lambda: checks._keys["R"].waiting is not None)
    with pytest.raises(TimeoutError) as err:
        # shares call 2, which waits at its gate past 0.2 s
        checks.fetch("R", listing, "GET http://x/data/R/files")
    # the failed close's one log line names the request and its URL
    assert "GET http://x/data/R/files" in str(err.value)
    for gate in listing.gates:
        gate.set()
    stuck.join(WAIT)
    maker.join(WAIT)
