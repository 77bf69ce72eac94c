"""File download, archives, uploads and deletes (docs/XNAT-API.md §3, §4.4-4.5, §10)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from typing import Any

import pytest

from tests.emulator.rawhttp import send_cut

Archive = Client = Any


def test_download_headers_and_no_range(admin: Client, populated: Archive) -> None:
    eid, rid = populated.experiment_id, populated.scan_resource_id
    url = f"/data/experiments/{eid}/scans/1/resources/{rid}/files/sub/b.dcm"
    data = populated.files["sub/b.dcm"]
    r = admin.get(url, headers={"Range": "bytes=0-3"})
    assert r.status_code == 200 and r.content == data  # Range ignored (§3.1)
    h = r.headers
    assert h["Content-Length"] == str(len(data))
    assert h["Content-Type"] == "application/octet-stream"
    assert h["Content-Disposition"] == 'attachment; filename="b.dcm";'
    assert h["Cache-Control"] == "must-revalidate"
    assert "Last-Modified" in h and "ETag" not in h and "Accept-Ranges" not in h
    head = admin.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    assert head.content == b""
    # by labels, too
    r = admin.get(
        "/data/projects/P1/subjects/S1/experiments/E1/scans/1/resources/DICOM/files/a.dcm"
    )
    assert r.content == populated.files["a.dcm"]


def test_missing_file_is_404_html(admin: Client, populated: Archive) -> None:
    r = admin.get(f"/data/experiments/{populated.experiment_id}/scans/1/resources/DICOM/files/nope")
    assert r.status_code == 404
    assert r.text.startswith("<html>") and "<h3>Unable to find file.</h3>" in r.text


def test_content_type_by_extension(admin: Client, populated: Archive) -> None:
    base = "/data/projects/P1/resources/docs/files"
    assert admin.put(f"{base}/readme.txt", data=b"hi").status_code == 200
    r = admin.get(f"{base}/readme.txt")
    assert r.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz"])
def test_archive_download_layout(admin: Client, populated: Archive, fmt: str) -> None:
    r = admin.get(f"/data/experiments/{populated.experiment_id}/scans/ALL/files?format={fmt}")
    assert r.status_code == 200
    assert "Content-Length" not in r.headers  # streamed (§3.3)
    assert r.headers["Content-Disposition"] == f'attachment; filename="E1.{fmt}";'
    if fmt == "zip":
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        got = {n: zf.read(n) for n in zf.namelist()}
    else:
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:*") as tf:
            got = {
                m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
                for m in tf.getmembers()
            }
    assert got == {
        f"E1/scans/1-T1w/resources/DICOM/files/{k}": v for k, v in populated.files.items()
    }


def test_upload_raw_duplicates_overwrite(admin: Client, populated: Archive) -> None:
    url = f"/data/experiments/{populated.experiment_id}/resources/UP/files/dir/x.bin"
    r = admin.put(url, data=b"one", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.text == ""  # resource auto-created
    r = admin.put(url, data=b"two")
    assert r.status_code == 200 and json.loads(r.text) == {"duplicates": ["dir/x.bin"]}
    assert admin.get(url).content == b"one"
    r = admin.put(url + "?overwrite=true", data=b"three")
    assert r.status_code == 200 and admin.get(url).content == b"three"
    # pyxnat style: POST, inbody=true, format/content/tags as metadata, no content type
    r = admin.post(
        url.replace("x.bin", "y.bin") + "?format=BIN&content=RAW&tags=t&inbody=true", data=b"four"
    )
    assert r.status_code == 200
    rows = admin.get(url.rsplit("/files/", 1)[0] + "/files?format=json").json()["ResultSet"][
        "Result"
    ]
    y = next(x for x in rows if x["Name"] == "y.bin")
    assert y["file_format"] == "BIN" and y["file_content"] == "RAW"
    assert y["digest"] == hashlib.md5(b"four").hexdigest()


def test_upload_multipart(admin: Client, populated: Archive) -> None:
    base = f"/data/experiments/{populated.experiment_id}/resources/MP/files"
    r = admin.post(base, files={"f1": ("m1.txt", b"multi 1"), "f2": ("m2.txt", b"multi 2")})
    assert r.status_code == 200
    assert admin.get(f"{base}/m2.txt").content == b"multi 2"
    r = admin.put(f"{base}/named.txt", files={"file": ("ignored.txt", b"named")})
    assert r.status_code == 200 and admin.get(f"{base}/named.txt").content == b"named"
    r = admin.post(f"{base}/x.txt?inbody=true", files={"file": ("x.txt", b"x")})
    assert r.status_code == 406


def test_upload_extract(admin: Client, populated: Archive) -> None:
    base = f"/data/experiments/{populated.experiment_id}/resources/EX/files"
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("z1.txt", b"zip one")
        zf.writestr("deep/z2.txt", b"zip two")
    r = admin.put(f"{base}/ignored/sub/upload.zip?extract=true", data=zbuf.getvalue())
    assert r.status_code == 200
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as tf:
        info = tarfile.TarInfo("t/t1.txt")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"tar t1"))
    assert admin.put(f"{base}/up.tar.gz?extract=true", data=tbuf.getvalue()).status_code == 200
    rows = admin.get(f"{base}?format=json").json()["ResultSet"]["Result"]
    paths = sorted(x["URI"].split("/files/", 1)[1] for x in rows)
    assert paths == ["deep/z2.txt", "t/t1.txt", "z1.txt"]  # resource root, archive not kept


def test_bad_uploads_leave_nothing(admin: Client, populated: Archive) -> None:
    base = f"/data/experiments/{populated.experiment_id}/resources/BAD/files"
    r = admin.put(f"{base}/empty.bin", data=b"")  # no media type, no inbody: names no file
    assert r.status_code == 400 and r.text.startswith("<html>")
    # the body said to be the file, and empty: XNAT throws, FileList answers 500 (§4.5)
    r = admin.put(f"{base}/empty.bin", params={"inbody": "true"}, data=b"")
    assert r.status_code == 500, r.status_code
    octet = {"Content-Type": "application/octet-stream"}
    r = admin.post(f"{base}/empty.bin", params={"overwrite": "true"}, data=b"", headers=octet)
    assert r.status_code == 500, r.status_code
    r = admin.put(f"{base}/c.zip?extract=true", data=b"PK\x03\x04 this is not a zip")
    assert r.status_code == 400 and "<h3>" in r.text
    r = admin.put(f"{base}/form.txt", data={"not": "a file"})  # form-encoded: no content
    assert r.status_code == 400
    r = admin.put(f"{base}/../escape.txt", data=b"x")
    assert r.status_code in (400, 404)
    listing = admin.get(f"{base}?format=json")
    rows = listing.json()["ResultSet"]["Result"] if listing.status_code == 200 else []
    assert rows == []


def test_truncated_upload_stores_no_partial_file(
    emu: Any, admin: Client, populated: Archive
) -> None:
    path = f"/data/experiments/{populated.experiment_id}/resources/TRUNC/files/t.bin"
    admin.put(f"/data/experiments/{populated.experiment_id}/resources/TRUNC").raise_for_status()
    reply = send_cut(
        emu.url,
        (
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n"
            "Content-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"x" * 1000,
    )
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
    rows = admin.get(path.rsplit("/", 1)[0] + "?format=json").json()["ResultSet"]["Result"]
    assert rows == []
    assert admin.get(path).status_code == 404


def test_file_and_resource_deletes(admin: Client, populated: Archive) -> None:
    base = f"/data/experiments/{populated.experiment_id}/resources/DEL"
    for rel in ("a.txt", "f/b.txt", "f/c.txt", "g/d.log"):
        admin.put(f"{base}/files/{rel}", data=b"d").raise_for_status()
    assert admin.delete(f"{base}/files/a.txt").status_code == 200
    assert admin.delete(f"{base}/files/a.txt").status_code == 404  # missing file
    assert admin.delete(f"{base}/files/f/").status_code == 200  # folder
    assert admin.delete(f"{base}/files/g/*.log").status_code == 200  # wildcard
    assert admin.get(f"{base}/files?format=json").json()["ResultSet"]["Result"] == []
    assert admin.delete(f"{base}?removeFiles=true").status_code == 200
    assert admin.delete(f"{base}?removeFiles=true").status_code == 200  # absent resource: 200
    assert admin.delete("/data/experiments/XNAT_E99999/resources/X").status_code == 404


def test_resource_creation(admin: Client, populated: Archive) -> None:
    base = f"/data/experiments/{populated.experiment_id}/scans/1/resources"
    r = admin.put(f"{base}/NIFTI?format=NIFTI&content=T1_RAW")
    assert r.status_code == 200 and r.text == ""
    assert admin.put(f"{base}/NIFTI?format=NIFTI").status_code == 409
    assert admin.put(f"{base}/bad%20label").status_code == 400
    rows = admin.get(f"{base}?format=json").json()["ResultSet"]["Result"]
    nifti = next(x for x in rows if x["label"] == "NIFTI")
    assert nifti["format"] == "NIFTI" and nifti["file_count"] == "0"
    assert admin.delete(f"{base}/NIFTI").status_code == 200
