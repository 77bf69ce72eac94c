"""``jsondoc.dumps_bounded``: the JSON documents xnatfs serves are capped as printed text."""

from __future__ import annotations

import errno
import json
import sys

import pytest

from xnatfs.jsondoc import dumps_bounded


def test_a_document_that_prints_past_the_cap_is_eio_naming_it() -> None:
    doc = json.loads("[" * 300 + ",".join(["0"] * 10_000) + "]" * 300)  # 40 KB of JSON
    with pytest.raises(OSError) as info:
        dumps_bounded(doc, "/data/x: .xnat.json", limit=1 << 20)  # prints as ~6 MB
    assert info.value.errno == errno.EIO and "/data/x: .xnat.json" in str(info.value)


def test_a_document_too_deep_to_print_is_eio_not_a_recursion_error() -> None:
    depth = sys.getrecursionlimit() - 20  # parses (C), does not print (one frame per level)
    doc: list = []
    for _ in range(depth):
        doc = [doc]
    with pytest.raises(OSError, match="nested too deeply") as info:
        dumps_bounded(doc, "sidecar")
    assert info.value.errno == errno.EIO


def test_what_fits_is_what_json_dumps_writes() -> None:
    doc = {"b": [1, {"c": "\ud800"}], "a": "é"}
    want = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert dumps_bounded(doc, "x") == want.encode("utf-8", "backslashreplace")
