"""The whole prearchive through the mount (issue 11 §2): ``mv`` between prearchive projects,
``xnatfs prearchive rebuild``, ``user.xnat.status``, and waiting for the state XNAT requires.

Real /dev/fuse against the emulator, whose move/rebuild services queue like XNAT's
(``QUEUED_*`` first, the result a moment later, docs/XNAT-API.md §7.3); what the server holds is
checked with xnatpy, an independent client.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN, needs_fuse
from tests.mount.helpers import sh
from xnatfs.emulator import dicom

pytestmark = [needs_fuse]
xnat = pytest.importorskip("xnat")


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


def _import(url: str, tmp_path: Path, label: str) -> tuple[str, str]:
    """A fresh session in DEMO1's prearchive; (timestamp, folder)."""
    zpath = tmp_path / f"{label}.zip"
    dicom.build_dicom_zip(
        dicom.StudySpec(
            seed=label,
            patient_name=f"{label}S",
            patient_id=label,
            series=(dicom.SeriesSpec(1, "T1w", 2),),
        ),
        zpath,
    )
    with xnat.connect(url, user=ADMIN[0], password=ADMIN[1], loglevel="ERROR") as s:
        pre = s.services.import_(zpath, project="DEMO1", destination="/prearchive/projects/DEMO1")
        return pre.data["timestamp"], pre.folder_name


def _sessions(url: str, project: str, label: str) -> list:
    with xnat.connect(url, user=ADMIN[0], password=ADMIN[1], loglevel="ERROR") as s:
        return [
            (x.project, x.data["timestamp"], x.status)
            for x in s.prearchive.sessions(project)
            if x.label == label
        ]


def _post(url: str, path: str, **params: str) -> requests.Response:
    r = requests.post(url + path, params=params, auth=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    return r


def test_mv_between_projects_waits_and_cli_rebuild(emu, make_mount, tmp_path):
    ts, folder = _import(emu.url, tmp_path, "PREMV")
    m = make_mount(emu.url)
    src = m.path / ".prearchive" / "DEMO1" / ts / folder
    assert os.getxattr(src, "user.xnat.status") == b"READY"
    # a queued rebuild: the folder shows it at once, and mv waits for READY before moving
    _post(
        emu.url,
        "/data/services/prearchive/rebuild",
        src=f"/prearchive/projects/DEMO1/{ts}/{folder}",
    )
    assert os.getxattr(src, "user.xnat.status") in (b"QUEUED_BUILDING", b"BUILDING", b"READY")
    sh(["mv", str(src), str(m.path / ".prearchive" / "DEMO2") + "/"], timeout=90)
    # on the server (xnatpy): in DEMO2, same timestamp, READY; gone from DEMO1
    assert _sessions(emu.url, "DEMO2", "PREMV") == [("DEMO2", ts, "READY")]
    assert _sessions(emu.url, "DEMO1", "PREMV") == []
    # in the mount at once (mv invalidated both listings)
    moved = m.path / ".prearchive" / "DEMO2" / ts / folder
    assert os.listdir(moved / "scans") == ["1"]
    assert not (m.path / ".prearchive" / "DEMO1" / ts / folder).exists()
    assert (
        os.getxattr(moved, "user.xnat.uri").decode()
        == f"/data/prearchive/projects/DEMO2/{ts}/{folder}"
    )

    # xnatfs prearchive rebuild PATH: resolves the URI from the mount, credentials as mount
    mark = emu.mark()
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XNATFS_USER=ADMIN[0], XNATFS_PASSWORD=ADMIN[1])
    env.pop("NETRC", None)
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "prearchive", "rebuild", str(moved)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"/data/prearchive/projects/DEMO2/{ts}/{folder}: READY"
    assert ADMIN[1] not in res.stdout + res.stderr
    posts = [r for r in emu.since(mark) if r[0] == "POST"]
    assert [p[1].split("?")[0] for p in posts] == ["/data/services/prearchive/rebuild"]
    assert _sessions(emu.url, "DEMO2", "PREMV") == [("DEMO2", ts, "READY")]

    # xnatfs prearchive move back, and the same name refused for a renaming mv
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "prearchive", "move", str(moved), "DEMO1"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert _sessions(emu.url, "DEMO1", "PREMV") == [("DEMO1", ts, "READY")]
    # the command refreshed the mount its path is in: the move shows there at once, not after
    # the listing TTL (ls first: the kernel may hold DEMO1/ts as missing, checked above,
    # for negative_timeout; a listing replaces that)
    assert ts in os.listdir(m.path / ".prearchive" / "DEMO1")
    assert folder in os.listdir(m.path / ".prearchive" / "DEMO1" / ts)
    assert ts not in os.listdir(m.path / ".prearchive" / "DEMO2")
    assert not moved.exists()


def test_action_on_a_busy_session_gives_ebusy_within_the_timeout(emu, make_mount, tmp_path):
    ts, folder = _import(emu.url, tmp_path, "PREBUSY")
    m = make_mount(emu.url, "--timeout", "3")
    uri = f"/data/prearchive/projects/DEMO1/{ts}/{folder}"
    src = m.path / ".prearchive" / "DEMO1" / ts / folder
    os.listdir(src)
    # a build that never finishes (XNAT can leave a session BUILDING after a crash)
    _post(emu.url, uri, action="set-status", status="BUILDING")
    assert os.getxattr(src, "user.xnat.status") == b"BUILDING"
    t0 = time.monotonic()
    with pytest.raises(OSError) as err:
        os.rename(src, m.path / ".prearchive" / "DEMO2" / folder)
    assert err.value.errno == errno.EBUSY
    assert time.monotonic() - t0 < 30  # generous: the bound is --timeout 3 plus one request
    assert _sessions(emu.url, "DEMO1", "PREBUSY")[0][2] == "BUILDING"
    line = [x for x in m.log_text().splitlines() if "did not settle" in x]
    assert len(line) == 1 and uri in line[0] and "BUILDING" in line[0], line
    # a renaming mv is refused before any request
    _post(emu.url, uri, action="set-status", status="READY")
    with pytest.raises(OSError) as err:
        os.rename(src, m.path / ".prearchive" / "DEMO2" / "OTHER_NAME")
    assert err.value.errno == errno.EINVAL
    os.rename(src, m.path / ".prearchive" / "DEMO2" / folder)
    assert _sessions(emu.url, "DEMO2", "PREBUSY") == [("DEMO2", ts, "READY")]


def test_cli_archive_and_delete_by_uri(emu, tmp_path):
    """``xnatfs prearchive archive|delete URI --url``: no mount needed; checked with xnatpy."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XNATFS_USER=ADMIN[0], XNATFS_PASSWORD=ADMIN[1])
    env.pop("NETRC", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "xnatfs", "prearchive", *args, "--url", emu.url],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    ts, folder = _import(emu.url, tmp_path, "PRECLIA")
    uri = f"/data/prearchive/projects/DEMO1/{ts}/{folder}"
    res = cli("archive", uri, "--subject", "SUBJ02", "--label", "PRECLIA_MR9")
    assert res.returncode == 0, res.stderr
    assert (
        res.stdout.strip() == "/data/archive/projects/DEMO1/subjects/SUBJ02/experiments/PRECLIA_MR9"
    )
    with xnat.connect(emu.url, user=ADMIN[0], password=ADMIN[1], loglevel="ERROR") as s:
        exp = s.projects["DEMO1"].subjects["SUBJ02"].experiments["PRECLIA_MR9"]
        assert sorted(exp.scans.keys()) == ["1"]
    assert _sessions(emu.url, "DEMO1", "PRECLIA") == []

    ts, folder = _import(emu.url, tmp_path, "PRECLID")
    uri = f"/data/prearchive/projects/DEMO1/{ts}/{folder}"
    assert cli("delete", uri).returncode == 0
    assert _sessions(emu.url, None, "PRECLID") == []
    res = cli("rebuild", uri)  # gone: one line, exit 1
    assert res.returncode == 1 and "ENOENT" in res.stderr and len(res.stderr.splitlines()) == 1
