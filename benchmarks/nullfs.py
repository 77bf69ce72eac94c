"""The floor of a warm file for any daemon on mfusepy: a filesystem that does nothing but answer.

Usage: ``python -m benchmarks.nullfs [--files 2000] [--kib 64] [--passes 5] [--max-threads 16]``

One folder of ``--files`` files of ``--kib`` KiB, all in memory, served through mfusepy on
libfuse 3 with the options xnatfs mounts with (attribute and entry timeouts, worker threads,
``keep_cache`` and ``noflush`` at every open, readdirplus attributes); each op is a dict
lookup.  After one untimed ``cat`` of every file (the kernel's page cache then holds them),
``--passes`` page-cache-warm passes of ``cat`` of all files and of ``cp -r`` of the folder
are timed, each side by side with the same on a local copy, and the daemon's CPU per file is
read from ``/proc``.  A warm file costs such a daemon one OPEN and one RELEASE, as it costs
xnatfs (``benchmarks/warmopens.py``, ``benchmarks/opcost.py``): what xnatfs pays above this
floor is its own Python; what this floor pays above the local copy is FUSE's round trips
through libfuse, ctypes and the GIL on this machine (benchmarks/RESULTS.md, "Per-message
cost").  The mount runs in a child process (this module with ``--serve``).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchmarks.run import proc_cpu, timed


def serve(
    mnt: str, files: int, kib: int, max_threads: int, open_us: float = 0.0, fds: bool = False
) -> None:
    """Mount the null filesystem at ``mnt`` in the foreground (the child)."""
    from xnatfs.fs.fuselib import load

    mfusepy = load()
    data = os.urandom(kib * 1024)
    now = time.time_ns()
    names = [f"IM{i:05d}.dcm" for i in range(files)]
    known = set(names)
    backing = os.path.join(os.path.dirname(mnt), "backing")
    with open(backing, "wb") as f:
        f.write(data)
    common = {"st_uid": os.getuid(), "st_gid": os.getgid(), "st_blksize": 1 << 20}
    times = {"st_mtime": now, "st_ctime": now, "st_atime": now}
    dir_attrs = {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0, **common, **times}
    file_attrs = {
        "st_mode": stat.S_IFREG | 0o644,
        "st_nlink": 1,
        "st_size": len(data),
        "st_blocks": (len(data) + 511) // 512,
        **common,
        **times,
    }

    class Null(mfusepy.Operations):  # type: ignore[misc,name-defined]
        use_ns = True

        def getattr(self, path: str, fh: Any = None) -> Dict[str, int]:
            if path in ("/", "/d"):
                return dir_attrs
            if path.startswith("/d/") and path[3:] in known:
                return file_attrs
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> List[str]:
            return [".", "..", *(["d"] if path == "/" else names)]

        def open(self, path: str, fi: Any) -> int:
            if open_us:  # Python work holding the GIL, as an op of xnatfs's does
                until = time.perf_counter() + open_us / 1e6
                while time.perf_counter() < until:
                    pass
            if fds:  # a file opened and checked per OPEN, closed at RELEASE, as xnatfs's cache
                fi.fh = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
                os.fstat(fi.fh)
            fi.keep_cache = 1
            fi.noflush = 1
            return 0

        def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
            return data[offset : offset + size]

        def release(self, path: str, fi: Any) -> int:
            if fi.fh:
                os.close(fi.fh)
            return 0

    ttl = 60.0
    mfusepy.FUSE(
        Null(),
        mnt,
        foreground=True,
        raw_fi=True,
        attr_timeout=ttl,
        entry_timeout=ttl,
        negative_timeout=10.0,
        max_threads=max_threads,
        max_idle_threads=max_threads,
        fsname="nullfs",
    )


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--kib", type=int, default=64)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--max-threads", type=int, default=16)
    ap.add_argument(
        "--open-us", type=float, default=0.0, help="Python work (busy, GIL held) in each OPEN"
    )
    ap.add_argument(
        "--fds", action="store_true", help="each OPEN opens and fstats a file, RELEASE closes it"
    )
    ap.add_argument("--serve", metavar="MNT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.files, args.kib, args.max_threads, args.open_us, args.fds)
        return 0

    base = Path(tempfile.mkdtemp(prefix="xnatfs-nullfs-"))
    mnt = base / "mnt"
    mnt.mkdir()
    log = open(base / "log", "w")  # noqa: SIM115 - the child's, closed after it exits
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.nullfs", "--serve", str(mnt)]
        + [f"--files={args.files}", f"--kib={args.kib}", f"--max-threads={args.max_threads}"]
        + [f"--open-us={args.open_us}"]
        + (["--fds"] if args.fds else []),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        until = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > until:
                raise SystemExit(f"nullfs did not mount: {(base / 'log').read_text()[-2000:]}")
            time.sleep(0.05)
        src = mnt / "d"
        files = sorted(str(f) for f in src.iterdir())
        timed(["cat", *files], 600)  # every page in the kernel's cache from here on
        local = base / "local"
        subprocess.run(["cp", "-r", str(src), str(local)], check=True, timeout=600)
        local_files = sorted(str(f) for f in local.iterdir())
        walls: Dict[str, List[float]] = {"cat": [], "cat local": [], "cp": [], "cp local": []}
        cpu: Dict[str, float] = {"cat": 0.0, "cp": 0.0}
        for _ in range(args.passes):
            cpu0 = proc_cpu(proc.pid)
            walls["cat"].append(timed(["cat", *files], 600)[0])
            cpu1 = proc_cpu(proc.pid)
            walls["cp"].append(timed(["cp", "-r", str(src), str(base / "copy")], 600)[0])
            cpu["cat"] += cpu1 - cpu0
            cpu["cp"] += proc_cpu(proc.pid) - cpu1
            shutil.rmtree(base / "copy")
            walls["cat local"].append(timed(["cat", *local_files], 600)[0])
            walls["cp local"].append(timed(["cp", "-r", str(local), str(base / "copy")], 600)[0])
            shutil.rmtree(base / "copy")
        n = len(files) * args.passes
        for what in ("cat", "cp"):
            each = " ".join(f"{w:.3f}" for w in walls[what])
            print(
                f"{what} of {len(files)} page-cache-warm files through nullfs: median "
                f"{statistics.median(walls[what]):.3f} s ({each}),"
                f" local {statistics.median(walls[what + ' local']):.3f} s; daemon CPU per file "
                f"{cpu[what] / n * 1e6:.0f} us"
            )
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30, check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
