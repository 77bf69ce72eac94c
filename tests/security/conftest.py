"""The hostile-server fixtures (issue 17): ``hostile`` (mode switch: ``hostile.mode = "..."``,
see ``hostile.MODES``) and ``evil`` (another host that must never be asked anything), plus
daemon measurements shared by the security tests."""

from __future__ import annotations

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
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
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
