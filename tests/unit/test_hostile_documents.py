"""Documents xnatfs makes from XNAT's JSON (``.xnat.json``, BIDS sidecars and
``dataset_description.json``) when that JSON holds a lone surrogate (``"\\ud800"``: valid JSON,
not encodable as UTF-8): before, each read failed with an unexpected UnicodeEncodeError (EIO
and a traceback); now the surrogate stays the JSON escape it was."""

from __future__ import annotations

import json

from xnatfs.bids import dataset, sidecar
from xnatfs.layouts.xnat.kinds import Gen, Kind
from xnatfs.layouts.xnat.layout import XnatLayout
from xnatfs.view.node import Generated, NodeInfo

LONE = "a\ud800b"


class _Client:
    base_url = "https://xnat.example"

    def get_object(self, uri: str):
        return {"items": [{"data_fields": {"label": LONE, "ID": "E1"}}]}


def test_xnat_json_of_an_object_whose_json_holds_a_lone_surrogate():
    layout = XnatLayout(_Client(), None, epoch=0.0)
    parent = NodeInfo(name="E", kind=Kind.EXPERIMENT, is_dir=True, mtime=0.0, uri="/data/x/E1")
    data = layout._make(Generated(Gen.JSON, parent))
    assert json.loads(data)["items"][0]["data_fields"]["label"] == LONE


def test_bids_documents_with_a_lone_surrogate_stay_json():
    assert json.loads(sidecar.dumps({"SeriesDescription": LONE}))["SeriesDescription"] == LONE
    doc = json.loads(dataset.dataset_description("P", LONE, [LONE]))
    assert doc["Name"] == LONE and doc["Authors"] == [LONE]
