"""Acceptance: xnatpy 0.8.1 against the emulator (demo seed), as a user of XNAT would drive it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from xnatfs.emulator import dicom

from .conftest import ADMIN, ALICE, forget_xnat_session, write_tree

xnat = pytest.importorskip("xnat")


def _study(seed: str, subject: str, label: str) -> dicom.StudySpec:
    return dicom.StudySpec(
        seed=seed,
        patient_name=subject,
        patient_id=label,
        series=(dicom.SeriesSpec(1, "T1w", 3), dicom.SeriesSpec(2, "T2w", 2)),
    )


def test_connect_and_logout(url: str, emulator) -> None:
    session = xnat.connect(url, user=ADMIN[0], password=ADMIN[1], loglevel="WARNING")
    assert session.logged_in_user == "admin"
    assert session.xnat_version.startswith("1.8")
    session.disconnect()
    forget_xnat_session(session)
    records = emulator.access_records()
    assert any(r.method == "DELETE" and r.path_qs.startswith("/data/JSESSION") for r in records)


def test_wrong_password(url: str) -> None:
    with pytest.raises(xnat.exceptions.XNATLoginFailedError):
        xnat.connect(url, user=ADMIN[0], password="wrong", loglevel="WARNING")


def test_listing_by_id_and_label(xnat_session) -> None:
    projects = xnat_session.projects
    assert {"DEMO1", "DEMO2"} <= set(projects.keys())
    demo1 = projects["DEMO1"]
    assert demo1.name == "Demo project 1"
    labels = sorted(s.label for s in demo1.subjects.values())
    assert labels == ["SUBJ01", "SUBJ02", "SUBJ03"]
    by_label = demo1.subjects["SUBJ01"]
    by_id = demo1.subjects[by_label.id]
    assert by_id.label == "SUBJ01" and by_id.id.startswith("XNAT_S")
    exp = by_label.experiments["SUBJ01_MR1"]
    assert exp.__xsi_type__ == "xnat:mrSessionData"
    assert by_label.experiments[exp.id].label == "SUBJ01_MR1"
    assert xnat_session.experiments[exp.id].label == "SUBJ01_MR1"
    scans = exp.scans
    assert sorted(scans.keys()) == ["1", "2", "3"]
    assert [scans[k].type for k in ("1", "2", "3")] == ["T1w", "T2w", "fMRI"]
    assert scans["1"].__xsi_type__ == "xnat:mrScanData"
    assert sorted(scans["1"].resources.keys()) and {
        r.label for r in scans["1"].resources.values()
    } == {"DICOM", "NIFTI"}
    dcm = scans["1"].resources["DICOM"]
    assert dcm.id.isdigit() and scans["1"].resources[dcm.id].label == "DICOM"  # numeric id
    files = dcm.files
    assert len(files) == 16 and all(name.endswith(".dcm") for name in files.keys())
    assert {a.label for a in exp.assessors.values()} == {"SUBJ01_MR1_FS"}
    fs = exp.assessors["SUBJ01_MR1_FS"]
    assert "stats/aseg.stats" in fs.resources["DATA"].files
    assert {r.label for r in exp.resources.values()} == {"notes"}
    assert {r.label for r in by_label.resources.values()} == {"consent"}


def test_download_digest_head_and_non_ascii(xnat_session, tmp_path: Path) -> None:
    demo1 = xnat_session.projects["DEMO1"]
    protocols = demo1.resources["protocols"]
    files = protocols.files
    # keys are the raw relative paths (the URI column is not percent-encoded, §1.8)
    assert int(files["mri/T1w protocol.txt"].size) > 0
    name = "résumé – notes.txt"
    f = files[name]
    assert f.name == name
    target = tmp_path / "notes.txt"
    f.download(str(target), verbose=False)  # xnatpy checks the MD5 digest column
    assert target.read_text("utf-8").startswith("Résumé – notes")
    assert int(f.size) == target.stat().st_size  # HEAD Content-Length (a str in xnatpy)
    assert f.digest == hashlib.md5(target.read_bytes()).hexdigest()
    nested = files["mri/fmri/events.tsv"]
    nested.download(str(tmp_path / "events.tsv"), verbose=False)
    assert (tmp_path / "events.tsv").read_bytes().startswith(b"onset\t")
    dcm = demo1.subjects["SUBJ02"].experiments["SUBJ02_MR1"].scans["2"].resources["DICOM"]
    first = sorted(dcm.files.values(), key=lambda x: x.path)[0]
    dcm.download_dir(tmp_path / "dl")  # files?format=zip, unpacked (§3.3)
    got = sorted(p.name for p in (tmp_path / "dl").rglob("*.dcm"))
    assert got == sorted(x.path for x in dcm.files.values())
    with first.open() as fh:
        ds = dicom.pydicom.dcmread(fh)
    assert ds.SeriesDescription == "T2w" and ds.PatientName == "SUBJ02"


def test_uploads_single_nested_and_dir(xnat_session, unique: str, tmp_path: Path) -> None:
    exp = xnat_session.projects["DEMO1"].subjects["SUBJ03"].experiments["SUBJ03_MR1"]
    res = xnat_session.classes.ResourceCatalog(parent=exp, label=unique, format="TXT")
    single = tmp_path / "single.txt"
    single.write_bytes(b"one file\n")
    res.upload(single, "single.txt")
    res.upload(single, "deep/er/nested file.txt")
    tree = write_tree(
        tmp_path / "tree",
        {"a.txt": b"A\n", "sub/b.txt": b"BB\n", "sub/deeper/c.bin": bytes(range(256))},
    )
    res.upload_dir(tree)  # tar.gz + extract=true
    res.clearcache()
    paths = sorted(res.files.keys())
    assert paths == [
        "a.txt",
        "deep/er/nested file.txt",
        "single.txt",
        "sub/b.txt",
        "sub/deeper/c.bin",
    ]
    out = tmp_path / "c.bin"
    res.files["sub/deeper/c.bin"].download(str(out), verbose=False)
    assert out.read_bytes() == bytes(range(256))
    res.upload_data(b"replaced\n", "single.txt", overwrite=True)
    res.clearcache()
    assert int(res.files["single.txt"].size) == len(b"replaced\n")


def test_create_each_kind_and_delete(xnat_session, unique: str, url: str) -> None:
    # project: xnatpy has no project constructor; XNAT takes a PUT (§4.1)
    xnat_session.put(f"/data/projects/{unique}")
    xnat_session.clearcache()
    project = xnat_session.projects[unique]
    assert project.__xsi_type__ == "xnat:projectData"
    subject = xnat_session.classes.SubjectData(parent=project, label="S1")
    assert subject.id.startswith("XNAT_S")
    exp = xnat_session.classes.MrSessionData(parent=subject, label="S1_MR1")
    assert exp.id.startswith("XNAT_E")
    scan = xnat_session.classes.MrScanData(parent=exp, id="5", type="T1w")
    assessor = xnat_session.classes.QcAssessmentData(parent=exp, label="S1_MR1_QC")
    res = xnat_session.classes.ResourceCatalog(parent=scan, label="EXTRA", format="TXT")
    res.upload_data(b"hello\n", "hello.txt")
    xnat_session.clearcache()
    assert xnat_session.projects[unique].subjects["S1"].__xsi_type__ == "xnat:subjectData"
    exp = xnat_session.projects[unique].subjects["S1"].experiments["S1_MR1"]
    assert exp.__xsi_type__ == "xnat:mrSessionData"
    assert exp.scans["5"].resources["EXTRA"].__xsi_type__ == "xnat:resourceCatalog"
    assert exp.scans["5"].__xsi_type__ == "xnat:mrScanData" and exp.scans["5"].type == "T1w"
    assert exp.assessors["S1_MR1_QC"].__xsi_type__ == "xnat:qcAssessmentData"
    assert assessor.label == "S1_MR1_QC"
    assert list(exp.scans["5"].resources["EXTRA"].files.keys()) == ["hello.txt"]
    # deletes (xnatpy accepts only 200).  After each delete xnatpy reloads every listing it
    # still holds, including that of a deleted object (a 404 on a real XNAT too), so fetch
    # fresh objects between deletes.
    del assessor, res, scan, subject

    def fresh_exp():
        xnat_session.clearcache()
        return xnat_session.projects[unique].subjects["S1"].experiments["S1_MR1"]

    fresh_exp().scans["5"].resources["EXTRA"].files["hello.txt"].delete()
    fresh_exp().scans["5"].resources["EXTRA"].delete()
    fresh_exp().assessors["S1_MR1_QC"].delete()
    fresh_exp().scans["5"].delete()
    assert list(fresh_exp().scans.keys()) == []
    fresh_exp().delete()
    xnat_session.clearcache()
    subject = xnat_session.projects[unique].subjects["S1"]
    assert len(subject.experiments) == 0
    subject.delete()
    xnat_session.clearcache()
    assert len(xnat_session.projects[unique].subjects) == 0


def test_import_to_archive_and_prearchive(xnat_session, unique: str, tmp_path: Path) -> None:
    zpath = tmp_path / "upload.zip"
    dicom.build_dicom_zip(_study(unique, f"{unique}S", f"{unique}E"), zpath)
    exp = xnat_session.services.import_(
        zpath,
        project="DEMO2",
        subject=f"{unique}S",
        experiment=f"{unique}E",
        destination="/archive",
        direct_archive=True,
    )
    assert exp.label == f"{unique}E" and exp.__xsi_type__ == "xnat:mrSessionData"
    assert sorted(exp.scans.keys()) == ["1", "2"]
    assert len(exp.scans["1"].resources["DICOM"].files) == 3
    # the same to the prearchive, then archive it under another label
    pre = xnat_session.services.import_(zpath, project="DEMO2", destination="/prearchive")
    assert isinstance(pre, xnat.prearchive.PrearchiveSession)
    assert pre.status == "READY" and pre.project == "DEMO2"
    assert sorted(s.id for s in pre.scans.values()) == ["1", "2"]
    assert len(pre.scans["1"].files) == 3
    assert pre.timestamp and pre.uploaded
    archived = pre.archive(subject=f"{unique}S", experiment=f"{unique}E2")
    assert archived.label == f"{unique}E2"
    assert not [s for s in xnat_session.prearchive.sessions("DEMO2") if s.label == f"{unique}E"]


def test_prearchive_seed_session_browse(xnat_session, tmp_path: Path) -> None:
    (waiting,) = [s for s in xnat_session.prearchive.sessions("DEMO1") if s.label == "SUBJ04_MR1"]
    assert waiting.subject == "SUBJ04" and waiting.status == "READY"
    assert str(waiting.scan_date) == "2024-01-10"
    scans = waiting.scans
    assert sorted(scans.keys()) == ["1", "2"]
    assert scans["2"].series_description == "T2w"
    res = scans["1"].resources["DICOM"]
    assert res.file_count == 16 and res.file_size > 0
    dcm = scans["1"].read_dicom()
    assert dcm.SeriesDescription == "T1w" and dcm.PatientID == "SUBJ04_MR1"
    waiting.download(tmp_path / "pre.zip")
    import zipfile

    assert len(zipfile.ZipFile(tmp_path / "pre.zip").namelist()) == 28


def test_import_corrupt_and_not_zip(xnat_session, unique: str, tmp_path: Path) -> None:
    failed = (xnat.exceptions.XNATUploadError, xnat.exceptions.XNATResponseError)
    with pytest.raises(failed, match="Unable to identify upload format"):
        xnat_session.services.import_(
            data=b"this is not a zip" * 10, project="DEMO1", content_type="application/zip"
        )
    data = dicom.build_dicom_zip(_study(unique, "X", f"{unique}E"))
    with pytest.raises(failed, match="400"):
        xnat_session.services.import_(
            data=data[: len(data) // 2],
            project="DEMO1",
            destination="/archive",
            content_type="application/zip",
        )
    xnat_session.clearcache()
    assert f"{unique}E" not in xnat_session.projects["DEMO1"].experiments


def test_alice_sees_only_demo1(url: str) -> None:
    session = xnat.connect(url, user=ALICE[0], password=ALICE[1], loglevel="WARNING")
    try:
        assert set(session.projects.keys()) == {"DEMO1"}
        with pytest.raises(KeyError):
            session.projects["DEMO2"]
        status = requests.get(
            f"{url}/data/projects/DEMO2/subjects?format=json", auth=ALICE, timeout=30
        ).status_code
        assert status in (403, 404)
        assert all(s.project == "DEMO1" for s in session.prearchive.sessions())
    finally:
        session.disconnect()
        forget_xnat_session(session)


def test_gradual_dicom_receiving_session(xnat_session, unique: str) -> None:
    study = _study(unique, f"{unique}S", f"{unique}E")
    uris = set()
    for gen in dicom.iter_study_files(study):
        pre = xnat_session.services.import_(
            data=gen.data,
            project="DEMO2",
            import_handler="gradual-DICOM",
            content_type="application/dicom",
        )
        uris.add(pre.uri)
    assert len(uris) == 1
    # xnatpy hides RECEIVING sessions unless asked (§7.1)
    assert not [s for s in xnat_session.prearchive.sessions("DEMO2") if s.label == f"{unique}E"]
    (receiving,) = [
        s
        for s in xnat_session.prearchive.sessions("DEMO2", allow_receiving=True)
        if s.label == f"{unique}E"
    ]
    assert receiving.status == "RECEIVING"
    xnat_session.post(receiving.uri, query={"action": "build"})
    xnat_session.prearchive.clearcache()  # xnatpy reuses its session objects and their data
    (ready,) = [s for s in xnat_session.prearchive.sessions("DEMO2") if s.label == f"{unique}E"]
    assert ready.status == "READY" and sorted(ready.scans.keys()) == ["1", "2"]
    ready.delete()
