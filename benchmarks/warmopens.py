"""What a warm open costs the daemon: ``cat`` of every file of a cached folder, page-cache-warm.

Usage: ``python -m benchmarks.warmopens [--files 2000] [--kib 64] [--passes 8]
[--mount-arg=--prefetch=0 ...]``

A folder of ``--files`` files is copied once through a fresh mount (the bulk zip fills the
cache and the kernel's page cache), then ``cat`` reads all of them ``--passes`` times.  Every
byte is then in the kernel's page cache, so each file costs the daemon its OPEN and RELEASE
only (no READ; FLUSH is skipped, ``fs/ops.py`` ``open``): what is printed is the wall time of
each pass and the daemon's CPU (``/proc/PID/stat``, user + system) per file over all passes.
Issue 12 (B3's small files page-cache-warm and B2's per-file floor); figures in
benchmarks/RESULTS.md, "Prefetch in half windows".  It measures the daemon, not a ratio: run
it on two trees (or with a switch in ``--mount-arg``) one after the other.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from benchmarks.run import (
    B2_PATH,
    MountProc,
    Server,
    fill_resource,
    proc_cpu,
    scan_resource_rel,
    scan_resource_uri,
    timed,
)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--kib", type=int, default=64)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--latency-ms", type=float, default=5.0)
    ap.add_argument("--mount-arg", action="append", default=[], help="extra `xnatfs mount` arg")
    args = ap.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="xnatfs-warmopens-"))
    srv = Server(base, args.latency_ms).start()
    m: Optional[MountProc] = None
    try:
        srv.building()
        p, s, e, n, r = B2_PATH
        srv.project(p)
        srv.subject(p, s)
        srv.experiment(p, s, e)
        srv.scan(p, s, e, n, "DICOM-like")
        fill_resource(srv, scan_resource_uri(p, s, e, n, r), args.files, args.kib)
        srv.measuring()
        m = MountProc(srv.url, base / "mnt", base / "cache", base / "log", args.mount_arg).start()
        assert m.proc is not None
        src = m.path / scan_resource_rel(p, s, e, n, r)
        subprocess.run(["cp", "-r", str(src), str(base / "copy")], check=True, timeout=600)
        files = sorted(str(f) for f in src.iterdir())
        walls = []
        cpu0 = proc_cpu(m.proc.pid)
        for _ in range(args.passes):
            # timed(): a waited child with a pipe, so the wall is not rounded up to the 50 ms
            # steps of subprocess.run(timeout=)'s polling wait (stdout to /dev/null alone is)
            walls.append(timed(["cat", *files], 600)[0])
        per_file = (proc_cpu(m.proc.pid) - cpu0) / (len(files) * args.passes)
        print(
            f"cat of {len(files)} cached files x {args.passes} (mount args: "
            f"{' '.join(args.mount_arg) or '-'}): wall per pass median "
            f"{statistics.median(walls):.3f} s ({' '.join(f'{w:.3f}' for w in walls)}); "
            f"daemon CPU per file {per_file * 1e6:.0f} us"
        )
    finally:
        if m is not None:
            m.stop()
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
