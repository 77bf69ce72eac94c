"""``XnatClient.config_json`` against the emulator's config service (docs/XNAT-API.md §12)."""

from __future__ import annotations

import json

import pytest
import requests

from tests.api.helpers import ADMIN, ALICE, options
from xnatfs.xnat import errors
from xnatfs.xnat.client import XnatClient

BIDSMAP = [{"series_description": "MPRAGE", "bidsname": "T1w"}]


def _put(url: str, body: str) -> None:
    r = requests.put(
        url,
        params={"inbody": "true"},
        data=body.encode(),
        auth=(ADMIN.username, ADMIN.password),
        timeout=30,
    )
    assert r.status_code == 201, r.text


def test_config_json_reads_project_and_site_entries(make_emulator) -> None:
    emu = make_emulator().emu
    _put(f"{emu.url}/data/projects/DEMO1/config/bids/bidsmap", json.dumps(BIDSMAP))
    _put(f"{emu.url}/data/config/xnatfs/deep/path", '{"a": 1}')
    _put(f"{emu.url}/data/config/xnatfs/text", "not json")
    _put(f"{emu.url}/data/projects/DEMO2/config/bids/bidsmap", "[]")
    with XnatClient(emu.url, ALICE, options()) as c:
        assert c.config_json("bids", "bidsmap", "DEMO1") == BIDSMAP
        assert c.config_json("bids", "bidsmap") is None  # absent: 404
        assert c.config_json("xnatfs", "deep/path") == {"a": 1}  # a path of segments
        with pytest.raises(errors.NotXnatResponse):
            c.config_json("xnatfs", "text")  # text, not JSON
        with pytest.raises(errors.Forbidden):
            c.config_json("bids", "bidsmap", "DEMO2")  # not alice's project
