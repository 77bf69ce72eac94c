"""Synthetic DICOM for the emulator: deterministic MR series written with pydicom, and the parser
that turns an uploaded zip / tar(.gz) of DICOM into sessions and scans.

Why synthetic: the emulator must hold no committed binaries, yet the clients (and the FUSE layer)
should see real, parseable DICOM.  Everything here is a pure function of a seed string, so two
emulators started from the same seed serve byte-identical files (same sizes, same MD5 digests).

Why the parser streams: an import body can be large.  The importer spools the request body to a
temp file; :func:`extract_dicom_archive` walks the archive member by member, copies each member to
a staging directory and reads only the DICOM header from that copy.  Nothing is written to the
archive or the prearchive until the whole upload has parsed (``docs/XNAT-API.md`` §6: a corrupt
upload must leave no partial data in the emulator).

Grouping follows XNAT's DICOM importer: one session per StudyInstanceUID, one scan per series,
scan ID = SeriesNumber, scan type = SeriesDescription (§6).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import shutil
import struct
import sys
import tarfile
import zipfile
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Iterable, Iterator, Optional, Sequence, Union

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

log = logging.getLogger(__name__)

#: SOP class of every image we write (MR Image Storage).
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: A DICOMDIR is DICOM but not an image: it is skipped silently, as XNAT does.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

_MANUFACTURER = "xnatfs-emulator"


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSpec:
    """One MR series to generate: ``number`` becomes the XNAT scan ID, ``description`` its type."""

    number: int
    description: str
    #: files in the series: slices x volumes
    n_images: int
    rows: int = 64
    columns: int = 64
    #: > 1: a 4-D series (fMRI): ``n_images // volumes`` slices, each acquired ``volumes`` times
    #: one repetition time apart (same position, later AcquisitionTime), as scanners write them
    volumes: int = 1

    @property
    def slices(self) -> int:
        return max(1, self.n_images // max(1, self.volumes))

    @property
    def functional(self) -> bool:
        return self.volumes > 1 or self.description.lower().startswith("fmri")

    @property
    def repetition_time_ms(self) -> float:
        return (
            2000.0
            if self.functional
            else 2300.0
            if "t1" in self.description.lower()
            else 3200.0
            if "t2" in self.description.lower()
            else 500.0
        )


@dataclass(frozen=True)
class StudySpec:
    """One MR study (an XNAT session once imported).  ``seed`` drives every UID and pixel."""

    seed: str
    patient_name: str
    patient_id: str
    study_date: str = "20240115"  # DICOM DA (YYYYMMDD)
    study_time: str = "093000"  # DICOM TM (HHMMSS)
    study_description: str = "Demo MR"
    series: tuple[SeriesSpec, ...] = (
        SeriesSpec(1, "T1w", 4),
        SeriesSpec(2, "T2w", 4),
    )

    @property
    def study_instance_uid(self) -> str:
        return uid_for(self.seed, "study")


def uid_for(seed: str, *parts: object) -> str:
    """A deterministic, valid ``2.25.<decimal>`` UID derived from ``seed`` and ``parts``.
    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and uses uuid4.)"""
    digest = hashlib.sha256("\x1f".join([seed, *map(str, parts)]).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def dicom_file_name(
    study_uid: str,
    series_number: Union[int, str],
    instance_number: Union[int, str],
    sop_instance_uid: str,
) -> str:
    """XNAT's default DICOM file naming pattern
    ``${StudyInstanceUID}-${SeriesNumber}-${InstanceNumber}-${HashSOPClassUIDWithSOPInstanceUID}.dcm``
    (the hash here is a short hex digest, not XNAT's exact hash function)."""
    digest = hashlib.md5(f"{MR_IMAGE_STORAGE}{sop_instance_uid}".encode()).hexdigest()[:8]
    return f"{study_uid}-{series_number}-{instance_number}-{digest}.dcm"


def pixel_data(seed: str, series: SeriesSpec, index: int) -> bytes:
    """A tiny deterministic phantom (an ellipse whose size follows the slice, plus noise) as
    little-endian uint16, 12 bits stored.  Pure Python: the emulator does not need numpy."""
    rows, cols = series.rows, series.columns
    rng = random.Random(f"{seed}/{series.number}/{index}")
    # the ellipse follows the slice (the same in every volume of a 4-D series); noise per file
    frac = (index % series.slices + 0.5) / series.slices
    radius = 0.25 + 0.6 * (1.0 - abs(2.0 * frac - 1.0))  # largest in the middle slice
    base = 400 + 300 * (series.number % 4)
    cy, cx = (rows - 1) / 2.0, (cols - 1) / 2.0
    ry, rx = max(radius * rows / 2.0, 1.0), max(radius * cols / 2.0 * 0.8, 1.0)
    data = array("H", bytes(2 * rows * cols))
    noise = rng.getrandbits
    i = 0
    for y in range(rows):
        dy = ((y - cy) / ry) ** 2
        for x in range(cols):
            inside = dy + ((x - cx) / rx) ** 2 <= 1.0
            data[i] = (base if inside else 40) + (noise(6) if inside else noise(4))
            i += 1
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def make_dataset(study: StudySpec, series: SeriesSpec, index: int) -> FileDataset:
    """The ``index``-th image (0-based) of ``series`` in ``study`` as a complete Part-10 dataset.

    Long because: one assignment per DICOM attribute, in the order of the standard's modules,
    so the whole header a scanner would write reads top to bottom in one place."""
    study_uid = study.study_instance_uid
    series_uid = uid_for(study.seed, "series", series.number)
    sop_uid = uid_for(study.seed, "sop", series.number, index)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "XNATFS_EMU"

    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    # a 4-D series: file ``index`` is slice ``index % slices`` of volume ``index // slices``
    slices = series.slices
    slice_index, volume = index % slices, index // slices
    tr_ms = series.repetition_time_ms
    acq_time = _add_seconds(
        study.study_time,
        (series.number - 1) * 300 + volume * tr_ms / 1000.0 + slice_index * tr_ms / 1000.0 / slices,
    )
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.AcquisitionDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.AcquisitionTime = acq_time
    ds.ContentTime = acq_time
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = "Emulated 3T"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "xnatfs-emulator 1"
    ds.StationName = "EMU3T"
    ds.InstitutionName = "xnatfs"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = series.description
    ds.ProtocolName = series.description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = "EP" if series.functional else "GR"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = "3"
    ds.SpacingBetweenSlices = "3"
    ds.RepetitionTime = f"{tr_ms:g}"
    ds.EchoTime = "30"
    ds.FlipAngle = "77" if series.functional else "9"
    ds.ImagingFrequency = "123.2"
    ds.MagneticFieldStrength = "3"
    ds.EchoTrainLength = "1"
    ds.PixelBandwidth = "2232"
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = volume + 1
    ds.InstanceNumber = index + 1
    if series.volumes > 1:
        ds.TemporalPositionIdentifier = volume + 1
        ds.NumberOfTemporalPositions = series.volumes
    ds.ImagePositionPatient = [-(series.columns / 2.0), -(series.rows / 2.0), 3.0 * slice_index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = uid_for(study.seed, "frame")
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = 3.0 * slice_index
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = series.rows
    ds.Columns = series.columns
    ds.PixelSpacing = [1, 1]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "600"
    ds.WindowWidth = "1200"
    ds.PixelData = pixel_data(study.seed, series, index)
    ds["PixelData"].VR = "OW"
    return ds


def _add_seconds(hhmmss: str, seconds: float) -> str:
    """DICOM TM ``hhmmss`` plus ``seconds``, as ``hhmmss.ffffff`` (same day)."""
    t = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6]) + seconds
    h, rest = divmod(t, 3600)
    m, sec = divmod(rest, 60)
    return f"{int(h):02d}{int(m):02d}{sec:09.6f}"


def dataset_bytes(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class GeneratedFile:
    """One generated DICOM file: its XNAT-style file name and series, and the Part-10 bytes."""

    series: SeriesSpec
    instance_number: int
    name: str
    data: bytes


def iter_study_files(
    study: StudySpec, series_numbers: Optional[Iterable[int]] = None
) -> Iterator[GeneratedFile]:
    """Every image of ``study`` (optionally only some series), in series then instance order."""
    wanted = None if series_numbers is None else set(series_numbers)
    for series in study.series:
        if wanted is not None and series.number not in wanted:
            continue
        for index in range(series.n_images):
            ds = make_dataset(study, series, index)
            name = dicom_file_name(
                study.study_instance_uid, series.number, index + 1, ds.SOPInstanceUID
            )
            yield GeneratedFile(series, index + 1, name, dataset_bytes(ds))


def build_dicom_zip(
    study: StudySpec,
    dest: Union[None, str, os.PathLike, BinaryIO] = None,
    *,
    folder: str = "",
    extra_entries: Sequence[tuple[str, bytes]] = (),
) -> Optional[bytes]:
    """Zip every image of ``study``.  Returns the bytes when ``dest`` is None, else writes to the
    path or binary file object ``dest`` and returns None.

    Entries are named ``{folder}/{SeriesNumber}-{SeriesDescription}/{InstanceNumber:04d}.dcm``
    (any layout works for the importer, which reads the headers).  ``extra_entries`` adds
    (name, bytes) pairs, e.g. a README, to exercise Ignore-Unparsable."""
    sink: Union[BinaryIO, str, os.PathLike]
    buf = None
    if dest is None:
        buf = io.BytesIO()
        sink = buf
    else:
        sink = dest
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for gen in iter_study_files(study):
            series_dir = f"{prefix}{gen.series.number}-{gen.series.description}"
            arcname = f"{series_dir}/{gen.instance_number:04d}.dcm"
            zf.writestr(_zinfo(arcname), gen.data)
        for name, data in extra_entries:
            zf.writestr(_zinfo(name), data)
    return buf.getvalue() if buf is not None else None


def _zinfo(name: str) -> zipfile.ZipInfo:
    # A fixed timestamp keeps the zip byte-identical between runs.
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 15, 9, 30, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


# --------------------------------------------------------------------------------------------
# Parsing uploads
# --------------------------------------------------------------------------------------------


class UploadError(Exception):
    """Base of the errors the importer answers with 400 and the message as the ``<h3>``."""


class UploadFormatError(UploadError):
    """The body is neither a zip nor a tar(.gz) (nor DICOM, for gradual-DICOM)."""

    def __init__(self, message: str = "Unable to identify upload format.") -> None:
        super().__init__(message)


class CorruptArchiveError(UploadError):
    """The archive was recognised but could not be read to the end (bad CRC, truncation...)."""


class UnparsableEntryError(UploadError):
    """A member is not DICOM and Ignore-Unparsable was not set."""

    def __init__(self, member: str) -> None:
        super().__init__(f"Unable to parse {member} as DICOM.")
        self.member = member


class NoDicomError(UploadError):
    """The archive held no DICOM image at all."""

    def __init__(self) -> None:
        super().__init__("The upload did not contain any DICOM files.")


@dataclass
class ParsedFile:
    """One DICOM image of an upload, already copied to ``path`` in the staging directory."""

    member: str  # name inside the uploaded archive
    path: Path  # staged copy
    name: str  # file name to give it in the DICOM resource (XNAT naming pattern)
    size: int
    sop_instance_uid: str
    instance_number: str


@dataclass
class ParsedSeries:
    """One series, i.e. one XNAT scan: ``scan_id`` = SeriesNumber, ``type`` = SeriesDescription."""

    scan_id: str
    type: str
    series_instance_uid: str
    modality: str
    files: list[ParsedFile] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class ParsedStudy:
    """One study, i.e. one XNAT session."""

    study_instance_uid: str
    patient_name: str
    patient_id: str
    study_date: str  # ISO ``YYYY-MM-DD`` or ""
    study_time: str  # ``HH:MM:SS`` or ""
    modality: str
    series: dict[str, ParsedSeries] = field(default_factory=dict)

    def sorted_series(self) -> list[ParsedSeries]:
        return sorted(self.series.values(), key=lambda s: _natural_key(s.scan_id))

    @property
    def n_files(self) -> int:
        return sum(len(s.files) for s in self.series.values())


@dataclass
class ParsedUpload:
    studies: list[ParsedStudy]
    skipped: list[str]  # members ignored because of Ignore-Unparsable

    @property
    def n_files(self) -> int:
        return sum(s.n_files for s in self.studies)


def _natural_key(text: str) -> tuple:
    try:
        return (0, int(text), text)
    except ValueError:
        return (1, 0, text)


_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "Modality",
    "ProtocolName",
]


def _iso_date(da: str) -> str:
    da = (da or "").strip()
    if len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return ""


def _iso_time(tm: str) -> str:
    tm = (tm or "").strip().split(".")[0].replace(":", "")
    if len(tm) >= 6 and tm[:6].isdigit():
        return f"{tm[:2]}:{tm[2:4]}:{tm[4:6]}"
    if len(tm) == 4 and tm.isdigit():
        return f"{tm[:2]}:{tm[2:4]}:00"
    return ""


def read_header(path: Union[str, os.PathLike]) -> Optional[Dataset]:
    """The header of a DICOM Part-10 file, or None when ``path`` is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        struct.error,
        KeyError,
        TypeError,
        AttributeError,
        NotImplementedError,
        OSError,
    ):
        return None


def sniff_format(path: Union[str, os.PathLike]) -> str:
    """``"zip"``, ``"tar"`` (plain or compressed), ``"dicom"`` (a single Part-10 file) or
    ``"unknown"`` - by content, never by name or Content-Type."""
    with open(path, "rb") as fh:
        head = fh.read(262)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if (
        head[:2] == b"\x1f\x8b"
        or head[:3] == b"BZh"
        or head[:6] == b"\xfd7zXZ\x00"
        or head[257:262] == b"ustar"
    ):
        return "tar"
    return "unknown"


class _Accumulator:
    """Groups staged files into studies/series; shared by the archive and single-file paths."""

    def __init__(self, staging: Path, ignore_unparsable: bool) -> None:
        self.staging = staging
        self.ignore_unparsable = ignore_unparsable
        self.studies: dict[str, ParsedStudy] = {}
        self.skipped: list[str] = []
        self._n = 0

    def add_stream(self, member: str, stream: IO[bytes]) -> None:
        self._n += 1
        staged = self.staging / f"{self._n:06d}.part"
        with open(staged, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        self.add_staged(member, staged)

    def add_staged(self, member: str, staged: Path) -> None:
        ds = read_header(staged)
        if ds is None:
            staged.unlink()
            if self.ignore_unparsable:
                log.debug("ignoring non-DICOM entry %s", member)
                self.skipped.append(member)
                return
            raise UnparsableEntryError(member)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            staged.unlink()
            self.skipped.append(member)
            return
        study_uid = str(ds.get("StudyInstanceUID", "")) or "unknown-study"
        study = self.studies.get(study_uid)
        if study is None:
            study = self.studies[study_uid] = ParsedStudy(
                study_instance_uid=study_uid,
                patient_name=str(ds.get("PatientName", "")),
                patient_id=str(ds.get("PatientID", "")),
                study_date=_iso_date(str(ds.get("StudyDate", ""))),
                study_time=_iso_time(str(ds.get("StudyTime", ""))),
                modality=str(ds.get("Modality", "")),
            )
        number = ds.get("SeriesNumber", None)
        scan_id = str(number).strip() if number not in (None, "") else "0"
        series = study.series.get(scan_id)
        if series is None:
            description = str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", ""))
            series = study.series[scan_id] = ParsedSeries(
                scan_id=scan_id,
                type=description,
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                modality=str(ds.get("Modality", "")),
            )
        sop_uid = str(ds.get("SOPInstanceUID", "")) or staged.name
        instance = str(ds.get("InstanceNumber", "") or "").strip() or str(len(series.files) + 1)
        name = dicom_file_name(study_uid, scan_id, instance, sop_uid)
        # The same SOP instance twice replaces the earlier copy (XNAT overwrites by name).
        series.files = [f for f in series.files if f.name != name]
        series.files.append(
            ParsedFile(
                member=member,
                path=staged,
                name=name,
                size=staged.stat().st_size,
                sop_instance_uid=sop_uid,
                instance_number=instance,
            )
        )

    def result(self) -> ParsedUpload:
        studies = [s for s in self.studies.values() if s.series]
        if not studies:
            raise NoDicomError()
        return ParsedUpload(studies=studies, skipped=self.skipped)


def extract_dicom_archive(
    src: Union[str, os.PathLike],
    staging: Union[str, os.PathLike],
    *,
    ignore_unparsable: bool = False,
    allow_single_file: bool = False,
) -> ParsedUpload:
    """Parse the upload at ``src`` (zip, tar, tar.gz; a lone DICOM file only when
    ``allow_single_file``), copying each DICOM member into ``staging`` (which must exist and is
    the caller's to delete).  Raises an :class:`UploadError` subclass on any problem."""
    staging = Path(staging)
    acc = _Accumulator(staging, ignore_unparsable)
    kind = sniff_format(src)
    try:
        if kind == "zip":
            with zipfile.ZipFile(src) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    with zf.open(info) as member_stream:
                        acc.add_stream(info.filename, member_stream)
        elif kind == "tar":
            try:
                tf = tarfile.open(src, "r:*")  # noqa: SIM115 - closed by `with tf:` below
            except tarfile.ReadError as exc:
                # e.g. a lone .nii.gz: compressed, but no tar inside
                raise UploadFormatError() from exc
            with tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    stream = tf.extractfile(member)
                    if stream is None:
                        continue
                    with stream:
                        acc.add_stream(member.name, stream)
        elif kind == "dicom" and allow_single_file:
            staged = staging / "000001.part"
            shutil.copyfile(src, staged)
            acc.add_staged(os.path.basename(os.fspath(src)), staged)
        else:
            raise UploadFormatError()
    except UploadError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        tarfile.TarError,
        zlib.error,
        EOFError,
        OSError,
        NotImplementedError,
        ValueError,
    ) as exc:
        raise CorruptArchiveError(f"Unable to read the uploaded archive: {exc}") from exc
    return acc.result()
