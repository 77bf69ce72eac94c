"""Real-server mode (issue 11 §1): the same suite against any XNAT, or against the emulator.

With ``XNATFS_TEST_URL`` set, every test in ``tests/real`` talks to that server only through its
URL: credentials from ``XNATFS_TEST_USER``/``XNATFS_TEST_PASSWORD`` or the netrc entry for its
host, writes only inside ``XNATFS_TEST_PROJECT`` (a scratch project the suite leaves as it found
it, and refuses to touch when it holds anything the suite did not create).  Without the variable
the fixture starts an emulator with demo data and a fresh scratch project, so CI runs the same
tests and they cannot rot.

Knobs (environment): ``XNATFS_TEST_SAMPLE`` (objects per level in the read checks, default 2),
``XNATFS_TEST_MAX_MB`` (largest file the read checks hash, default 64), ``XNATFS_TEST_ACCESS_LOG``
(the server's access log as ``METHOD PATH STATUS BYTES`` lines, e.g. the emulator's
``--access-log``: request counts are checked only with it).

The default ``pytest tests/`` run includes these tests once: ``test_selfcheck.py`` runs them in a
child ``pytest -m real`` against a separately started emulator (what a user with a real server
does), so the in-process copies are deselected then; ``pytest -m real`` or ``pytest tests/real``
without the self-check runs them in-process.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import ADMIN, FUSE_SKIP_REASON, HAVE_FUSE, EmulatorRun, Mount

#: every object the write checks make starts with this, so a later run can tell its own
#: leftovers (from a killed run) from data it must not touch
PREFIX = "xnatfsrt"
SCRATCH_DEFAULT = "XNATFS_SCRATCH"
HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Mark everything here ``real`` and in one pytest-xdist group (``--dist loadgroup``:
    one worker runs them one at a time, as they share the scratch project of a real XNAT;
    before xdist reads the group, hence ``tryfirst``); and when the self-check will run these
    tests in a child pytest (a default run without ``-m real``), do not run them a second
    time in-process."""
    mine = [it for it in items if Path(str(it.fspath)).parent == HERE]
    for it in mine:
        it.add_marker(pytest.mark.xdist_group("real"))
        if it.name != "test_real_mode_against_separate_emulator":
            it.add_marker(pytest.mark.real)
    selfcheck = any(it.name == "test_real_mode_against_separate_emulator" for it in mine)
    if selfcheck and not os.environ.get("XNATFS_TEST_URL") and not config.option.markexpr:
        drop = [it for it in mine if it.name != "test_real_mode_against_separate_emulator"]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [it for it in items if it not in drop]


# ------------------------------------------------------------------------------ the server
@dataclass
class Target:
    """The server under test, as a user of it knows it."""

    url: str
    user: str
    password: str
    project: str  # the scratch project
    emulator: bool  # started by this fixture
    #: the server's access log in the emulator's "METHOD PATH STATUS BYTES" format, when known
    #: (``XNATFS_TEST_ACCESS_LOG``): request counts are checked only then
    access_log: Optional[Path] = None

    def requests_since(self, mark: int) -> List[tuple]:
        """(method, path) of the requests logged after line ``mark``."""
        return [tuple(ln.split(" ")[:2]) for ln in self._lines()[mark:] if " " in ln]

    def log_mark(self) -> int:
        return len(self._lines())

    def _lines(self) -> List[str]:
        if self.access_log is None or not self.access_log.exists():
            return []
        return self.access_log.read_text(encoding="utf-8", errors="replace").splitlines()

    def http(self) -> requests.Session:
        s = requests.Session()
        s.auth = (self.user, self.password)
        return s


def _credentials(url: str) -> tuple:
    user, password = os.environ.get("XNATFS_TEST_USER"), os.environ.get("XNATFS_TEST_PASSWORD")
    if user and password:
        return user, password
    host = urlsplit(url).hostname or ""
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        auth = None
    if not auth:
        pytest.exit(
            f"XNATFS_TEST_URL={url}: set XNATFS_TEST_USER and XNATFS_TEST_PASSWORD, or "
            f"add a netrc entry for {host}",
            returncode=4,
        )
    return auth[0], auth[2]


@pytest.fixture(scope="session")
def target(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Target]:
    url = os.environ.get("XNATFS_TEST_URL", "").rstrip("/")
    if url:
        user, password = _credentials(url)
        project = os.environ.get("XNATFS_TEST_PROJECT", "")
        log = os.environ.get("XNATFS_TEST_ACCESS_LOG")
        yield Target(
            url, user, password, project, emulator=False, access_log=Path(log) if log else None
        )
        return
    base = tmp_path_factory.mktemp("real-emu")
    shutil.copytree(request.getfixturevalue("demo_template"), base / "data")
    run = EmulatorRun(base / "data", base / "access.log", seed="empty").start()
    t = Target(
        run.url, ADMIN[0], ADMIN[1], SCRATCH_DEFAULT, emulator=True, access_log=base / "access.log"
    )
    r = t.http().put(f"{t.url}/data/projects/{t.project}", timeout=30)
    assert r.status_code in (200, 201), r.text
    try:
        yield t
    finally:
        run.stop()


@pytest.fixture(scope="session")
def xnatpy(target: Target) -> Iterator[Any]:
    """An xnatpy session: the reference every check compares the mount with."""
    import xnat

    session = xnat.connect(
        target.url, user=target.user, password=target.password, loglevel="ERROR", default_timeout=60
    )
    try:
        yield session
    finally:
        session.disconnect()


def start_mount(target: Target, base: Path, *args: str) -> Mount:
    if not HAVE_FUSE:
        pytest.skip(FUSE_SKIP_REASON)
    base.mkdir(parents=True, exist_ok=True)
    return Mount(
        target.url,
        base / "mnt",
        base / "cache",
        base / "mount.log",
        list(args),
        credentials=(target.user, target.password),
    ).start(timeout=60)


def stop_mount(m: Mount, failed: bool = False) -> None:
    if failed:
        print(f"--- xnatfs log ({m.logfile}) ---\n{m.log_tail(200)}")
    if m.proc is not None and m.proc.poll() is None and not failed:
        m.umount()
    else:
        m.cleanup()


# ------------------------------------------------------------------------------ file operations
_WALK = r"""
import hashlib, json, os, sys
ops = json.loads(sys.stdin.read())
out = []
for op, path in ops:
    try:
        if op == "ls":
            out.append(sorted(n for n in os.listdir(path)))
        elif op == "stat":
            st = os.stat(path)
            out.append({"size": st.st_size, "dir": os.path.isdir(path)})
        elif op == "md5":
            h = hashlib.md5()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out.append(h.hexdigest())
        elif op == "read":
            with open(path, "rb") as f:
                out.append(f.read().decode("latin-1"))
        elif op == "xattrs":
            out.append({n: os.getxattr(path, n).decode("utf-8", "replace")
                        for n in os.listxattr(path) if n.startswith("user.xnat.")})
        else:
            out.append(["error", "unknown op " + op])
    except OSError as e:
        out.append(["error", e.errno])
print(json.dumps(out))
"""


def fs_batch(ops: List[tuple], timeout: float = 300) -> List[Any]:
    """Run plain file operations on the mount in a child process with a timeout (a hung FUSE
    request never hangs the test run); ``["error", errno]`` for a failed one."""
    res = subprocess.run(
        [sys.executable, "-c", _WALK],
        input=json.dumps(ops),
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def escape_name(name: str) -> str:
    """The mount's reversible name escape (README "The path rule"), written out here on its own
    so that these tests check the mount's names against xnatpy's, not against its own code:
    ``.``/``..`` -> ``%2E``/``%2E%2E``; a ``%`` that would read as an escape (followed by
    ``25``, ``2F``, ``00`` or ``2E``, either case) -> ``%25``; ``/`` -> ``%2F``, NUL -> ``%00``."""
    if name in (".", ".."):
        return "%2E" * len(name)
    name = re.sub(r"%(?=25|2[Ff]|00|2[Ee])", "%25", name)
    return name.replace("/", "%2F").replace("\x00", "%00")


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def project_inventory(target: Target, project: str) -> Dict[str, List[str]]:
    """What a project holds, as names per kind (the ``as found`` snapshot of the scratch
    project): subjects, experiments, project resources and their files, prearchive sessions."""
    s = target.http()
    base = f"{target.url}/data/projects/{project}"

    def rows(uri: str) -> List[Dict[str, Any]]:
        r = s.get(uri, params={"format": "json"}, timeout=60)
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return r.json()["ResultSet"]["Result"]

    inv = {
        "subjects": sorted(r["label"] for r in rows(f"{base}/subjects")),
        "experiments": sorted(r["label"] for r in rows(f"{base}/experiments")),
        "resources": sorted(
            str(r.get("label") or r.get("xnat_abstractresource_id"))
            for r in rows(f"{base}/resources")
        ),
        "prearchive": sorted(
            str(r.get("url")) for r in rows(f"{target.url}/data/prearchive/projects/{project}")
        ),
    }
    files = []
    for res in inv["resources"]:
        files += [
            f"{res}/" + str(r["URI"]).split("/files/", 1)[-1]
            for r in rows(f"{base}/resources/{res}/files")
        ]
    inv["files"] = sorted(files)
    return inv


def foreign(inv: Dict[str, List[str]]) -> List[str]:
    """Names in an inventory that the suite did not make (no PREFIX)."""
    out = []
    for kind, names in inv.items():
        if kind == "files":
            continue  # judged by their resource
        for n in names:
            last = n.rstrip("/").rsplit("/", 1)[-1]
            if not last.startswith(PREFIX):
                out.append(f"{kind}: {n}")
    return out


def delete_prearchive_session(target: Target, src: str, timeout: float = 60.0) -> None:
    """Delete a prearchive session (``src`` = ``/prearchive/projects/P/TS/S``) and wait until it
    is gone: XNAT queues the delete (``QUEUED_DELETING``, then ``DELETING``) and refuses one
    for a session that is not settled yet (403), so both are polled within ``timeout``."""
    s = target.http()
    session = f"{target.url}/data{src}"
    end = time.monotonic() + timeout
    asked = False
    while time.monotonic() < end:
        gone = s.get(session, params={"format": "json"}, timeout=60).status_code == 404
        if gone:
            return
        if not asked:
            r = s.post(
                f"{target.url}/data/services/prearchive/delete", params={"src": src}, timeout=60
            )
            asked = r.status_code < 400
        time.sleep(0.2)
    raise AssertionError(f"prearchive session {src} still there after {timeout:g}s")


def clean_own(target: Target, project: str) -> None:
    """Remove what an earlier (killed) run of the suite left: only names with PREFIX."""
    s = target.http()
    base = f"{target.url}/data/projects/{project}"
    inv = project_inventory(target, project)
    for url in inv["prearchive"]:
        if url.rstrip("/").rsplit("/", 1)[-1].startswith(PREFIX):
            delete_prearchive_session(target, url)
    for e in inv["experiments"]:
        if e.startswith(PREFIX):
            s.delete(f"{base}/experiments/{e}", params={"removeFiles": "true"}, timeout=60)
    for sub in inv["subjects"]:
        if sub.startswith(PREFIX):
            s.delete(f"{base}/subjects/{sub}", params={"removeFiles": "true"}, timeout=60)
    for res in inv["resources"]:
        if res.startswith(PREFIX):
            s.delete(f"{base}/resources/{res}", params={"removeFiles": "true"}, timeout=60)


@dataclass
class Scratch:
    project: str
    found: Dict[str, List[str]]


@pytest.fixture(scope="session")
def scratch(target: Target) -> Iterator[Scratch]:
    """The scratch project, checked before any write: refuse when it holds data the suite did
    not create; after the session it must be exactly as found."""
    if not target.project:
        pytest.skip("set XNATFS_TEST_PROJECT to a scratch project to run the write checks")
    r = target.http().get(
        f"{target.url}/data/projects/{target.project}", params={"format": "json"}, timeout=60
    )
    if r.status_code != 200:
        pytest.fail(
            f"scratch project {target.project}: GET answered {r.status_code}; create it "
            f"first (and give {target.user} owner rights)",
            pytrace=False,
        )
    clean_own(target, target.project)
    found = project_inventory(target, target.project)
    bad = foreign(found)
    if bad:
        pytest.fail(
            f"refusing to write: scratch project {target.project} holds data this suite "
            f"did not create ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); "
            f"use an empty project",
            pytrace=False,
        )
    yield Scratch(target.project, found)
    after = project_inventory(target, target.project)
    assert after == found, (
        f"scratch project {target.project} not left as found: before {found}, after {after}"
    )
