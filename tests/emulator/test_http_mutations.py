"""Creating and deleting archive objects (docs/XNAT-API.md §4, §10)."""

from __future__ import annotations

from typing import Any

import pytest

Client = Any


@pytest.fixture
def proj(admin: Client) -> str:
    r = admin.put("/data/projects/MUT")
    assert r.status_code in (200, 201)
    return "MUT"


def test_create_statuses_and_accession_ids(admin: Client, proj: str) -> None:
    r = admin.put(
        f"/data/projects/{proj}/subjects/SUBA",
        params={
            "xsiType": "xnat:subjectData",
            "req_format": "qs",
            "xnat:subjectData/gender": "female",
            "xnat:subjectData/fields/field[name=age]/field": "42",
        },
    )
    assert r.status_code == 201 and r.headers["Content-Type"].startswith("text/plain")
    sid = r.text
    assert sid.startswith("XNAT_S") and len(sid) == len("XNAT_S00001")
    again = admin.put(f"/data/projects/{proj}/subjects/SUBA")
    assert again.status_code == 200 and again.text == sid
    item = admin.get(f"/data/subjects/{sid}?format=json").json()["items"][0]
    assert item["data_fields"]["gender"] == "female"
    fields = next(c for c in item["children"] if c["field"] == "fields/field")["items"]
    assert fields[0]["data_fields"] == {"name": "age", "field": "42"}

    url = f"/data/projects/{proj}/subjects/SUBA/experiments/EXPA"
    assert admin.put(url).status_code == 417  # no xsiType, no body: "Need PUT Contents"
    r = admin.put(url, params={"xsiType": "xnat:mrSessionData", "date": "2024-02-03"})
    assert r.status_code == 201 and r.text.startswith("XNAT_E")
    eid = r.text
    assert admin.put(url, params={"xsiType": "xnat:mrSessionData"}).text == eid
    r = admin.put(
        f"/data/experiments/{eid}/scans/5", params={"xsiType": "xnat:mrScanData", "type": "T2w"}
    )
    assert r.status_code == 201
    assert (
        admin.post(
            f"/data/experiments/{eid}/scans/5", params={"xsiType": "xnat:mrScanData"}
        ).status_code
        == 409
    )
    r = admin.put(
        f"/data/experiments/{eid}/assessors/EXPA_QC",
        params={"xsiType": "xnat:qcAssessmentData", "req_format": "qs"},
    )
    assert r.status_code == 201 and r.text.startswith("XNAT_E")
    rows = admin.get(f"/data/experiments/{eid}/assessors?format=json").json()["ResultSet"]["Result"]
    assert [x["label"] for x in rows] == ["EXPA_QC"]
    # an unknown subject under the experiment path is created on the fly (§4.3)
    r = admin.put(
        f"/data/projects/{proj}/subjects/NEWSUBJ/experiments/EXPB",
        params={"xsiType": "xnat:mrSessionData"},
    )
    assert r.status_code == 201
    labels = [
        x["label"]
        for x in admin.get(f"/data/projects/{proj}/subjects?format=json").json()["ResultSet"][
            "Result"
        ]
    ]
    assert "NEWSUBJ" in labels


def test_conflicts_and_missing_project(admin: Client, proj: str) -> None:
    admin.put(f"/data/projects/{proj}/subjects/S_A").raise_for_status()
    admin.put(f"/data/projects/{proj}/subjects/S_B").raise_for_status()
    assert admin.put(f"/data/projects/{proj}/subjects/S_A?label=S_B").status_code == 409
    assert admin.put("/data/projects/NOSUCH/subjects/X").status_code == 422
    assert admin.put(f"/data/projects/{proj}/subjects/S_A?label=S_C").status_code == 200
    labels = {
        x["label"]
        for x in admin.get(f"/data/projects/{proj}/subjects?format=json").json()["ResultSet"][
            "Result"
        ]
    }
    assert "S_C" in labels and "S_A" not in labels


@pytest.mark.parametrize("label", ["bad label", "bad.label", "bäd", "a+b"])
def test_invalid_labels_are_refused(admin: Client, proj: str, label: str) -> None:
    for url in (f"/data/projects/{label}", f"/data/projects/{proj}/subjects/{label}"):
        r = admin.put(url)
        assert r.status_code == 400, url
        assert r.text.startswith("<html>") and "<h3>" in r.text
    admin.put(f"/data/projects/{proj}/subjects/OKSUBJ").raise_for_status()
    r = admin.put(
        f"/data/projects/{proj}/subjects/OKSUBJ/experiments/{label}",
        params={"xsiType": "xnat:mrSessionData"},
    )
    assert r.status_code == 400


def test_deletes(admin: Client, proj: str) -> None:
    eid = admin.put(
        f"/data/projects/{proj}/subjects/DS/experiments/DE",
        params={"xsiType": "xnat:mrSessionData"},
    ).text
    admin.put(f"/data/experiments/{eid}/scans/1?xsiType=xnat:mrScanData").raise_for_status()
    admin.put(f"/data/experiments/{eid}/scans/1/resources/R/files/f.txt", data=b"f")
    assert admin.delete(f"/data/experiments/{eid}/scans/1?removeFiles=true").status_code == 200
    assert (
        admin.get(f"/data/experiments/{eid}/scans?format=json").json()["ResultSet"]["Result"] == []
    )
    assert (
        admin.delete(
            f"/data/projects/{proj}/subjects/DS/experiments/DE?removeFiles=true"
        ).status_code
        == 200
    )
    assert admin.get(f"/data/experiments/{eid}?format=json").status_code == 404
    assert admin.delete(f"/data/experiments/{eid}").status_code == 404
    assert admin.delete(f"/data/projects/{proj}/subjects/DS?removeFiles=true").status_code == 200
    assert admin.delete(f"/data/projects/{proj}/subjects/DS").status_code == 404


def test_restart_keeps_everything(tmp_path: Any, make_client: Any) -> None:
    from xnatfs.emulator import Emulator

    data = tmp_path / "persist"
    with Emulator(data, seed="empty") as e:
        c = make_client(("admin", "admin"), base=e.url)
        c.put("/data/projects/KEEP").raise_for_status()
        c.put("/data/projects/KEEP/resources/R/files/k.txt", data=b"kept").raise_for_status()
        port = e.port
    c.close()
    # Same data dir and the same port again (SO_REUSEADDR).
    with Emulator(data, seed="empty", port=port) as e2:
        c2 = make_client(("admin", "admin"), base=e2.url)
        assert c2.get("/data/projects/KEEP/resources/R/files/k.txt").content == b"kept"
        assert c2.put("/data/projects/KEEP/subjects/S").text == "XNAT_S00001"
