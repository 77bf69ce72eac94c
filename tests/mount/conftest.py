"""The ``cache_proxy`` fixture: ``xnatfs cache-proxy`` (nginx) in front of an emulator, for
``test_cache_proxy*.py``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import pytest

from tests.helpers.waiting import wait_for

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
#: the cache-proxy tests run where Debian's nginx is installed, else are skipped saying so
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="NGINX MISSING: the cache-proxy tests need Debian's nginx package "
    "(scripts/install.sh installs it)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cache_proxy(tmp_path):
    """Factory: ``cache_proxy(emulator_url)`` -> the URL mounts use; stopped after the test.

    Its cache is ``<base>/proxy-cache`` and its run directory ``<base>/proxy-run`` (``base``:
    the test's tmp_path unless given).  As root its workers run as root (``worker_user``),
    since nginx's default, www-data, cannot enter pytest's 0700 temp dirs; ``worker_user=""``
    keeps the default (give a ``base`` www-data can reach)."""
    procs = []

    def start(upstream: str, base: Optional[Path] = None, worker_user: str = "root") -> str:
        base = base or tmp_path
        port = _free_port()
        as_root = os.geteuid() == 0 and worker_user
        with open(tmp_path / "cache-proxy.out", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "xnatfs",
                    "cache-proxy",
                    "--upstream",
                    upstream,
                    "--port",
                    str(port),
                    "--cache-dir",
                    str(base / "proxy-cache"),
                    "--run-dir",
                    str(base / "proxy-run"),
                    "--cache-size",
                    "1G",
                    *(["--worker-user", worker_user] if as_root else []),
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        procs.append(proc)

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "cache-proxy.out").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(up, 30, "the cache proxy to listen")
        return f"http://127.0.0.1:{port}{urlsplit(upstream).path}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        assert proc.returncode == 0, (tmp_path / "cache-proxy.out").read_text()
