"""Helpers for mount tests: file operations run in subprocesses with timeouts, request counting."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple
from urllib.parse import unquote

import requests

from tests.conftest import ADMIN
from tests.helpers.waiting import wait_for
from xnatfs.fs.mounting import is_mounted

_HASHER = r"""
import hashlib, json, sys
from concurrent.futures import ThreadPoolExecutor
threads, paths = int(sys.argv[1]), sys.argv[2:]
def one(p):
    h, n = hashlib.md5(), 0
    try:
        with open(p, 'rb') as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk); n += len(chunk)
    except OSError as e:
        return p, ["error", e.errno]
    return p, [h.hexdigest(), n]
with ThreadPoolExecutor(threads) as pool:
    print(json.dumps(dict(pool.map(one, paths))))
"""


def hash_files(paths: Sequence[str], threads: int = 1, timeout: float = 120) -> Dict[str, list]:
    """md5 and size of each path, read through the mount by ``threads`` threads in a child
    process; an error reads as ``["error", errno]``."""
    res = subprocess.run(
        [sys.executable, "-c", _HASHER, str(threads), *paths],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


_FORGETTER = r"""
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
"""


def forget_pages(paths: Sequence[str], timeout: float = 60) -> None:
    """The kernel forgets its page cache of these files (``POSIX_FADV_DONTNEED`` on each): the
    next read goes to the daemon.  Never ``echo 3 > /proc/sys/vm/drop_caches``: that empties
    the page cache of the whole machine, tests running beside this one included (a residency
    check of ``test_pages_of_a_failed_open_never_serve_the_next_one`` saw 0.51-0.89 of its
    kept pages, and 0 when a drop fell between its read and its check)."""
    res = subprocess.run(
        [sys.executable, "-c", _FORGETTER, *paths], capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stderr


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sh(cmd: List[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"{cmd} -> {res.returncode}: {res.stderr}"
    return res


def put_file(url: str, uri: str, data: bytes) -> None:
    """Upload straight to the emulator (test data set-up, not the code under test)."""
    r = requests.put(
        url + uri,
        data=data,
        auth=ADMIN,
        timeout=30,
        headers={"Content-Type": "application/octet-stream"},
        params={"overwrite": "true"},
    )
    assert r.status_code in (200, 201), (r.status_code, r.text[:300])


def api(records: Iterable[tuple]) -> List[Tuple[str, str]]:
    """Requests that are not session bookkeeping (login, heartbeat, logout)."""
    skip = ("/data/JSESSION", "/data/services/auth", "/data/auth")
    out = []
    for method, path_qs, _status, _bytes in records:
        path = unquote(path_qs.split("?", 1)[0])
        if any(path.endswith(s) for s in skip) or path.startswith("/emulator"):
            continue
        out.append((method, unquote(path_qs)))
    return out


def downloads(records: Iterable[tuple]) -> List[str]:
    """GETs of single files (a path below ``/files/``), decoded."""
    out = []
    for method, path_qs, status, _bytes in records:
        path = unquote(path_qs.split("?", 1)[0])
        if method == "GET" and "/files/" in path and status == 200:
            out.append(path)
    return out


def dicom_zip(path: Path, patient: str, series=((1, "T1w", 3), (2, "T2w", 2))) -> None:
    """A small DICOM study written with pydicom, zipped."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study = generate_uid()
    with zipfile.ZipFile(path, "w") as zf:
        for number, description, count in series:
            series_uid = generate_uid()
            for i in range(count):
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = MRImageStorage
                meta.MediaStorageSOPInstanceUID = generate_uid()
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
                ds.SOPClassUID = MRImageStorage
                ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
                ds.PatientName, ds.PatientID = patient, patient
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
                ds.StudyDate, ds.StudyTime, ds.Modality = "20240101", "101010", "MR"
                ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = (
                    number,
                    description,
                    i + 1,
                )
                ds.Rows = ds.Columns = 8
                ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.PixelRepresentation = 0
                ds.PixelData = bytes(range(128))
                buf = io.BytesIO()
                pydicom.dcmwrite(buf, ds, enforce_file_format=True)
                zf.writestr(f"{description}/{i + 1:04d}.dcm", buf.getvalue())


def end_demo(proc: subprocess.Popen, mnt: Path) -> None:
    """After a test of ``xnatfs demo``: the child killed if it still runs, its mount cleared
    if one is left (the test itself checked the clean stop)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    if is_mounted(str(mnt)):
        subprocess.run(["fusermount3", "-uz", str(mnt)], timeout=20)


#: the same wait, named as the read tests use it
wait_until = wait_for
