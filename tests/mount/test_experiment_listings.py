"""An experiment's scan resources and files from one or two requests (issue 12, B4): the same
tree as one request per directory, with fewer requests, and a change is seen as before."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import needs_fuse
from tests.mount.helpers import api, put_file, sh, wait_for

pytestmark = [needs_fuse]


def _tree(root: Path) -> list:
    """Every path below ``root`` with its type and size (and the XNAT URI of each file)."""
    out = sh(["find", str(root), "-printf", r"%P %y %s\n"]).stdout.splitlines()
    rows = []
    for line in sorted(out):
        rel, kind, size = line.rsplit(" ", 2)
        uri = ""
        if kind == "f" and "/files/" in rel:
            uri = os.getxattr(root / rel, "user.xnat.uri").decode()
        rows.append((rel, kind, size if kind == "f" else "", uri))
    return rows


def _cold_find(emu, make_mount, bundles: bool, project: str):
    switch = [] if bundles else ["--per-directory-listings"]
    m = make_mount(emu.url, "--walk-ahead", "0", *switch)
    mark = emu.mark()
    tree = _tree(m.path / project)
    return m, tree, api(emu.since(mark))


def test_same_tree_fewer_requests(shared_emulator, make_mount):
    emu = shared_emulator
    _, before, per_dir = _cold_find(emu, make_mount, False, "DEMO1")
    _, after, bundled = _cold_find(emu, make_mount, True, "DEMO1")
    assert after == before
    assert any("/scans/" in rel and rel.endswith(".dcm") for rel, *_ in after)
    # no scan's own resources listing, no scan resource's own files listing
    scan_resources = [
        q for _, q in bundled if q.split("?")[0].endswith("/resources") and "/scans/" in q
    ]
    assert scan_resources == []
    assert any("resources?" in q and "all=true" in q for _, q in bundled)
    assert any(q.split("?")[0].endswith("/scans/ALL/files") for _, q in bundled)
    assert len(bundled) < len(per_dir), (len(bundled), len(per_dir))


def test_changes_show_as_before(make_emulator, make_mount, tmp_path):
    emu = make_emulator()
    m = make_mount(emu.url, "--walk-ahead", "0", "--listing-ttl", "1")
    exp = m.path / "DEMO1" / "subjects" / "SUBJ01" / "experiments" / "SUBJ01_MR1"
    files = exp / "scans" / "1" / "resources" / "DICOM" / "files"
    names = set(os.listdir(files))
    os.listdir(exp / "scans" / "2" / "resources")
    # a file added on XNAT: listed once the TTL has passed
    uri = "/data/projects/DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1/resources/DICOM"
    put_file(emu.url, f"{uri}/files/added_on_xnat.dcm", b"new")
    wait_for(
        lambda: "added_on_xnat.dcm" in os.listdir(files),
        20,
        interval=0.2,
        what="the file added on XNAT",
    )
    # a file written through the mount: listed at once (the bundle is forgotten with it)
    src = tmp_path / "mine.dcm"
    src.write_bytes(b"written through the mount")
    subprocess.run(["cp", str(src), str(files / "mine.dcm")], check=True, timeout=60)
    listed = set(os.listdir(files))
    assert {"mine.dcm", "added_on_xnat.dcm"} <= listed and names <= listed
    assert (files / "mine.dcm").read_bytes() == b"written through the mount"


def test_the_experiment_tables_load_beside_its_scans_listing(make_emulator, make_mount):
    """A walk into a scan asks for the experiment's ``resources?all=true`` while its scans
    listing is still on its way (``ExperimentBundles.warm``): two requests in flight at once,
    where one directory after another makes them one at a time.  Nothing else is asked twice."""
    emu = make_emulator(latency_ms=200)  # every request long enough to be seen overlapping
    m = make_mount(emu.url, "--walk-ahead", "0")
    exp = m.path / "DEMO1" / "subjects" / "SUBJ01" / "experiments" / "SUBJ01_MR1"
    os.listdir(exp)  # the walk down to the experiment, one request at a time
    mark = emu.mark()
    emu.emu.reset_peak()
    names = os.listdir(exp / "scans" / "1" / "resources" / "DICOM" / "files")
    assert names and all(n.endswith(".dcm") for n in names)
    assert emu.emu.reset_peak() >= 2
    asked = sorted(q.split("?")[0] for _, q in api(emu.since(mark)))
    exp_uri = asked[0].rsplit("/resources", 1)[0]
    assert asked == [exp_uri + "/resources", exp_uri + "/scans", exp_uri + "/scans/ALL/files"]
