"""Helpers of the reliability suite: real mounts against the emulator with its faults on.

Every test here records its figures (what was tried, how many, what was lost) with ``record``:
printed as one ``RELIABILITY name {...}`` line (``pytest -s`` shows them) and appended as JSON to
the file named by ``XNATFS_RELIABILITY_REPORT`` if set; docs/RELIABILITY.md holds the table.

Durations and sizes are parameters with short CI defaults (the whole suite stays within about a
minute and a half on a 2-core machine):

- ``XNATFS_RELIABILITY_SECONDS``  length of the session-expiry loop (default 20; the issue: 300)
- ``XNATFS_RELIABILITY_BIG_MIB``  size of the file uploaded while the daemon is killed (64; 200)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

import pytest
import requests

from tests.conftest import ADMIN
from tests.helpers.tmpfs import small_tmpfs
from tests.helpers.waiting import wait_for  # noqa: F401 - the reliability tests import it here

PROJECT = "DEMO1"
RESOURCE = "protocols"
FILES = f"{PROJECT}/resources/{RESOURCE}/files"
RESOURCE_URI = f"/data/projects/{PROJECT}/resources/{RESOURCE}"


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def mixed_sizes(n: int, low: int, high: int, seed: int) -> List[int]:
    """``n`` sizes spread log-uniformly over [low, high] (both ends included)."""
    rnd = random.Random(seed)
    sizes = [low, high] + [int(low * (high / low) ** rnd.random()) for _ in range(n - 2)]
    rnd.shuffle(sizes)
    return sizes


def server_listing(
    url: str, resource_uri: str = RESOURCE_URI
) -> Optional[Dict[str, Tuple[int, str]]]:
    """name -> (size, digest) of a resource, straight from the server; None on any error
    (callers poll it while the server may still be failing)."""
    try:
        r = requests.get(
            f"{url}{resource_uri}/files", params={"format": "json"}, auth=ADMIN, timeout=30
        )
        if r.status_code != 200:
            return None
        rows = r.json()["ResultSet"]["Result"]
    except (requests.RequestException, ValueError, KeyError):
        return None
    return {row["Name"]: (int(row["Size"]), row.get("digest", "")) for row in rows}


def server_bytes(url: str, name: str, resource_uri: str = RESOURCE_URI) -> bytes:
    r = requests.get(f"{url}{resource_uri}/files/{name}", auth=ADMIN, timeout=60)
    assert r.status_code == 200, (name, r.status_code)
    return r.content


def put_file(url: str, uri: str, data: bytes) -> None:
    """Test data set-up straight to the emulator (not the code under test)."""
    r = requests.put(
        url + uri,
        data=data,
        auth=ADMIN,
        timeout=60,
        headers={"Content-Type": "application/octet-stream"},
        params={"overwrite": "true", "inbody": "true"},
    )
    assert r.status_code in (200, 201), (r.status_code, r.text[:300])


def successful_puts(records, needle: str = "/files/") -> Dict[str, int]:
    """file name -> number of PUTs the server accepted (from the access log)."""
    from urllib.parse import unquote

    out: Dict[str, int] = {}
    for method, path_qs, status, _ in records:
        path = unquote(path_qs.split("?", 1)[0])
        if method == "PUT" and needle in path and status in (200, 201):
            name = path.rsplit("/", 1)[-1]
            out[name] = out.get(name, 0) + 1
    return out


def mount_stats(mnt) -> Optional[dict]:
    """``.xnatfs/stats`` of a mount (what ``xnatfs status`` shows), or None if unreadable."""
    try:
        with open(os.path.join(mnt, ".xnatfs", "stats"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def umount_timed(mnt) -> Tuple[subprocess.CompletedProcess, float]:
    """``xnatfs umount MNT`` in a child process: its result and how long it took (s)."""
    t = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "umount", str(mnt)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res, time.monotonic() - t


_COPIER = r"""
import errno, json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
spec = json.load(sys.stdin)
def one(item):
    src, dst = item
    out = {"dst": dst, "open_errors": [], "close_errno": 0, "write_errno": 0}
    for _ in range(50):  # like a user running cp again when it could not even start
        try:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            break
        except OSError as e:
            out["open_errors"].append(e.errno)
            time.sleep(0.1)
    else:
        return out
    try:
        with open(src, "rb") as fh:
            while True:
                chunk = fh.read(1 << 20)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
    except OSError as e:
        out["write_errno"] = e.errno
    try:
        os.close(fd)  # FUSE flush: the upload; its errno is the user's answer
    except OSError as e:
        out["close_errno"] = e.errno
    out["opened"] = True
    return out
with ThreadPoolExecutor(spec["threads"]) as pool:
    print(json.dumps(list(pool.map(one, spec["pairs"]))))
"""


def copy_in(pairs: List[Tuple[str, str]], threads: int = 4, timeout: float = 600) -> List[dict]:
    """Copy ``src -> dst`` pairs into the mount from a child process with ``threads`` threads;
    one dict per pair: ``open_errors`` (errnos, retried), ``write_errno``, ``close_errno``."""
    res = subprocess.run(
        [sys.executable, "-c", _COPIER],
        input=json.dumps({"threads": threads, "pairs": pairs}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def record(request):
    """``record(**figures)``: print and keep this test's figures for docs/RELIABILITY.md."""

    def emit(**figures) -> None:
        line = json.dumps({"test": request.node.name, **figures}, sort_keys=True)
        print(f"RELIABILITY {line}")
        target = os.environ.get("XNATFS_RELIABILITY_REPORT")
        if target:
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    return emit


@pytest.fixture
def cache_on_64m_tmpfs(tmp_path):
    """A cache directory on its own 64 MiB tmpfs: a small, really full disk."""
    with small_tmpfs(tmp_path / "tmpfs", "64m") as where:
        yield where / "cache"
