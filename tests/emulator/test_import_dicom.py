"""dicom.py on its own: deterministic generation and the upload parser (no server)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pydicom
import pytest

from xnatfs.emulator import dicom
from xnatfs.emulator.seed import nifti1_bytes, png_bytes

STUDY = dicom.StudySpec(
    seed="unit/S1",
    patient_name="SUBJX",
    patient_id="SUBJX_MR1",
    series=(
        dicom.SeriesSpec(1, "T1w", 3),
        dicom.SeriesSpec(7, "fMRI bold", 2, rows=16, columns=16),
    ),
)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _parse(tmp_path: Path, src: Path, **kw) -> dicom.ParsedUpload:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return dicom.extract_dicom_archive(src, staging, **kw)


def test_generation_is_deterministic_and_valid() -> None:
    a = list(dicom.iter_study_files(STUDY))
    b = list(dicom.iter_study_files(STUDY))
    assert [f.data for f in a] == [f.data for f in b]
    assert len(a) == 5
    ds = pydicom.dcmread(io.BytesIO(a[0].data))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "MR" and ds.SeriesNumber == 1 and ds.SeriesDescription == "T1w"
    assert str(ds.PatientName) == "SUBJX" and ds.PatientID == "SUBJX_MR1"
    assert ds.StudyInstanceUID == STUDY.study_instance_uid
    assert len(ds.PixelData) == 64 * 64 * 2 and ds.Rows == 64
    uids = {pydicom.dcmread(io.BytesIO(f.data)).SOPInstanceUID for f in a}
    assert len(uids) == 5
    other = dicom.StudySpec(seed="unit/S2", patient_name="X", patient_id="Y")
    assert other.study_instance_uid != STUDY.study_instance_uid
    assert all(len(u) <= 64 for u in uids)


def test_zip_roundtrip_groups_by_series(tmp_path: Path) -> None:
    z = dicom.build_dicom_zip(STUDY, folder="upload")
    assert z == dicom.build_dicom_zip(STUDY, folder="upload")
    parsed = _parse(tmp_path, _write(tmp_path, "u.zip", z))
    assert len(parsed.studies) == 1
    st = parsed.studies[0]
    assert st.patient_name == "SUBJX" and st.study_date == "2024-01-15" and st.modality == "MR"
    assert [(s.scan_id, s.type, len(s.files)) for s in st.sorted_series()] == [
        ("1", "T1w", 3),
        ("7", "fMRI bold", 2),
    ]
    for s in st.sorted_series():
        for f in s.files:
            assert f.path.is_file() and f.size == f.path.stat().st_size
            assert f.name.endswith(".dcm") and f.name.startswith(st.study_instance_uid)


def test_tar_gz_roundtrip(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for gen in dicom.iter_study_files(STUDY):
            info = tarfile.TarInfo(f"d/{gen.instance_number}-{gen.series.number}.dcm")
            info.size = len(gen.data)
            tf.addfile(info, io.BytesIO(gen.data))
    parsed = _parse(tmp_path, _write(tmp_path, "u.tar.gz", buf.getvalue()))
    assert parsed.n_files == 5


def test_non_dicom_entry_rejected_unless_ignored(tmp_path: Path) -> None:
    z = dicom.build_dicom_zip(STUDY, extra_entries=[("README.txt", b"not dicom")])
    src = _write(tmp_path, "u.zip", z)
    with pytest.raises(dicom.UnparsableEntryError, match="README.txt"):
        _parse(tmp_path, src)
    parsed = _parse(tmp_path, src, ignore_unparsable=True)
    assert parsed.skipped == ["README.txt"] and parsed.n_files == 5


def test_unknown_format_and_empty_archive(tmp_path: Path) -> None:
    with pytest.raises(dicom.UploadFormatError, match="Unable to identify upload format."):
        _parse(tmp_path, _write(tmp_path, "x.bin", b"hello world, not an archive" * 10))
    one = next(dicom.iter_study_files(STUDY)).data
    with pytest.raises(dicom.UploadFormatError):
        _parse(tmp_path, _write(tmp_path, "one.dcm", one))
    assert _parse(tmp_path, tmp_path / "one.dcm", allow_single_file=True).n_files == 1
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"x")
    with pytest.raises(dicom.NoDicomError):
        _parse(tmp_path, _write(tmp_path, "e.zip", buf.getvalue()), ignore_unparsable=True)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_zip(tmp_path: Path, damage: str) -> None:
    z = bytearray(dicom.build_dicom_zip(STUDY))
    if damage == "truncate":
        z = z[: len(z) // 2]
    else:
        for i in range(200, 260):
            z[i] ^= 0xFF
    with pytest.raises((dicom.CorruptArchiveError, dicom.UnparsableEntryError)):
        _parse(tmp_path, _write(tmp_path, "bad.zip", bytes(z)))


def test_nifti_and_png_writers() -> None:
    import struct
    import zlib

    series = dicom.SeriesSpec(1, "T1w", 4, rows=8, columns=6)
    nii = nifti1_bytes("s", series)
    assert struct.unpack_from("<i", nii, 0)[0] == 348
    assert nii[344:348] == b"n+1\x00"
    assert struct.unpack_from("<8h", nii, 40)[:4] == (3, 6, 8, 4)
    assert struct.unpack_from("<f", nii, 108)[0] == 352.0
    assert len(nii) == 352 + 6 * 8 * 4 * 2
    png = png_bytes(bytes(range(16)), 4, 4)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert len(zlib.decompress(png[41 : 41 + idat_len])) == 4 * 5


def test_gzip_without_tar_is_unknown_format(tmp_path: Path) -> None:
    import gzip

    with pytest.raises(dicom.UploadFormatError):
        _parse(
            tmp_path, _write(tmp_path, "x.nii.gz", gzip.compress(b"not a tar member header " * 100))
        )
