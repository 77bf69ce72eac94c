"""Shared pieces of the BIDS view tests: the expected demo dataset and access-log helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List
from urllib.parse import unquote

import pytest

#: every file of MNT/.bids/DEMO1 with the demo seed and the heuristic (xnatfs/emulator/seed.py)
DEMO1_FILES = sorted(
    ["dataset_description.json", "README", "participants.json", "participants.tsv"]
    + [
        f"sub-{s}/ses-MR1/anat/sub-{s}_ses-MR1_{k}.{e}"
        for s in ("SUBJ01", "SUBJ02", "SUBJ03")
        for k in ("T1w", "T2w")
        for e in ("nii.gz", "json")
    ]
    + [
        f"sub-{s}/ses-MR2/{f}"
        for s in ("SUBJ02", "SUBJ03")
        for f in (
            f"anat/sub-{s}_ses-MR2_run-1_T1w.nii.gz",
            f"anat/sub-{s}_ses-MR2_run-1_T1w.json",
            f"anat/sub-{s}_ses-MR2_run-2_T1w.nii.gz",
            f"anat/sub-{s}_ses-MR2_run-2_T1w.json",
            f"func/sub-{s}_ses-MR2_task-rest_bold.nii.gz",
            f"func/sub-{s}_ses-MR2_task-rest_bold.json",
        )
    ]
)


def tree(root: Path) -> List[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(out)


def file_gets(records: Iterable[tuple]) -> List[str]:
    """Single-file downloads (``.../files/<name>``), decoded paths."""
    out = []
    for method, path_qs, status, _ in records:
        path = unquote(path_qs.split("?", 1)[0])
        if method == "GET" and "/files/" in path and status == 200:
            out.append(path)
    return out


def zip_gets(records: Iterable[tuple]) -> List[str]:
    return [unquote(p) for m, p, s, _ in records if m == "GET" and "format=zip" in p]


def per_scan(paths: Iterable[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for p in paths:
        scan = p.split("/resources/", 1)[0]
        out[scan] = out.get(scan, 0) + 1
    return out


def conversions(mnt: Path) -> Dict[str, int]:
    return json.loads((mnt / ".xnatfs" / "stats").read_text())["bids"]


@pytest.fixture
def bids_mount(make_emulator, make_mount):
    """A demo emulator and a mount of it (fresh cache)."""
    emu = make_emulator()
    m = make_mount(emu.url)
    return emu, m
