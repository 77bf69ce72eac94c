"""What one warm FUSE request costs in the daemon's Python, without FUSE: LOOKUP, OPEN, READ and
RELEASE of cached files, called in this process as libfuse's callbacks would call them.

Usage: ``python -m benchmarks.opcost [--files 400] [--kib 64] [--passes 15]``

A resource of ``--files`` files is made on an in-process emulator and read once through the
operations (the cache fills, every MD5 is checked); then each pass makes, for every file, the
calls a warm ``cp`` of it costs the daemon: ``getattr`` (the kernel's LOOKUP), ``open``, one
``read`` of the whole file into a buffer, ``release``.  Each is called two ways: through
mfusepy's dispatch (``XnatFUSE._wrapper`` -> ``FUSE._wrapper`` -> ``FUSE.open`` ... with the
``fuse_file_info`` and ``stat`` structs libfuse would pass) and straight on ``XnatOperations``
(xnatfs's own share).  Printed: the fewest microseconds per call of each op over the passes
(noise on a shared machine only adds) and their median, both ways.  Not included: libfuse,
the kernel, the context switches, and the ctypes callback itself (~0.3 µs from Python).

Issue 12 (B2's per-file floor, B3's page-cache-warm small files): run it on two trees one after
the other (``PYTHONPATH``), on a quiet machine; it uses one core.
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from benchmarks.run import (
    ADMIN,
    B2_PATH,
    Server,
    fill_resource,
    scan_resource_rel,
    scan_resource_uri,
)

OPS = ("lookup", "open", "read", "release")


def _fuse_shell(ops: Any) -> Any:
    """An ``XnatFUSE`` that is not mounted: the attributes its dispatch reads, no libfuse loop."""
    import threading

    from xnatfs.fs.ops import XnatFUSE

    fuse = XnatFUSE.__new__(XnatFUSE)
    fuse.operations = ops
    fuse.raw_fi = True
    fuse.encoding, fuse.errors = "utf-8", "surrogateescape"
    fuse.use_ns = True
    fuse._kept = threading.local()
    fuse._kept.done = True  # a daemon thread keeps its state once; not measured here
    return fuse


def _one_pass(
    fuse: Any, ops: Any, paths: List[str], size: int, through_fuse: bool
) -> Dict[str, float]:
    """Seconds per call of each op over ``paths``."""
    import mfusepy

    buf = ctypes.create_string_buffer(size)
    address = ctypes.addressof(buf)
    st = mfusepy.c_stat()
    st_p = ctypes.pointer(st)
    spent = dict.fromkeys(OPS, 0.0)
    clock = time.perf_counter
    for path in paths:
        fi = mfusepy.fuse_file_info()
        fi.flags = 0  # O_RDONLY
        fip = ctypes.pointer(fi)
        raw = path.encode()
        calls: List[Tuple[Callable[..., Any], Tuple[Any, ...]]]
        if through_fuse:
            wrap = fuse._wrapper
            calls = [
                (wrap, (fuse.getattr_fuse_3, raw, st_p, None)),
                (wrap, (fuse.open, raw, fip)),
                (wrap, (fuse.read, raw, address, size, 0, fip)),
                (wrap, (fuse.release, raw, fip)),
            ]
        else:
            calls = [
                (ops.getattr, (path, None)),
                (ops.open, (path, fi)),
                (ops.read_into, (path, address, size, 0, fi)),
                (ops.release, (path, fi)),
            ]
        for name, (call, call_args) in zip(OPS, calls):
            t0 = clock()
            got = call(*call_args)
            spent[name] += clock() - t0
            if isinstance(got, int) and got < 0:
                raise RuntimeError(f"{name} {path}: errno {-got}")
    return {name: spent[name] / len(paths) for name in OPS}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--kib", type=int, default=64)
    ap.add_argument("--passes", type=int, default=25)
    args = ap.parse_args(argv)

    from xnatfs.fs.ops import XnatOperations
    from xnatfs.options import Options
    from xnatfs.runtime import Runtime
    from xnatfs.xnat.auth import Credentials

    base = Path(tempfile.mkdtemp(prefix="xnatfs-opcost-"))
    srv = Server(base, 0.0).start()
    runtime: Any = None
    try:
        srv.building()
        p, s, e, n, r = B2_PATH
        srv.project(p)
        srv.subject(p, s)
        srv.experiment(p, s, e)
        srv.scan(p, s, e, n, "DICOM-like")
        fill_resource(srv, scan_resource_uri(p, s, e, n, r), args.files, args.kib)
        runtime = Runtime(Options(url=srv.url, cache_dir=base / "cache"), Credentials(*ADMIN))
        runtime.start()
        ops = XnatOperations(runtime)
        fuse = _fuse_shell(ops)
        folder = "/" + scan_resource_rel(p, s, e, n, r)
        paths = [f"{folder}/{name}" for name in sorted(ops.readdir(folder, 0)) if name[0] != "."]
        size = args.kib * 1024
        # the first pass downloads (the bulk zip or single GETs); wait until every file is a
        # verified cache entry, so the passes below are the warm path only
        content = runtime.tree.content
        until = time.monotonic() + 300
        while True:
            _one_pass(fuse, ops, paths, size, through_fuse=False)
            states = {
                content.state(runtime.tree.content_key(runtime.tree.lookup(x))) for x in paths
            }
            if states == {"cached"} or time.monotonic() > until:
                break
            time.sleep(0.5)
        _one_pass(fuse, ops, paths, size, through_fuse=True)  # MD5s checked, pages trusted
        results: Dict[str, List[float]] = {f"{w}:{o}": [] for w in ("fuse", "ops") for o in OPS}
        for _ in range(args.passes):
            for way in ("fuse", "ops"):
                got = _one_pass(fuse, ops, paths, size, through_fuse=way == "fuse")
                for name, sec in got.items():
                    results[f"{way}:{name}"].append(sec)
        print(
            f"{len(paths)} files x {args.kib} KiB, {args.passes} passes; "
            "us per call, min of the passes (median)"
        )
        for way in ("fuse", "ops"):
            cells = []
            total = 0.0
            for name in OPS:
                xs = results[f"{way}:{name}"]
                med = statistics.median(xs)
                total += min(xs)
                cells.append(f"{name} {min(xs) * 1e6:.1f} ({med * 1e6:.1f})")
            label = "through mfusepy" if way == "fuse" else "XnatOperations"
            print(f"{label:>16}: {'; '.join(cells)}; sum {total * 1e6:.1f}")
    finally:
        if runtime is not None:
            runtime.close()
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
