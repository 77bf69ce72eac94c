"""A download whose body trickles (always a little progress, so no read ever times out) is cut
at a whole-body deadline (``--read-timeout`` + size / ``MIN_BODY_RATE``; resumed at most twice
by the download's resume logic when bytes had reached the file) and then fails: its download
thread and request slot are free again, so the next file reads.  Before, it held them for as
long as the server trickled (here 100 s for 20 kB), and with ``--max-downloads 1`` every other
cold read timed out behind it.
"""

from __future__ import annotations

import errno
import hashlib
import random
import time

from tests.conftest import needs_fuse
from tests.helpers.fsop import fs_op
from tests.helpers.waiting import wait_for
from tests.mount.helpers import put_file

PROTOCOLS = "DEMO1/resources/protocols/files"
T = 3.0  # --timeout
READ_TIMEOUT = 2.0  # --read-timeout


@needs_fuse
def test_a_trickled_download_is_cut_and_frees_its_slot(make_emulator, make_mount):
    emu = make_emulator()
    rnd = random.Random(7)
    slow, other = rnd.randbytes(20_000), rnd.randbytes(20_000)
    put_file(emu.url, f"/data/projects/{PROTOCOLS}/slow.bin", slow)
    put_file(emu.url, f"/data/projects/{PROTOCOLS}/other.bin", other)
    m = make_mount(
        emu.url,
        *("--timeout", str(T), "--read-timeout", str(READ_TIMEOUT)),
        *("--max-downloads", "1", "--prefetch", "0", "--bulk-zip", "0"),
    )
    files = m.path / PROTOCOLS
    assert {"slow.bin", "other.bin"} <= set(fs_op("listdir", files)["names"])
    # 200 B/s: 100 s for the file, 20 bytes every 0.1 s (never a read timeout)
    emu.faults.trickle_bps = 200
    emu.faults.trickle_next = 1
    mark = emu.mark()
    t = time.monotonic()
    res = fs_op("read", files / "slow.bin", timeout=200)
    print(f"reader of the trickled file: {res['errno']} after {res['seconds']:.2f}s")
    assert res["errno"] in (errno.ETIMEDOUT, errno.EIO), res
    assert res["seconds"] < T + 2, res

    # the slot comes free once the three GETs were cut: the other file reads
    def other_reads() -> bool:
        got = fs_op("read", files / "other.bin", timeout=60)
        return got["errno"] == 0

    wait_for(other_reads, 60, what="the other file, once the trickled download was cut")
    freed = time.monotonic() - t
    gets = [r for r in emu.since(mark) if r[0] == "GET" and r[1].split("?")[0].endswith("slow.bin")]
    print(f"slot free after {freed:.1f}s; GETs of the trickled file: {len(gets)}")
    # cut; nothing had reached the file yet (urllib3 hands over 1 MiB chunks), so no resume
    assert len(gets) == 1, gets
    assert freed < 15, freed
    with open(files / "other.bin", "rb") as fh:
        assert hashlib.md5(fh.read()).digest() == hashlib.md5(other).digest()
    assert "KiB/s" in m.log_text() and "cut" in m.log_text()
    # the server is fast again: the file reads whole and right
    assert emu.faults.trickle_next == 0
    with open(files / "slow.bin", "rb") as fh:
        assert fh.read() == slow
