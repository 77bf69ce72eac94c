"""Many nodes, one XNAT: N mounts against one emulator, without and with ``xnatfs cache-proxy``.

Usage (from the repository root; needs /dev/fuse, and nginx for the proxy half)::

    .venv/bin/python -m benchmarks.scale [--nodes 16] [--latency-ms 20] [--own-files 8]
        [--shared-files 16] [--file-kib 64] [--shared-kib 256] [--json out.json]

What it does (issue 13 §4; figures and the model in docs/SCALING.md):

* starts the emulator in this process with ``--latency-ms`` injected on every request and an
  access log that records, per request, method, URI, status, bytes sent, start time and duration;
* builds project SCALE: one subject per node (2 scans x ``--own-files`` files) and one SHARED
  subject (one scan of ``--shared-files`` files) that every node reads;
* for each mode (``direct``: mounts on the emulator; ``proxy``: mounts on one ``xnatfs
  cache-proxy``), starts N mounts, each its own ``xnatfs mount`` process with its own cache, then
  starts all N "jobs" at once (one reader process per node: its own two scans, then the shared
  scan; every file's MD5 checked against the uploaded bytes);
* reports, from the emulator's access log only (the server's view): requests by kind, bytes
  served, peak concurrent requests, p50/p99 request latency, error answers, plus the jobs' wall
  time and any wrong or unreadable file.

Mounts run with ``--bulk-zip 0`` in both modes (the proxy caches files, not zips) and otherwise
with their defaults.  Every subprocess and HTTP call has a timeout; mounts are unmounted and the
proxy stopped on every exit path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote

from benchmarks.run import BOOKKEEPING, BenchError, MountProc, Server, scan_resource_uri

READER = r"""
import hashlib, json, os, sys
out = {}
for top in sys.argv[1:]:
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            try:
                with open(p, 'rb') as f:
                    out[p] = hashlib.md5(f.read()).hexdigest()
            except OSError as e:
                out[p] = 'error %d' % e.errno
print(json.dumps(out))
"""


@dataclass
class Workload:
    nodes: int
    latency_ms: float
    own_files: int
    shared_files: int
    file_kib: int
    shared_kib: int


@dataclass
class Result:
    mode: str
    wall_s: float
    requests: Dict[str, int]
    bytes_served: int
    bytes_by_kind: Dict[str, int]
    peak_concurrent: int
    p50_ms: float
    p99_ms: float
    error_answers: int
    wrong_files: int
    unreadable_files: int
    proxy_hits: int = 0
    proxy_misses: int = 0
    notes: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ access log
def kind_of(method: str, path_qs: str) -> str:
    path, _, query = path_qs.partition("?")
    path = unquote(path)
    if path.endswith(BOOKKEEPING):
        return "session"
    if "/files/" in path:
        return "file HEAD (proxy auth)" if method == "HEAD" else f"file {method}"
    if method == "GET" and ("format=zip" in query):
        return "zip"
    if method == "GET":
        return "listing"
    return method


def read_log(path: Path, since_line: int) -> List[Tuple[str, str, int, int, float, float]]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[since_line:]:
        parts = line.split(" ")
        if len(parts) >= 6:
            rows.append(
                (parts[0], parts[1], int(parts[2]), int(parts[3]), float(parts[4]), float(parts[5]))
            )
    return rows


def peak_concurrency(rows) -> int:
    events = []
    for *_, t0, ms in rows:
        events.append((t0, 1))
        events.append((t0 + ms / 1000.0, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def quantile(values: List[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


# ------------------------------------------------------------------------------ the proxy
class Proxy:
    def __init__(self, upstream: str, base: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = base
        args = [
            sys.executable,
            "-m",
            "xnatfs",
            "cache-proxy",
            "--upstream",
            upstream,
            "--port",
            str(self.port),
            "--cache-dir",
            str(base / "proxy-cache"),
            "--run-dir",
            str(base / "proxy-run"),
            "--cache-size",
            "10G",
        ]
        if os.geteuid() == 0:
            args += ["--worker-user", "root"]  # the temp dir is 0700 root
        with open(base / "proxy.out", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise BenchError("cache-proxy exited: " + (base / "proxy.out").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("cache-proxy did not listen within 30 s") from None
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def verdicts(self) -> Counter:
        log = self.base / "proxy-run" / "access.log"
        out: Counter = Counter()
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                if "cache=" in line:
                    out[line.split("cache=", 1)[1].split(" ", 1)[0]] += 1
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# ------------------------------------------------------------------------------ the run
def build(srv: Server, w: Workload, rnd: random.Random) -> Dict[str, str]:
    """The project; returns {path relative to the mount: md5}."""
    want: Dict[str, str] = {}
    srv.project("SCALE")

    def put_scan(s: str, e: str, n: str, files: int, kib: int) -> None:
        srv.scan("SCALE", s, e, n, "T1w")
        uri = scan_resource_uri("SCALE", s, e, n, "DICOM")
        for i in range(files):
            data = rnd.randbytes(kib * 1024)
            srv.upload(uri, f"IM{i:04d}.dcm", data)
            want[
                f"SCALE/subjects/{s}/experiments/{e}/scans/{n}/resources/DICOM/files/IM{i:04d}.dcm"
            ] = hashlib.md5(data).hexdigest()

    for node in range(w.nodes):
        s, e = f"N{node:03d}", f"N{node:03d}_MR1"
        srv.subject("SCALE", s)
        srv.experiment("SCALE", s, e)
        for n in ("1", "2"):
            put_scan(s, e, n, w.own_files, w.file_kib)
    srv.subject("SCALE", "SHARED")
    srv.experiment("SCALE", "SHARED", "SHARED_MR1")
    put_scan("SHARED", "SHARED_MR1", "1", w.shared_files, w.shared_kib)
    return want


def node_dirs(mnt: Path, node: int) -> List[str]:
    s = f"N{node:03d}"
    own = [mnt / f"SCALE/subjects/{s}/experiments/{s}_MR1/scans/{n}" for n in ("1", "2")]
    shared = mnt / "SCALE/subjects/SHARED/experiments/SHARED_MR1/scans/1"
    return [str(p) for p in own + [shared]]


def run_mode(
    mode: str, srv: Server, w: Workload, want: Dict[str, str], base: Path, log_path: Path
) -> Result:
    proxy: Optional[Proxy] = None
    mounts: List[MountProc] = []
    notes: List[str] = []
    try:
        url = srv.url
        if mode == "proxy":
            proxy = Proxy(srv.url, base / mode)
            url = proxy.url
        srv.building()  # mounting (login, first statfs) is not part of the workload
        for i in range(w.nodes):
            mounts.append(
                MountProc(
                    url,
                    base / mode / f"mnt{i}",
                    base / mode / f"cache{i}",
                    base / mode / f"mount{i}.log",
                    extra=["--bulk-zip", "0"],
                ).start()
            )
        srv.measuring()
        srv.emu.wait_idle()
        since = len(log_path.read_text().splitlines())
        t0 = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", READER, *node_dirs(m.path, i)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, m in enumerate(mounts)
        ]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=900)
            if p.returncode != 0:
                raise BenchError(f"reader failed: {err[-500:]}")
            outs.append(json.loads(out))
        wall = time.monotonic() - t0
        srv.emu.wait_idle()
        rows = read_log(log_path, since)
        wrong = unreadable = 0
        for m, got in zip(mounts, outs):
            for p, digest in got.items():
                rel = os.path.relpath(p, m.path)
                if digest.startswith("error"):
                    unreadable += 1
                elif want.get(rel) != digest:
                    wrong += 1
        expected = sum(1 for _ in want) and (2 * w.own_files + w.shared_files) * w.nodes
        seen = sum(len(o) for o in outs)
        if seen != expected:
            notes.append(f"readers saw {seen} files, expected {expected}")
        kinds: Counter = Counter()
        kbytes: Counter = Counter()
        for method, path_qs, _status, sent, _t, _ms in rows:
            k = kind_of(method, path_qs)
            kinds[k] += 1
            kbytes[k] += sent
        verdicts = proxy.verdicts() if proxy else Counter()
        return Result(
            mode=mode,
            wall_s=round(wall, 2),
            requests=dict(kinds.most_common()),
            bytes_served=sum(r[3] for r in rows),
            bytes_by_kind=dict(kbytes),
            peak_concurrent=peak_concurrency(rows),
            p50_ms=round(quantile([r[5] for r in rows], 0.5), 1),
            p99_ms=round(quantile([r[5] for r in rows], 0.99), 1),
            error_answers=sum(1 for r in rows if r[2] >= 400 or r[2] == 0),
            wrong_files=wrong,
            unreadable_files=unreadable,
            proxy_hits=verdicts.get("HIT", 0),
            proxy_misses=verdicts.get("MISS", 0),
            notes=notes,
        )
    finally:
        for m in mounts:
            m.stop()
        if proxy is not None:
            proxy.stop()


def model(w: Workload, direct: Result, proxied: Result, nodes: int, window_s: float) -> Dict:
    """Scale the measured per-node request and byte counts to ``nodes`` nodes that start their
    jobs within ``window_s`` seconds (assumptions in docs/SCALING.md)."""
    n = w.nodes
    own_bytes = 2 * w.own_files * w.file_kib * 1024
    shared_bytes = w.shared_files * w.shared_kib * 1024
    files_per_node = 2 * w.own_files + w.shared_files
    d_req = sum(direct.requests.values()) / n
    # with the proxy: everything but the shared scan's GETs scales with nodes
    shared_gets = w.shared_files
    p_req_per_node = (sum(proxied.requests.values()) - shared_gets) / n
    out = {}
    for mode, req_total, bytes_total, hit in (
        ("direct", d_req * nodes, (own_bytes + shared_bytes) * nodes, 0.0),
        (
            "proxy",
            p_req_per_node * nodes + shared_gets,
            own_bytes * nodes + shared_bytes,
            (nodes - 1) * w.shared_files / (nodes * files_per_node),
        ),
    ):
        out[mode] = {
            "requests": round(req_total),
            "req_per_s": round(req_total / window_s, 1),
            "bytes_GB": round(bytes_total / 1e9, 3),
            "proxy_hit_ratio": round(hit, 3),
        }
    return out


def render(w: Workload, results: List[Result], models: Dict[int, Dict], info: str) -> str:
    lines = [
        f"Scale run: {w.nodes} nodes, {w.latency_ms:g} ms injected latency per request; "
        f"each node reads 2 own scans x {w.own_files} x {w.file_kib} KiB and one shared "
        f"scan of {w.shared_files} x {w.shared_kib} KiB. {info}",
        "",
        "| | " + " | ".join(r.mode for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(label: str, fn) -> None:
        lines.append(f"| {label} | " + " | ".join(str(fn(r)) for r in results) + " |")

    kinds = sorted({k for r in results for k in r.requests})
    for k in kinds:
        row(f"requests: {k}", lambda r, k=k: r.requests.get(k, 0))
    row("requests: total", lambda r: sum(r.requests.values()))
    row("bytes served by XNAT (MB)", lambda r: round(r.bytes_served / 1e6, 2))
    row("peak concurrent requests at XNAT", lambda r: r.peak_concurrent)
    row("request latency p50 / p99 (ms)", lambda r: f"{r.p50_ms} / {r.p99_ms}")
    row("error answers (>= 400)", lambda r: r.error_answers)
    row("wrong / unreadable files", lambda r: f"{r.wrong_files} / {r.unreadable_files}")
    row(
        "proxy HIT / MISS",
        lambda r: f"{r.proxy_hits} / {r.proxy_misses}" if r.mode == "proxy" else "-",
    )
    row("jobs' wall time (s)", lambda r: r.wall_s)
    lines += [
        "",
        "| model | requests | req/s | GB at XNAT | proxy hit ratio |",
        "|---|---|---|---|---|",
    ]
    for nodes, m in models.items():
        for mode, v in m.items():
            lines.append(
                f"| {nodes} nodes, {mode} | {v['requests']} | {v['req_per_s']} | "
                f"{v['bytes_GB']} | {v['proxy_hit_ratio']} |"
            )
    for r in results:
        for note in r.notes:
            lines.append(f"\nNOTE ({r.mode}): {note}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=20)
    p.add_argument("--own-files", type=int, default=8)
    p.add_argument("--shared-files", type=int, default=16)
    p.add_argument("--file-kib", type=int, default=64)
    p.add_argument("--shared-kib", type=int, default=256)
    p.add_argument("--modes", default="direct,proxy")
    p.add_argument(
        "--window-s",
        type=float,
        default=60.0,
        help="model: the nodes' jobs start within this many seconds",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--keep-temp", action="store_true")
    a = p.parse_args(argv)
    w = Workload(a.nodes, a.latency_ms, a.own_files, a.shared_files, a.file_kib, a.shared_kib)
    base = Path(tempfile.mkdtemp(prefix="xnatfs-scale-"))
    srv = Server(base, a.latency_ms).start()
    results: List[Result] = []
    try:
        srv.building()
        want = build(srv, w, random.Random(4))
        for mode in a.modes.split(","):
            (base / mode).mkdir()
            print(f"== {mode}: {w.nodes} mounts ...", file=sys.stderr, flush=True)
            results.append(run_mode(mode, srv, w, want, base, base / "access.log"))
            print(json.dumps(asdict(results[-1])), file=sys.stderr, flush=True)
    except BenchError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 1
    finally:
        srv.stop()
        if not a.keep_temp:
            subprocess.run(["rm", "-rf", str(base)], timeout=120, check=False)
    by = {r.mode: r for r in results}
    models = {}
    if "direct" in by and "proxy" in by:
        models = {n: model(w, by["direct"], by["proxy"], n, a.window_s) for n in (100, 1000)}
    load = os.getloadavg()
    info = (
        f"Machine: {os.cpu_count()} CPUs, load {load[0]:.1f} at the end; emulator, "
        f"proxy and all mounts on this one machine."
    )
    text = render(w, results, models, info)
    print(text)
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {"workload": asdict(w), "results": [asdict(r) for r in results], "model": models},
                indent=1,
            )
        )
    bad = any(r.wrong_files for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
