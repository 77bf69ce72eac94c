"""The two reference clients against the emulator: xnatpy 0.8.1 and pyxnat 1.6.4 (§8)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
import xnat

from xnatfs.emulator import Emulator

Archive = Any


@pytest.fixture
def session(emu: Emulator, populated: Archive) -> Iterator[Any]:
    logging.getLogger("xnat").setLevel(logging.WARNING)
    s = xnat.connect(emu.url, user="admin", password="admin", loglevel="WARNING")
    yield s
    s.disconnect()


def test_xnatpy_browse_and_download(session: Any, populated: Archive, tmp_path: Path) -> None:
    assert "P1" in session.projects
    project = session.projects["P1"]
    subject = project.subjects["S1"]
    assert subject.id == populated.subject_id
    experiment = subject.experiments["E1"]
    assert experiment.id == populated.experiment_id
    assert str(experiment.date) == "2024-01-01"
    scan = experiment.scans["1"]
    assert scan.type == "T1w"
    resource = scan.resources["DICOM"]
    assert resource.file_count == 2
    assert set(resource.files.keys()) == set(populated.files)
    f = resource.files["sub/b.dcm"]
    assert int(f.size) == len(populated.files["sub/b.dcm"])  # HEAD Content-Length
    target = tmp_path / "b.dcm"
    f.download(str(target), verbose=False)  # xnatpy checks the MD5 digest column
    assert (
        hashlib.md5(target.read_bytes()).hexdigest()
        == hashlib.md5(populated.files["sub/b.dcm"]).hexdigest()
    )
    experiment.download_dir(str(tmp_path / "dir"), verbose=False)
    got = {
        p.relative_to(tmp_path / "dir").as_posix()
        for p in (tmp_path / "dir").rglob("*")
        if p.is_file()
    }
    assert got == {f"E1/scans/1-T1w/resources/DICOM/files/{k}" for k in populated.files}


def test_xnatpy_create_upload_delete(session: Any, emu: Emulator, admin: Any) -> None:
    project = session.projects["P1"]
    subj = session.classes.SubjectData(parent=project, label="XPY_S")
    assert subj.id.startswith("XNAT_S")
    exp = session.classes.MrSessionData(parent=subj, label="XPY_E")
    scan = session.classes.MrScanData(parent=exp, id="9", type="FLAIR")
    res = session.classes.ResourceCatalog(parent=scan, label="NIFTI", format="NIFTI")
    res.upload_data(b"nifti bytes", "img.nii", overwrite=True)
    rows = admin.get(
        f"/data/experiments/{exp.id}/scans/9/resources/NIFTI/files?format=json"
    ).json()["ResultSet"]["Result"]
    assert [(x["Name"], x["digest"]) for x in rows] == [
        ("img.nii", hashlib.md5(b"nifti bytes").hexdigest())
    ]
    # xnatpy's delete() re-reads every live listing object afterwards (``if listing:``), and
    # XNAT answers 404 for the children of a deleted object; so delete an object whose child
    # listings were never instantiated.
    doomed = session.classes.MrSessionData(parent=subj, label="XPY_DEL")
    doomed_id = doomed.id
    assert admin.get(f"/data/experiments/{doomed_id}?format=json").status_code == 200
    session.clearcache()
    listed = session.projects["P1"].subjects["XPY_S"].experiments["XPY_DEL"]
    listed.delete()
    assert admin.get(f"/data/experiments/{doomed_id}?format=json").status_code == 404
    assert admin.delete("/data/projects/P1/subjects/XPY_S?removeFiles=true").status_code == 200


def test_pyxnat_list_and_download(
    pyxnat: Any, emu: Emulator, populated: Archive, tmp_path: Path
) -> None:
    iface = pyxnat.Interface(server=emu.url, user="admin", password="admin")
    try:
        assert "P1" in iface.select.projects().get()
        assert iface.select.project("P1").subjects().get() == [populated.subject_id]
        exp = iface.select.project("P1").subject("S1").experiment("E1")
        assert exp.exists()
        assert exp.scans().get() == ["1"]
        res = exp.scan("1").resource("DICOM")
        assert sorted(res.files().get()) == ["a.dcm", "b.dcm"]
        path = res.file("sub/b.dcm").get(str(tmp_path / "b.dcm"))
        assert Path(path).read_bytes() == populated.files["sub/b.dcm"]
        src = tmp_path / "up.txt"
        src.write_bytes(b"from pyxnat")
        res.file("py/up.txt").put(str(src))
        assert "up.txt" in res.files().get()
        res.file("py/up.txt").delete()
        assert "up.txt" not in res.files().get()
    finally:
        iface.disconnect()
    bad = pyxnat.Interface(server=emu.url, user="admin", password="wrong")
    assert bad.select.projects().get() == []  # pyxnat swallows the 401 (§8.2)
