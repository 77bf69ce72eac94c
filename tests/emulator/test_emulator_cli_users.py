"""``xnatfs emulator`` as a newcomer runs it (issue 16 §7, §8): its usage line names the command
typed, and the user given on the command line can log in whatever the seed holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

TIMEOUT = 30


def _start(argv: List[str]) -> "tuple[subprocess.Popen, str]":
    """Start ``xnatfs emulator`` on a free port; (process, URL from its banner line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xnatfs", "emulator", "--port", "0", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the banner, printed once listening; EOF if it died
    if "listening on " not in line:
        proc.kill()
        pytest.fail(f"emulator did not start: {line}{proc.stdout.read()}")
    return proc, line.rsplit("listening on ", 1)[1].strip()


@pytest.fixture
def emulator_cli(tmp_path: Path) -> Iterator:
    procs: List[subprocess.Popen] = []

    def start(*argv: str) -> str:
        proc, url = _start(["--data", str(tmp_path / f"data{len(procs)}"), *argv])
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _projects(url: str, auth: "tuple[str, str]") -> "tuple[int, set]":
    r = requests.get(url + "/data/projects", params={"format": "json"}, auth=auth, timeout=TIMEOUT)
    if r.status_code != 200:
        return r.status_code, set()
    return 200, {row["ID"] for row in r.json()["ResultSet"]["Result"]}


def test_user_given_on_the_command_line_wins_over_the_seeds(emulator_cli) -> None:
    """The demo seed has its own ``alice`` (password alice-pw, member of DEMO1 only); asked for
    ``--user alice --password s3cret`` the emulator must let that admin in, not the seed's."""
    url = emulator_cli("--seed", "demo", "--user", "alice", "--password", "s3cret")
    status, projects = _projects(url, ("alice", "s3cret"))
    assert status == 200
    assert {"DEMO1", "DEMO2"} <= projects  # the admin asked for, not the seed's DEMO1-only user
    assert _projects(url, ("alice", "alice-pw"))[0] == 401


def test_demo_seed_users_with_the_default_admin(emulator_cli) -> None:
    """What the demo banner and the README promise: admin sees everything, alice only DEMO1."""
    url = emulator_cli("--seed", "demo", "--user", "admin", "--password", "admin")
    assert _projects(url, ("admin", "admin")) == (200, {"DEMO1", "DEMO2"})
    assert _projects(url, ("alice", "alice-pw")) == (200, {"DEMO1"})


def test_emulator_help_names_the_command_typed() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: xnatfs emulator "), res.stdout[:200]
