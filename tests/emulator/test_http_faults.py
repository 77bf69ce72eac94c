"""Fault injection, access log and the command line (docs/ARCHITECTURE.md §11 "The emulator")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from xnatfs.emulator import Emulator

Client = Any
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def femu(tmp_path: Path) -> Iterator[Emulator]:
    """A private emulator: faults are global to a server."""
    e = Emulator(tmp_path / "emu", seed="empty", access_log=tmp_path / "access.log").start()
    with requests.Session() as s:
        s.auth = ("admin", "admin")
        s.put(f"{e.url}/data/projects/F", timeout=10).raise_for_status()
        s.put(
            f"{e.url}/data/projects/F/resources/R/files/big.bin",
            data=os.urandom(300_000),
            timeout=10,
        ).raise_for_status()
    yield e
    e.stop()


def test_error_rate(femu: Emulator, make_client: Any) -> None:
    c = make_client(("admin", "admin"), base=femu.url)
    femu.faults.error_rate, femu.faults.error_status = 1.0, 503
    r = c.get("/data/projects?format=json")
    assert r.status_code == 503 and r.text.startswith("<html>")
    assert "SESSION_EXPIRATION_TIME" in r.headers["Set-Cookie"]
    # control calls are never faulted
    assert c.get("/emulator/faults").json()["error_rate"] == 1.0
    femu.faults.error_rate = 0.0
    assert c.get("/data/projects?format=json").status_code == 200


def test_fault_methods_scope_the_faults(femu: Emulator, make_client: Any) -> None:
    """``fault_methods``: only those methods are faulted (a move whose copy lands and whose
    DELETE fails, tests/api/test_moves.py)."""
    c = make_client(("admin", "admin"), base=femu.url)
    femu.faults.error_rate, femu.faults.fault_methods = 1.0, "DELETE"
    try:
        assert c.get("/data/projects/F/resources/R/files?format=json").status_code == 200
        r = c.delete("/data/projects/F/resources/R/files/big.bin")
        assert r.status_code == 500
    finally:
        femu.faults.error_rate, femu.faults.fault_methods = 0.0, ""
    assert c.get("/data/projects/F/resources/R/files/big.bin").status_code == 200


def test_html_login_rate(femu: Emulator, make_client: Any) -> None:
    c = make_client(("admin", "admin"), base=femu.url)
    femu.faults.html_login_rate = 1.0
    r = c.get("/data/projects?format=json")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "<html" in r.text


def test_drop_download(femu: Emulator, make_client: Any) -> None:
    c = make_client(("admin", "admin"), base=femu.url)
    femu.faults.drop_rate = 1.0
    with pytest.raises(requests.exceptions.RequestException):
        r = c.get("/data/projects/F/resources/R/files/big.bin")
        r.raise_for_status()
        assert len(r.content) == 300_000  # not reached: the body is cut
    femu.faults.drop_rate = 0.0
    assert len(c.get("/data/projects/F/resources/R/files/big.bin").content) == 300_000


def test_drop_upload_leaves_no_file(femu: Emulator, make_client: Any) -> None:
    c = make_client(("admin", "admin"), base=femu.url)
    femu.faults.drop_rate = 1.0
    with pytest.raises(requests.exceptions.ConnectionError):
        c.put("/data/projects/F/resources/R/files/up.bin", data=b"u" * 200_000)
    femu.faults.drop_rate = 0.0
    rows = c.get("/data/projects/F/resources/R/files?format=json").json()["ResultSet"]["Result"]
    assert [x["Name"] for x in rows] == ["big.bin"]


def test_faults_over_http_and_expire(femu: Emulator, make_client: Any) -> None:
    ctl = make_client(("admin", "admin"), base=femu.url)
    r = ctl.post("/emulator/faults", json={"latency_ms": 1, "error_status": 503})
    assert r.status_code == 200 and r.json()["error_status"] == 503
    assert femu.faults.latency_ms == 1.0
    assert ctl.post("/emulator/faults", json={"bogus": 1}).status_code == 400
    assert make_client(("bob", "x"), base=femu.url).get("/emulator/faults").status_code == 401
    user = make_client(base=femu.url)
    user.post("/data/services/auth", data={"username": "admin", "password": "admin"})
    assert user.get("/data/auth").status_code == 200
    assert ctl.post("/emulator/expire-sessions").status_code == 200
    assert user.get("/data/auth").status_code == 401


def test_access_log(femu: Emulator, make_client: Any, tmp_path: Path) -> None:
    c = make_client(("admin", "admin"), base=femu.url)
    c.get("/data/projects/F/resources/R/files?format=json&x=%20y")
    c.get("/data/nothing/here")
    femu.wait_idle()  # the line is written just after the last byte was sent
    recs = femu.access_records()
    assert recs[-2].method == "GET" and recs[-2].path_qs.endswith("files?format=json&x=%20y")
    assert recs[-2].status == 200 and recs[-2].bytes_sent > 0
    assert recs[-1].status == 404
    deadline = time.monotonic() + 5
    line = ""
    while time.monotonic() < deadline:
        lines = (tmp_path / "access.log").read_text().splitlines()
        if lines and lines[-1].startswith("GET /data/nothing/here 404 "):
            line = lines[-1]
            break
        time.sleep(0.01)  # poll interval of the wait-for-condition
    assert line, "access log line missing"


def test_cli_starts_and_stops(tmp_path: Path) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xnatfs.emulator",
            "--data",
            str(tmp_path / "d"),
            "--port",
            "0",
            "--user",
            "root",
            "--password",
            "pw",
            "--seed",
            "empty",
            "--context-path",
            "/xnat",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        _check_cli(proc)


def _check_cli(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("XNAT emulator listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        assert url.endswith("/xnat")
        r = requests.get(f"{url}/data/auth", auth=("root", "pw"), timeout=10)
        assert r.text == "User 'root' is logged in"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
