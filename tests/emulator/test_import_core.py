"""importer.py / prearchive.py against a bare Store (no HTTP): placement, labels, lifecycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from xnatfs.emulator import dicom, importer, prearchive, prearchive_code
from xnatfs.emulator.prearchive import Prearchive
from xnatfs.emulator.store import Store

STUDY = dicom.StudySpec(
    seed="core/S1",
    patient_name="NEWSUBJ",
    patient_id="NEWSUBJ_MR1",
    series=(dicom.SeriesSpec(1, "T1w", 3), dicom.SeriesSpec(2, "T2w", 2)),
)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "data")
    st.create_project("P1")
    st.create_project("P2")
    st.add_user("admin", "admin", admin=True)
    st.add_user("bob", "pw", projects=["P1"])
    yield st
    st.close()


def _body(tmp_path: Path, data: bytes, name: str = "body.zip") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _run(
    store: Store, tmp_path: Path, data: bytes, user: str = "admin", **params: str
) -> list[str]:
    return importer.import_upload(
        store,
        store.get_user(user),
        importer.ImportParams.from_mapping(params),
        _body(tmp_path, data),
    )


def test_default_goes_to_prearchive_ready(store: Store, tmp_path: Path) -> None:
    # no dest: the project's prearchive_code decides; 0 (manual) keeps it in the prearchive
    prearchive_code.set_code(store, "P1", prearchive_code.MANUAL)
    uris = _run(store, tmp_path, dicom.build_dicom_zip(STUDY), project="P1")
    assert len(uris) == 1 and uris[0].startswith("/data/prearchive/projects/P1/")
    assert uris[0].endswith("/NEWSUBJ_MR1")
    with Prearchive.for_store(store) as pa:
        (s,) = pa.list(["P1"])
        assert s.status == prearchive.READY and s.subject == "NEWSUBJ"
        assert [(x.scan_id, x.type) for x in pa.scans(s)] == [("1", "T1w"), ("2", "T2w")]
        assert len(pa.files(s, "1", "DICOM")) == 3
        assert set(s.row()) == set(prearchive.PREARC_COLUMNS)
        assert all(isinstance(v, str) for v in s.row().values())
        assert s.row()["url"] == uris[0][len("/data") :]


def test_unknown_project_goes_to_unassigned(store: Store, tmp_path: Path) -> None:
    uris = _run(store, tmp_path, dicom.build_dicom_zip(STUDY), dest="/prearchive")
    assert uris[0].startswith("/data/prearchive/projects/Unassigned/")


def test_direct_archive_with_dest_path(store: Store, tmp_path: Path) -> None:
    uris = _run(
        store,
        tmp_path,
        dicom.build_dicom_zip(STUDY),
        dest="/archive/projects/P1/subjects/S9/experiments/E9",
        **{"Direct-Archive": "true"},
    )
    assert uris == ["/data/archive/projects/P1/subjects/S9/experiments/E9"]
    e = store.find_experiment("P1", "E9")
    assert e.xsi_type == "xnat:mrSessionData" and e.date == "2024-01-15"
    scans = store.list_scans(e.id)
    assert [(s.id, s.type, s.xsi_type) for s in scans] == [
        ("1", "T1w", "xnat:mrScanData"),
        ("2", "T2w", "xnat:mrScanData"),
    ]
    from xnatfs.emulator.store import Parent

    (res,) = store.list_resources(Parent(project="P1", experiment=e.id, scan="1"))
    assert res.label == "DICOM" and res.format == "DICOM" and res.file_count == 3
    # again without overwrite: 409, nothing changes
    with pytest.raises(importer.ImportFailed) as info:
        _run(
            store,
            tmp_path,
            dicom.build_dicom_zip(STUDY),
            dest="/archive/projects/P1/subjects/S9/experiments/E9",
            **{"Direct-Archive": "true"},
        )
    assert info.value.status == 409
    # append is fine
    _run(
        store,
        tmp_path,
        dicom.build_dicom_zip(STUDY),
        overwrite="append",
        dest="/archive/projects/P1/subjects/S9/experiments/E9",
        **{"Direct-Archive": "true"},
    )
    assert store.list_resources(Parent(project="P1", experiment=e.id, scan="1"))[0].file_count == 3


def test_archive_via_prearchive_and_conflict(store: Store, tmp_path: Path) -> None:
    uris = _run(store, tmp_path, dicom.build_dicom_zip(STUDY), dest="/archive", project="P1")
    assert uris == ["/data/archive/projects/P1/subjects/NEWSUBJ/experiments/NEWSUBJ_MR1"]
    with Prearchive.for_store(store) as pa:
        assert pa.list() == []
    with pytest.raises(importer.ImportFailed) as info:
        _run(store, tmp_path, dicom.build_dicom_zip(STUDY), dest="/archive", project="P1")
    assert info.value.status == 409
    with Prearchive.for_store(store) as pa:
        (s,) = pa.list()
        assert s.status == prearchive.CONFLICT
        uri = prearchive.archive_session(store, pa, s, overwrite="delete")
        assert uri.endswith("/experiments/NEWSUBJ_MR1") and pa.list() == []


def test_corrupt_upload_leaves_nothing(store: Store, tmp_path: Path) -> None:
    z = dicom.build_dicom_zip(STUDY)
    for kw in ({}, {"dest": "/archive", "project": "P1", "Direct-Archive": "true"}):
        with pytest.raises(importer.ImportFailed) as info:
            _run(store, tmp_path, z[: len(z) - 300], **kw)
        assert info.value.status == 400
    with pytest.raises(importer.ImportFailed, match="Unable to identify upload format."):
        _run(store, tmp_path, b"just text\n" * 50)
    assert store.list_experiments() == []
    with Prearchive.for_store(store) as pa:
        assert pa.list() == []
    assert list(Path(store.tmp_dir).iterdir()) == []


def test_permissions(store: Store, tmp_path: Path) -> None:
    with pytest.raises(importer.ImportFailed) as info:
        _run(
            store, tmp_path, dicom.build_dicom_zip(STUDY), user="bob", project="P2", dest="/archive"
        )
    assert info.value.status == 403
    with pytest.raises(importer.ImportFailed) as info:
        _run(store, tmp_path, dicom.build_dicom_zip(STUDY), project="NOPE", dest="/archive")
    assert info.value.status == 404


def test_gradual_dicom_receiving_then_build(store: Store, tmp_path: Path) -> None:
    files = list(dicom.iter_study_files(STUDY))
    urls = {
        _run(store, tmp_path, f.data, project="P1", **{"import-handler": "gradual-DICOM"})[0]
        for f in files
    }
    assert len(urls) == 1
    with Prearchive.for_store(store) as pa:
        (s,) = pa.list()
        assert s.status == prearchive.RECEIVING
        assert len(pa.files(s, "1", "DICOM")) == 3
        pa.build(s)
        assert pa.get(*s.key).status == prearchive.READY


def test_move_and_delete(store: Store, tmp_path: Path) -> None:
    (uri,) = _run(store, tmp_path, dicom.build_dicom_zip(STUDY), project="P1", dest="/prearchive")
    with Prearchive.for_store(store) as pa:
        s = pa.from_url(uri)
        moved = pa.move(s, "P2")
        assert moved.project == "P2" and pa.list(["P1"]) == []
        assert len(pa.files(moved, "2", "DICOM")) == 2
        pa.delete(moved)
        assert pa.list() == []
        with pytest.raises(prearchive.SessionNotFound):
            pa.from_url(uri)


def test_queued_operations_follow_xnat_states(store: Store, tmp_path: Path) -> None:
    """PrearchiveBatch{Rebuild,Move,Delete} (xnat-web): QUEUED_* at once, BUILDING/MOVING/
    DELETING once a handler picked it up, then READY (in the new project for a move, same
    timestamp and folder, PrearcDatabase._moveToProject) or gone."""
    (uri,) = _run(store, tmp_path, dicom.build_dicom_zip(STUDY), project="P1", dest="/prearchive")
    now = [2_000_000_000.0]
    with Prearchive.for_store(store, clock=lambda: now[0], queue_delay_s=2.0) as pa:
        s = pa.from_url(uri)
        assert pa.enqueue(s, "rebuild").status == "QUEUED_BUILDING"
        with pytest.raises(prearchive.StatusConflict):
            pa.enqueue(pa.get(*s.key), "move", "P2")  # not settled: refused
        now[0] += 1.0
        assert pa.get(*s.key).status == prearchive.BUILDING
        now[0] += 1.0
        assert pa.get(*s.key).status == prearchive.READY
        pa.enqueue(pa.get(*s.key), "move", "P2")
        assert [x.status for x in pa.list(["P1"])] == ["QUEUED_MOVING"]
        now[0] += 1.0
        assert [x.status for x in pa.list(["P1"])] == [prearchive.MOVING]
        now[0] += 1.0
        assert pa.list(["P1"]) == []
        (moved,) = pa.list(["P2"])
        assert (moved.status, moved.timestamp, moved.folder) == (
            prearchive.READY,
            s.timestamp,
            s.folder,
        )
        assert len(pa.files(moved, "2", "DICOM")) == 2
        pa.enqueue(moved, "delete")
        now[0] += 2.0
        assert pa.list() == []


def test_receiving_settles_after_idle_time(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    with Prearchive(tmp_path / "pa", clock=lambda: now[0], receiving_idle_s=5.0) as pa:
        s = pa.create_session("P1", "S_MR1", subject="S")
        assert pa.get(*s.key).status == prearchive.RECEIVING
        now[0] += 4.0
        assert pa.get(*s.key).status == prearchive.RECEIVING
        now[0] += 2.0
        assert pa.get(*s.key).status == prearchive.READY
        row = pa.get(*s.key).row()
        assert row["timestamp"] == prearchive.prearc_timestamp(1_700_000_000.0)
        assert row["uploaded"].count(".") == 1 and row["lastmod"] != ""


def _catalog(st: Store) -> list[tuple]:
    out = []
    for p in st.list_projects():
        for e in st.list_experiments(p.id):
            for r in st.list_resources_under_experiment(e.id):
                for f in st.list_files(r.id):
                    out.append(
                        (
                            p.id,
                            e.label,
                            r.kind,
                            r.scan_id,
                            r.label,
                            f.relpath,
                            f.size,
                            f.md5,
                            f.mtime,
                        )
                    )
    return sorted(out)


def test_demo_seed_is_deterministic_and_complete(tmp_path: Path) -> None:
    from xnatfs.emulator.seed import seed_demo
    from xnatfs.emulator.store import Parent

    stores = [Store(tmp_path / f"d{i}") for i in range(2)]
    try:
        for st in stores:
            seed_demo(st)
            seed_demo(st)  # a second call is a no-op
        a, b = (_catalog(st) for st in stores)
        assert a == b and len(a) > 150
        st = stores[0]
        assert [p.id for p in st.list_projects()] == ["DEMO1", "DEMO2"]
        alice = st.get_user("alice")
        assert alice.projects == ["DEMO1"] and st.check_password("alice", "alice-pw")
        assert [s.label for s in st.list_subjects("DEMO1")] == ["SUBJ01", "SUBJ02", "SUBJ03"]
        assert [e.label for e in st.list_experiments("DEMO2")] == ["D2SUBJ01_MR1"]
        protocols = st.find_resource(Parent(project="DEMO1"), "protocols")
        paths = {f.relpath for f in st.list_files(protocols.id)}
        assert {"mri/T1w protocol.txt", "résumé – notes.txt", "mri/fmri/events.tsv"} <= paths
        e1 = st.find_experiment("DEMO1", "SUBJ01_MR1")
        assert [a.label for a in st.list_assessors(e1.id)] == ["SUBJ01_MR1_FS"]
        labels = {(r.kind, r.scan_id, r.label) for r in st.list_resources_under_experiment(e1.id)}
        assert {
            ("scan", "1", "DICOM"),
            ("scan", "1", "NIFTI"),
            ("scan", "2", "DICOM"),
            ("scan", "3", "DICOM"),
            ("experiment", "", "notes"),
            ("assessor", "", "DATA"),
        } <= labels
        subj = st.find_subject("DEMO1", "SUBJ01")
        assert [r.label for r in st.list_resources(Parent(project="DEMO1", subject=subj.id))] == [
            "consent"
        ]
        with Prearchive.for_store(st) as pa:
            (waiting,) = pa.list(["DEMO1"])
            assert waiting.name == "SUBJ04_MR1" and waiting.status == prearchive.READY
        with Prearchive.for_store(stores[1]) as pa:
            assert pa.list()[0].row() == waiting.row()
    finally:
        for st in stores:
            st.close()


def test_store_transaction_rolls_back_every_write_inside(store: Store) -> None:
    # the public transaction: the store's own writes inside it join it and fall with it
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.create_subject("P1", "TXSUBJ")
            store.create_project("TXPROJ")
            raise RuntimeError("abort")
    assert store.find_subject("P1", "TXSUBJ") is None
    assert store.get_project("TXPROJ") is None


def test_failed_archive_write_leaves_no_catalog_rows(store: Store, tmp_path: Path) -> None:
    # write_session runs in one store transaction: a file that cannot be read part way through
    # (the second scan's) leaves neither the experiment nor the first scan behind
    good = tmp_path / "good.dcm"
    good.write_bytes(b"x" * 10)
    content = prearchive.SessionContent(
        modality="MR",
        scans=[
            prearchive.ScanContent("1", "T1w", "T1w", "MR", "", {"DICOM": [("a.dcm", good)]}),
            prearchive.ScanContent(
                "2", "T2w", "T2w", "MR", "", {"DICOM": [("b.dcm", tmp_path / "missing.dcm")]}
            ),
        ],
    )
    with pytest.raises(FileNotFoundError):
        prearchive.write_session(store, content, project="P1", subject="TXS", label="TXS_MR1")
    assert store.find_experiment("P1", "TXS_MR1") is None
    assert store.find_subject("P1", "TXS") is None
    assert good.exists()  # copied, not moved: the source is untouched
