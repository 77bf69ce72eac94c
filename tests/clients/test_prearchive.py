"""Acceptance: xnatpy's ``PrearchiveSession.rebuild()``, ``.move()``, ``.archive()`` and
``.delete()`` against the emulator, with XNAT's queued states in between (issue 11 §2).

XNAT's ``/data/services/prearchive/{rebuild,move,delete}`` only queue the work (the answer
shows ``QUEUED_*``; a JMS handler finishes it, docs/XNAT-API.md §7.3), so a client waits for
the state it needs, as a script against a real server must.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest

from tests.helpers.waiting import wait_for
from xnatfs.emulator import dicom

xnat = pytest.importorskip("xnat")

WAIT_S = 30.0


def _study(seed: str, subject: str, label: str) -> dicom.StudySpec:
    return dicom.StudySpec(
        seed=seed,
        patient_name=subject,
        patient_id=label,
        series=(dicom.SeriesSpec(1, "T1w", 3), dicom.SeriesSpec(2, "T2w", 2)),
    )


def find(session: Any, project: Optional[str], label: str, status: Optional[str] = None) -> Any:
    session.clearcache()
    hits = [
        s
        for s in session.prearchive.sessions(project)
        if s.label == label and (status is None or s.status == status)
    ]
    return hits[0] if hits else None


def test_rebuild_move_archive(xnat_session, unique: str, tmp_path: Path) -> None:
    zpath = tmp_path / "upload.zip"
    dicom.build_dicom_zip(_study(unique, f"{unique}S", f"{unique}E"), zpath)
    pre = xnat_session.services.import_(
        zpath, project="DEMO1", destination="/prearchive/projects/DEMO1"
    )
    assert pre.project == "DEMO1" and pre.status == "READY"
    timestamp = pre.timestamp

    answer = pre.rebuild()
    assert answer.status_code == 200 and "QUEUED_BUILDING" in answer.text
    ready = wait_for(lambda: find(xnat_session, "DEMO1", f"{unique}E", "READY"), WAIT_S, "rebuilt")

    answer = ready.move("DEMO2")
    assert answer.status_code == 200 and "QUEUED_MOVING" in answer.text
    moved = wait_for(
        lambda: find(xnat_session, "DEMO2", f"{unique}E", "READY"), WAIT_S, "moved to DEMO2"
    )
    assert moved.project == "DEMO2" and moved.timestamp == timestamp
    assert find(xnat_session, "DEMO1", f"{unique}E") is None
    assert sorted(moved.scans.keys()) == ["1", "2"]
    assert len(moved.scans["1"].files) == 3

    archived = moved.archive(subject=f"{unique}S", experiment=f"{unique}E")
    assert archived.label == f"{unique}E" and archived.project == "DEMO2"
    assert sorted(archived.scans.keys()) == ["1", "2"]
    assert find(xnat_session, None, f"{unique}E") is None


def test_delete_and_refusals(xnat_session, unique: str, tmp_path: Path) -> None:
    zpath = tmp_path / "upload.zip"
    dicom.build_dicom_zip(_study(unique, f"{unique}S", f"{unique}E"), zpath)
    pre = xnat_session.services.import_(
        zpath, project="DEMO1", destination="/prearchive/projects/DEMO1"
    )
    pre.rebuild()
    # still queued: XNAT refuses a second operation (InvalidStatus -> 403)
    with pytest.raises(xnat.exceptions.XNATResponseError, match="403"):
        pre.move("DEMO2")
    ready = wait_for(lambda: find(xnat_session, "DEMO1", f"{unique}E", "READY"), WAIT_S, "rebuilt")
    with pytest.raises(xnat.exceptions.XNATResponseError, match="404"):
        ready.move("NO_SUCH_PROJECT")
    answer = ready.delete()
    assert "QUEUED_DELETING" in answer.text
    wait_for(lambda: find(xnat_session, None, f"{unique}E") is None, WAIT_S, "deleted")
