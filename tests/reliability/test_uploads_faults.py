"""100 uploads of mixed sizes under injected HTTP errors and mid-body drops (issue 18).

Guarantee under test: every ``close`` either succeeds with the bytes on XNAT or answers an
errno with the bytes kept in the journal; after the faults stop, every file reaches the server
with the right MD5 within a bounded time, with no remount -- 0 lost, 0 duplicated, 0 left
``failed``.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter

import pytest

from tests.conftest import needs_fuse
from tests.reliability.conftest import (
    FILES,
    copy_in,
    md5,
    mixed_sizes,
    mount_stats,
    server_bytes,
    server_listing,
    successful_puts,
    wait_for,
)

pytestmark = [needs_fuse]

N_FILES = 100
#: after the faults stop, everything must be on XNAT within this (the backoff is capped)
SETTLE_DEADLINE = 120.0


@pytest.mark.slow
@pytest.mark.parametrize("status", [500, 503])
def test_100_uploads_under_errors_and_drops_all_arrive(
    status, make_emulator, make_mount, tmp_path, record
):
    emu = make_emulator()
    m = make_mount(emu.url, "--timeout", "20")
    rnd_sizes = mixed_sizes(N_FILES, 1 << 10, 8 << 20, seed=18)
    src = tmp_path / "src"
    src.mkdir()
    blobs = {}
    for i, size in enumerate(rnd_sizes):
        data = os.urandom(size)
        name = f"u{status}-{i:03d}.bin"
        (src / name).write_bytes(data)
        blobs[name] = data
    os.listdir(m.path / FILES)  # the directory is known before the faults start
    mark = emu.mark()

    emu.faults.error_status = status
    emu.faults.error_rate = 0.25
    emu.faults.drop_rate = 0.25
    started = time.monotonic()
    results = copy_in([(str(src / n), str(m.path / FILES / n)) for n in blobs], threads=4)
    copy_s = time.monotonic() - started
    emu.faults.error_rate = 0.0
    emu.faults.drop_rate = 0.0
    faults_off = time.monotonic()

    close_errnos = Counter(r["close_errno"] for r in results if r["close_errno"])
    open_errnos = Counter(e for r in results for e in r["open_errors"])
    assert all(r.get("opened") for r in results), "a file could not even be opened"
    assert not any(r["write_errno"] for r in results)
    # a failed close is a proper errno (EIO for a 5xx or a drop, ETIMEDOUT for a timeout)
    assert set(close_errnos) <= {errno.EIO, errno.ETIMEDOUT}, close_errnos

    def settled():
        listing = server_listing(emu.url)
        stats = mount_stats(m.path)
        if listing is None or stats is None:
            return False
        here = {n: v for n, v in listing.items() if n in blobs}
        return (
            len(here) == N_FILES
            and not stats.get("uploads")
            and all(here[n] == (len(d), md5(d)) for n, d in blobs.items())
        )

    wait_for(settled, SETTLE_DEADLINE, "all 100 uploads on XNAT and none left in the journal")
    settle_s = time.monotonic() - faults_off

    wrong = [n for n, d in blobs.items() if md5(server_bytes(emu.url, n)) != md5(d)]
    accepted = successful_puts(emu.since(mark))
    duplicated = {n: c for n, c in accepted.items() if n in blobs and c > 1}
    journal = m.cache / "uploads" / "journal"
    left = sorted(os.listdir(journal)) if journal.exists() else []
    log = m.log_text()
    failed_log = log.count("kept as failed")
    # each failed close: ONE error line naming the path, the URL and the status (or the cause)
    error_lines = {}
    for r in results:
        if r["close_errno"]:
            name = os.path.basename(r["dst"])
            error_lines[name] = [
                ln for ln in log.splitlines() if " ERROR " in ln and f"flush /{FILES}/{name}:" in ln
            ]
    record(
        status=status,
        files=N_FILES,
        mib=round(sum(map(len, blobs.values())) / 2**20, 1),
        error_rate=0.25,
        drop_rate=0.25,
        failed_closes=sum(close_errnos.values()),
        close_errnos={errno.errorcode[k]: v for k, v in close_errnos.items()},
        open_retries=sum(open_errnos.values()),
        copy_s=round(copy_s, 1),
        settle_s=round(settle_s, 1),
        lost=N_FILES - len([n for n in blobs if n in accepted]),
        wrong=len(wrong),
        duplicated=len(duplicated),
        left_failed=failed_log,
        journal_left=len(left),
    )
    assert all(
        len(lines) == 1 and ("http://" in lines[0] or "does not show" in lines[0])
        for lines in error_lines.values()
    ), {n: lines for n, lines in error_lines.items() if len(lines) != 1}
    assert wrong == []
    assert duplicated == {}
    assert set(accepted) >= set(blobs)
    assert left == []
    assert failed_log == 0
    # the user-visible side: each file reads back right through the mount
    for name in list(blobs)[:10]:
        assert md5((m.path / FILES / name).read_bytes()) == md5(blobs[name])
