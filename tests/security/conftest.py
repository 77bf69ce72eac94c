"""The hostile-server fixtures (issue 17): ``hostile`` (mode switch: ``hostile.mode = "..."``,
see ``hostile.MODES``) and ``evil`` (another host that must never be asked anything), plus
daemon measurements shared by the security tests."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.security.hostile import HostileServer


@pytest.fixture
def evil() -> Iterator[HostileServer]:
    """A second server on another loopback address: redirects and absolute URIs point here;
    a test asserts ``evil.requests == []``."""
    server = HostileServer(host="127.0.0.2").start()
    yield server
    server.stop()


@pytest.fixture
def hostile(evil) -> Iterator[HostileServer]:
    """A hostile XNAT in mode ``ok``; set ``.mode`` before the file operations."""
    server = HostileServer(evil_url=evil.url + "/").start()
    yield server
    server.stop()


@pytest.fixture
def self_signed(tmp_path) -> "tuple[str, str]":
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), made with openssl."""
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmHWM for {pid}")


def daemon_pid(mount) -> int:
    """The process serving the mount (``--foreground``: the one the test started)."""
    assert mount.proc is not None and mount.proc.poll() is None
    return mount.proc.pid




_OP = r"""
import errno, json, os, sys, time
kind, path = sys.argv[1], sys.argv[2]
t = time.monotonic()
out = {}
try:
    if kind == "stat":
        out["size"] = os.stat(path).st_size
    elif kind == "listdir":
        out["names"] = sorted(os.listdir(path))
    elif kind == "read":
        with open(path, "rb") as f:
            data = f.read()
        out["size"] = len(data)
        out["head"] = data[:64].decode("latin-1")
    out["errno"] = 0
except OSError as e:
    out["errno"] = e.errno
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""


def fs_op(kind: str, path: "os.PathLike[str] | str", timeout: float = 120) -> dict:
    """One file operation (``stat``, ``listdir``, ``read``) in a child process (a hung FUSE call
    cannot hang the test run): ``{"errno", "seconds", ...}``, the time measured around the
    call itself.  A child still blocked at ``timeout`` is sent SIGKILL and reported as errno
    None, ``hung``."""
    import json
    import subprocess
    import sys
    import time

    t = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", _OP, kind, str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # blocked in a FUSE request: SIGKILL stays pending until the daemon answers (the very
        # defect of issue 17 §1), so do not wait for the child; it ends with the mount
        child.kill()
        return {"errno": None, "seconds": time.monotonic() - t, "hung": True}
    assert child.returncode == 0, stderr
    return json.loads(stdout)
