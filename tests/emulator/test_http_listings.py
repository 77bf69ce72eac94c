"""Listing formats of the emulator (docs/XNAT-API.md §1, §10)."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from typing import Any

Archive = Client = Any

RESOURCE_COLUMNS = [
    "xnat_abstractresource_id",
    "label",
    "element_name",
    "category",
    "cat_id",
    "cat_desc",
    "file_count",
    "file_size",
    "tags",
    "content",
    "format",
]
FILE_COLUMNS = [
    "Name",
    "Size",
    "URI",
    "collection",
    "file_tags",
    "file_format",
    "file_content",
    "cat_ID",
    "digest",
]


def all_strings(doc: dict) -> bool:
    return all(isinstance(v, str) for row in doc["ResultSet"]["Result"] for v in row.values())


def test_projects_envelope_is_exact(admin: Client, populated: Archive) -> None:
    r = admin.get("/data/projects?format=json")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.text.startswith('{"ResultSet":{"Result":[')
    assert re.search(r'\], "totalRecords": "2"', r.text)
    doc = r.json()
    assert all_strings(doc)
    row = doc["ResultSet"]["Result"][0]
    assert set(row) == {
        "ID",
        "secondary_ID",
        "name",
        "description",
        "pi_firstname",
        "pi_lastname",
        "URI",
    }
    assert row["URI"] == "/data/projects/P1"


def test_subjects_and_experiments(admin: Client, populated: Archive) -> None:
    doc = admin.get("/data/projects/P1/subjects?format=json").json()
    (row,) = doc["ResultSet"]["Result"]
    assert row["ID"] == populated.subject_id == "XNAT_S00001"
    assert row["label"] == "S1" and row["project"] == "P1"
    assert row["URI"] == f"/data/subjects/{populated.subject_id}"
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+$", row["insert_date"])
    assert doc["ResultSet"]["totalRecords"] == "1"

    doc = admin.get(
        "/data/experiments",
        params={
            "project": "P1",
            "format": "json",
            "columns": "ID,label,xsiType,subject_ID,subject_label,date,last_modified",
        },
    ).json()
    assert doc["ResultSet"]["title"] == "Matching experiments"
    (row,) = doc["ResultSet"]["Result"]
    assert row["ID"] == populated.experiment_id == "XNAT_E00001"
    assert row["subject_label"] == "S1" and row["subject_ID"] == populated.subject_id
    assert row["date"] == "2024-01-01" and row["xsiType"] == "xnat:mrSessionData"
    assert row["URI"] == f"/data/experiments/{populated.experiment_id}"
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+$", row["last_modified"])
    # by label under a subject, by ID under the project
    for url in (
        "/data/projects/P1/subjects/S1/experiments?format=json",
        f"/data/projects/P1/subjects/{populated.subject_id}/experiments?format=json",
        "/data/archive/projects/P1/experiments?format=json",
    ):
        rows = admin.get(url).json()["ResultSet"]["Result"]
        assert [x["label"] for x in rows] == ["E1"], url


def test_scans_listing(admin: Client, populated: Archive) -> None:
    doc = admin.get(f"/data/experiments/{populated.experiment_id}/scans?format=json").json()
    (row,) = doc["ResultSet"]["Result"]
    assert list(row) == [
        "xnat_imagescandata_id",
        "ID",
        "type",
        "quality",
        "xsiType",
        "note",
        "series_description",
        "URI",
    ]
    assert row["ID"] == "1" and row["type"] == "T1w" and row["xsiType"] == "xnat:mrScanData"
    assert row["xnat_imagescandata_id"].isdigit()


def test_resources_have_no_id_or_uri(admin: Client, populated: Archive) -> None:
    r = admin.get(
        f"/data/experiments/{populated.experiment_id}/scans/1/resources",
        params={"format": "json", "columns": "ID,URI,label"},
    )
    doc = r.json()
    assert doc["ResultSet"]["title"] == "Resources"
    (row,) = doc["ResultSet"]["Result"]
    assert list(row) == RESOURCE_COLUMNS  # columns= is not honoured here
    assert row["label"] == "DICOM" and row["category"] == "scans"
    assert row["cat_id"] == "1" and row["cat_desc"] == "T1w"
    assert row["file_count"] == "2"
    assert row["file_size"] == str(sum(len(v) for v in populated.files.values()))
    assert row["format"] == "DICOM" and row["content"] == "RAW"
    # ?all=true on the experiment gathers scan resources too
    rows = admin.get(
        f"/data/experiments/{populated.experiment_id}/resources?all=true&format=json"
    ).json()["ResultSet"]["Result"]
    assert [x["label"] for x in rows] == ["DICOM"]
    rows = admin.get(f"/data/experiments/{populated.experiment_id}/resources?format=json").json()[
        "ResultSet"
    ]["Result"]
    assert rows == []


def test_files_listing(admin: Client, populated: Archive) -> None:
    eid, rid = populated.experiment_id, populated.scan_resource_id
    r = admin.get(
        "/data/projects/P1/subjects/S1/experiments/E1/scans/1/resources/DICOM/files?format=json"
    )
    text = r.text
    assert text.startswith('{"ResultSet":{"Columns":[{"key":"URI","serverRoot":""}],"Result":[')
    doc = r.json()
    assert doc["ResultSet"]["title"] == "Files"
    assert "totalRecords" not in doc["ResultSet"]
    rows = {x["URI"]: x for x in doc["ResultSet"]["Result"]}
    assert set(rows) == {
        f"/data/experiments/{eid}/scans/1/resources/{rid}/files/{p}" for p in populated.files
    }
    b = rows[f"/data/experiments/{eid}/scans/1/resources/{rid}/files/sub/b.dcm"]
    assert list(b) == FILE_COLUMNS
    assert b["Name"] == "b.dcm" and b["Size"] == str(len(populated.files["sub/b.dcm"]))
    assert b["collection"] == "DICOM" and b["cat_ID"] == rid
    assert b["digest"] == hashlib.md5(populated.files["sub/b.dcm"]).hexdigest()
    # same table via scans/ALL, comma lists, numeric id, <obj>/files
    for url in (
        f"/data/experiments/{eid}/scans/ALL/files",
        f"/data/experiments/{eid}/scans/1,2/files",
        f"/data/experiments/{eid}/scans/1/resources/{rid}/files",
        f"/data/experiments/{eid}/scans/1/files",
        f"/data/experiments/{eid}/scans/1/resources/DICOM,NIFTI/files",
    ):
        got = {x["URI"] for x in admin.get(url + "?format=json").json()["ResultSet"]["Result"]}
        assert got == set(rows), url
    # a sub-folder listing
    got = admin.get(f"/data/experiments/{eid}/scans/1/resources/DICOM/files/sub/?format=json")
    assert [x["Name"] for x in got.json()["ResultSet"]["Result"]] == ["b.dcm"]


def test_csv_is_what_pyxnat_reads(admin: Client, populated: Archive) -> None:
    r = admin.get("/data/projects/P1/subjects?format=csv&columns=ID,label")
    assert r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0][:2] == ["ID", "label"] and "URI" in rows[0]
    assert rows[1][:2] == [populated.subject_id, "S1"]
    assert "\r\n" not in r.text
    r = admin.get(
        f"/data/experiments/{populated.experiment_id}/scans/1/resources/DICOM/files?format=csv"
    )
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(x["Name"] for x in rows) == ["a.dcm", "b.dcm"]


def test_html_and_xml_tables(admin: Client, populated: Archive) -> None:
    r = admin.get("/data/projects", headers={"Accept": "text/html"})
    assert r.headers["Content-Type"].startswith("text/html") and "<table" in r.text
    r = admin.get("/data/projects?format=xml")
    assert r.text.startswith("<?xml") and "<ResultSet" in r.text
    r = admin.get("/data/projects")  # Accept: */* -> JSON
    assert r.json()["ResultSet"]["totalRecords"] == "2"


def test_columns_filters_sort_paging(admin: Client, populated: Archive) -> None:
    for label in ("S2", "S3", "T4"):
        admin.put(f"/data/projects/P1/subjects/{label}").raise_for_status()
    try:
        rows = admin.get(
            "/data/projects/P1/subjects?format=json&label=S*&sortBy=label&sortOrder=DESC"
        ).json()["ResultSet"]["Result"]
        assert [x["label"] for x in rows] == ["S3", "S2", "S1"]
        doc = admin.get(
            "/data/projects/P1/subjects?format=json&sortBy=label&limit=2&offset=1&columns=label"
        ).json()["ResultSet"]
        assert [x["label"] for x in doc["Result"]] == ["S2", "S3"]
        assert set(doc["Result"][0]) == {"label", "ID", "URI"}
        assert doc["totalRecords"] == "4"
    finally:
        for label in ("S2", "S3", "T4"):
            assert (
                admin.delete(f"/data/projects/P1/subjects/{label}?removeFiles=true").status_code
                == 200
            )


def test_addressing_rules(admin: Client, populated: Archive) -> None:
    eid, sid = populated.experiment_id, populated.subject_id
    assert admin.get(f"/data/subjects/{sid}?format=json").status_code == 200
    assert admin.get("/data/subjects/S1?format=json").status_code == 404  # label needs a project
    assert admin.get("/data/experiments/E1?format=json").status_code == 404
    for url in (
        f"/data/experiments/{eid}",
        "/data/projects/P1/experiments/E1",
        "/data/archive/projects/P1/subjects/S1/experiments/E1",
        f"/REST/projects/P1/subjects/{sid}/experiments/{eid}",
        "/data/projects/P1/subjects/S1/experiments/E1/",
    ):
        r = admin.get(
            url + ("?format=json" if not url.endswith("/") else ""),
            params={"format": "json"} if url.endswith("/") else None,
        )
        assert r.status_code == 200, url
        assert r.json()["items"][0]["data_fields"]["ID"] == eid
    assert admin.get("/data/projects/NOPE/subjects?format=json").status_code == 404
    r = admin.get("/data/projects/P1/subjects/NOPE?format=json")
    assert r.status_code == 404 and r.text.startswith("<html>") and "<h3>" in r.text
    assert admin.get("/data/version").status_code == 404


def test_single_items(admin: Client, populated: Archive) -> None:
    eid = populated.experiment_id
    doc = admin.get(f"/data/experiments/{eid}?format=json").json()
    item = doc["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData" and item["meta"]["isHistory"] is False
    assert re.match(r"^\w{3} \w{3} \d\d \d\d:\d\d:\d\d \w+ \d{4}$", item["meta"]["start_date"])
    assert item["data_fields"]["label"] == "E1" and item["data_fields"]["subject_ID"]
    scans = next(c for c in item["children"] if c["field"] == "scans/scan")
    assert scans["items"][0]["data_fields"]["ID"] == "1"
    r = admin.get(f"/data/experiments/{eid}")
    assert r.headers["Content-Type"].startswith("text/xml")
    assert "<xnat:MRSession" in r.text and 'label="E1"' in r.text
    r = admin.get(f"/data/experiments/{eid}/scans/1/resources/DICOM")
    assert r.text.startswith("<?xml") and "<cat:Catalog" in r.text and "sub/b.dcm" in r.text


def test_search_elements(admin: Client, populated: Archive) -> None:
    rows = admin.get("/data/search/elements?format=json").json()["ResultSet"]["Result"]
    mr = next(x for x in rows if x["ELEMENT_NAME"] == "xnat:mrSessionData")
    assert mr["COUNT"] == "1" and mr["SINGULAR"] == "MR Session"


def test_permissions(make_client: Any, populated: Archive) -> None:
    bob = make_client(("bob", "bob-pw"))  # member of P1 only
    ids = [x["ID"] for x in bob.get("/data/projects?format=json").json()["ResultSet"]["Result"]]
    assert ids == ["P1"]
    assert bob.get("/data/projects/P2/subjects?format=json").status_code == 404
    assert bob.get("/data/subjects/XNAT_S00002?format=json").status_code == 404
    assert bob.put("/data/projects/P2/subjects/NEW").status_code == 403
    rows = bob.get("/data/experiments?format=json").json()["ResultSet"]["Result"]
    assert {x["project"] for x in rows} == {"P1"}


def test_resources_at_every_level(admin: Client, populated: Archive) -> None:
    eid, sid = populated.experiment_id, populated.subject_id
    aid = admin.put(
        f"/data/experiments/{eid}/assessors/E1_FS", params={"xsiType": "xnat:qcAssessmentData"}
    ).text
    uploads = {
        "/data/projects/P1/resources/PR": "/data/projects/P1/resources/{rid}/files/p.txt",
        "/data/projects/P1/subjects/S1/resources/SR": (
            f"/data/projects/P1/subjects/{sid}/resources/{{rid}}/files/p.txt"
        ),
        f"/data/experiments/{eid}/resources/ER": (
            f"/data/experiments/{eid}/resources/{{rid}}/files/p.txt"
        ),
        f"/data/experiments/{eid}/assessors/E1_FS/out/resources/AR": (
            f"/data/experiments/{eid}/assessors/{aid}/out/resources/{{rid}}/files/p.txt"
        ),
    }
    for base, uri_pattern in uploads.items():
        assert admin.put(f"{base}/files/p.txt", data=base.encode()).status_code == 200
        (row,) = admin.get(f"{base}/files?format=json").json()["ResultSet"]["Result"]
        assert row["URI"] == uri_pattern.format(rid=row["cat_ID"]), base
        assert admin.get(row["URI"]).content == base.encode()
        listing = admin.get(base.rsplit("/", 1)[0] + "?format=json").json()["ResultSet"]["Result"]
        assert base.rsplit("/", 1)[1] in [x["label"] for x in listing]
    rows = admin.get(f"/data/experiments/{eid}/resources?format=json").json()["ResultSet"]["Result"]
    assert [(x["label"], x["cat_id"], x["cat_desc"]) for x in rows] == [("ER", eid, " ")]
    rows = admin.get(f"/data/experiments/{eid}/resources?all=true&format=json").json()["ResultSet"][
        "Result"
    ]
    assert {x["label"]: x["category"] for x in rows} == {
        "DICOM": "scans",
        "ER": "resources",
        "AR": "assessors",
    }
    item = admin.get("/data/projects/P1?format=json").json()["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:projectData" and item["data_fields"]["ID"] == "P1"
    r = admin.get(f"/data/projects/P1/subjects/{sid}")
    assert r.headers["Content-Type"].startswith("text/xml") and "<xnat:Subject" in r.text
    for base in uploads:
        assert admin.delete(base).status_code == 200
    assert admin.delete(f"/data/experiments/{eid}/assessors/{aid}").status_code == 200
