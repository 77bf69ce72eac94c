"""The real-server mode, exercised exactly as a user with their own XNAT would run it (issue 11
"How we will know"): an emulator started separately (``python -m xnatfs emulator``), then
``XNATFS_TEST_URL=<it> pytest -m real`` in a child process.  The child knows the server only by
its URL; it must pass and leave the scratch project as it found it, and it must refuse a scratch
project holding data it did not create.

This is how the default ``pytest tests/`` run includes the real-mode tests (once: conftest.py
deselects the in-process copies then).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.conftest import ADMIN, HAVE_FUSE
from tests.real.conftest import Target, project_inventory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def separate_emulator(tmp_path: Path, demo_template: Path) -> Iterator[str]:
    """``python -m xnatfs emulator`` in its own process on a free port; yields its URL."""
    data = tmp_path / "emu-data"
    shutil.copytree(demo_template, data)
    log = open(tmp_path / "emulator.out", "w+")  # noqa: SIM115 - the emulator's, for its life
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xnatfs",
            "emulator",
            "--data",
            str(data),
            "--port",
            "0",
            "--seed",
            "empty",
            "--user",
            ADMIN[0],
            "--password",
            ADMIN[1],
            "--access-log",
            str(tmp_path / "access.log"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            log.seek(0)
            m = re.search(r"listening on (http://\S+)", log.read())
            if m:
                url = m.group(1).rstrip("/")
                break
            assert proc.poll() is None, (
                f"emulator exited: {(tmp_path / 'emulator.out').read_text()}"
            )
            assert time.monotonic() < deadline, "emulator did not start within 60 s"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _child_pytest(
    url: str, project: str, basetemp: Path, *extra: str
) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        XNATFS_TEST_URL=url,
        XNATFS_TEST_USER=ADMIN[0],
        XNATFS_TEST_PASSWORD=ADMIN[1],
        XNATFS_TEST_PROJECT=project,
        XNATFS_TEST_ACCESS_LOG=str(basetemp.parent / "access.log"),
        PYTHONPATH=str(ROOT),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "real",
        "--basetemp",
        str(basetemp),
        "-o",
        "console_output_style=classic",
        "tests/real",
        *extra,
    ]
    return subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=540)


def _snapshot(t: Target) -> dict:
    inv = project_inventory(t, t.project)
    inv["prearchive_code"] = [
        t.http().get(f"{t.url}/data/projects/{t.project}/prearchive_code", timeout=30).text.strip()
    ]
    return inv


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_mode_against_separate_emulator(separate_emulator: str, tmp_path: Path) -> None:
    url = separate_emulator
    s = requests.Session()
    s.auth = ADMIN
    for p in ("RTSCRATCH", "RTBUSY"):
        assert s.put(f"{url}/data/projects/{p}", timeout=30).status_code in (200, 201)
    # someone else's data in RTBUSY: the suite must refuse to write there
    assert s.put(f"{url}/data/projects/RTBUSY/subjects/somebody_elses", timeout=30).status_code in (
        200,
        201,
    )
    scratch = Target(url, ADMIN[0], ADMIN[1], "RTSCRATCH", emulator=False)
    busy = Target(url, ADMIN[0], ADMIN[1], "RTBUSY", emulator=False)
    before, busy_before = _snapshot(scratch), _snapshot(busy)

    res = _child_pytest(url, "RTSCRATCH", tmp_path / "child")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 13, out[-3000:]
    if HAVE_FUSE:
        assert "skipped" not in out, out[-3000:]
    assert _snapshot(scratch) == before

    res = _child_pytest(url, "RTBUSY", tmp_path / "child-busy", "-k", "nested")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "refusing to write: scratch project RTBUSY holds data" in out, (
        out[-3000:]
    )
    assert "subjects: somebody_elses" in out
    assert _snapshot(busy) == busy_before
