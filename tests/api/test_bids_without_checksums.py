"""The BIDS view of a site with checksums off (no MD5 in listings), through the calls the FUSE
adapter makes: its files are keyed as the XNAT view keys them (the scan's time, the server),
so both views share one cached copy, and a same-size replacement on XNAT is a new entry.

Before (a review of stop 33), the BIDS view keyed such a file with time 0: it never shared the
XNAT view's copy, and it kept serving the first bytes it had cached after XNAT had others."""

from __future__ import annotations

from typing import Any, List, Tuple

import requests

from tests.api.test_tree import read_all
from tests.conftest import ADMIN
from xnatfs.bids.layout import BidsFile


def _files(tree: Any, path: str) -> List[Tuple[str, Any]]:
    out = []
    for node in tree.listdir(path):
        below = f"{path}/{node.name}"
        out += _files(tree, below) if node.is_dir else [(below, node)]
    return out


def _xnat_node(tree: Any, uri: str) -> Tuple[str, Any]:
    return next((p, n) for p, n in _files(tree, "/DEMO1/subjects") if n.uri == uri)


def test_a_file_without_md5_has_one_key_in_both_views(make_runtime):
    rt = make_runtime(emulator={"checksums": False})
    refs = [
        n.ref
        for _, n in _files(rt.tree, "/.bids/DEMO1")
        if isinstance(n.ref, BidsFile) and n.ref.files.dicom
    ]
    assert refs, "no BIDS file made from a DICOM series"
    for ref in refs:
        entry = ref.files.dicom[0]
        assert not entry.digest
        _, node = _xnat_node(rt.tree, entry.uri)
        xnat_key = rt.tree.xnat.content_key(node)
        assert rt.bids.src.file_key(entry).hexname() == xnat_key.hexname(), (entry, xnat_key)


def test_a_same_size_replacement_reads_as_xnats_new_bytes_in_the_bids_view(make_runtime):
    rt = make_runtime(emulator={"checksums": False}, listing_ttl=0.0)
    direct = [
        (p, n)
        for p, n in _files(rt.tree, "/.bids/DEMO1")
        if p.endswith(".nii.gz") and rt.bids.content_key(n) is not None
    ]
    assert direct, "no BIDS image served from a NIfTI resource"
    path, node = direct[0]
    uri = rt.bids.content_key(node).uri
    first = read_all(rt, path)
    new = bytes(b ^ 0xFF for b in first)  # another client's bytes, the same size
    answer = requests.put(
        f"{rt.emu.url}{uri}",
        params={"overwrite": "true", "inbody": "true"},
        data=new,
        auth=ADMIN,
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text
    rt.tree.invalidate("/.bids")
    rt.tree.invalidate("/DEMO1")
    xnat_path, _ = _xnat_node(rt.tree, uri)
    assert read_all(rt, xnat_path) == new
    assert read_all(rt, path) == new, "the BIDS view served the bytes XNAT replaced"
