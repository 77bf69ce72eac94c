"""The request limiter (xnatfs/xnat/limiter.py): cap, AIMD, pauses, Retry-After, deadlines.

The clock and the random source are injected; only the two threading tests use real time
(bounded waits on events, no sleeps).
"""

from __future__ import annotations

import threading

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.xnat.limiter import Outcome, RequestLimiter, Slot, SlotUnavailable


def make(max_requests: int = 8, rand: float = 1.0, **kw):
    clock = FakeClock()
    return RequestLimiter(max_requests, clock=clock, rand=lambda: rand, **kw), clock


def take(lim: RequestLimiter, n: int):
    slots = [lim.try_acquire() for _ in range(n)]
    assert all(isinstance(s, Slot) for s in slots)
    return slots


def test_cap_holds_and_release_frees():
    lim, _ = make(4)
    slots = take(lim, 4)
    assert lim.try_acquire() == float("inf")
    lim.release(slots[0], Outcome.OK)
    assert isinstance(lim.try_acquire(), Slot)
    assert lim.peak_in_flight == 4


def test_double_release_counts_once():
    lim, _ = make(2)
    a, b = take(lim, 2)
    lim.release(a, Outcome.OK)
    lim.release(a, Outcome.OK)
    assert lim.in_flight == 1


def test_multiplicative_decrease_once_per_round():
    lim, clock = make(16)
    burst = take(lim, 16)
    clock.now += 1
    for s in burst:  # 16 failures of one burst: one halving, not 16
        lim.release(s, Outcome.OVERLOAD)
    assert lim.limit == 8
    assert lim.decreases == 1
    clock.now += 1
    (s,) = take(lim, 1)  # started after the decrease: a new round
    clock.now += 1
    lim.release(s, Outcome.OVERLOAD)
    assert lim.limit == 4


def test_additive_increase_about_one_per_window_and_capped():
    lim, clock = make(8)
    (s,) = take(lim, 1)
    lim.release(s, Outcome.OVERLOAD)
    clock.now += 1
    (s,) = take(lim, 1)
    lim.release(s, Outcome.OVERLOAD)
    assert lim.limit == 2
    clock.now += 100  # let the pause of the second failure pass
    (s,) = take(lim, 1)
    lim.release(s, Outcome.OK)
    assert lim.limit == 2  # +1/limit per answer: 2.5
    for _ in range(2):  # 2.9, 3.24: about +1 per window of `limit` answers
        (s,) = take(lim, 1)
        lim.release(s, Outcome.OK)
    assert lim.limit == 3
    for _ in range(200):
        (s,) = take(lim, 1)
        lim.release(s, Outcome.OK)
    assert lim.limit == 8


def test_one_failure_is_a_hiccup_two_in_a_row_pause_the_mount():
    lim, clock = make(8, backoff_base=0.5, backoff_max=20.0)
    (s,) = take(lim, 1)
    clock.now += 0.1
    lim.release(s, Outcome.OVERLOAD)
    assert isinstance(lim.try_acquire(), Slot)  # no pause after a single failure
    lim2, clock2 = make(8, backoff_base=0.5, backoff_max=20.0, rand=1.0)
    waits = []
    for _ in range(8):
        (s,) = take(lim2, 1)
        clock2.now += 0.01
        lim2.release(s, Outcome.OVERLOAD)
        wait = lim2.try_acquire()
        waits.append(0.0 if isinstance(wait, Slot) else wait)
        if isinstance(wait, Slot):
            lim2.release(wait, Outcome.NEUTRAL)
        clock2.now += waits[-1]
    # doubling from backoff_base, capped at backoff_max
    assert waits == pytest.approx([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0])


def test_pause_is_jittered_between_half_and_full_step():
    for r, expected in ((0.0, 0.25), (0.5, 0.375), (0.999999, 0.5)):
        lim, clock = make(8, rand=r)
        for _ in range(2):
            (s,) = take(lim, 1)
            clock.now += 0.001
            lim.release(s, Outcome.OVERLOAD)
        assert lim.try_acquire() == pytest.approx(expected, abs=1e-4)


def test_success_ends_the_streak():
    lim, clock = make(8)
    for _ in range(3):
        (s,) = take(lim, 1)
        clock.now += 0.01
        lim.release(s, Outcome.OVERLOAD)
        clock.now += 100
    (s,) = take(lim, 1)
    lim.release(s, Outcome.OK)
    (s,) = take(lim, 1)
    clock.now += 0.01
    lim.release(s, Outcome.OVERLOAD)
    assert isinstance(lim.try_acquire(), Slot)  # first failure after a success: no pause


def test_retry_after_pauses_and_is_capped():
    lim, clock = make(8, backoff_max=20.0)
    (s,) = take(lim, 1)
    lim.release(s, Outcome.OVERLOAD, retry_after=7.0)
    assert lim.try_acquire() == pytest.approx(7.0)
    clock.now += 7.0
    (s,) = take(lim, 1)
    clock.now += 0.001
    lim.release(s, Outcome.OVERLOAD, retry_after=3600.0)
    assert lim.try_acquire() <= 20.0


def test_pause_beyond_deadline_fails_at_once():
    lim, clock = make(8)
    (s,) = take(lim, 1)
    lim.release(s, Outcome.OVERLOAD, retry_after=10.0)
    with pytest.raises(SlotUnavailable) as info:
        lim.acquire(deadline=clock.now + 5.0)
    assert info.value.paused


def test_busy_until_deadline_times_out():
    lim, clock = make(1)
    take(lim, 1)
    with pytest.raises(SlotUnavailable) as info:
        lim.acquire(deadline=clock.now)  # no time left: does not wait
    assert not info.value.paused


def test_neutral_changes_nothing():
    lim, clock = make(4)
    (s,) = take(lim, 1)
    lim.release(s, Outcome.NEUTRAL)
    assert lim.limit == 4 and lim.decreases == 0


def test_waiter_wakes_on_release_real_threads():
    lim = RequestLimiter(1)
    held = lim.acquire(deadline=1e18)
    got = threading.Event()

    def waiter():
        s = lim.acquire(deadline=__import__("time").monotonic() + 30)
        got.set()
        lim.release(s, Outcome.OK)

    t = threading.Thread(target=waiter)
    t.start()
    assert not got.wait(0.2)  # blocked while the one slot is held
    lim.release(held, Outcome.OK)
    assert got.wait(10)
    t.join(10)
    assert lim.in_flight == 0


def test_many_threads_never_exceed_cap():
    lim = RequestLimiter(3)
    now = [0]
    peak = [0]
    mu = threading.Lock()
    import time

    def worker():
        for _ in range(200):
            s = lim.acquire(deadline=time.monotonic() + 30)
            with mu:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            with mu:
                now[0] -= 1
            lim.release(s, Outcome.OK)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert peak[0] <= 3 and lim.peak_in_flight <= 3
    assert lim.in_flight == 0


def test_rejects_zero():
    with pytest.raises(ValueError):
        RequestLimiter(0)


class _Dropped:
    """A streamed response stand-in: in a reference cycle, so only the cyclic collector frees
    it, at whatever allocation it happens to run (as requests' responses were)."""

    def __init__(self) -> None:
        self.me = self


def _drop_with_slot(lim: RequestLimiter) -> Slot:
    import weakref

    slot = lim.acquire(deadline=1e18)
    weakref.finalize(_Dropped(), lim.release_orphan, slot, Outcome.OK, None)
    return slot


def test_slot_of_a_dropped_response_comes_back_without_a_lock():
    import gc

    lim = RequestLimiter(1)
    _drop_with_slot(lim)
    assert lim.in_flight == 1
    gc.collect()
    assert lim.in_flight == 0
    assert isinstance(lim.try_acquire(), Slot)


def test_collector_inside_the_limiters_lock_does_not_deadlock():
    """The CI hang: the collector ran a response finalizer in a thread that held the
    limiter's lock (inside ``acquire``); a blocking release there waited for itself, and every
    request of the mount waited behind it (the old code fails this test)."""
    import gc
    import time

    state = {"collect": False}

    def clock() -> float:  # called with the lock held (``_try_locked``)
        if state["collect"]:
            state["collect"] = False
            gc.collect()
        return time.monotonic()

    lim = RequestLimiter(2, clock=clock)
    _drop_with_slot(lim)
    gc.disable()  # the collection happens where the clock says, not before
    try:
        state["collect"] = True
        got: list = []
        t = threading.Thread(target=lambda: got.append(lim.acquire(time.monotonic() + 5)))
        t.daemon = True
        t.start()
        t.join(10)
        assert not t.is_alive(), "acquire deadlocked on a finalizer's release"
    finally:
        gc.enable()
    assert isinstance(got[0], Slot)
    lim.release(got[0], Outcome.OK)  # the next holder also counts the orphan
    assert lim.in_flight == 0
