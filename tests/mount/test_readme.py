"""The README's write examples, run as written (issue 16 §4), so that they cannot drift again.

Every ``sh`` block of the README's "Writes become uploads" section is run line by line, each
line as one command (``shlex`` split, comments dropped, no shell), in a folder holding the
files the examples name (``seg.nii.gz``, ``derivatives/``, ``session.zip`` of DICOM).  The
placeholders are replaced path segment by path segment, never inside a name:

    MNT -> the mount            P -> DEMO1         S -> SUBJ01         E -> SUBJ01_MR1
    <timestamp>/<session> -> the prearchive session that appeared since the block started

Other names (``SEG``, ``FS``, ``NEW``, ``NEW_MR1``, ``S_MR2``) are used as written.  Then the
server (over HTTP, not through the mount) must hold what the examples say they make.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Set, Tuple

import requests

from tests.conftest import ADMIN
from tests.mount.helpers import dicom_zip

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = {"P": "DEMO1", "S": "SUBJ01", "E": "SUBJ01_MR1"}


def write_section_commands() -> List[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Writes become uploads\n")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```sh\n(.*?)```", text[start:end], re.S)
    assert blocks, "the write section has no sh block"
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _prearchive(mnt: Path) -> Set[Tuple[str, str]]:
    pre = mnt / ".prearchive" / "DEMO1"
    return {(ts, s) for ts in os.listdir(pre) for s in os.listdir(pre / ts)}


def _substitute(word: str, names: Dict[str, str]) -> str:
    return "/".join(names.get(segment, segment) for segment in word.split("/"))


def _server_json(url: str, uri: str) -> list:
    r = requests.get(url + uri, params={"format": "json"}, auth=ADMIN, timeout=30)
    assert r.status_code == 200, (uri, r.status_code)
    return r.json()["ResultSet"]["Result"]


def test_readme_write_examples_run_as_written(make_emulator, make_mount, tmp_path):
    emu = make_emulator()
    m = make_mount(emu.url)
    work = tmp_path / "work"
    (work / "derivatives" / "stats").mkdir(parents=True)
    seg = gzip.compress(b"segmentation " * 100)
    (work / "seg.nii.gz").write_bytes(seg)
    derivatives = {"aseg.stats": b"# aseg\n", "stats/lh.aparc.stats": b"# lh aparc\n"}
    for rel, data in derivatives.items():
        (work / "derivatives" / rel).write_bytes(data)
    dicom_zip(work / "session.zip", "READMEPAT")
    exp_uri = "/data/projects/DEMO1/subjects/SUBJ01/experiments"
    experiments_before = {row["label"] for row in _server_json(emu.url, exp_uri)}
    assert "SEG" not in {
        r["label"] for r in _server_json(emu.url, exp_uri + "/SUBJ01_MR1/resources")
    }  # the examples' resources are new ones

    names = dict(NAMES, MNT=str(m.path))
    pre_before = _prearchive(m.path)
    for line in write_section_commands():
        if "<timestamp>" in line:
            new = _prearchive(m.path) - pre_before
            assert len(new) == 1, new
            names["<timestamp>"], names["<session>"] = new.pop()
        argv = [_substitute(word, names) for word in shlex.split(line, comments=True)]
        res = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"README line failed: {line}\n{argv}\n{res.stderr}"

    # what the examples say they do, checked on the server
    files = {
        row["Name"]: int(row["Size"])
        for row in _server_json(emu.url, exp_uri + "/SUBJ01_MR1/resources/SEG/files")
    }
    assert files == {"seg.nii.gz": len(seg)}
    fs = {
        row["URI"].split("/files/", 1)[1]: int(row["Size"])
        for row in _server_json(emu.url, exp_uri + "/SUBJ01_MR1/resources/FS/files")
    }
    assert fs == {rel: len(data) for rel, data in derivatives.items()}, fs
    assert {
        row["label"]
        for row in _server_json(emu.url, "/data/projects/DEMO1/subjects/NEW/experiments")
    } == {"NEW_MR1"}
    experiments = {row["label"] for row in _server_json(emu.url, exp_uri)}
    made = experiments - experiments_before
    assert "S_MR2" in made and len(made) == 2, made  # the import and the archived session
    assert names["<session>"] and not (_prearchive(m.path) - pre_before)
