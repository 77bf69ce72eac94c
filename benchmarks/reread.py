"""Re-reads right after a cold read: does the page cache the first read filled serve them?

A fresh mount per repetition, page cache dropped, then ``dd bs=1M`` of one large file six
times in a row: the cold read, then five re-reads at once.  A re-read that starts while the
download is still being stored (fsync, adoption) used to drop the pages and go through the
daemon again (RESULTS.md, twelfth stop).  Prints MiB/s of each read, one line per mount.

Usage: ``python -m benchmarks.reread [--mib 256] [--reps 3]``; root (page cache drop, FUSE).
The tree measured is whichever ``xnatfs`` is imported (``PYTHONPATH`` = a tree).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from benchmarks import run as bench


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="file size (default 256)")
    ap.add_argument("--reps", type=int, default=3, help="fresh mounts (default 3)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="xnatfs-reread-"))
    srv = bench.Server(base, 0).start()
    try:
        p, s, e = bench.B1_PATH[:3]
        srv.project(p)
        srv.subject(p, s)
        srv.experiment(p, s, e)
        srv.scan(p, s, e, "1", "T1w")
        source = base / "source.bin"
        bench.write_random(source, args.mib * bench.MIB)
        with open(source, "rb") as f:
            srv.upload(bench.scan_resource_uri(*bench.B1_PATH[:5]), bench.B1_PATH[5], f)
        source.unlink()
        rel = bench.scan_resource_rel(*bench.B1_PATH[:5]) + "/" + bench.B1_PATH[5]
        for rep in range(args.reps):
            m = bench.MountProc(
                srv.url, base / f"mnt{rep}", base / f"cache{rep}", base / f"log{rep}"
            ).start()
            try:
                bench.drop_caches()
                speeds = []
                for _ in range(6):
                    t = time.perf_counter()
                    subprocess.run(
                        ["dd", f"if={m.path / rel}", "of=/dev/null", "bs=1M"],
                        check=True,
                        capture_output=True,
                        timeout=bench.timeout_for(args.mib * bench.MIB),
                    )
                    speeds.append(round(args.mib / (time.perf_counter() - t)))
                print("cold read, then five re-reads (MiB/s):", speeds, flush=True)
            finally:
                m.stop()
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
