"""Emulator fidelity for single-object documents (issue 11 §3, docs/FIDELITY.md).

XNAT's ``?format=json`` item is ItemJSONBuilder over ItemPropBuilder: ``data_fields`` holds the
item's own fields flattened along its extension chain (xnat.xsd), so identity fields from every
level appear, and extension tables add their lower-case key twice (captured real items,
docs/XNAT-API.md §2.1).  Checked kind by kind here.
"""

from __future__ import annotations

from typing import Any, Dict, List

import requests

from tests.conftest import ADMIN

#: identity fields per kind: (xnat.xsd attributes / elements on the type and its bases)
IDENTITY = {
    # projectData: @ID, @secondary_ID, name
    "project": {"ID", "secondary_ID", "name"},
    # subjectData: @ID, @project, @label
    "subject": {"ID", "project", "label"},
    # experimentData @ID @project @label; subjectAssessorData subject_ID; extension key "id"
    "experiment": {"ID", "id", "project", "label", "subject_ID"},
    # imageScanData @ID @type @project, image_session_ID; PK twice (xnat_imagescandata_id)
    "scan": {
        "ID",
        "type",
        "project",
        "image_session_ID",
        "xnat_imagescandata_id",
        "xnat_imageScanData_id",
    },
    # imageAssessorData: experimentData's, plus imageSession_ID
    "assessor": {"ID", "id", "project", "label", "imageSession_ID"},
    # abstractResource @label, PK twice
    "resource": {"xnat_abstractresource_id", "xnat_abstractResource_id", "label"},
}


def _rows(s: requests.Session, url: str) -> List[Dict[str, Any]]:
    r = s.get(url, params={"format": "json"}, timeout=30)
    r.raise_for_status()
    return r.json()["ResultSet"]["Result"]


def _item(s: requests.Session, url: str) -> Dict[str, Any]:
    r = s.get(url, params={"format": "json"}, timeout=30)
    assert r.status_code == 200, url
    (item,) = r.json()["items"]
    return item


def test_single_object_identity_fields(shared_emulator) -> None:
    s = requests.Session()
    s.auth = ADMIN
    base = shared_emulator.url + "/data"
    subj = _rows(s, f"{base}/projects/DEMO1/subjects")[0]
    exp = _rows(s, f"{base}/projects/DEMO1/subjects/{subj['ID']}/experiments")[0]
    scan = _rows(s, f"{base}/experiments/{exp['ID']}/scans")[0]
    res = _rows(s, f"{base}/experiments/{exp['ID']}/scans/{scan['ID']}/resources")[0]
    urls = {
        "project": f"{base}/projects/DEMO1",
        "subject": f"{base}/projects/DEMO1/subjects/{subj['ID']}",
        "experiment": f"{base}/experiments/{exp['ID']}",
        "scan": f"{base}/experiments/{exp['ID']}/scans/{scan['ID']}",
        "resource": f"{base}/experiments/{exp['ID']}/scans/{scan['ID']}/resources/"
        f"{res['xnat_abstractresource_id']}",
    }
    assessors = [
        r
        for e in _rows(s, f"{base}/projects/DEMO1/experiments")
        for r in (
            _rows(s, f"{base}/experiments/{e['ID']}/assessors")
            if e.get("xsiType", "").endswith("SessionData")
            else []
        )
    ]
    if assessors:
        urls["assessor"] = f"{base}/experiments/{exp['ID']}/assessors/{assessors[0]['ID']}"
    missing = {}
    for kind, url in urls.items():
        fields = _item(s, url)["data_fields"]
        lack = IDENTITY[kind] - set(fields)
        if lack:
            missing[kind] = sorted(lack)
    assert missing == {}
    scan_fields = _item(s, urls["scan"])["data_fields"]
    assert scan_fields["project"] == "DEMO1" and scan_fields["image_session_ID"] == exp["ID"]
    assert scan_fields["xnat_imagescandata_id"] == scan_fields["xnat_imageScanData_id"]
    # the scan nested in its experiment's document carries the same identity
    nested = next(c for c in _item(s, urls["experiment"])["children"] if c["field"] == "scans/scan")
    assert all(it["data_fields"]["project"] == "DEMO1" for it in nested["items"])
