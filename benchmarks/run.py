"""xnatfs benchmark suite: the mount side by side with plain HTTP clients, same run, same server.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.run [--latency-ms 5] [--quick] [--only B1,B2] [--json out.json]

What it does (details and targets in benchmarks/README.md):

* starts the bundled XNAT emulator in this process (port 0, fresh temp data dir), builds the data
  through its HTTP API with ``requests`` (with 0 ms injected latency, so set-up is quick), then sets
  the injected per-request latency (default 5 ms) for every measurement;
* mounts xnatfs in a subprocess exactly like ``tests/conftest.py`` does (``--foreground
  --credentials-stdin``), with a fresh cache dir for every "cold" repetition;
* runs every measured client (``dd``/``cp``/``find`` on the mount, ``requests`` and ``xnatpy``
  for the baselines) in a child process, never in this one: the emulator lives here and a client
  here would compete with it for the GIL, which the mount's client never does;
* drops the page cache (``echo 3 > /proc/sys/vm/drop_caches``) before every cold or disk-warm
  measurement when permitted, and says so in the output when it is not; then starts each
  program the mount side times (``cp``, ``dd``, ``find``, ``ls``) once with ``--version``, so
  its code is back in memory before its clock starts, as the baselines' interpreter and
  libraries are before theirs (they time themselves, from ``connect``): without it the first
  FUSE request of a ``cp -r`` came 9-12 ms after the start instead of 2-5 ms
  (RESULTS.md, "Experiment tables beside the scans listing");
* reports the median of ``--reps`` (>= 3) repetitions of each side, interleaved, and a table of
  ratios against the targets.

Every subprocess and HTTP call has a timeout; mounts are always unmounted (``fusermount3 -u``,
then ``-uz``, then the daemon is signalled by its pid) and the emulator stopped, even on errors or
SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import requests

ADMIN = ("admin", "admin-pw")
HTTP_TIMEOUT = (5.0, 300.0)  # (connect, read) for every request the driver makes
MIB = 1 << 20
BOOKKEEPING = ("/data/JSESSION", "/data/services/auth", "/data/auth")
ALL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
#: the programs the mount side is timed with (``Ctx.drop`` starts each after a drop)
TIMED_PROGRAMS = ("cp", "dd", "find", "ls")


class BenchError(RuntimeError):
    """A benchmark step failed (wrong bytes, a child that failed, a mount that did not appear)."""


@dataclass
class Sizes:
    """Data sizes and repetitions; ``--quick`` shrinks everything for a smoke run."""

    b1_mib: int = 256
    b2_files: int = 400
    b2_kib: int = 256
    b4_subjects: int = 200
    b4_experiments: int = 2
    b4_scans: int = 4
    b5_mib: int = 256
    #: B7: small files written into a resource (``tar x``): how many, KiB each
    b7_files: int = 200
    b7_kib: int = 4
    #: single repetitions on a shared 2-core VM vary by +-30 %: five make the medians steadier
    reps: int = 5
    #: B2's realistic second series (issue 12): (label, scan number, files, KiB per file); the
    #: first series is always ``b2_files`` x ``b2_kib`` in scan 2 (also B3's small files)
    b2_more: Tuple[Tuple[str, str, int, int], ...] = (
        ("MR series 176 x 512 KiB", "3", 176, 512),
        ("fMRI run 2000 x 64 KiB", "4", 2000, 64),
    )


QUICK = Sizes(
    b1_mib=16,
    b2_files=30,
    b2_kib=64,
    b4_subjects=6,
    b4_experiments=2,
    b4_scans=2,
    b5_mib=16,
    b7_files=40,
    reps=3,
    b2_more=(("MR series 24 x 512 KiB", "3", 24, 512), ("fMRI run 200 x 16 KiB", "4", 200, 16)),
)


@dataclass
class Row:
    bench: str
    what: str
    mount: str
    baseline: str
    ratio: Optional[float]
    ratio_kind: str
    target: str
    ok: Optional[bool]
    #: min-max of the per-repetition ratios (each rep pairs the mount with the baseline
    #: measured next to it), "" when there is none
    spread: str = ""


# ------------------------------------------------------------------------------ child programs
# Each client runs in its own process, times only the operation itself (not interpreter start-up,
# imports or logging in) and prints one JSON line.

READER = r"""
import json, os, sys, time
skip = ("cache.db",)  # diskcache's SQLite index: not content
paths = sys.argv[1:]
buf = bytearray(1 << 20)
files = total = 0
t0 = time.perf_counter()
def one(p):
    global files, total
    with open(p, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
    files += 1
for root in paths:
    if os.path.isfile(root):
        one(root)
        continue
    for d, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            if not name.startswith(skip):
                one(os.path.join(d, name))
print(json.dumps({"seconds": time.perf_counter() - t0, "files": files, "bytes": total}))
"""

GET_STREAM = r"""
import json, sys, time, requests
url, user, pw = sys.argv[1:4]
s = requests.Session(); s.auth = (user, pw)
t0 = time.perf_counter(); c0 = time.process_time(); n = 0
with s.get(url, stream=True, timeout=(5, 300)) as r:
    r.raise_for_status()
    for chunk in r.iter_content(1 << 20):
        n += len(chunk)
print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": n,
                  "cpu": time.process_time() - c0}))
"""

GET_LOOP = r"""
import json, os, sys, time, requests
base, listing, user, pw, dest = sys.argv[1:6]
s = requests.Session(); s.auth = (user, pw)
os.makedirs(dest, exist_ok=True)
t0 = time.perf_counter(); n = files = 0
r = s.get(base + listing, params={"format": "json"}, timeout=(5, 300)); r.raise_for_status()
for row in r.json()["ResultSet"]["Result"]:
    with s.get(base + row["URI"], stream=True, timeout=(5, 300)) as g:
        g.raise_for_status()
        with open(os.path.join(dest, row["Name"]), "wb") as out:
            for chunk in g.iter_content(1 << 20):
                out.write(chunk); n += len(chunk)
    files += 1
print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": n, "files": files}))
"""

GET_PARALLEL = r"""
import json, os, sys, time, requests
from concurrent.futures import ThreadPoolExecutor
base, listing, user, pw, dest, threads = sys.argv[1:7]
s = requests.Session(); s.auth = (user, pw)
s.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=int(threads)))
os.makedirs(dest, exist_ok=True)
t0 = time.perf_counter()
r = s.get(base + listing, params={"format": "json"}, timeout=(5, 300)); r.raise_for_status()
def one(row):
    n = 0
    with s.get(base + row["URI"], stream=True, timeout=(5, 300)) as g:
        g.raise_for_status()
        with open(os.path.join(dest, row["Name"]), "wb") as out:
            for chunk in g.iter_content(1 << 20):
                out.write(chunk); n += len(chunk)
    return n
with ThreadPoolExecutor(int(threads)) as pool:
    sizes = list(pool.map(one, r.json()["ResultSet"]["Result"]))
print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": sum(sizes), "files": len(sizes)}))
"""

XNATPY = r"""
import json, os, sys, time, xnat
url, user, pw, project, subject, experiment, scan, resource, dest = sys.argv[1:10]
t_connect = time.perf_counter(); c_connect = time.process_time()
with xnat.connect(url, user=user, password=pw, loglevel="ERROR") as session:
    # timed from finding the resource on: cp -r through the mount finds it by its path too
    t0 = time.perf_counter()
    res = session.projects[project].subjects[subject].experiments[experiment].scans[scan] \
        .resources[resource]
    res.download_dir(dest, verbose=False)
    t1 = time.perf_counter(); c1 = time.process_time()
files = n = 0
for d, _, names in os.walk(dest):
    for name in names:
        files += 1; n += os.path.getsize(os.path.join(d, name))
print(json.dumps({"seconds": t1 - t0, "seconds_connect": t1 - t_connect, "bytes": n,
                  "files": files, "cpu_connect": c1 - c_connect}))
"""

XNATPY_FILE = r"""
import json, os, sys, time, xnat
url, user, pw, project, subject, experiment, scan, resource, name, dest = sys.argv[1:11]
with xnat.connect(url, user=user, password=pw, loglevel="ERROR") as session:
    # timed from finding the file on, as for download_dir (B2)
    t0 = time.perf_counter(); c0 = time.process_time()
    res = session.projects[project].subjects[subject].experiments[experiment].scans[scan] \
        .resources[resource]
    res.files[name].download(dest, verbose=False)
    dt = time.perf_counter() - t0; cpu = time.process_time() - c0
print(json.dumps({"seconds": dt, "bytes": os.path.getsize(dest), "cpu": cpu}))
os.unlink(dest)
"""

PUT = r"""
import json, sys, time, requests
url, src, user, pw = sys.argv[1:5]
s = requests.Session(); s.auth = (user, pw)
t0 = time.perf_counter(); c0 = time.process_time()
with open(src, "rb") as f:
    r = s.put(url, data=f, params={"overwrite": "true"}, timeout=(5, 600),
              headers={"Content-Type": "application/octet-stream"})
r.raise_for_status()
print(json.dumps({"seconds": time.perf_counter() - t0, "status": r.status_code,
                  "cpu": time.process_time() - c0}))
"""

PUT_LOOP = r"""
import json, os, sys, time, requests
res_url, src, user, pw = sys.argv[1:5]
s = requests.Session(); s.auth = (user, pw)
names = sorted(os.listdir(src))
t0 = time.perf_counter(); c0 = time.process_time()
for name in names:
    with open(os.path.join(src, name), "rb") as f:
        r = s.put(res_url + "/files/" + name, data=f, params={"inbody": "true"},
                  timeout=(5, 300), headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
print(json.dumps({"seconds": time.perf_counter() - t0, "files": len(names),
                  "cpu": time.process_time() - c0}))
"""

XNATPY_UPLOAD = r"""
import json, sys, time, xnat
url, user, pw, project, resource, src, method = sys.argv[1:8]
with xnat.connect(url, user=user, password=pw, loglevel="ERROR") as session:
    # timed from finding the resource on: tar x through the mount finds it by its path too
    t0 = time.perf_counter(); c0 = time.process_time()
    res = session.projects[project].resources[resource]
    res.upload_dir(src, method=method)
    dt = time.perf_counter() - t0; cpu = time.process_time() - c0
print(json.dumps({"seconds": dt, "cpu": cpu}))
"""

STAT_LOOP = r"""
import json, os, sys, time
paths = [p for p in open(sys.argv[1], encoding="utf-8").read().split("\0") if p]
passes = int(sys.argv[2])
samples = []
errors = 0
for _ in range(passes):
    for p in paths:
        t = time.perf_counter_ns()
        try:
            os.stat(p)
        except OSError:
            errors += 1
        samples.append(time.perf_counter_ns() - t)
samples.sort()
q = lambda f: samples[min(len(samples) - 1, int(f * len(samples)))] / 1000.0
print(json.dumps({"n": len(samples), "p50_us": q(0.50), "p99_us": q(0.99),
                  "max_us": samples[-1] / 1000.0, "errors": errors}))
"""


def child(code: str, args: Sequence[str], timeout: float) -> Dict[str, Any]:
    """Run a child program; its last stdout line is JSON."""
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"child timed out after {timeout}s: {args[:2]}") from exc
    if res.returncode != 0:
        raise BenchError(f"child failed rc={res.returncode} {args[:2]}:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def timed(
    cmd: Sequence[str], timeout: float, stdout: Any = subprocess.DEVNULL
) -> Tuple[float, subprocess.CompletedProcess]:
    """Wall time of a command (process start-up of cp/dd/ls/find is ~1 ms; included)."""
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            list(map(str, cmd)), stdout=stdout, stderr=subprocess.PIPE, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{cmd[0]} timed out after {timeout}s") from exc
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise BenchError(
            f"{shlex.join(map(str, cmd))} -> rc={res.returncode}: "
            f"{res.stderr.decode(errors='replace')[-1000:]}"
        )
    return dt, res


def run_quiet(cmd: Sequence[str], timeout: float = 20) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


# ------------------------------------------------------------------------------ page cache
def drop_caches() -> bool:
    """sync + drop page cache, dentries and inodes; False when not permitted."""
    run_quiet(["sync"], timeout=120)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def page_fill_mibs(base: Path, mib: int = 256, reps: int = 3) -> Optional[float]:
    """Write speed into new page-cache pages a few seconds after a drop (median of ``reps``).

    A machine fact, not an xnatfs one: every byte a side keeps (the mount's cache file and its
    FUSE page cache, xnatpy's zip and unzipped files, a spool) lands in such pages, while a
    download to /dev/null lands in none.  On a VM whose balloon driver reports free memory back
    to the host (virtio-balloon free page reporting, 2 s after it was freed), the first touch of
    such a page costs a host page fault: seen here as ~600-750 MiB/s, against ~5 GiB/s within
    the first second after a drop.
    """
    if not drop_caches():
        return None
    block = os.urandom(MIB)
    samples = []
    for _ in range(reps):
        drop_caches()
        time.sleep(3.0)  # past the reporting delay: the pool the measurements draw from
        path = base / "page-fill.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        t0 = time.perf_counter()
        for _ in range(mib):
            os.write(fd, block)
        samples.append(mib / (time.perf_counter() - t0))
        os.close(fd)
        path.unlink()
    return median(samples)


# ------------------------------------------------------------------------------ the mount
def mount_entry(path: Path) -> Optional[List[str]]:
    """The mountinfo fields of the mount at ``path``: the product's one decoder
    (``xnatfs.fs.mounting``). Pure string work: never ``realpath`` or ``stat`` a mount point in
    this process (a hung daemon would hang the driver in D state)."""
    from xnatfs.fs.mounting import mount_entry as entry

    return entry(str(path))


def is_mounted(path: Path) -> bool:
    return mount_entry(path) is not None


def set_read_ahead(path: Path, kb: int) -> bool:
    """Write the mount's bdi ``read_ahead_kb`` (docs/FUSE.md §2.2; root only)."""
    entry = mount_entry(path)
    if entry is None:
        return False
    try:
        with open(f"/sys/class/bdi/{entry[2]}/read_ahead_kb", "w") as f:
            f.write(str(int(kb)))
        return True
    except OSError:
        return False


def get_read_ahead(path: Path) -> Optional[int]:
    entry = mount_entry(path)
    try:
        return int(Path(f"/sys/class/bdi/{entry[2]}/read_ahead_kb").read_text()) if entry else None
    except (OSError, ValueError):
        return None


@dataclass
class Cpu:
    """CPU-seconds (user + system) one side spent while it was timed, by process."""

    #: the emulator: the threads of this process (the harness itself waits meanwhile)
    server: float
    #: the client: the timed command (``dd``, ``cp``; its rusage as a waited child) or the
    #: baseline program's own count over its timed window (not its start-up and imports)
    client: float
    #: the xnatfs daemon (``/proc/PID/stat``); 0 for a baseline
    daemon: float = 0.0

    @property
    def total(self) -> float:
        return self.server + self.client + self.daemon


def proc_cpu(pid: Optional[int]) -> float:
    """User + system CPU-seconds of process ``pid`` so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime: fields 14 and 15 of proc(5), counted from the state (field 3) here
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Where the CPU of one timed operation went: the machine has few cores, shared by the
    emulator, the client and the daemon, so a side that spends more CPU per byte cannot be
    faster than ``CPU / cores`` however it overlaps its work (RESULTS.md, "CPU bound")."""

    def __init__(self, daemon_pid: Optional[int] = None) -> None:
        import resource

        self._resource = resource
        self._pid = daemon_pid
        self._self = time.process_time()
        self._children = self._children_cpu()
        self._daemon = proc_cpu(daemon_pid)

    def _children_cpu(self) -> float:
        ru = self._resource.getrusage(self._resource.RUSAGE_CHILDREN)
        return float(ru.ru_utime + ru.ru_stime)

    def read(self, client: Optional[float] = None) -> Cpu:
        """``client``: the baseline program's own count; else the children waited since."""
        return Cpu(
            server=time.process_time() - self._self,
            client=self._children_cpu() - self._children if client is None else client,
            daemon=proc_cpu(self._pid) - self._daemon if self._pid is not None else 0.0,
        )


class MountProc:
    """``python -m xnatfs mount URL MNT --foreground --credentials-stdin``, through the product's
    mount harness (``xnatfs.fs.mounting.MountDaemon``, as tests/conftest.py)."""

    def __init__(
        self,
        url: str,
        mnt: Path,
        cache: Path,
        log: Path,
        extra: Sequence[str] = (),
        bench_read_ahead_kb: Optional[int] = None,
    ):
        self.url, self.path, self.cache, self.logfile = url, mnt, cache, log
        self.extra = list(extra)
        self.bench_read_ahead_kb = bench_read_ahead_kb
        self.read_ahead_kb: Optional[int] = None
        self.daemon: Any = None

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        return self.daemon.proc if self.daemon is not None else None

    def start(self, timeout: float = 60.0) -> "MountProc":
        from xnatfs.fs import mounting

        self.path.mkdir(parents=True, exist_ok=True)
        argv = mounting.xnatfs_argv(
            self.url,
            self.path,
            "--cache-dir",
            str(self.cache),
            "--config",
            os.devnull,
            "--log-level",
            "warning",
            *self.extra,
        )
        self.daemon = mounting.MountDaemon(
            argv, self.path, self.logfile, {"username": ADMIN[0], "password": ADMIN[1]}
        ).start()
        try:
            # mounted is enough here: the stat below runs in a child, with a timeout
            self.daemon.wait(timeout, answers=lambda: True, tail_lines=40)
        except mounting.MountFailed as exc:
            raise BenchError(str(exc)) from None
        # the mount must answer (a stat from a child with a timeout, never from this process)
        res = run_quiet(["stat", str(self.path)], timeout=30)
        if res is None or res.returncode != 0:
            raise BenchError(
                f"mount at {self.path} does not answer stat within 30 s "
                f"(daemon hung?):\n{self.log_tail()}"
            )
        if self.bench_read_ahead_kb is not None:
            # only after FUSE INIT has been answered (the stat above proves it): the kernel's
            # INIT reply handling sets ra_pages = min(bdi ra_pages, max_readahead), so a value
            # written earlier is clobbered back to 128 KiB
            set_read_ahead(self.path, self.bench_read_ahead_kb)
        self.read_ahead_kb = get_read_ahead(self.path)
        return self

    def log_tail(self, n: int = 40) -> str:
        from xnatfs.fs.mounting import log_tail

        return log_tail(self.logfile, n, missing="")

    def vm_hwm_mb(self) -> Optional[float]:
        """Peak resident set of the daemon (VmHWM) in MB (10^6 bytes)."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
        except OSError:
            return None
        return None

    def stop(self) -> None:
        """fusermount3 -u, then -uz; then the daemon by its pid (TERM, then KILL)."""
        if self.daemon is not None:
            self.daemon.stop(grace=20, timeout=30)


# ------------------------------------------------------------------------------ the server
class Server:
    """The emulator in this process and a ``requests`` session for building data."""

    def __init__(self, base: Path, latency_ms: float):
        from xnatfs.emulator import Emulator

        self.latency_ms = latency_ms
        self.emu = Emulator(
            base / "emu-data",
            user=ADMIN[0],
            password=ADMIN[1],
            seed="empty",
            latency_ms=0,
            access_log=base / "access.log",
            port=0,
        )
        self.url = ""
        self.http = requests.Session()
        self.http.auth = ADMIN

    def start(self) -> "Server":
        self.emu.start()
        self.url = self.emu.url
        return self

    def stop(self) -> None:
        self.http.close()
        self.emu.stop()

    def set_latency(self, ms: float) -> None:
        self.emu.faults.latency_ms = float(ms)

    def measuring(self) -> None:
        self.set_latency(self.latency_ms)

    def building(self) -> None:
        self.set_latency(0)

    # -- API (docs/XNAT-API.md §4)
    def put(
        self,
        uri: str,
        params: Optional[dict] = None,
        data: Any = None,
        headers: Optional[dict] = None,
    ) -> requests.Response:
        r = self.http.put(
            self.url + uri, params=params, data=data, headers=headers, timeout=HTTP_TIMEOUT
        )
        if r.status_code not in (200, 201):
            raise BenchError(f"PUT {uri} -> {r.status_code}: {r.text[:300]}")
        return r

    def project(self, p: str) -> None:
        self.put(f"/data/projects/{p}")

    def subject(self, p: str, s: str) -> None:
        self.put(f"/data/projects/{p}/subjects/{s}")

    def experiment(self, p: str, s: str, e: str) -> None:
        self.put(
            f"/data/projects/{p}/subjects/{s}/experiments/{e}",
            params={"xsiType": "xnat:mrSessionData"},
        )

    def scan(self, p: str, s: str, e: str, n: str, type_: str) -> None:
        self.put(
            f"/data/projects/{p}/subjects/{s}/experiments/{e}/scans/{n}",
            params={"xsiType": "xnat:mrScanData", "type": type_},
        )

    def upload(self, resource_uri: str, relpath: str, data: Any) -> None:
        """PUT .../resources/R/files/relpath (§4.5; the resource is auto-created)."""
        self.put(
            f"{resource_uri}/files/{relpath}",
            params={"overwrite": "true"},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def head_size(self, uri: str) -> int:
        r = self.http.head(self.url + uri, timeout=HTTP_TIMEOUT)
        r.raise_for_status()
        return int(r.headers.get("Content-Length", -1))

    # -- access log
    def mark(self) -> int:
        return len(self.emu.access_records())

    def since(self, mark: int) -> list:
        return self.emu.access_records()[mark:]

    def patterns(self, mark: int) -> Dict[str, int]:
        """Requests since ``mark`` by method + URL shape (names replaced by *), for the report."""
        import re
        from collections import Counter

        out: Counter = Counter()
        for r in self.since(mark):
            path, _, query = r.path_qs.partition("?")
            shape = re.sub(
                r"/(projects|subjects|experiments|scans|resources|assessors|files)/"
                r"[^/]+",
                r"/\1/*",
                path,
            )
            keys = ",".join(sorted(k.split("=")[0] for k in query.split("&") if k))
            out[f"{r.method} {shape}{'?' + keys if keys else ''}"] += 1
        return dict(out.most_common())

    def api_count(self, mark: int) -> int:
        """Requests since ``mark`` that are not session bookkeeping (login, heartbeat)."""
        return sum(
            1 for r in self.since(mark) if not r.path_qs.split("?", 1)[0].endswith(BOOKKEEPING)
        )


# ------------------------------------------------------------------------------ the suite
def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def mibs(nbytes: float, seconds: float) -> float:
    return nbytes / MIB / seconds if seconds > 0 else float("inf")


@dataclass
class Ctx:
    args: argparse.Namespace
    sizes: Sizes
    base: Path
    server: Server
    can_drop: bool
    rows: List[Row] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    mounts: List[MountProc] = field(default_factory=list)
    counter: int = 0
    log: Callable[[str], None] = print

    def discard(self, path: Path) -> None:
        """Delete a B2 rep's copy or cache now, or (``--b2-keep-outputs``) with the temp dir
        at the end: on an ext4 without a journal (this VM's) the creations that follow a
        deletion of 2,000 files each search past the freed inodes (RESULTS.md, "B2: the bulk
        zip path's CPU")."""
        if not self.args.b2_keep_outputs:
            shutil.rmtree(path, ignore_errors=True)

    def fresh(self, name: str) -> Path:
        self.counter += 1
        return self.base / f"{name}-{self.counter}"

    def mount(self, cache: Optional[Path] = None, args: Sequence[str] = ()) -> MountProc:
        n = self.fresh("mnt")
        extra, bench_ra = list(self.args.mount_arg) + list(args), None
        if self.args.read_ahead_by == "bench" or not self.args.xnatfs_has_read_ahead:
            bench_ra = self.args.read_ahead_kb
            if self.args.xnatfs_has_read_ahead:
                extra += ["--read-ahead-kb", "0"]
        else:
            extra += ["--read-ahead-kb", str(self.args.read_ahead_kb)]
        m = MountProc(
            self.server.url,
            n,
            cache or self.fresh("cache"),
            self.base / f"xnatfs-{n.name}.log",
            extra,
            bench_ra,
        )
        self.mounts.append(m)
        m.start()
        self.raw.setdefault("mount_read_ahead_kb", []).append(m.read_ahead_kb)
        return m

    def unmount(self, m: MountProc) -> None:
        m.stop()
        if m in self.mounts:
            self.mounts.remove(m)

    def patterns(self, label: str, mark: int) -> None:
        """Keep the request shapes of the first repetition of each measurement."""
        if "rep1" in label:
            self.raw.setdefault("request_patterns", {})[label] = self.server.patterns(mark)

    def profile(self, m: MountProc, name: str) -> Any:
        """``py-spy record`` on the daemon around a measurement when ``--profile DIR`` is given
        (first repetition only; profiling slows the daemon, so such a run is not for numbers)."""
        import contextlib

        if not self.args.profile or not name.endswith("rep1") or m.proc is None:
            return contextlib.nullcontext()
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)

        @contextlib.contextmanager
        def cm() -> Any:
            proc = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(m.proc.pid),
                    "--rate",
                    "250",
                    "--threads",
                    "--idle",
                    "--format",
                    "raw",
                    "-o",
                    str(out / f"{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
            try:
                yield
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

        return cm()

    def drop(self) -> None:
        if self.can_drop:
            drop_caches()
            for program in TIMED_PROGRAMS:  # module docstring: code back before the clock
                run_quiet([program, "--version"], timeout=30)
        else:
            run_quiet(["sync"], timeout=120)

    def row(self, *a: Any) -> None:
        """One table row.  Its text names it: runs are compared row by row by that text, so two
        rows of one run may not share it (they once did, and a join matched the wrong ones)."""
        r = Row(*a)
        if any(o.bench == r.bench and o.what == r.what for o in self.rows):
            raise ValueError(f"two rows named {r.bench} {r.what!r}")
        self.rows.append(r)
        self.log(
            f"  -> {r.bench} {r.what}: mount {r.mount} | baseline {r.baseline} | "
            f"ratio {fmt_ratio(r.ratio)} (target {r.target}) "
            f"{'' if r.ok is None else ('ok' if r.ok else 'MISSED')}"
        )


def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def spread(mount: Sequence[float], base: Sequence[float], invert: bool = False) -> str:
    """min-max of the per-repetition ratios mount/base (base/mount with ``invert``): rep i of
    the mount was measured next to rep i of the baseline."""
    pairs = [(m, b) for m, b in zip(mount, base) if m == m and b == b and m > 0 and b > 0]
    if not pairs:
        return ""
    ratios = [(b / m) if invert else (m / b) for m, b in pairs]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def fmt_cpu(c: Cpu) -> str:
    parts = [f"emulator {c.server:.2f}", f"client {c.client:.2f}"]
    if c.daemon:
        parts.insert(0, f"daemon {c.daemon:.2f}")
    return f"{c.total:.2f} s ({' + '.join(parts)})"


def median_cpu(cs: Sequence[Cpu]) -> Cpu:
    """The run whose total is the median (its parts stay one run's)."""
    ordered = sorted(cs, key=lambda c: c.total)
    return ordered[(len(ordered) - 1) // 2]


def add_cpu_rows(
    ctx: Ctx,
    bench: str,
    what: str,
    mount: Sequence[Cpu],
    mount_wall: Sequence[float],
    baseline_name: str,
    baseline: Sequence[Cpu],
    baseline_wall: Sequence[float],
    lower_is_better: bool,
) -> None:
    """Two report rows after a bench's ratio: the CPU-seconds each side spent (emulator,
    client, daemon; medians), and the best ratio this machine's cores allow the mount at the
    CPU it spends: its wall time cannot be below CPU / cores however well it overlaps, so a
    target above that bound needs less CPU per byte, not more overlap."""
    if not mount or not baseline:
        return
    cores = os.cpu_count() or 1
    cm, cb = median_cpu(mount), median_cpu(baseline)
    ctx.row(
        bench,
        f"(CPU) {what}: CPU-seconds per run, mount vs {baseline_name}",
        fmt_cpu(cm),
        fmt_cpu(cb),
        cm.total / cb.total if cb.total > 0 else None,
        "CPU mount/baseline",
        "(report)",
        None,
        spread([c.total for c in mount], [c.total for c in baseline]),
    )
    floor = [c.total / cores for c in mount]
    fm, bw = median(floor), median(baseline_wall)
    bound = fm / bw if lower_is_better else bw / fm
    ctx.row(
        bench,
        f"(bound) {what} vs {baseline_name}: best ratio {cores} cores allow at the mount's CPU "
        f"(wall >= CPU/{cores}), "
        f"measured wall {median(mount_wall):.2f} s",
        f">= {fm:.2f} s",
        f"{bw:.2f} s",
        bound,
        "time mount/baseline" if lower_is_better else "baseline time/mount",
        "(report)",
        None,
        spread(floor, baseline_wall, invert=not lower_is_better),
    )


def timeout_for(nbytes: int) -> float:
    """Generous: 2 MiB/s worst case, at least a minute."""
    return max(60.0, nbytes / (2 * MIB))


B1_PATH = ("BENCH", "S1", "E1", "1", "NIFTI", "big.nii")
B2_PATH = ("BENCH", "S1", "E1", "2", "DICOM")


def scan_resource_uri(p: str, s: str, e: str, n: str, r: str) -> str:
    return f"/data/projects/{p}/subjects/{s}/experiments/{e}/scans/{n}/resources/{r}"


def scan_resource_rel(p: str, s: str, e: str, n: str, r: str) -> str:
    return f"{p}/subjects/{s}/experiments/{e}/scans/{n}/resources/{r}/files"


def build_bench_project(ctx: Ctx, want_single: bool, want_multi: bool, want_upload: bool) -> None:
    srv, z = ctx.server, ctx.sizes
    p, s, e = B1_PATH[:3]
    srv.project(p)
    srv.subject(p, s)
    srv.experiment(p, s, e)
    if want_single:
        srv.scan(p, s, e, "1", "T1w")
        big = ctx.base / "b1-source.bin"
        write_random(big, z.b1_mib * MIB)
        with open(big, "rb") as f:
            srv.upload(scan_resource_uri(*B1_PATH[:5]), B1_PATH[5], f)
        big.unlink()
    if want_multi:
        series = [(B2_PATH[3], z.b2_files, z.b2_kib)]
        if "B2" in ctx.args.only:
            series += [(scan, files, kib) for _, scan, files, kib in z.b2_more]
        for scan, files, kib in series:
            build_series(ctx, scan, files, kib)
    if want_upload:
        srv.put(f"/data/projects/{p}/resources/UP", params={"format": "RAW"})


def build_series(ctx: Ctx, scan: str, files: int, kib: int) -> None:
    """Scan ``scan`` of BENCH/S1/E1 with resource DICOM of ``files`` random files."""
    srv = ctx.server
    p, s, e = B2_PATH[:3]
    srv.scan(p, s, e, scan, "DICOM-like")
    fill_resource(srv, scan_resource_uri(p, s, e, scan, B2_PATH[4]), files, kib)


def fill_resource(srv: "Server", uri: str, files: int, kib: int) -> None:
    """Resource ``uri`` (created, format DICOM) with ``files`` random files of ``kib`` KiB
    named ``IM00000.dcm``..., uploaded 8 at a time (also ``benchmarks.zipcpu``)."""
    size = kib * 1024
    http = requests.Session()
    http.auth = ADMIN
    http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=8))

    def one(i: int) -> None:
        srv_put = http.put(
            srv.url + f"{uri}/files/IM{i:05d}.dcm",
            params={"overwrite": "true"},
            data=os.urandom(size),
            headers={"Content-Type": "application/octet-stream"},
            timeout=HTTP_TIMEOUT,
        )
        if srv_put.status_code not in (200, 201):
            raise BenchError(f"upload IM{i} -> {srv_put.status_code}")

    srv.put(uri, params={"format": "DICOM"})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(files)))
    http.close()


def write_random(path: Path, nbytes: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        left = nbytes
        i = 0
        while left > 0:
            # vary each MiB cheaply so no layer can dedupe or compress it away
            chunk = (i.to_bytes(8, "little") + block[8:])[: min(MIB, left)]
            f.write(chunk)
            left -= len(chunk)
            i += 1


def build_meta_project(ctx: Ctx) -> None:
    """META: subjects x experiments x scans, each scan with one tiny file in resource R."""
    srv, z = ctx.server, ctx.sizes
    srv.project("META")
    subjects = [f"S{i:04d}" for i in range(z.b4_subjects)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: srv.subject("META", s), subjects))
        exps = [(s, f"{s}_MR{j}") for s in subjects for j in range(1, z.b4_experiments + 1)]
        list(pool.map(lambda se: srv.experiment("META", se[0], se[1]), exps))
        scans = [(s, e, str(k)) for s, e in exps for k in range(1, z.b4_scans + 1)]
        list(pool.map(lambda sek: srv.scan("META", sek[0], sek[1], sek[2], "T1w"), scans))
        list(
            pool.map(
                lambda sek: srv.upload(scan_resource_uri("META", *sek, "R"), "info.txt", b"tiny\n"),
                scans,
            )
        )
    ctx.raw["b4_objects"] = {
        "subjects": len(subjects),
        "experiments": len(exps),
        "scans": len(scans),
        "files": len(scans),
    }


# -- B1 (+ B3 single file, B6 during B1)
def flow_single(ctx: Ctx) -> None:
    z, srv = ctx.sizes, ctx.server
    size = z.b1_mib * MIB
    rel = scan_resource_rel(*B1_PATH[:5]) + "/" + B1_PATH[5]
    url = srv.url + scan_resource_uri(*B1_PATH[:5]) + "/files/" + B1_PATH[5]
    tmo = timeout_for(size)
    cpu: Dict[str, List[Cpu]] = {"mount": [], "requests": [], "xnatpy": []}
    res: Dict[str, List[float]] = {
        k: []
        for k in (
            "cold_mount",
            "cold_requests",
            "cold_xnatpy",
            "warm_disk_mount",
            "warm_disk_direct",
            "warm_page_mount",
            "warm_page_direct",
            "hwm_mb",
            "cold_requests_count",
        )
    }
    ctx.log(f"B1/B3: one {z.b1_mib} MiB file, {z.reps} reps")
    for rep in range(z.reps):

        def baseline() -> None:
            ctx.drop()
            meter = CpuMeter()
            r = child(GET_STREAM, [url, *ADMIN], tmo)
            cpu["requests"].append(meter.read(client=r["cpu"]))
            if r["bytes"] != size:
                raise BenchError(f"requests got {r['bytes']} bytes, expected {size}")
            res["cold_requests"].append(mibs(size, r["seconds"]))
            if want(ctx, "B1"):
                ctx.drop()
                meter = CpuMeter()
                r = child(XNATPY_FILE, [srv.url, *ADMIN, *B1_PATH, ctx.fresh("xnatpy-file")], tmo)
                cpu["xnatpy"].append(meter.read(client=r["cpu"]))
                check_bytes("xnatpy download()", r["bytes"], size)
                res["cold_xnatpy"].append(mibs(size, r["seconds"]))

        if rep % 2 == 1:
            baseline()
        m = ctx.mount()
        try:
            ctx.drop()
            mark = srv.mark()
            with ctx.profile(m, f"B1-cold-rep{rep + 1}"):
                meter = CpuMeter(m.proc.pid if m.proc else None)
                dt, out = timed(["dd", f"if={m.path / rel}", "of=/dev/null", "bs=1M"], tmo)
                cpu["mount"].append(meter.read())
            ctx.patterns(f"B1 cold rep{rep + 1}", mark)
            copied = int(out.stderr.decode().strip().splitlines()[-1].split()[0])
            if copied != size:
                raise BenchError(f"dd through the mount read {copied} bytes, expected {size}")
            res["cold_mount"].append(mibs(size, dt))
            res["cold_requests_count"].append(srv.api_count(mark))
            res["hwm_mb"].append(m.vm_hwm_mb() or float("nan"))
            warm_pass(ctx, res, m.path / rel, m.cache, size, tmo, m)
            res["hwm_mb"][-1] = max(res["hwm_mb"][-1], m.vm_hwm_mb() or 0)
        finally:
            ctx.unmount(m)
            shutil.rmtree(m.cache, ignore_errors=True)
        if rep % 2 == 0:
            baseline()
        ctx.log(
            f"  rep {rep + 1}: mount {res['cold_mount'][-1]:.0f} MiB/s, "
            f"requests {res['cold_requests'][-1]:.0f} MiB/s, "
            f"xnatpy {(res['cold_xnatpy'] or [float('nan')])[-1]:.0f} MiB/s, "
            f"disk-warm mount {res['warm_disk_mount'][-1]:.0f} vs direct "
            f"{res['warm_disk_direct'][-1]:.0f} MiB/s"
        )
    ctx.raw["single"] = res
    ctx.raw["single_cpu"] = {k: [asdict(c) for c in v] for k, v in cpu.items()}
    cm, cr = median(res["cold_mount"]), median(res["cold_requests"])
    if want(ctx, "B1"):
        ctx.row(
            "B1",
            f"cold read {z.b1_mib} MiB (dd bs=1M) vs requests stream (discards)",
            f"{cm:.0f} MiB/s",
            f"{cr:.0f} MiB/s",
            cm / cr,
            "throughput",
            ">= 0.8",
            cm / cr >= 0.8,
            spread(res["cold_mount"], res["cold_requests"]),
        )
        cx = median(res["cold_xnatpy"])
        ctx.row(
            "B1",
            f"cold read {z.b1_mib} MiB vs xnatpy file.download() to a file",
            f"{cm:.0f} MiB/s",
            f"{cx:.0f} MiB/s",
            cm / cx,
            "speed-up mount/xnatpy",
            ">= 1.5",
            cm / cx >= 1.5,
            spread(res["cold_mount"], res["cold_xnatpy"]),
        )
        walls = {k: [size / MIB / tp for tp in res[f"cold_{k}"]] for k in cpu}
        for name in ("requests", "xnatpy"):
            add_cpu_rows(
                ctx,
                "B1",
                "cold read",
                cpu["mount"],
                walls["mount"],
                name,
                cpu[name],
                walls[name],
                lower_is_better=False,
            )
    if want(ctx, "B3"):
        add_warm_rows(ctx, res, f"1 x {z.b1_mib} MiB")
    ctx.raw.setdefault("hwm_mb", {})["B1"] = res["hwm_mb"]


def settle(m: MountProc, timeout: float = 120.0) -> None:
    """Wait until the daemon has no download in flight (``.xnatfs/stats``, read by a child):
    files it brought in the background (a bulk zip's members are checked and indexed after the
    zip) are then all in the cache, so the warm passes compare whole caches."""
    deadline = time.monotonic() + timeout
    while True:
        res = run_quiet(["cat", str(m.path / ".xnatfs" / "stats")], timeout=30)
        try:
            if (
                res is not None
                and json.loads(res.stdout)["content_cache"]["downloads_in_flight"] == 0
            ):
                return
        except (ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"downloads still in flight after {timeout:.0f} s")
        time.sleep(0.05)


def warm_pass(
    ctx: Ctx,
    res: Dict[str, List[float]],
    target: Path,
    cache: Path,
    size: int,
    tmo: float,
    m: MountProc,
) -> None:
    """B3: disk-warm (page cache dropped) and page-cache-warm, mount vs the cache files."""
    index = cache / "content" / "index"
    settle(m)
    ctx.drop()
    mark = ctx.server.mark()
    r = child(READER, [target], tmo)
    res.setdefault("warm_disk_mount_requests", []).append(ctx.server.api_count(mark))
    check_bytes("warm mount read", r["bytes"], size)
    res["warm_disk_mount"].append(mibs(r["bytes"], r["seconds"]))
    ctx.drop()
    d = child(READER, [index], tmo)
    check_bytes("direct cache read", d["bytes"], size)
    res["warm_disk_direct"].append(mibs(d["bytes"], d["seconds"]))
    d = child(READER, [index], tmo)
    res["warm_page_direct"].append(mibs(d["bytes"], d["seconds"]))
    child(READER, [target], tmo)  # a page-cached source file; the mount's own pages may be cold
    r = child(READER, [target], tmo)
    res["warm_page_mount"].append(mibs(r["bytes"], r["seconds"]))


def no_open_pass(ctx: Ctx, res: Dict[str, List[float]], rel: Path, nbytes: int, tmo: float) -> None:
    """B3 on a ``--read-only --zero-message-opens`` mount (``xnatfs/fs/noopen.py``): the
    kernel opens files without asking the daemon.  A fresh mount and cache, filled by an
    untimed ``cp -r`` (so the daemon verified every file as it downloaded it, as on the
    default mount), then the same warm passes."""
    m = ctx.mount(args=["--read-only", "--zero-message-opens"])
    dest = ctx.fresh("cp-no-open")
    try:
        timed(["cp", "-r", m.path / rel, dest], tmo)
        got = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        check_bytes("cp -r through the zero-message-opens mount", got, nbytes)
        warm_pass(ctx, res, m.path / rel, m.cache, nbytes, tmo, m)
    finally:
        ctx.unmount(m)
        ctx.discard(m.cache)
        ctx.discard(dest)


def check_bytes(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise BenchError(f"{what}: {got} bytes, expected {expected}")


def add_warm_rows(ctx: Ctx, res: Dict[str, List[float]], label: str) -> None:
    dm, dd_ = median(res["warm_disk_mount"]), median(res["warm_disk_direct"])
    pm, pd = median(res["warm_page_mount"]), median(res["warm_page_direct"])
    note = "" if ctx.can_drop else " (page cache NOT dropped: not permitted)"
    ctx.row(
        "B3",
        f"warm {label}, disk cache (page cache dropped){note} vs cache files",
        f"{dm:.0f} MiB/s",
        f"{dd_:.0f} MiB/s",
        dm / dd_,
        "throughput",
        ">= 0.9",
        dm / dd_ >= 0.9,
        spread(res["warm_disk_mount"], res["warm_disk_direct"]),
    )
    ctx.row(
        "B3",
        f"warm {label}, page-cache-warm vs cache files page-cache-warm",
        f"{pm:.0f} MiB/s",
        f"{pd:.0f} MiB/s",
        pm / pd,
        "throughput",
        ">= 0.9",
        pm / pd >= 0.9,
        spread(res["warm_page_mount"], res["warm_page_direct"]),
    )


# -- B2 (+ B3 many files)
def flow_multi(ctx: Ctx) -> None:
    """B2 for every series at every latency of ``--b2-latencies`` (the first series at the
    run's own latency also gives B3's small files and the GET-loop references)."""
    z = ctx.sizes
    series = [(f"scan {z.b2_files} x {z.b2_kib} KiB", B2_PATH[3], z.b2_files, z.b2_kib)]
    if want(ctx, "B2"):
        series += list(z.b2_more)
    latencies = [ctx.server.latency_ms]
    if want(ctx, "B2"):
        latencies += [x for x in ctx.args.b2_latencies if x != ctx.server.latency_ms]
    try:
        for i, one in enumerate(series):
            for lat in latencies:
                if i > 0 and not want(ctx, "B2"):
                    continue
                ctx.server.set_latency(lat)
                flow_multi_one(ctx, one, lat, main=(i == 0 and lat == latencies[0]))
    finally:
        ctx.server.measuring()


def b2_floor(ctx: Ctx, res: Dict[str, List[float]], src: Path, copy: Path, tmo: float) -> None:
    """``--b2-floor``: right after the cold copy, ``cp -r`` the same folder again through the
    same mount (every file cached, pages warm: what the per-file FUSE round trips and the
    destination's creations cost with no network and no zip) and ``cp -r`` the cold copy's
    local result (the creations alone).  What the cold copy spends beyond the first is
    waiting for the zip."""
    for key, source, name in (
        ("floor_mount_s", src, "cp-warm-out"),
        ("floor_local_s", copy, "cp-local-out"),
    ):
        dest = ctx.fresh(name)
        dt, _ = timed(["cp", "-r", source, dest], tmo)
        res[key].append(dt)
        ctx.discard(dest)


def flow_multi_one(ctx: Ctx, one: Tuple[str, str, int, int], latency: float, main: bool) -> None:
    z, srv = ctx.sizes, ctx.server
    label, scan, files, kib = one
    path = (*B2_PATH[:3], scan, B2_PATH[4])
    nbytes = files * kib * 1024
    rel = scan_resource_rel(*path)
    tmo = timeout_for(nbytes) + 2 * files
    res: Dict[str, List[float]] = {
        k: []
        for k in (
            "cold_mount_s",
            "xnatpy_s",
            "xnatpy_connect_s",
            "loop_s",
            "parallel8_s",
            "warm_disk_mount",
            "warm_disk_direct",
            "warm_page_mount",
            "warm_page_direct",
            "cold_requests_count",
            "floor_mount_s",
            "floor_local_s",
        )
    }
    cpu: Dict[str, List[Cpu]] = {"mount": [], "xnatpy": []}
    #: B3 again on a --read-only --zero-message-opens mount (``no_open_pass``)
    res_no_open: Dict[str, List[float]] = {
        k: []
        for k in ("warm_disk_mount", "warm_disk_direct", "warm_page_mount", "warm_page_direct")
    }
    ctx.log(f"B2{'/B3' if main else ''}: {label} at {latency:g} ms, {z.reps} reps")
    p, s, e, n, r_ = path
    for rep in range(z.reps):

        def baselines() -> None:
            dest = ctx.fresh("xnatpy-out")
            ctx.drop()
            meter = CpuMeter()
            r = child(XNATPY, [srv.url, *ADMIN, p, s, e, n, r_, dest], tmo)
            cpu["xnatpy"].append(meter.read(client=r["cpu_connect"]))
            check_bytes("xnatpy download_dir", r["bytes"], nbytes)
            res["xnatpy_s"].append(r["seconds"])
            res["xnatpy_connect_s"].append(r["seconds_connect"])
            ctx.discard(dest)
            if not main or not want(ctx, "B2"):
                return
            dest = ctx.fresh("loop-out")
            ctx.drop()
            r = child(GET_LOOP, [srv.url, scan_resource_uri(*path) + "/files", *ADMIN, dest], tmo)
            check_bytes("GET loop", r["bytes"], nbytes)
            res["loop_s"].append(r["seconds"])
            ctx.discard(dest)
            dest = ctx.fresh("par-out")
            ctx.drop()
            r = child(
                GET_PARALLEL, [srv.url, scan_resource_uri(*path) + "/files", *ADMIN, dest, 8], tmo
            )
            check_bytes("parallel GET", r["bytes"], nbytes)
            res["parallel8_s"].append(r["seconds"])
            ctx.discard(dest)

        if rep % 2 == 1:
            baselines()
        m = ctx.mount()
        dest = ctx.fresh("cp-out")
        try:
            ctx.drop()
            mark = srv.mark()
            with ctx.profile(m, f"B2-cold-{scan}-{latency:g}ms-rep{rep + 1}"):
                meter = CpuMeter(m.proc.pid if m.proc else None)
                dt, _ = timed(["cp", "-r", m.path / rel, dest], tmo)
                cpu["mount"].append(meter.read())
            ctx.patterns(f"B2 cold {label} {latency:g} ms rep{rep + 1}", mark)
            res["cold_mount_s"].append(dt)
            res["cold_requests_count"].append(srv.api_count(mark))
            got = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
            check_bytes("cp -r through the mount", got, nbytes)
            if ctx.args.b2_floor:
                b2_floor(ctx, res, m.path / rel, dest, tmo)
            ctx.discard(dest)
            if main and want(ctx, "B3"):
                warm_pass(ctx, res, m.path / rel, m.cache, nbytes, tmo, m)
        finally:
            ctx.unmount(m)
        if main and want(ctx, "B3") and not ctx.args.no_b3_zero_message_opens:
            no_open_pass(ctx, res_no_open, rel, nbytes, tmo)
            ctx.discard(m.cache)
            ctx.discard(dest)
        if rep % 2 == 0:
            baselines()
        extra = ""
        if res["loop_s"]:
            extra += f", GET loop {res['loop_s'][-1]:.2f} s"
        if res["warm_disk_mount"]:
            extra += (
                f"; disk-warm mount {res['warm_disk_mount'][-1]:.0f} vs direct "
                f"{res['warm_disk_direct'][-1]:.0f} MiB/s"
            )
        ctx.log(
            f"  rep {rep + 1}: cp -r {res['cold_mount_s'][-1]:.2f} s "
            f"({res['cold_requests_count'][-1]:.0f} req), xnatpy "
            f"{res['xnatpy_s'][-1]:.2f} s (from connect {res['xnatpy_connect_s'][-1]:.2f} s)"
            f"{extra}"
        )
    ctx.raw.setdefault("multi", {})[f"{label} @ {latency:g} ms"] = res
    ctx.raw.setdefault("multi_cpu", {})[f"{label} @ {latency:g} ms"] = {
        k: [asdict(c) for c in v] for k, v in cpu.items()
    }
    cm = median(res["cold_mount_s"])
    xp, xc = median(res["xnatpy_s"]), median(res["xnatpy_connect_s"])
    if want(ctx, "B2"):
        ctx.row(
            "B2",
            f"cold cp -r {label}, {latency:g} ms, vs xnatpy download_dir (zip) timed from connect",
            f"{cm:.2f} s",
            f"{xc:.2f} s",
            cm / xc,
            "time mount/xnatpy",
            "<= 0.8",
            cm / xc <= 0.8,
            spread(res["cold_mount_s"], res["xnatpy_connect_s"]),
        )
        add_cpu_rows(
            ctx,
            "B2",
            f"cold cp -r {label}, {latency:g} ms",
            cpu["mount"],
            res["cold_mount_s"],
            "xnatpy from connect",
            cpu["xnatpy"],
            res["xnatpy_connect_s"],
            lower_is_better=True,
        )
        ctx.row(
            "B2",
            f"(stricter) cold cp -r {label}, {latency:g} ms, "
            "xnatpy timed from finding the resource",
            f"{cm:.2f} s",
            f"{xp:.2f} s",
            cm / xp,
            "time mount/xnatpy",
            "(report)",
            None,
            spread(res["cold_mount_s"], res["xnatpy_s"]),
        )
        if res["loop_s"]:
            lp, pp = median(res["loop_s"]), median(res["parallel8_s"])
            ctx.row(
                "B2",
                f"(reference) cold cp -r {label}, {latency:g} ms, vs sequential GET loop",
                f"{cm:.2f} s",
                f"{lp:.2f} s",
                lp / cm,
                "speed-up loop/mount",
                "(report)",
                None,
                spread(res["cold_mount_s"], res["loop_s"], invert=True),
            )
            ctx.row(
                "B2",
                f"(reference) cold cp -r {label}, {latency:g} ms, vs 8 parallel GETs with requests",
                f"{cm:.2f} s",
                f"{pp:.2f} s",
                pp / cm,
                "speed-up par/mount",
                "(report)",
                None,
                spread(res["cold_mount_s"], res["parallel8_s"], invert=True),
            )
    if main and want(ctx, "B3"):
        add_warm_rows(ctx, res, label)
        if res_no_open["warm_page_mount"]:
            add_warm_rows(ctx, res_no_open, f"{label}, --read-only --zero-message-opens")


# -- B4 (+ B6 during B4)
def flow_meta(ctx: Ctx) -> None:
    z, srv = ctx.sizes, ctx.server
    res: Dict[str, List[float]] = {
        k: []
        for k in (
            "ls_cold_s",
            "ls_cold_req",
            "ls_warm_s",
            "ls_warm_req",
            "find_cold_s",
            "find_cold_req",
            "find_warm_s",
            "find_warm_req",
            "stat_p50_us",
            "stat_p99_us",
            "stat_max_us",
            "hwm_mb",
            "find_entries",
            "find_dirs",
        )
    }
    ctx.log(
        f"B4: META {z.b4_subjects} subjects x {z.b4_experiments} experiments x "
        f"{z.b4_scans} scans, {z.reps} reps"
    )
    for rep in range(z.reps):
        m = ctx.mount()
        try:
            subjects = m.path / "META" / "subjects"
            for kind in ("cold", "warm"):
                mark = srv.mark()
                dt, _ = timed(["ls", "-l", subjects], 600)
                res[f"ls_{kind}_s"].append(dt)
                res[f"ls_{kind}_req"].append(srv.api_count(mark))
                ctx.patterns(f"B4 ls -l {kind} rep{rep + 1}", mark)
            listing = None
            for kind in ("cold", "warm"):
                mark = srv.mark()
                dt, out = timed(["find", m.path / "META", "-print0"], 1200, stdout=subprocess.PIPE)
                res[f"find_{kind}_s"].append(dt)
                res[f"find_{kind}_req"].append(srv.api_count(mark))
                ctx.patterns(f"B4 find {kind} rep{rep + 1}", mark)
                listing = out.stdout
            assert listing is not None
            _, dirs = timed(
                ["find", m.path / "META", "-type", "d", "-print0"], 1200, stdout=subprocess.PIPE
            )
            res["find_dirs"].append(dirs.stdout.count(b"\0"))
            paths_file = ctx.fresh("paths")
            paths_file.write_bytes(listing)
            res["find_entries"].append(listing.count(b"\0"))
            st = child(STAT_LOOP, [paths_file, 3], 600)
            if st["errors"]:
                ctx.notes.append(f"B4: {st['errors']} os.stat errors through the mount")
            res["stat_p50_us"].append(st["p50_us"])
            res["stat_p99_us"].append(st["p99_us"])
            res["stat_max_us"].append(st["max_us"])
            res["hwm_mb"].append(m.vm_hwm_mb() or float("nan"))
        finally:
            ctx.unmount(m)
            shutil.rmtree(m.cache, ignore_errors=True)
        ctx.log(
            f"  rep {rep + 1}: ls -l cold {res['ls_cold_s'][-1]:.2f} s "
            f"({res['ls_cold_req'][-1]:.0f} req), find cold {res['find_cold_s'][-1]:.2f} s "
            f"({res['find_cold_req'][-1]:.0f} req, {res['find_entries'][-1]} entries), "
            f"find warm {res['find_warm_s'][-1]:.3f} s, stat p99 "
            f"{res['stat_p99_us'][-1]:.0f} us"
        )
    ctx.raw["meta"] = res
    ctx.raw.setdefault("hwm_mb", {})["B4"] = res["hwm_mb"]
    if want(ctx, "B4"):
        o = ctx.raw.get("b4_objects", {})
        # one listing per directory of the mount's layout (README "The path rule"): subjects;
        # per subject experiments + resources; per experiment scans + resources + assessors;
        # per scan resources + files of its one resource
        minimal = 1 + 2 * o.get("subjects", 0) + 3 * o.get("experiments", 0) + 2 * o.get("scans", 0)
        for what in ("ls", "find"):
            for kind in ("cold", "warm"):
                t, q = median(res[f"{what}_{kind}_s"]), median(res[f"{what}_{kind}_req"])
                label = (
                    f"ls -l META/subjects ({z.b4_subjects} entries)"
                    if what == "ls"
                    else f"find META ({int(median(res['find_entries']))} entries)"
                )
                if what == "find" and kind == "cold":
                    ndirs = median(res["find_dirs"])
                    per_dir = [q_ / d_ for q_, d_ in zip(res["find_cold_req"], res["find_dirs"])]
                    ctx.row(
                        "B4",
                        f"{label}, {kind}: requests per directory ({ndirs:.0f} directories)",
                        f"{t:.3f} s, {q:.0f} req",
                        f"one listing per directory of the layout: {minimal} req",
                        q / ndirs,
                        "requests/directory",
                        "<= 0.3",
                        q / ndirs <= 0.3,
                        f"{min(per_dir):.2f}-{max(per_dir):.2f}",
                    )
                    continue
                ctx.row(
                    "B4",
                    f"{label}, {kind}",
                    f"{t:.3f} s, {q:.0f} req",
                    "-",
                    None,
                    "-",
                    "(report)",
                    None,
                )
        p50, p99 = median(res["stat_p50_us"]), median(res["stat_p99_us"])
        ctx.row(
            "B4",
            "warm os.stat latency, inside kernel+daemon (p50 / p99)",
            f"{p50:.0f} / {p99:.0f} us",
            "-",
            None,
            "-",
            "p99 < 1 ms",
            p99 < 1000,
        )


# -- B5
def flow_upload(ctx: Ctx) -> None:
    z, srv = ctx.sizes, ctx.server
    size = z.b5_mib * MIB
    src = ctx.base / "b5-source.bin"
    write_random(src, size)
    tmo = timeout_for(size)
    res: Dict[str, List[float]] = {"mount": [], "requests": [], "mount_put_paths": []}
    cpu: Dict[str, List[Cpu]] = {"mount": [], "requests": []}
    ctx.log(f"B5: upload {z.b5_mib} MiB, {z.reps} reps")
    m = ctx.mount()
    try:
        for rep in range(z.reps):

            def baseline(rep: int = rep) -> None:
                uri = f"/data/projects/BENCH/resources/UP/files/req-{rep}.bin"
                ctx.drop()
                meter = CpuMeter()
                r = child(PUT, [srv.url + uri, src, *ADMIN], tmo)
                cpu["requests"].append(meter.read(client=r["cpu"]))
                check_bytes("requests PUT (HEAD size)", srv.head_size(uri), size)
                res["requests"].append(mibs(size, r["seconds"]))

            if rep % 2 == 1:
                baseline()
            ctx.drop()
            mark = srv.mark()
            meter = CpuMeter(m.proc.pid if m.proc else None)
            dt, _ = timed(["cp", src, m.path / "BENCH/resources/UP/files" / f"mnt-{rep}.bin"], tmo)
            cpu["mount"].append(meter.read())
            res["mount"].append(mibs(size, dt))
            puts = [r.path_qs for r in srv.since(mark) if r.method in ("PUT", "POST")]
            res["mount_put_paths"].append(puts)
            check_bytes(
                "cp into the mount (server HEAD size)",
                srv.head_size(f"/data/projects/BENCH/resources/UP/files/mnt-{rep}.bin"),
                size,
            )
            if rep % 2 == 0:
                baseline()
            ctx.log(
                f"  rep {rep + 1}: cp {res['mount'][-1]:.0f} MiB/s, requests PUT "
                f"{res['requests'][-1]:.0f} MiB/s; mount sent {puts}"
            )
    finally:
        ctx.unmount(m)
        shutil.rmtree(m.cache, ignore_errors=True)
        src.unlink(missing_ok=True)
    ctx.raw["upload"] = res
    ctx.raw["upload_cpu"] = {k: [asdict(c) for c in v] for k, v in cpu.items()}
    cm, cr = median(res["mount"]), median(res["requests"])
    ctx.row(
        "B5",
        f"cp {z.b5_mib} MiB into the mount (upload on close) vs requests PUT",
        f"{cm:.0f} MiB/s",
        f"{cr:.0f} MiB/s",
        cm / cr,
        "throughput",
        ">= 0.8",
        cm / cr >= 0.8,
        spread(res["mount"], res["requests"]),
    )
    add_cpu_rows(
        ctx,
        "B5",
        f"cp {z.b5_mib} MiB into the mount",
        cpu["mount"],
        [size / MIB / tp for tp in res["mount"]],
        "requests PUT",
        cpu["requests"],
        [size / MIB / tp for tp in res["requests"]],
        lower_is_better=False,
    )


# -- B7
#: B7's sides: key, what the row says, how it runs (mount: ``tar x`` into the mount; the others
#: are child programs given the resource's URL or its project and label)
B7_SIDES = (
    ("mount", "tar x into the mount"),
    ("requests", "a requests PUT loop over one session"),
    ("xnatpy", "xnatpy upload_dir(method='per_file') (one upload() per file)"),
    ("xnatpy_tgz", "xnatpy upload_dir() (one tar.gz, extract=true)"),
)


def b7_resource_paths(srv: "Server", labels: Iterable[str]) -> Dict[str, Tuple[str, str]]:
    """label -> the two ways a request names project resource ``label`` (by label, and by
    its ID as the mount and xnatpy do), each as ``/resources/<x>`` for matching paths."""
    r = srv.http.get(
        srv.url + "/data/projects/BENCH/resources", params={"format": "json"}, timeout=HTTP_TIMEOUT
    )
    r.raise_for_status()
    ids = {
        row["label"]: str(row["xnat_abstractresource_id"])
        for row in r.json()["ResultSet"]["Result"]
    }
    return {label: (f"/resources/{label}", f"/resources/{ids[label]}") for label in labels}


def b7_requests(srv: "Server", mark: int, names: Tuple[str, str]) -> int:
    """Requests since ``mark`` on the resource (its files, its listing), by either name."""

    def on(path_qs: str) -> bool:
        path = path_qs.split("?", 1)[0]
        return any(path == n or path.endswith(n) or n + "/" in path for n in names)

    return sum(1 for r in srv.since(mark) if on(r.path_qs))


def b7_listing(srv: "Server", uri: str) -> Dict[str, int]:
    """name -> size of the files XNAT lists in resource ``uri`` (the check after each side)."""
    r = srv.http.get(srv.url + uri + "/files", params={"format": "json"}, timeout=HTTP_TIMEOUT)
    r.raise_for_status()
    return {row["Name"]: int(row["Size"]) for row in r.json()["ResultSet"]["Result"]}


def flow_small_uploads(ctx: Ctx) -> None:
    """B7: ``tar x`` of N small files into a resource on the mount against the ways a user
    uploads them otherwise (a requests PUT loop, xnatpy per file, xnatpy's one archive with
    extract=true), alternated per rep, each side into a resource of its own made beforehand
    through the API (a fresh listing for the mount: the resource is new to it).  Reports time
    per file and requests per file on that resource from the access log (xnatpy's login and
    schema reads, and the mount's walk to the resource, are in ``raw`` as ``*_all_requests``).

    Long because: four sides, each timed, counted and checked the same way, and the rows."""
    z, srv = ctx.sizes, ctx.server
    size = z.b7_kib * 1024
    src = ctx.fresh("b7-src")
    src.mkdir()
    names = [f"f{i:05d}.dat" for i in range(z.b7_files)]
    for name in names:
        (src / name).write_bytes(os.urandom(size))
    tarball = ctx.base / "b7.tar"
    timed(["tar", "cf", tarball, "-C", src, *names], 120)
    tmo = 60.0 + 2.0 * z.b7_files
    srv.building()
    labels: Dict[Tuple[str, int], str] = {}
    for rep in range(z.reps):
        for key, _ in B7_SIDES:
            labels[key, rep] = f"B7_{key.upper()}_{rep}"
            srv.put(f"/data/projects/BENCH/resources/{labels[key, rep]}", params={"format": "RAW"})
    named = b7_resource_paths(srv, labels.values())
    srv.measuring()
    res: Dict[str, List[float]] = {f"{k}_s": [] for k, _ in B7_SIDES}
    res.update({f"{k}_requests": [] for k, _ in B7_SIDES})
    cpu: Dict[str, List[Cpu]] = {k: [] for k, _ in B7_SIDES}
    ctx.log(f"B7: {z.b7_files} x {z.b7_kib} KiB into a resource, {z.reps} reps")
    m = ctx.mount()
    try:
        for rep in range(z.reps):
            order = [k for k, _ in B7_SIDES]
            if rep % 2 == 1:
                order.reverse()
            for key in order:
                label = labels[key, rep]
                uri = f"/data/projects/BENCH/resources/{label}"
                ctx.drop()
                mark = srv.mark()
                if key == "mount":
                    meter = CpuMeter(m.proc.pid if m.proc else None)
                    dest = m.path / "BENCH" / "resources" / label / "files"
                    dt, _ = timed(["tar", "xf", tarball, "-C", dest], tmo)
                    cpu[key].append(meter.read())
                else:
                    meter = CpuMeter()
                    if key == "requests":
                        r = child(PUT_LOOP, [srv.url + uri, src, *ADMIN], tmo)
                    else:
                        method = "per_file" if key == "xnatpy" else "tgz_file"
                        r = child(
                            XNATPY_UPLOAD, [srv.url, *ADMIN, "BENCH", label, src, method], tmo
                        )
                    dt = r["seconds"]
                    cpu[key].append(meter.read(client=r["cpu"]))
                ctx.patterns(f"B7 {key} rep{rep + 1}", mark)
                # the requests on the resource (xnatpy's login and schema reads are not per file)
                res[f"{key}_requests"].append(b7_requests(srv, mark, named[label]))
                res.setdefault(f"{key}_all_requests", []).append(srv.api_count(mark))
                res[f"{key}_s"].append(dt)
                listed = b7_listing(srv, uri)
                if listed != {n: size for n in names}:
                    raise BenchError(
                        f"B7 {key}: XNAT lists {len(listed)} files "
                        f"({sum(listed.values())} bytes), expected {len(names)} x {size}"
                    )
            ctx.log(
                f"  rep {rep + 1}: "
                + ", ".join(
                    f"{k} {res[f'{k}_s'][-1]:.2f} s ({res[f'{k}_requests'][-1]:.0f} req)"
                    for k, _ in B7_SIDES
                )
            )
    finally:
        ctx.unmount(m)
        shutil.rmtree(m.cache, ignore_errors=True)
    ctx.raw["small_uploads"] = res
    ctx.raw["small_uploads_cpu"] = {k: [asdict(c) for c in v] for k, v in cpu.items()}
    n = z.b7_files

    def per_file(key: str) -> str:
        t, q = median(res[f"{key}_s"]), median(res[f"{key}_requests"])
        return f"{t:.2f} s ({1000 * t / n:.1f} ms, {q / n:.2f} req per file)"

    for key, what in B7_SIDES[1:]:
        ctx.row(
            "B7",
            f"tar x {n} x {z.b7_kib} KiB into a resource on the mount vs {what}",
            per_file("mount"),
            per_file(key),
            median(res["mount_s"]) / median(res[f"{key}_s"]),
            f"time mount/{key}",
            "(report)",
            None,
            spread(res["mount_s"], res[f"{key}_s"]),
        )
    add_cpu_rows(
        ctx,
        "B7",
        f"tar x {n} x {z.b7_kib} KiB",
        cpu["mount"],
        res["mount_s"],
        "requests PUT loop",
        cpu["requests"],
        res["requests_s"],
        lower_is_better=True,
    )


def add_b6(ctx: Ctx) -> None:
    for b in ("B1", "B4"):
        vals = [v for v in ctx.raw.get("hwm_mb", {}).get(b, []) if v == v]
        if vals:
            peak = max(vals)
            what = b
            if b == "B4":
                what += f" ({ctx.raw.get('b4_objects', {}).get('experiments', '?')} experiments)"
            ctx.row(
                "B6",
                f"daemon peak RSS (VmHWM) during {what}",
                f"{peak:.0f} MB",
                "-",
                None,
                "-",
                "< 250 MB",
                peak < 250,
            )


def want(ctx: Ctx, b: str) -> bool:
    return b in ctx.args.only


# ------------------------------------------------------------------------------ report
def machine_info(argv: List[str]) -> Dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fuse = run_quiet(["fusermount3", "--version"])
    fuse_v = (fuse.stdout + fuse.stderr).strip() if fuse else "fusermount3 not found"
    lib = "?"
    ld = run_quiet(["ldconfig", "-p"])
    if ld:
        for line in ld.stdout.splitlines():
            if "libfuse3.so" in line and "=>" in line:
                lib = os.path.realpath(line.split("=>", 1)[1].strip())
                break
    git = run_quiet(
        ["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", "HEAD"]
    )
    try:
        from importlib.metadata import version

        mfuse = version("mfusepy")
    except Exception:  # noqa: BLE001 - report only
        mfuse = "?"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "libfuse": f"{fuse_v}; {lib}",
        "mfusepy": mfuse,
        "python": platform.python_version(),
        "commit": git.stdout.strip() if git and git.returncode == 0 else "?",
        "command": shlex.join(
            [
                os.path.relpath(sys.executable)
                if sys.executable.startswith(os.getcwd())
                else sys.executable,
                "-m",
                "benchmarks.run",
                *argv,
            ]
        ),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def render(info: Dict[str, str], ctx: Ctx) -> str:
    lines = ["", "xnatfs benchmarks", "================="]
    for k, v in info.items():
        lines.append(f"{k:12s} {v}")
    lines.append(f"{'latency':12s} {ctx.server.latency_ms:g} ms injected per request (emulator)")
    lines.append(
        f"{'page cache':12s} "
        + (
            "dropped before every cold/disk-warm measurement"
            if ctx.can_drop
            else "NOT dropped (no permission to write "
            "/proc/sys/vm/drop_caches): 'cold' means fresh "
            "xnatfs cache only"
        )
    )
    lines.append(f"{'sizes':12s} {asdict(ctx.sizes)}")
    ras = sorted({str(x) for x in ctx.raw.get("mount_read_ahead_kb", [])})
    lines.append(
        f"{'read-ahead':12s} mount bdi read_ahead_kb = {', '.join(ras) or '?'} "
        f"(set by {ctx.args.read_ahead_by if ctx.args.xnatfs_has_read_ahead else 'bench'})"
        f"; extra mount args: {ctx.args.mount_arg or 'none'}"
    )
    lines.append("")
    head = ("bench", "what", "mount", "baseline", "ratio", "spread of reps", "target", "result")
    body = [
        (
            r.bench,
            r.what,
            r.mount,
            r.baseline,
            fmt_ratio(r.ratio) + (f" ({r.ratio_kind})" if r.ratio is not None else ""),
            r.spread or "-",
            r.target,
            "-" if r.ok is None else ("ok" if r.ok else "MISSED"),
        )
        for r in ctx.rows
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for b in body:
        lines.append("| " + " | ".join(b) + " |")
    if ctx.notes:
        lines.append("")
        lines.extend(f"note: {n}" for n in ctx.notes)
    missed = [r for r in ctx.rows if r.ok is False]
    lines.append("")
    lines.append(f"targets missed: {len(missed)} of {sum(1 for r in ctx.rows if r.ok is not None)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def parse_args(argv: List[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=5.0,
        help="latency the emulator adds to every request while measuring "
        "(default 5; 0 and 20 are the other supported settings)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 60 s)")
    ap.add_argument(
        "--only", default=",".join(ALL), help="comma-separated subset of B1..B7 (default: all)"
    )
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, minimum 3)")
    ap.add_argument("--json", default=None, help="also write every raw sample to this JSON file")
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="py-spy record the daemon during the first cold B1/B2 repetition into "
        "DIR (collapsed stacks); slows the daemon: not for the numbers",
    )
    ap.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs, data)")
    ap.add_argument(
        "--read-ahead-kb",
        type=int,
        default=1024,
        help="the mount's kernel read-ahead (bdi read_ahead_kb; default 1024, as "
        "xnatfs's own default)",
    )
    ap.add_argument(
        "--read-ahead-by",
        choices=("bench", "xnatfs"),
        default="bench",
        help="who sets it: 'bench' (default) mounts with --read-ahead-kb 0 and writes "
        "the bdi itself once the mount is up (works around xnatfs setting it "
        "from FUSE init, which deadlocked at the time of writing: see "
        "RESULTS.md); 'xnatfs' passes --read-ahead-kb N to the mount",
    )
    ap.add_argument(
        "--b4-subjects",
        type=int,
        default=None,
        help="B4's project size in subjects, 2 experiments each (default 200; "
        "issue 12's B6 figure is for 800: 1,600 experiments)",
    )
    ap.add_argument(
        "--no-b3-zero-message-opens",
        action="store_true",
        help="B3: skip the second warm pass of the scan on a --read-only --zero-message-opens "
        "mount (a fresh mount filled by an untimed cp -r each rep)",
    )
    ap.add_argument(
        "--b2-keep-outputs",
        action="store_true",
        help="B2: keep each rep's copies and caches until the run ends instead of deleting "
        "them between reps (on an ext4 without a journal a deletion of 2,000 files slows the "
        "creations after it: RESULTS.md)",
    )
    ap.add_argument(
        "--b2-floor",
        action="store_true",
        help="B2: after each cold cp -r, time a second cp -r of the same folder through the "
        "same mount (all cached, pages warm) and a cp -r of the local copy: the floor of "
        "per-file work a cold copy cannot go below (raw JSON: floor_mount_s, floor_local_s)",
    )
    ap.add_argument(
        "--b2-latencies",
        default="5,20",
        help="B2 is also measured at these latencies in ms (default 5,20; the run's "
        "--latency-ms comes first)",
    )
    ap.add_argument(
        "--mount-arg",
        action="append",
        default=[],
        help="extra argument for `xnatfs mount` (repeatable), e.g. --mount-arg=--max-downloads=16",
    )
    args = ap.parse_args(argv)
    only = {x.strip().upper() for x in args.only.split(",") if x.strip()}
    bad = only - set(ALL)
    if bad:
        ap.error(f"unknown benchmark(s) {sorted(bad)}; choose from {','.join(ALL)}")
    args.only = only
    args.b2_latencies = [float(x) for x in args.b2_latencies.split(",") if x.strip()]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.reps is not None:
        sizes.reps = max(3, args.reps)
    if args.b4_subjects is not None:
        sizes.b4_subjects = max(1, args.b4_subjects)
    if not os.path.exists("/dev/fuse"):
        print("benchmarks: /dev/fuse is missing; the mount benchmarks cannot run", file=sys.stderr)
        return 2
    info = machine_info(argv)
    helptext = run_quiet([sys.executable, "-m", "xnatfs", "mount", "--help"], timeout=60)
    args.xnatfs_has_read_ahead = bool(helptext and "--read-ahead-kb" in helptext.stdout)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, on_term)
    base = Path(tempfile.mkdtemp(prefix="xnatfs-bench-")).resolve()
    server = Server(base, args.latency_ms)
    ctx = Ctx(args, sizes, base, server, can_drop=False, log=lambda s: print(s, flush=True))
    t_start = time.monotonic()
    rc = 0
    try:
        ctx.can_drop = drop_caches()
        if not ctx.can_drop:
            ctx.notes.append(
                "page cache could NOT be dropped (not permitted): cold/disk-warm "
                "figures include whatever the page cache still held"
            )
        ctx.log(
            f"benchmarks: temp dir {base}; page cache drop "
            f"{'permitted' if ctx.can_drop else 'NOT permitted'}"
        )
        fill = page_fill_mibs(base)
        if fill is not None:
            info["page_fill"] = (
                f"{fill:.0f} MiB/s into new page-cache pages 3 s after a drop "
                "(every byte a side keeps costs this; see RESULTS.md)"
            )
            ctx.raw["page_fill_mibs"] = fill
        server.start()
        single = bool(args.only & {"B1", "B3", "B6"})
        multi = bool(args.only & {"B2", "B3"})
        meta = bool(args.only & {"B4", "B6"})
        upload = "B5" in args.only
        small = "B7" in args.only
        t0 = time.monotonic()
        server.building()
        if single or multi or upload or small:
            build_bench_project(ctx, single, multi, upload)
        if meta:
            build_meta_project(ctx)
        ctx.log(f"data built through the API in {time.monotonic() - t0:.1f} s")
        server.measuring()
        if single:
            flow_single(ctx)
        if multi:
            flow_multi(ctx)
        if meta:
            flow_meta(ctx)
        if upload:
            flow_upload(ctx)
        if small:
            flow_small_uploads(ctx)
        if "B6" in args.only:
            add_b6(ctx)
    except KeyboardInterrupt as exc:
        print(f"benchmarks: interrupted ({exc}); cleaning up", file=sys.stderr)
        rc = 130
    except Exception as exc:  # noqa: BLE001 - report, clean up, non-zero exit
        print(f"benchmarks: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        for m in ctx.mounts:
            print(f"--- xnatfs log {m.logfile} ---\n{m.log_tail()}", file=sys.stderr)
        rc = 1
    finally:
        for m in list(ctx.mounts):
            try:
                ctx.unmount(m)
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                print(f"benchmarks: unmount {m.path} failed: {exc}", file=sys.stderr)
        try:
            server.stop()
        except Exception as exc:  # noqa: BLE001
            print(f"benchmarks: emulator stop failed: {exc}", file=sys.stderr)
        signal.signal(signal.SIGTERM, old)
        info["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        info["duration"] = f"{time.monotonic() - t_start:.0f} s"
        if ctx.rows:
            print(render(info, ctx), flush=True)
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "info": info,
                        "sizes": asdict(sizes),
                        "latency_ms": args.latency_ms,
                        "page_cache_dropped": ctx.can_drop,
                        "rows": [asdict(r) for r in ctx.rows],
                        "raw": ctx.raw,
                        "notes": ctx.notes,
                    },
                    indent=1,
                    default=str,
                )
            )
        if args.keep_temp:
            print(f"benchmarks: kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
