"""Acceptance: pyxnat 1.6.4 against the emulator (basic auth on every call, CSV listings, label
addressing, POST uploads with ``inbody=true``; §8.2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from xnatfs.emulator import dicom

from .conftest import ADMIN, ALICE

pyxnat = pytest.importorskip("pyxnat")

pytestmark = pytest.mark.usefixtures("pyxnat_ready")


def test_connect_list_and_logout(url: str, emulator) -> None:
    intf = pyxnat.Interface(server=url, user=ADMIN[0], password=ADMIN[1])
    assert {"DEMO1", "DEMO2"} <= set(intf.select.projects().get())
    intf.disconnect()
    assert any(
        r.method == "DELETE" and r.path_qs.startswith("/data/JSESSION")
        for r in emulator.access_records()
    )


def test_navigation_by_label(pyxnat_interface) -> None:
    project = pyxnat_interface.select.project("DEMO1")
    assert project.exists()
    # (pyxnat's collection.get("label") returns IDs: it switches its id header too late)
    assert sorted(s.label() for s in project.subjects()) == ["SUBJ01", "SUBJ02", "SUBJ03"]
    subject = project.subject("SUBJ01")
    assert subject.exists() and subject.id().startswith("XNAT_S")
    exp = subject.experiment("SUBJ01_MR1")
    assert exp.exists() and exp.datatype() == "xnat:mrSessionData"
    assert sorted(exp.scans().get()) == ["1", "2", "3"]
    assert exp.scan("1").datatype() == "xnat:mrScanData"
    assert sorted(r.label() for r in exp.scan("1").resources()) == ["DICOM", "NIFTI"]
    files = exp.scan("1").resource("DICOM").files().get()
    assert len(files) == 16
    assert exp.assessor("SUBJ01_MR1_FS").exists()
    # (pyxnat's files().get() gives basenames; nested paths are addressed with file(path))
    fs_data = exp.assessor("SUBJ01_MR1_FS").resource("DATA")
    assert "aseg.stats" in fs_data.files().get()
    assert fs_data.file("stats/aseg.stats").exists()
    assert sorted(r.label() for r in project.resources()) == ["figures", "protocols"]
    # by accession ID under the project as well
    assert pyxnat_interface.select.project("DEMO1").subject(subject.id()).exists()


def test_file_download_size_and_last_modified(pyxnat_interface, tmp_path: Path) -> None:
    res = pyxnat_interface.select.project("DEMO1").resource("protocols")
    names = set(res.files().get())
    assert {"README.txt", "T1w protocol.txt", "events.tsv", "résumé – notes.txt"} <= names
    assert res.file("mri/fmri/events.tsv").exists()
    f = res.file("mri/fmri/events.tsv")
    dest = f.get(str(tmp_path / "events.tsv"))
    data = Path(dest).read_bytes()
    assert data.startswith(b"onset\t") and int(f.size()) == len(data)
    assert f.last_modified()  # HEAD Last-Modified
    nii = (
        pyxnat_interface.select.project("DEMO1")
        .subject("SUBJ02")
        .experiment("SUBJ02_MR1")
        .scan("1")
        .resource("NIFTI")
        .file("SUBJ02_MR1_T1w.nii.gz")
    )
    body = Path(nii.get(str(tmp_path / "t1.nii.gz"))).read_bytes()
    assert body[:2] == b"\x1f\x8b"


def test_file_names_with_space_and_non_ascii_by_path(pyxnat_interface, tmp_path: Path) -> None:
    """pyxnat matches the raw path against the files listing's URI column, so that column must
    not be percent-encoded (pyxnat PR #29: XNAT sends raw paths there)."""
    res = pyxnat_interface.select.project("DEMO1").resource("protocols")
    assert res.file("mri/T1w protocol.txt").exists()
    g = res.file("résumé – notes.txt")
    out = Path(g.get(str(tmp_path / "notes.txt")))
    assert out.read_text("utf-8").startswith("Résumé")


def test_upload_create_and_delete(pyxnat_interface, unique: str, tmp_path: Path) -> None:
    intf = pyxnat_interface
    project = intf.select.project(unique)
    project.create()
    assert unique in intf.select.projects().get()
    subject = project.subject("PS1")
    subject.create()
    exp = subject.experiment("PS1_MR1")
    exp.create(experiments="xnat:mrSessionData")
    scan = exp.scan("7")
    scan.create(scans="xnat:mrScanData", type="T2w")
    assessor = exp.assessor("PS1_MR1_QC")
    assessor.create(assessors="xnat:qcAssessmentData")
    res = scan.resource("EXTRA")
    res.create()
    assert exp.datatype() == "xnat:mrSessionData"
    assert scan.datatype() == "xnat:mrScanData"
    assert assessor.datatype() == "xnat:qcAssessmentData"
    assert res.exists()
    local = tmp_path / "payload.bin"
    local.write_bytes(b"\x00\x01payload" * 100)
    res.file("payload.bin").put(str(local))
    res.file("sub/dir/nested.txt").put(str(local), format="TXT")
    assert sorted(res.files().get()) == ["nested.txt", "payload.bin"]
    assert res.file("sub/dir/nested.txt").exists()
    got = Path(res.file("sub/dir/nested.txt").get(str(tmp_path / "n.txt"))).read_bytes()
    assert hashlib.md5(got).hexdigest() == hashlib.md5(local.read_bytes()).hexdigest()
    # a resource created implicitly by the upload
    exp.resource("NOTES").file("n.txt").put(str(local))
    assert "NOTES" in [r.label() for r in exp.resources()]
    # deletes
    res.file("payload.bin").delete()
    assert res.files().get() == ["nested.txt"]
    res.delete()
    assert not scan.resource("EXTRA").exists()
    assessor.delete()
    scan.delete()
    exp.delete()
    assert not subject.experiment("PS1_MR1").exists()
    subject.delete()
    assert not project.subject("PS1").exists()


def test_import_with_raw_requests_like_xnat4tests(url: str, unique: str) -> None:
    """xnat4tests' call (§6): POST zip with dest + Direct-Archive + overwrite, then pyxnat sees
    it."""
    study = dicom.StudySpec(
        seed=unique,
        patient_name="P",
        patient_id="P",
        series=(dicom.SeriesSpec(3, "fMRI", 2, rows=16, columns=16),),
    )
    dest = f"/archive/projects/DEMO2/subjects/{unique}S/experiments/{unique}E"
    r = requests.post(
        f"{url}/data/services/import",
        params={"dest": dest, "Direct-Archive": "True", "overwrite": "True"},
        data=dicom.build_dicom_zip(study),
        auth=ADMIN,
        headers={"Content-Type": "application/zip"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/uri-list")
    assert r.text == f"/data{dest}\r\n"
    intf = pyxnat.Interface(server=url, user=ADMIN[0], password=ADMIN[1])
    try:
        exp = intf.select.project("DEMO2").subject(f"{unique}S").experiment(f"{unique}E")
        assert exp.exists() and exp.scans().get() == ["3"]
        assert len(exp.scan("3").resource("DICOM").files().get()) == 2
    finally:
        intf.disconnect()


def test_wrong_password_sees_nothing(url: str) -> None:
    """Every call gets 401 "Authentication failed."; pyxnat 1.6.4 swallows it in listings and
    returns [] (pyxnat #162, §8.2) but raises on the logout call."""
    intf = pyxnat.Interface(server=url, user=ADMIN[0], password="wrong")
    try:
        projects = intf.select.projects().get()
    except pyxnat.core.errors.DatabaseError:
        projects = []
    assert projects == []
    with pytest.raises(pyxnat.core.errors.DatabaseError, match="401"):
        intf.disconnect()


def test_alice_cannot_see_demo2(url: str) -> None:
    intf = pyxnat.Interface(server=url, user=ALICE[0], password=ALICE[1])
    try:
        assert intf.select.projects().get() == ["DEMO1"]
        assert not intf.select.project("DEMO2").subject("D2SUBJ01").exists()
        assert intf.select.project("DEMO1").subject("SUBJ01").exists()
    finally:
        intf.disconnect()
