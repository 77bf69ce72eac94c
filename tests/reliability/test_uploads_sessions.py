"""Sessions that expire every few seconds during a read/list/write loop (issue 18): the client
logs in again and repeats the request; the user sees no failure at all.

The emulator ends every session ``session_lifetime`` seconds after its login however busy it is
(a real XNAT's sessions end on restarts, node changes, admin action). Length of the loop:
``XNATFS_RELIABILITY_SECONDS`` (default 20 for CI; the issue's figure is 300).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import needs_fuse
from tests.reliability.conftest import (
    FILES,
    PROJECT,
    env_float,
    md5,
    mount_stats,
    put_file,
    server_bytes,
    server_listing,
    wait_for,
)

SECONDS = env_float("XNATFS_RELIABILITY_SECONDS", 20)
#: the suite's per-test timeout (pyproject) would cut a long run short
pytestmark = [needs_fuse, pytest.mark.timeout(int(SECONDS) + 240)]

LIFETIME = 2.0
COLD = f"{PROJECT}/resources/coldsess/files"

_LOOP = r"""
import hashlib, json, os, sys, time
spec = json.load(sys.stdin)
stop = time.monotonic() + spec["seconds"]
out = {"reads": 0, "lists": 0, "writes": 0, "failures": [], "wrong": [], "written": {}}
i = 0
while time.monotonic() < stop:
    cold = spec["cold"][i % len(spec["cold"])]
    try:
        with open(os.path.join(spec["cold_dir"], cold[0]), "rb") as fh:
            if hashlib.md5(fh.read()).hexdigest() != cold[1]:
                out["wrong"].append(cold[0])
        out["reads"] += 1
    except OSError as e:
        out["failures"].append(["read", cold[0], e.errno])
    try:
        os.listdir(spec["write_dir"]); os.listdir(spec["cold_dir"])
        out["lists"] += 1
    except OSError as e:
        out["failures"].append(["list", spec["write_dir"], e.errno])
    name = "s%04d.bin" % i
    data = os.urandom(1000 + 7919 * (i % 64))
    try:
        with open(os.path.join(spec["write_dir"], name), "wb") as fh:
            fh.write(data)
        out["writes"] += 1
        out["written"][name] = hashlib.md5(data).hexdigest()
    except OSError as e:
        out["failures"].append(["write", name, e.errno])
    i += 1
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sessions_expiring_every_few_seconds_cause_no_user_visible_failure(
    make_emulator, make_mount, record
):
    seconds = SECONDS
    emu = make_emulator(session_lifetime=LIFETIME)
    cold = []
    for i in range(300):
        data = os.urandom(2000 + 97 * i)
        name = f"c{i:03d}.bin"
        put_file(emu.url, f"/data/projects/{PROJECT}/resources/coldsess/files/{name}", data)
        cold.append([name, md5(data)])
    m = make_mount(emu.url, "--timeout", "20")
    mark = emu.mark()
    res = subprocess.run(
        [sys.executable, "-c", _LOOP],
        input=json.dumps(
            {
                "seconds": seconds,
                "cold": cold,
                "cold_dir": str(m.path / COLD),
                "write_dir": str(m.path / FILES),
            }
        ),
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    records = emu.since(mark)
    unauthorized = sum(1 for r in records if r[2] == 401)
    logins = sum(
        1
        for r in records
        if r[0] in ("PUT", "POST")
        and r[1].split("?")[0].endswith(("/data/services/auth", "/data/JSESSION"))
    )
    wait_for(
        lambda: not (mount_stats(m.path) or {}).get("uploads", True), 60, "the uploads to settle"
    )
    listing = server_listing(emu.url) or {}
    missing = [n for n in out["written"] if n not in listing]
    wrong_on_server = [
        n for n, h in out["written"].items() if n in listing and md5(server_bytes(emu.url, n)) != h
    ]
    record(
        seconds=seconds,
        session_lifetime_s=LIFETIME,
        reads=out["reads"],
        lists=out["lists"],
        writes=out["writes"],
        answers_401=unauthorized,
        logins=logins,
        user_failures=len(out["failures"]),
        wrong_reads=len(out["wrong"]),
        missing_on_server=len(missing),
        wrong_on_server=len(wrong_on_server),
    )
    assert out["failures"] == []
    assert out["wrong"] == []
    assert missing == [] and wrong_on_server == []
    assert out["writes"] > 0 and out["reads"] > 0
    # sessions really did end under the loop, more than once
    assert unauthorized >= 2 and logins >= 2
