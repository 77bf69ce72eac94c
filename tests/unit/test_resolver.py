"""Name lookups with a deadline (xnatfs/xnat/resolver.py), with injected lookups: a resolver
that hangs, answers kept for their TTL, failures not kept, IP literals without a thread."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.xnat.resolver import Resolver, ResolveTimeout

ANSWER = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 443))]


class _Lookup:
    """A getaddrinfo stand-in: counts calls; hangs while ``gate`` is not set."""

    def __init__(self, answer=ANSWER, hang: bool = False, error=None) -> None:
        self.calls = 0
        self.gate = threading.Event()
        if not hang:
            self.gate.set()
        self.answer, self.error = answer, error
        self.started = threading.Event()

    def __call__(self, host, port, family=0, kind=0, proto=0, flags=0):
        self.calls += 1
        self.started.set()
        assert self.gate.wait(30), "the test never released the lookup"
        if self.error is not None:
            raise self.error
        return self.answer


def test_a_hanging_lookup_ends_the_wait_at_the_timeout_and_one_lookup_serves_all_callers():
    lookup = _Lookup(hang=True)
    r = Resolver(lookup, workers=2)
    try:
        t = time.monotonic()
        with pytest.raises(ResolveTimeout, match="xnat.test took longer than 0.2s"):
            r.resolve("xnat.test", 443, 0, 0.2)
        took = time.monotonic() - t
        assert 0.2 <= took < 2.0, took
        # eight more callers while it still hangs: they wait for the same lookup, no new
        # one, no new thread (a hung resolver holds one thread per name, never one per caller)
        errors = []

        def call():
            try:
                r.resolve("xnat.test", 443, 0, 0.2)
            except ResolveTimeout as exc:
                errors.append(exc)

        callers = [threading.Thread(target=call) for _ in range(8)]
        for c in callers:
            c.start()
        for c in callers:
            c.join(10)
        assert len(errors) == 8 and lookup.calls == 1 and r.lookups == 1
        assert len(r._threads) == 1
        lookup.gate.set()  # the resolver answers at last: its answer serves the next call
        assert r.resolve("xnat.test", 443, 0, 5.0) == ANSWER
        assert lookup.calls == 1
    finally:
        lookup.gate.set()
        r.close()


def test_hanging_lookups_of_many_names_use_at_most_the_pools_threads():
    lookup = _Lookup(hang=True)
    r = Resolver(lookup, workers=2)
    try:
        for i in range(5):
            with pytest.raises(ResolveTimeout):
                r.resolve(f"h{i}.test", 80, 0, 0.05)
        assert len(r._threads) == 2 and lookup.calls == 2  # the other three wait in the queue
    finally:
        lookup.gate.set()
        r.close()


def test_an_answer_is_kept_for_its_ttl_and_then_looked_up_again():
    clock = FakeClock()
    lookup = _Lookup()
    r = Resolver(lookup, ttl=30.0, clock=clock)
    try:
        assert r.resolve("xnat.test", 443, 0, 5.0) == ANSWER
        assert r.resolve("xnat.test", 443, 0, 5.0) == ANSWER
        assert lookup.calls == 1 and r.hits == 1
        clock.advance(31)
        assert r.resolve("xnat.test", 443, 0, 5.0) == ANSWER
        assert lookup.calls == 2
    finally:
        r.close()


def test_a_failed_lookup_is_raised_as_it_came_and_not_kept():
    lookup = _Lookup(error=socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    r = Resolver(lookup)
    try:
        for _ in range(2):
            with pytest.raises(socket.gaierror, match="not known"):
                r.resolve("nothing.test", 443, 0, 5.0)
        assert lookup.calls == 2
    finally:
        r.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]"])
def test_an_ip_literal_is_never_looked_up_and_starts_no_thread(host):
    lookup = _Lookup(hang=True)
    r = Resolver(lookup)
    found = r.resolve(host, 8080, 0, 0.01)
    assert found and found[0][4][1] == 8080
    assert lookup.calls == 0 and r._threads == []
    r.close()


def test_close_lets_the_idle_workers_end():
    r = Resolver(_Lookup())
    r.resolve("xnat.test", 443, 0, 5.0)
    [worker] = r._threads
    r.close()
    worker.join(10)
    assert not worker.is_alive()
    with pytest.raises(socket.gaierror):
        r.resolve("other.test", 443, 0, 5.0)
