"""The HTTP side of importer.py / prearchive.py on a running emulator (demo seed): status
codes, content types and body shapes of §6 and §7, with plain ``requests``."""

from __future__ import annotations

import io
import json
import time
import zipfile
from typing import Any, Optional

import pytest
import requests

from xnatfs.emulator import dicom, prearchive

STUDY = dicom.StudySpec(
    seed="http/S1",
    patient_name="HTTPSUBJ",
    patient_id="HTTPSUBJ_MR1",
    series=(dicom.SeriesSpec(1, "T1w", 2), dicom.SeriesSpec(4, "DWI", 2)),
)


class _Resp:
    def __init__(self, r: requests.Response) -> None:
        self.r = r
        self.status_code = r.status_code
        self.headers = r.headers
        self.mimetype = r.headers.get("Content-Type", "").split(";")[0].strip()

    def get_data(self, as_text: bool = False) -> Any:
        return self.r.text if as_text else self.r.content


class Http:
    """A few verbs with werkzeug-test-client-like arguments, over real HTTP."""

    def __init__(self, base: str, auth: tuple[str, str]) -> None:
        self.base = base
        self.s = requests.Session()
        self.s.auth = auth

    def _do(
        self,
        method: str,
        path: str,
        data: Any = None,
        content_type: Optional[str] = None,
        query_string: Optional[dict[str, str]] = None,
    ) -> _Resp:
        headers, files, form = {}, None, None
        if isinstance(data, dict):
            files = {k: (v[1], v[0]) for k, v in data.items() if isinstance(v, tuple)}
            form = {k: v for k, v in data.items() if not isinstance(v, tuple)}
            data = None
        elif content_type:
            headers["Content-Type"] = content_type
        r = self.s.request(
            method,
            self.base + path,
            params=query_string,
            data=form or data,
            files=files,
            headers=headers,
            timeout=60,
        )
        return _Resp(r)

    def get(self, path: str, **kw: Any) -> _Resp:
        return self._do("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> _Resp:
        return self._do("HEAD", path, **kw)

    def post(self, path: str, **kw: Any) -> _Resp:
        return self._do("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> _Resp:
        return self._do("DELETE", path, **kw)

    def put(self, path: str, **kw: Any) -> _Resp:
        return self._do("PUT", path, **kw)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    from xnatfs.emulator import Emulator

    emu = Emulator(
        tmp_path_factory.mktemp("emu"), user="admin", password="admin", seed="demo", port=0
    )
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture()
def admin(emulator) -> Http:
    return Http(emulator.url, ("admin", "admin"))


@pytest.fixture()
def alice(emulator) -> Http:
    return Http(emulator.url, ("alice", "alice-pw"))


def _rows(resp) -> list[dict]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return json.loads(resp.get_data())["ResultSet"]["Result"]


def test_listing_and_visibility(admin: Http, alice: Http) -> None:
    rows = _rows(admin.get("/data/prearchive/projects?format=json"))
    seeded = [r for r in rows if r["name"] == "SUBJ04_MR1"]
    assert len(seeded) == 1 and seeded[0]["status"] == "READY"
    assert list(seeded[0]) == list(prearchive.PREARC_COLUMNS)
    assert seeded[0]["url"].startswith("/prearchive/projects/DEMO1/")
    assert _rows(alice.get("/data/prearchive/projects/DEMO1?format=json"))
    assert alice.get("/data/prearchive/projects/DEMO2?format=json").status_code == 403
    csv_text = admin.get("/data/prearchive/projects/DEMO1?format=csv").get_data(as_text=True)
    assert csv_text.splitlines()[0] == ",".join(prearchive.PREARC_COLUMNS)


def test_session_tree_and_file(admin: Http) -> None:
    (row,) = [
        r for r in _rows(admin.get("/data/prearchive/projects/DEMO1")) if r["name"] == "SUBJ04_MR1"
    ]
    uri = "/data" + row["url"]
    assert _rows(admin.get(uri + "?format=json")) == [row]
    scans = _rows(admin.get(uri + "/scans?format=json"))
    assert [(s["ID"], s["series_description"]) for s in scans] == [("1", "T1w"), ("2", "T2w")]
    res = _rows(admin.get(uri + "/scans/1/resources?format=json"))
    assert res[0]["label"] == "DICOM" and res[0]["file_count"] == "16"
    files = _rows(admin.get(uri + "/scans/1/resources/DICOM/files?format=json"))
    assert len(files) == 16 and files[0]["URI"].startswith(uri + "/scans/1/resources/DICOM/files/")
    got = admin.get(files[0]["URI"])
    assert got.status_code == 200 and len(got.get_data()) == int(files[0]["Size"])
    assert got.headers["Content-Disposition"].startswith("attachment; filename=")
    head = admin.head(files[0]["URI"])
    assert head.headers["Content-Length"] == files[0]["Size"]
    z = admin.get(uri + "?format=zip")
    names = zipfile.ZipFile(io.BytesIO(z.get_data())).namelist()
    assert len(names) == 28 and names[0].startswith("SUBJ04_MR1/SCANS/1/DICOM/")
    assert admin.get(uri).headers["Content-Type"].startswith("text/xml")


def test_import_without_dest_follows_prearchive_code(admin: Http, alice: Http) -> None:
    """Issue 11 §3: a fresh project is 4 (auto-archive), so an import with a project and no
    dest is archived; 0 keeps it in the prearchive; 5 archives over an existing session (§6)."""
    study = dicom.StudySpec(
        seed="http/pcode",
        patient_name="PCODE",
        patient_id="PCODE_MR1",
        series=(dicom.SeriesSpec(1, "T1w", 2, rows=16, columns=16),),
    )
    r = admin.get("/data/projects/DEMO2/prearchive_code")
    assert r.status_code == 200 and r.get_data(as_text=True) == "4"
    r = admin.post(
        "/data/services/import?project=DEMO2",
        data=dicom.build_dicom_zip(study),
        content_type="application/zip",
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert (
        r.get_data(as_text=True)
        == "/data/archive/projects/DEMO2/subjects/PCODE/experiments/PCODE_MR1\r\n"
    )
    # 4 again: the label exists, overwrite none -> a CONFLICT, not a silent merge
    r = admin.post(
        "/data/services/import?project=DEMO2",
        data=dicom.build_dicom_zip(study),
        content_type="application/zip",
    )
    assert r.status_code == 409
    # 5: auto-archive with overwrite
    assert admin.put("/data/projects/DEMO2/prearchive_code/5").status_code == 200
    assert admin.get("/data/projects/DEMO2/prearchive_code").get_data(as_text=True) == "5"
    r = admin.post(
        "/data/services/import?project=DEMO2",
        data=dicom.build_dicom_zip(study),
        content_type="application/zip",
    )
    assert r.status_code == 200 and r.get_data(as_text=True).startswith("/data/archive/")
    # 0: manual -> the prearchive
    assert admin.put("/data/projects/DEMO2/prearchive_code/0").status_code == 200
    r = admin.post(
        "/data/services/import?project=DEMO2",
        data=dicom.build_dicom_zip(study),
        content_type="application/zip",
    )
    src = r.get_data(as_text=True).strip()
    assert src.startswith("/data/prearchive/projects/DEMO2/"), src
    assert (
        admin.post("/data/services/prearchive/delete", query_string={"src": src}).status_code == 200
    )
    # bad codes and non-owners are refused; an explicit dest still wins
    assert admin.put("/data/projects/DEMO2/prearchive_code/7").status_code == 400
    assert alice.put("/data/projects/DEMO2/prearchive_code/4").status_code in (403, 404)
    assert admin.put("/data/projects/DEMO2/prearchive_code/4").status_code == 200
    r = admin.post(
        "/data/services/import?project=DEMO2&dest=/prearchive",
        data=dicom.build_dicom_zip(study),
        content_type="application/zip",
    )
    src = r.get_data(as_text=True).strip()
    assert src.startswith("/data/prearchive/projects/DEMO2/"), src
    assert (
        admin.post("/data/services/prearchive/delete", query_string={"src": src}).status_code == 200
    )
    assert admin.get("/data/projects/NOPE/prearchive_code").status_code == 404


def test_import_to_prearchive_then_archive(admin: Http) -> None:
    # the project's prearchive setting sends an import without dest to the prearchive (§6)
    assert admin.put("/data/projects/DEMO1/prearchive_code/0").status_code == 200
    r = admin.post(
        "/data/services/import?project=DEMO1&import-handler=DICOM-zip",
        data=dicom.build_dicom_zip(STUDY),
        content_type="application/zip",
    )
    assert r.status_code == 200 and r.mimetype == "text/uri-list"
    text = r.get_data(as_text=True)
    assert text.endswith("\r\n") and text.startswith("/data/prearchive/projects/DEMO1/")
    src = text.strip()
    r = admin.post(f"/data/services/archive?src={src}&auto-archive=false")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert (
        r.get_data(as_text=True)
        == "/data/archive/projects/DEMO1/subjects/HTTPSUBJ/experiments/HTTPSUBJ_MR1\r\n"
    )
    assert admin.get(src + "?format=json").status_code == 404
    scans = _rows(admin.get("/data/projects/DEMO1/experiments/HTTPSUBJ_MR1/scans?format=json"))
    assert [s["ID"] for s in scans] == ["1", "4"]
    # the same again: CONFLICT in the prearchive, 409
    src2 = (
        admin.post(
            "/data/services/import?project=DEMO1",
            data=dicom.build_dicom_zip(STUDY),
            content_type="application/zip",
        )
        .get_data(as_text=True)
        .strip()
    )
    r = admin.post(f"/data/services/archive?src={src2}")
    assert r.status_code == 409 and r.get_data(as_text=True).startswith("<html>")
    assert _rows(admin.get(src2 + "?format=json"))[0]["status"] == "CONFLICT"
    r = admin.post("/data/services/prearchive/delete", query_string={"src": src2})
    assert r.status_code == 200 and _rows(r)[0]["status"] == "QUEUED_DELETING"
    deadline = time.monotonic() + 30
    while admin.get(src2 + "?format=json").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin.get(src2 + "?format=json").status_code == 404


def test_import_multipart_and_errors(admin: Http, alice: Http) -> None:
    r = admin.post(
        "/data/services/import",
        data={
            "dest": "/archive/projects/DEMO2/subjects/MP/experiments/MP_MR1",
            "Direct-Archive": "true",
            "file": (io.BytesIO(dicom.build_dicom_zip(STUDY)), "upload.zip"),
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert (
        r.get_data(as_text=True)
        == "/data/archive/projects/DEMO2/subjects/MP/experiments/MP_MR1\r\n"
    )
    r = admin.post("/data/services/import?project=DEMO1", data=b"plain text, no zip" * 20)
    assert r.status_code == 400 and b"<h3>Unable to identify upload format.</h3>" in r.get_data()
    r = alice.post(
        "/data/services/import?project=DEMO2&dest=/archive",
        data=dicom.build_dicom_zip(STUDY),
        content_type="application/zip",
    )
    assert r.status_code == 403
    assert admin.get("/data/services/import").status_code == 405


def _wait_row(admin: Http, uri: str, want: str, timeout: float = 30.0) -> dict[str, str]:
    """Poll ``uri?format=json`` until its status is ``want`` (queued operations, §7.3)."""
    deadline = time.monotonic() + timeout
    while True:
        r = admin.get(uri + "?format=json")
        row = _rows(r)[0] if r.status_code == 200 else {}
        if row.get("status") == want or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def test_move_rebuild_actions(admin: Http) -> None:
    src = (
        admin.post(
            "/data/services/import?project=DEMO1&dest=/prearchive",
            data=dicom.build_dicom_zip(STUDY),
            content_type="application/zip",
        )
        .get_data(as_text=True)
        .strip()
    )
    # PrearchiveBatchRebuild: QUEUED_BUILDING in the answer, READY once the handler ran
    r = admin.post("/data/services/prearchive/rebuild", query_string={"src": src})
    assert _rows(r)[0]["status"] == "QUEUED_BUILDING"
    # not settled yet: a move is refused (403 like XNAT's InvalidStatus) or queued after READY
    assert _wait_row(admin, src, "READY")["status"] == "READY"
    r = admin.post(
        "/data/services/prearchive/move", query_string={"src": src, "newProject": "DEMO2"}
    )
    (row,) = _rows(r)
    # PrearchiveBatchMove answers the row as queued, still in the old project
    assert row["project"] == "DEMO1" and row["status"] == "QUEUED_MOVING"
    ts, folder = row["timestamp"], row["folderName"]
    uri = f"/data/prearchive/projects/DEMO2/{ts}/{folder}"
    moved = _wait_row(admin, uri, "READY")
    # _moveToProject keeps timestamp and folder, READY in the new project
    assert moved["project"] == "DEMO2" and moved["url"] == uri[len("/data") :]
    assert admin.get(src + "?format=json").status_code == 404
    # PrearcSessionResource: set-status answers nothing, reset-status and build the URI
    r = admin.post(uri + "?action=set-status&status=ERROR")
    assert r.status_code == 200 and r.get_data() == b""
    assert _rows(admin.get(uri + "?format=json"))[0]["status"] == "ERROR"
    r = admin.post(uri + "?action=reset-status")
    assert r.mimetype == "text/uri-list" and r.get_data(as_text=True) == uri + "\r\n"
    assert _rows(admin.get(uri + "?format=json"))[0]["status"] == "READY"
    admin.post(uri + "?action=set-status&status=ARCHIVING")
    r = admin.post(uri + "?action=build")
    assert r.status_code == 409 and b"session document locked" in r.get_data()
    admin.post(uri + "?action=set-status&status=ERROR")
    assert admin.delete(uri).status_code == 200
    assert admin.get(uri + "?format=json").status_code == 404


def test_gradual_dicom(admin: Http) -> None:
    study = dicom.StudySpec(
        seed="http/gradual",
        patient_name="GRAD",
        patient_id="GRAD_MR1",
        series=(dicom.SeriesSpec(1, "T1w", 3),),
    )
    urls = set()
    for gen in dicom.iter_study_files(study):
        r = admin.post(
            "/data/services/import?import-handler=gradual-DICOM&PROJECT_ID=DEMO1",
            data=gen.data,
            content_type="application/dicom",
        )
        assert r.status_code == 200 and r.mimetype == "text/uri-list"
        urls.add(r.get_data(as_text=True).strip())
    (uri,) = urls
    assert _rows(admin.get(uri + "?format=json"))[0]["status"] == "RECEIVING"
    assert admin.get(uri + "/scans?format=json").status_code == 404
    r = admin.post(uri + "?action=build")
    assert r.mimetype == "text/uri-list" and r.get_data(as_text=True) == uri + "\r\n"
    assert _rows(admin.get(uri + "?format=json"))[0]["status"] == "READY"
    files = _rows(admin.get(uri + "/scans/1/resources/DICOM/files?format=json"))
    assert len(files) == 3
    assert admin.delete(uri).status_code == 200
