"""XNAT's config service, site and project entries (docs/XNAT-API.md §12, emulator/config.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

Client = Any

BIDSMAP = [
    {"series_description": "MPRAGE", "bidsname": "T1w"},
    {"series_description": "rest", "bidsname": "task-rest_bold"},
]


@pytest.fixture
def proj(admin: Client) -> str:
    assert admin.put("/data/projects/P1").status_code in (200, 201)  # bob is a member of P1
    assert admin.put("/data/projects/CFGX").status_code in (200, 201)  # bob is not
    return "P1"


def test_project_entry_put_get_and_the_resultset(admin: Client, make_client, proj: str) -> None:
    url = f"/data/projects/{proj}/config/bids/bidsmap"
    missing = admin.get(url, params={"contents": "true"})
    assert missing.status_code == 404
    quiet = admin.get(url, params={"contents": "true", "accept-not-found": "true"})
    assert quiet.status_code == 204
    text = json.dumps(BIDSMAP, indent=1)
    # as XNAT's docs do it: the raw body, inbody=true
    r = admin.put(url, params={"inbody": "true"}, data=text.encode())
    assert r.status_code == 201
    got = admin.get(url, params={"contents": "true", "format": "json"})
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("text/plain")
    assert got.text == text and got.json() == BIDSMAP  # the stored text, unwrapped
    # the same again is no change (200), a JSON body {"contents": ...} replaces it
    assert admin.put(url, params={"inbody": "true"}, data=text.encode()).status_code == 200
    r = admin.put(url, json={"contents": json.dumps(BIDSMAP[:1])})
    assert r.status_code == 200
    rows = admin.get(url, params={"format": "json"}).json()["ResultSet"]["Result"]
    assert len(rows) == 1 and list(rows[0]) == [
        "tool",
        "path",
        "project",
        "user",
        "create_date",
        "reason",
        "contents",
        "unversioned",
        "version",
        "status",
    ]
    row = rows[0]
    assert (row["tool"], row["path"], row["project"], row["user"], row["status"]) == (
        "bids",
        "bidsmap",
        proj,
        "admin",
        "enabled",
    )
    assert json.loads(row["contents"]) == BIDSMAP[:1] and row["version"] == "2"
    meta = admin.get(url, params={"format": "json", "meta": "true"}).json()
    assert meta["ResultSet"]["Result"][0]["contents"] == ""
    # a member of the project may set it; another user may neither read nor set it
    bob = make_client(("bob", "bob-pw"))
    assert bob.put(url, params={"inbody": "true"}, data=text.encode()).status_code == 200
    assert bob.get(url, params={"contents": "true"}).json() == BIDSMAP
    other = "/data/projects/CFGX/config/bids/bidsmap"
    assert bob.get(other, params={"contents": "true"}).status_code == 403
    assert bob.put(other, params={"inbody": "true"}, data=b"[]").status_code == 403
    assert (
        admin.get(
            "/data/projects/NOPE/config/bids/bidsmap", params={"contents": "true"}
        ).status_code
        == 404
    )


def test_site_entry_needs_an_admin_and_the_project_can_fall_back(
    admin: Client, make_client, proj: str
) -> None:
    url = "/data/config/bids/bidsmap"
    bob = make_client(("bob", "bob-pw"))
    assert bob.put(url, params={"inbody": "true"}, data=b"[]").status_code == 403
    assert admin.put(url, params={"inbody": "true"}, data=json.dumps(BIDSMAP)).status_code in (
        200,
        201,
    )
    assert bob.get(url, params={"contents": "true"}).json() == BIDSMAP  # any user reads it
    assert admin.get("/REST/config/bids/bidsmap", params={"contents": "true"}).json() == BIDSMAP
    pentry = "/data/projects/CFGX/config/bids/bidsmap"
    assert admin.get(pentry, params={"contents": "true"}).status_code == 404
    assert (
        admin.get(pentry, params={"contents": "true", "defaultToSiteWide": "true"}).json()
        == BIDSMAP
    )


def test_put_errors_status_and_delete(admin: Client, proj: str) -> None:
    url = f"/data/projects/{proj}/config/xnatfs/some/deep/path"
    assert admin.put(url).status_code == 400  # neither contents nor status
    assert admin.put(url, params={"status": "maybe"}).status_code == 400
    assert admin.put(url, json={"contents": "  "}).status_code == 500  # XNAT: "No contents"
    assert admin.put(url, params={"inbody": "true"}, data=b"hello").status_code == 201
    assert admin.get(url, params={"contents": "true"}).text == "hello"
    assert admin.put(url, params={"status": "disabled"}).status_code == 200
    assert admin.get(url, params={"contents": "true"}).status_code == 404
    row = admin.get(url, params={"format": "json"}).json()["ResultSet"]["Result"][0]
    assert row["status"] == "disabled" and row["path"] == "some/deep/path"
    assert admin.put(url, params={"status": "enabled"}).status_code == 200
    assert admin.get(url, params={"contents": "true"}).text == "hello"
    assert admin.delete(url).status_code == 200
    assert admin.get(url, params={"contents": "true"}).status_code == 404
    # a multipart upload of one file is the contents too
    r = admin.put(url, files={"f": ("x.txt", b"from a form")})
    assert (
        r.status_code == 200 and admin.get(url, params={"contents": "true"}).text == "from a form"
    )
