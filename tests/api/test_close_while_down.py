"""A close while the circuit breaker holds requests back (xnatfs/xnat/breaker.py).

The breaker logs "XNAT down" once when it opens, so the calls it fails at once are ``reported``
and the ``_op`` wrapper logs them at DEBUG (one line per outage for reads, not one per
``stat``).  A failed close is a user's write: each must get its own ERROR line naming the path,
the URL and why (the rule of docs/RELIABILITY.md), with the bytes kept in the journal.  Found
by the fresh-clone CI: under 25 % 500s and drops the breaker opened and 82 failed closes of
``test_100_uploads_under_errors_and_drops_all_arrive[500]`` had no line at all.
"""

from __future__ import annotations

import errno
import logging

import pytest

from xnatfs.fs.errmap import errno_for, log_failure
from xnatfs.xnat.breaker import THRESHOLD, Failure
from xnatfs.xnat.errors import XnatError

PROTOCOLS = "/DEMO1/resources/protocols/files"


def test_a_close_failed_by_the_open_breaker_gets_its_error_line(runtime, caplog):
    path = f"{PROTOCOLS}/while_down.txt"
    out = runtime.writer.create(path)
    out.write(0, b"written while XNAT is down\n")
    breaker = runtime.client._breaker
    for i in range(THRESHOLD):  # connection failures from the server: the breaker opens
        breaker.record(Failure.CONNECTION, f"/data/x{i}", "connection refused")
    assert breaker.is_open
    with pytest.raises(XnatError) as info:  # the _op wrapper maps it (fs/errmap.py)
        out.flush()
    exc = info.value
    assert errno_for(exc) == errno.EHOSTDOWN
    with caplog.at_level(logging.DEBUG, logger="xnatfs"):
        log_failure("flush", path, exc, errno_for(exc))  # what the _op wrapper calls
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.text  # before: DEBUG only (the exception was "reported")
    line = errors[0].getMessage()
    assert path in line and "http://" in line and "XNAT down" in line, line
    assert [e.path for e in runtime.writer.journal.entries()] == [path]  # kept
    out.close()
