"""The bulk zip path's CPU, without FUSE: one resource's zip streamed into a fresh content cache.

Usage: ``python -m benchmarks.zipcpu [--files 2000] [--kib 64] [--reps 5] [--latency 5]``
(``--trees A B``: alternate source trees, each run in its own child process with that tree
first on ``sys.path``; ``A:NAME=VALUE`` also sets a module switch of ``xnatfs.cache.bulk``
for that variant, e.g. ``.:CREATE_AHEAD=0``; default: this tree only).  The caches of all
reps are deleted at the end, not between reps: on an ext4 without a journal (this VM's) a new
file's inode is searched past every inode freed in the last minute or more (the kernel's
``recently_deleted``), so deleting 2,000 files makes the next 2,000 creations cost ~0.5 ms
each instead of ~20 us (``--churn`` measures that case on purpose).

What it times is what the daemon does for the first open in a many-file resource
(``policies/bulkzip.py`` -> ``ContentCache.bulk``): one ``files?format=zip`` request, the zip
split into its members (``cache/zipstream.py``), each member written to its partial file,
checked (size, MD5), made durable and adopted into the index (``cache/bulk.py``).  The emulator
serves the zip from another process, so the CPU figures (``getrusage`` of the measuring process:
user + system) are the client's alone: HTTP, splitting, writing, hashing, settling.  Two walls:
until every member's verdict is in (what readers wait for) and until every member is adopted.
Issue 12, B2; figures in benchmarks/RESULTS.md ("B2: the bulk zip path's CPU").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

PROJECT = ("ZIPCPU", "S1", "E1", "4", "DICOM")


def serve(base: Path, files: int, kib: int, latency: float) -> None:
    """Child: the emulator with one series of ``files`` x ``kib`` KiB; prints its URL, then
    serves until stdin closes."""
    from benchmarks.run import Server, fill_resource, scan_resource_uri

    srv = Server(base, latency).start()
    p, s, e, n, r = PROJECT
    srv.project(p)
    srv.subject(p, s)
    srv.experiment(p, s, e)
    srv.scan(p, s, e, n, "fMRI")
    uri = scan_resource_uri(p, s, e, n, r)
    fill_resource(srv, uri, files, kib)
    srv.measuring()
    print(json.dumps({"url": srv.url, "uri": uri}), flush=True)
    sys.stdin.read()
    srv.stop()


def measure(url: str, uri: str, reps: int) -> List[Dict[str, float]]:
    """Child (one tree): ``reps`` bulk fills of a fresh cache; wall and CPU of each."""
    from xnatfs.cache.content import ContentCache, ContentKey
    from xnatfs.cache.key import archive_uri
    from xnatfs.policies.bulkzip import _ZIP_MEMBER
    from xnatfs.xnat import ClientOptions, Credentials, XnatClient

    client = XnatClient(url, Credentials("admin", "admin-pw"), ClientOptions(heartbeat=False))
    client.start()
    entries = client.list_files(uri)
    keys = {e.path: ContentKey(uri=e.uri, size=e.size, digest=e.digest) for e in entries}

    def key_of(member: str) -> Optional[ContentKey]:
        m = _ZIP_MEMBER.match(member)
        return keys.get(m.group(1)) if m else None

    from xnatfs.cache.key import archive_object_uri

    def fetch(u: str, sink: Any) -> None:
        client.download(u, sink)

    def fetch_archive(u: str, sink: Any) -> None:
        client.download_archive(archive_object_uri(u), sink, format="zip")

    for setting in filter(None, os.environ.get("ZIPCPU_SET", "").split(",")):
        import xnatfs.cache.bulk as bulk

        name, _, value = setting.partition("=")
        if not hasattr(bulk, name):
            raise SystemExit(f"xnatfs.cache.bulk has no {name} in this tree")
        setattr(bulk, name, type(getattr(bulk, name))(int(value)))
    out = []
    for _ in range(reps):
        tmp = tempfile.mkdtemp(prefix="zipcpu-", dir=os.environ.get("ZIPCPU_TMP"))
        cache = ContentCache(
            os.path.join(tmp, "content"),
            size_limit=8 << 30,
            fetch=fetch,
            fetch_archive=fetch_archive,
        )
        cache.start()
        try:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            n = cache.bulk(archive_uri(uri), list(keys.values()), key_of, max_files=4096)
            downloads = list(cache._downloads.values())
            if len(downloads) != n:
                raise RuntimeError(f"{n - len(downloads)} member(s) ended before bulk returned")
            # each member's verdict (size, MD5): what a reader of its last byte waits for
            for d in downloads:
                with d._cond:
                    while not (d._done or d._verified == d._generation):
                        d._cond.wait(1.0)
            t_verdict = time.perf_counter() - t0
            for d in downloads:
                if not d.wait(time.monotonic() + 300):
                    raise RuntimeError(f"{d.uri} not done")
                if d.error is not None:
                    raise RuntimeError(f"{d.uri}: {d.error}")
            t_all = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            stats = cache.stats
            if n != len(keys) or stats["downloads"] != len(keys) or stats["bulk_fetches"] != 1:
                raise RuntimeError(f"not one zip for all: {n} {stats}")
            if sum(cache.state(k) == "cached" for k in keys.values()) != len(keys):
                raise RuntimeError("not every file cached")
            out.append(
                {
                    "verdicts_s": t_verdict,
                    "wall_s": t_all,
                    "user_s": ru1.ru_utime - ru0.ru_utime,
                    "sys_s": ru1.ru_stime - ru0.ru_stime,
                }
            )
        finally:
            cache.close()
            if not os.environ.get("ZIPCPU_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)
    client.close()
    return out


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--kib", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5, help="rounds (each runs every tree once)")
    ap.add_argument("--latency", type=float, default=5.0, help="ms the emulator adds per request")
    ap.add_argument("--trees", nargs="*", default=[], help="source trees to alternate")
    ap.add_argument(
        "--churn",
        action="store_true",
        help="delete each rep's cache right after it (the next rep's file creations then pay "
        "for the recently deleted inodes, as on a busy machine)",
    )
    ap.add_argument("--json", help="write the raw figures here")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(Path(args.serve), args.files, args.kib, args.latency)
        return 0
    if args.measure:
        url, uri, reps = args.measure
        print(json.dumps(measure(url, uri, int(reps))))
        return 0

    here = str(Path(__file__).resolve().parent.parent)
    trees = args.trees or [here]
    base = Path(tempfile.mkdtemp(prefix="zipcpu-emu-"))
    caches = Path(tempfile.mkdtemp(prefix="zipcpu-caches-", dir=os.environ.get("ZIPCPU_TMP")))
    env = dict(os.environ, PYTHONPATH=here)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.zipcpu", "--serve", str(base)]
        + ["--files", str(args.files), "--kib", str(args.kib), "--latency", str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None
        where = json.loads(server.stdout.readline())
        print(f"series {args.files} x {args.kib} KiB, {args.latency} ms; load {loadavg()}")
        results: Dict[str, List[Dict[str, float]]] = {t: [] for t in trees}
        for rep in range(args.reps):
            for variant in trees if rep % 2 == 0 else list(reversed(trees)):
                tree, _, setting = variant.partition(":")
                tree = str(Path(tree).resolve())
                got = subprocess.run(
                    # the script by path: only ``xnatfs`` comes from the tree measured
                    [sys.executable, str(Path(__file__).resolve()), "--measure"]
                    + [where["url"], where["uri"], "1"],
                    env=dict(
                        os.environ,
                        PYTHONPATH=tree,
                        ZIPCPU_SET=setting,
                        ZIPCPU_KEEP="" if args.churn else "1",
                        ZIPCPU_TMP=str(caches),
                    ),
                    cwd=tree,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                if got.returncode != 0:
                    raise SystemExit(f"{variant}: {got.stderr[-3000:]}")
                one = json.loads(got.stdout.splitlines()[-1])[0]
                results[variant].append(one)
                print(
                    f"  rep {rep} {variant}: verdicts {one['verdicts_s']:.3f} s, all adopted "
                    f"{one['wall_s']:.3f} s, CPU {one['user_s'] + one['sys_s']:.3f} s "
                    f"(user {one['user_s']:.3f}, sys {one['sys_s']:.3f}); load {loadavg()}",
                    flush=True,
                )
        for tree, rows in results.items():
            print(f"{tree}: medians of {len(rows)} (min..max)")
            for what in ("verdicts_s", "wall_s", "user_s", "sys_s"):
                xs = [r[what] for r in rows]
                print(f"  {what:11s} {statistics.median(xs):.3f}  ({min(xs):.3f}..{max(xs):.3f})")
            cpu = [r["user_s"] + r["sys_s"] for r in rows]
            print(f"  {'cpu_s':11s} {statistics.median(cpu):.3f}  ({min(cpu):.3f}..{max(cpu):.3f})")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(30)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(caches, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
