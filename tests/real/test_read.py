"""Read checks on whatever the server holds, against xnatpy (issue 11 §1).

A bounded sample (``XNATFS_TEST_SAMPLE`` objects per level, files up to ``XNATFS_TEST_MAX_MB``):
listings level by level, sizes, MD5 of the bytes, ID and label resolution, ``user.xnat.*``
xattrs, ``.xnat.json`` and ``.zip``.  Nothing here writes; the mount is ``--read-only``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import pytest

from tests.real.conftest import Target, env_int, escape_name, fs_batch, start_mount, stop_mount

SAMPLE = env_int("XNATFS_TEST_SAMPLE", 2)
MAX_BYTES = env_int("XNATFS_TEST_MAX_MB", 64) << 20


@dataclass
class Level:
    """One directory of the mount and what xnatpy says it holds."""

    path: str  # relative to the mount
    names: List[str]  # expected entries (escaped as the mount shows them)
    obj: Any = None  # the xnatpy object the directory stands for


@dataclass
class Sample:
    levels: List[Level] = field(default_factory=list)
    files: List[Dict[str, Any]] = field(default_factory=list)  # path, size, digest, uri
    objects: List[Dict[str, Any]] = field(default_factory=list)  # path, id, label, kind, uri
    zip_dir: Optional[str] = None  # a resource directory whose .zip is checked
    zip_names: List[str] = field(default_factory=list)


def _first(mapping: Any, n: int) -> List[Any]:
    return sorted(mapping.values(), key=lambda o: str(getattr(o, "label", None) or o.id))[:n]


def _files_of(res: Any, base: str, sample: Sample) -> None:
    files = sorted(res.files.values(), key=lambda f: f.path)
    tops = sorted({escape_name(f.path.split("/", 1)[0]) for f in files})
    sample.levels.append(Level(f"{base}/files", tops, res))
    for f in files[: SAMPLE * 2]:
        size = int(getattr(f, "size", 0) or 0)
        if size > MAX_BYTES:
            continue
        sample.files.append(
            {
                "path": f"{base}/files/" + "/".join(escape_name(p) for p in f.path.split("/")),
                "size": size,
                "digest": getattr(f, "digest", None),
                "obj": f,
            }
        )


def _resources(owner: Any, base: str, sample: Sample) -> None:
    res = _first(owner.resources, SAMPLE)
    sample.levels.append(
        Level(
            f"{base}/resources",
            sorted(escape_name(r.label) for r in owner.resources.values()),
            owner,
        )
    )
    for r in res:
        rbase = f"{base}/resources/{escape_name(r.label)}"
        _files_of(r, rbase, sample)
        if sample.zip_dir is None and 0 < len(r.files) <= 50:
            sample.zip_dir = rbase
            sample.zip_names = sorted(f.path for f in r.files.values())


def _owned(obj: Any, project: str) -> bool:
    return (getattr(obj, "project", None) or project) == project


@pytest.fixture(scope="module")
def sample(xnatpy: Any) -> Sample:
    """Walk the server with xnatpy, SAMPLE objects per level."""
    s = Sample()
    s.levels.append(Level("", sorted(escape_name(p) for p in xnatpy.projects.keys())))
    for p in _first(xnatpy.projects, SAMPLE + 1):
        pbase = escape_name(p.id)
        s.objects.append({"path": pbase, "id": p.id, "label": p.id, "kind": "project"})
        # shared subjects/experiments are not shown by the mount (README "Known limits")
        subjects = [x for x in p.subjects.values() if _owned(x, p.id)]
        s.levels.append(Level(f"{pbase}/subjects", sorted(escape_name(x.label) for x in subjects)))
        _resources(p, pbase, s)
        for sub in sorted(subjects, key=lambda o: o.label)[:SAMPLE]:
            sbase = f"{pbase}/subjects/{escape_name(sub.label)}"
            s.objects.append(
                {
                    "path": sbase,
                    "id": sub.id,
                    "label": sub.label,
                    "kind": "subject",
                    "alias": f"{pbase}/subjects/{escape_name(sub.id)}",
                }
            )
            exps = [e for e in sub.experiments.values() if _owned(e, p.id)]
            s.levels.append(
                Level(f"{sbase}/experiments", sorted(escape_name(e.label) for e in exps))
            )
            for e in sorted(exps, key=lambda o: o.label)[:SAMPLE]:
                ebase = f"{sbase}/experiments/{escape_name(e.label)}"
                s.objects.append(
                    {
                        "path": ebase,
                        "id": e.id,
                        "label": e.label,
                        "kind": "experiment",
                        "alias": f"{sbase}/experiments/{escape_name(e.id)}",
                    }
                )
                scans = getattr(e, "scans", None)
                if scans is None:
                    continue
                s.levels.append(
                    Level(f"{ebase}/scans", sorted(escape_name(x.id) for x in scans.values()))
                )
                _resources(e, ebase, s)
                for sc in _first(scans, SAMPLE):
                    scbase = f"{ebase}/scans/{escape_name(sc.id)}"
                    s.objects.append(
                        {
                            "path": scbase,
                            "id": sc.id,
                            "label": sc.id,
                            "kind": "scan",
                            "type": sc.type,
                        }
                    )
                    _resources(sc, scbase, s)
    return s


@pytest.fixture(scope="module")
def ro_mount(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    m = start_mount(target, tmp_path_factory.mktemp("real-ro"), "--read-only")
    try:
        yield str(m.path)
    finally:
        stop_mount(m)


def test_listings_level_by_level(sample: Sample, ro_mount: str) -> None:
    """Every sampled directory lists what xnatpy lists there, name for name."""
    got = fs_batch([("ls", f"{ro_mount}/{lv.path}".rstrip("/")) for lv in sample.levels])
    diffs = []
    for lv, names in zip(sample.levels, got):
        shown = (
            sorted(n for n in names if not n.startswith("."))
            if isinstance(names, list) and names[:1] != ["error"]
            else names
        )
        if shown != lv.names:
            diffs.append(f"{lv.path or '/'}: mount {shown} != xnatpy {lv.names}")
    assert not diffs, "\n".join(diffs)
    assert len(sample.levels) >= 2


def test_sizes_and_md5(sample: Sample, ro_mount: str) -> None:
    """Sizes before any read, then the bytes: MD5 of what the mount reads equals MD5 of what
    xnatpy downloads (and XNAT's digest where it keeps one)."""
    if not sample.files:
        pytest.skip("the sample holds no files")
    paths = [f"{ro_mount}/{f['path']}" for f in sample.files]
    stats = fs_batch([("stat", p) for p in paths])
    for f, st in zip(sample.files, stats):
        assert st == {"size": f["size"], "dir": False}, f["path"]
    sums = fs_batch([("md5", p) for p in paths])
    for f, got in zip(sample.files, sums):
        buf = io.BytesIO()
        f["obj"].download_stream(buf)
        want = hashlib.md5(buf.getvalue()).hexdigest()
        assert got == want, f["path"]
        if f["digest"] and len(str(f["digest"])) == 32:
            assert got == f["digest"], f["path"]


def test_id_and_label_resolution(sample: Sample, ro_mount: str) -> None:
    """Subjects and experiments are listed by label and resolve by accession ID too: both
    paths show the same object (same ``user.xnat.id``)."""
    objs = [o for o in sample.objects if o.get("alias")]
    if not objs:
        pytest.skip("the sample holds no subject")
    got = fs_batch(
        [("xattrs", f"{ro_mount}/{o['alias']}") for o in objs]
        + [("xattrs", f"{ro_mount}/{o['path']}") for o in objs]
    )
    n = len(objs)
    for o, by_id, by_label in zip(objs, got[:n], got[n:]):
        assert isinstance(by_id, dict), (o["alias"], by_id)
        assert by_id.get("user.xnat.id") == by_label.get("user.xnat.id") == o["id"], o


def test_xattrs(sample: Sample, ro_mount: str) -> None:
    """``user.xnat.id``/``label`` of every sampled object are xnatpy's."""
    got = fs_batch([("xattrs", f"{ro_mount}/{o['path']}") for o in sample.objects])
    for o, xa in zip(sample.objects, got):
        assert isinstance(xa, dict), (o["path"], xa)
        assert xa.get("user.xnat.id") == o["id"], (o["path"], xa)
        if o["kind"] in ("subject", "experiment"):
            assert xa.get("user.xnat.label") == o["label"], (o["path"], xa)
        if o["kind"] == "scan" and o.get("type"):
            assert xa.get("user.xnat.scan_type") == o["type"], (o["path"], xa)


def test_xnat_json(sample: Sample, ro_mount: str) -> None:
    """``.xnat.json`` is the server's own document of the object: same ID, same label."""
    got = fs_batch([("read", f"{ro_mount}/{o['path']}/.xnat.json") for o in sample.objects])
    for o, text in zip(sample.objects, got):
        assert isinstance(text, str), (o["path"], text)
        doc = json.loads(text)
        fields = doc["items"][0]["data_fields"]
        assert fields.get("ID") == o["id"], (o["path"], fields)
        if o["kind"] in ("subject", "experiment"):
            assert fields.get("label") == o["label"], (o["path"], fields)


def test_resource_zip(sample: Sample, ro_mount: str, tmp_path) -> None:
    """A resource's ``.zip`` holds every file xnatpy lists in it (XNAT's own zip)."""
    if sample.zip_dir is None:
        pytest.skip("the sample holds no resource with 1-50 files")
    (data,) = fs_batch([("read", f"{ro_mount}/{sample.zip_dir}/.zip")])
    assert isinstance(data, str), data
    names = [
        n
        for n in zipfile.ZipFile(io.BytesIO(data.encode("latin-1"))).namelist()
        if not n.endswith("/")
    ]
    # XNAT prefixes the entries with where the resource sits; each listed file is one entry
    assert len(names) == len(sample.zip_names), names
    for path in sample.zip_names:
        assert any(n == path or n.endswith("/" + path) for n in names), (path, names)


def test_ls_l_downloads_nothing(sample: Sample, ro_mount: str, target: Target) -> None:
    """``ls -l`` of a resource's files (sizes included) costs at most one listing request and
    never a file download: sizes come from the listing (README "What you see").  Checked only
    where the server's access log is readable."""
    if target.access_log is None:
        pytest.skip("no access log of the server (XNATFS_TEST_ACCESS_LOG): request counts unknown")
    lv = next((lv for lv in sample.levels if lv.path.endswith("/files") and lv.names), None)
    if lv is None:
        pytest.skip("the sample holds no files")
    mark = target.log_mark()
    names = fs_batch([("ls", f"{ro_mount}/{lv.path}")])[0]
    stats = fs_batch([("stat", f"{ro_mount}/{lv.path}/{n}") for n in names])
    assert all(isinstance(st, dict) for st in stats), stats
    seen = target.requests_since(mark)
    downloads = [p for m, p in seen if m in ("GET", "HEAD") and "/files/" in p.split("?")[0]]
    listings = [p for m, p in seen if m == "GET" and p.split("?")[0].endswith("/files")]
    assert downloads == [], seen
    assert len(listings) <= 1, seen
