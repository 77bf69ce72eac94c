"""Re-reads right after a cold read: does the page cache the first read filled serve them?

A fresh mount per repetition, page cache dropped, then the same read six times in a row: the
cold read, then five re-reads at once.  A re-read that starts while the download is still being
stored (fsync, adoption; for a scan's members, the bulk zip's settle) used to drop the pages
and go through the daemon again (RESULTS.md, twelfth stop).

- one file (default): ``dd bs=1M`` of a ``--mib`` file; prints MiB/s of each read;
- a folder (``--files N --kib K``): ``cp -r`` of a scan of N files of K KiB at 5 ms latency
  (the bulk zip path); prints the seconds of each copy and how many READ requests reached
  the daemon (``MNT/.xnatfs/stats``; 2 of them are the stats file's own reads).

Usage: ``python -m benchmarks.reread [--mib 256] [--files 400 --kib 256] [--reps 3]``; root
(page cache drop, FUSE).  The tree measured is whichever ``xnatfs`` is imported
(``PYTHONPATH`` = a tree).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

from benchmarks import run as bench


def _reads(mnt: Path) -> int:
    stats = json.loads((mnt / ".xnatfs" / "stats").read_text())
    return int(stats.get("fuse_calls", {}).get("read", 0))


def _one_file(srv: "bench.Server", base: Path, mib: int) -> Callable[[Path, Path], str]:
    p, s, e = bench.B1_PATH[:3]
    srv.scan(p, s, e, "1", "T1w")
    source = base / "source.bin"
    bench.write_random(source, mib * bench.MIB)
    with open(source, "rb") as f:
        srv.upload(bench.scan_resource_uri(*bench.B1_PATH[:5]), bench.B1_PATH[5], f)
    source.unlink()
    rel = bench.scan_resource_rel(*bench.B1_PATH[:5]) + "/" + bench.B1_PATH[5]

    def read(mnt: Path, out: Path) -> str:
        t = time.perf_counter()
        subprocess.run(
            ["dd", f"if={mnt / rel}", "of=/dev/null", "bs=1M"],
            check=True,
            capture_output=True,
            timeout=bench.timeout_for(mib * bench.MIB),
        )
        return f"{mib / (time.perf_counter() - t):.0f} MiB/s"

    return read


def _folder(srv: "bench.Server", files: int, kib: int) -> Callable[[Path, Path], str]:
    p, s, e, _, r = bench.B2_PATH[:5]
    srv.scan(p, s, e, "2", "DICOM-like")
    bench.fill_resource(srv, bench.scan_resource_uri(p, s, e, "2", r), files, kib)
    rel = bench.scan_resource_rel(p, s, e, "2", r)

    def read(mnt: Path, out: Path) -> str:
        before = _reads(mnt)
        t = time.perf_counter()
        subprocess.run(
            ["cp", "-r", str(mnt / rel), str(out)],
            check=True,
            timeout=bench.timeout_for(files * kib * 1024),
        )
        return f"{time.perf_counter() - t:.2f} s, {_reads(mnt) - before} READs"

    return read


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="one file of this size (default 256)")
    ap.add_argument("--files", type=int, default=0, help="a folder of this many files instead")
    ap.add_argument("--kib", type=int, default=256, help="size of each (default 256)")
    ap.add_argument("--reps", type=int, default=3, help="fresh mounts (default 3)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="xnatfs-reread-"))
    srv = bench.Server(base, 5.0).start()
    try:
        p, s, e = bench.B1_PATH[:3]
        srv.project(p)
        srv.subject(p, s)
        srv.experiment(p, s, e)
        if args.files:
            read = _folder(srv, args.files, args.kib)
        else:
            read = _one_file(srv, base, args.mib)
        srv.measuring()
        for rep in range(args.reps):
            m = bench.MountProc(
                srv.url, base / f"mnt{rep}", base / f"cache{rep}", base / f"log{rep}"
            ).start()
            try:
                bench.drop_caches()
                # the copies are kept until the rep ends: deleting one between passes gave
                # the download's store the time it takes, and no re-read met it
                results = [read(m.path, base / f"copy{rep}-{i}") for i in range(6)]
                print("cold, then five re-reads:", "; ".join(results), flush=True)
            finally:
                m.stop()
                for i in range(6):
                    shutil.rmtree(base / f"copy{rep}-{i}", ignore_errors=True)
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
