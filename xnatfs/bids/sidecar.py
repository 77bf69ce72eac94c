"""The JSON sidecar of a scan from ONE DICOM header, with dcm2niix's key names and units.

Why from one header: pybids indexes a dataset by reading every sidecar; building them from
dcm2niix's output would convert the whole archive on ``BIDSLayout()``.  One header per scan
(pydicom, ``stop_before_pixels``) gives what pipelines read first — ``RepetitionTime``,
``EchoTime``, ``FlipAngle``, ``SliceTiming``, ``PhaseEncodingAxis`` (the direction's sign
needs vendors' private headers: dcm2niix adds ``PhaseEncodingDirection`` after a conversion),
``TaskName`` — in
the units dcm2niix writes (seconds, degrees).  After a conversion :func:`merge` takes dcm2niix's
own sidecar and lays ours over it only where dcm2niix is silent, so the file shown before and
after a conversion agree on every key both have (dcm2niix's values win, it saw every slice).
"""

from __future__ import annotations

import io
from typing import Any, Dict, List, Mapping, Optional

from xnatfs.jsondoc import dumps_bounded

# pydicom is imported where a header is read, not here: it pulls in numpy (about 20 MB of
# resident memory and 0.25 s at start) into every daemon, also those that never read a sidecar

#: DICOM keyword → (sidecar key, scale): ms → s where dcm2niix converts
_SIMPLE = (
    ("Manufacturer", "Manufacturer", None),
    ("ManufacturerModelName", "ManufacturersModelName", None),
    ("DeviceSerialNumber", "DeviceSerialNumber", None),
    ("StationName", "StationName", None),
    ("SoftwareVersions", "SoftwareVersions", None),
    ("MagneticFieldStrength", "MagneticFieldStrength", 1.0),
    ("ImagingFrequency", "ImagingFrequency", 1.0),
    ("InstitutionName", "InstitutionName", None),
    ("Modality", "Modality", None),
    ("BodyPartExamined", "BodyPart", None),
    ("PatientPosition", "PatientPosition", None),
    ("MRAcquisitionType", "MRAcquisitionType", None),
    ("SeriesDescription", "SeriesDescription", None),
    ("ProtocolName", "ProtocolName", None),
    ("ScanningSequence", "ScanningSequence", None),
    ("SequenceVariant", "SequenceVariant", None),
    ("ScanOptions", "ScanOptions", None),
    ("SequenceName", "SequenceName", None),
    ("SeriesNumber", "SeriesNumber", 1),
    ("SliceThickness", "SliceThickness", 1.0),
    ("SpacingBetweenSlices", "SpacingBetweenSlices", 1.0),
    ("EchoTime", "EchoTime", 0.001),
    ("RepetitionTime", "RepetitionTime", 0.001),
    ("InversionTime", "InversionTime", 0.001),
    ("FlipAngle", "FlipAngle", 1.0),
    ("PixelBandwidth", "PixelBandwidth", 1.0),
    ("PercentPhaseFieldOfView", "PercentPhaseFOV", 1.0),
    ("EchoTrainLength", "EchoTrainLength", 1),
)

#: sidecar keys the demo's and most real headers carry that dcm2niix reports as lists
_LISTS = {"ImageType": "ImageType"}


def _plain(value: Any, scale: Any) -> Any:
    if scale is None:
        return str(value)
    if isinstance(scale, int):
        return int(value)
    number = float(value) * float(scale)
    return round(number, 6)


def from_dataset(ds: Any, *, task: str = "") -> Dict[str, Any]:
    """Sidecar keys from one pydicom dataset (missing or malformed elements are skipped)."""
    out: Dict[str, Any] = {}
    for keyword, key, scale in _SIMPLE:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        try:
            out[key] = _plain(value, scale)
        except (TypeError, ValueError):
            continue
    for keyword, key in _LISTS.items():
        value = ds.get(keyword)
        if value:
            out[key] = [
                str(v)
                for v in (value if isinstance(value, (list, tuple, _multivalue())) else [value])
            ]
    timing = slice_timing(ds)
    if timing:
        out["SliceTiming"] = timing
    axis = phase_encoding_axis(ds)
    if axis:
        # the polarity (j vs j-) lives in vendors' private headers: dcm2niix writes
        # PhaseEncodingDirection from them after a conversion (``merge``), the axis until then
        out["PhaseEncodingAxis"] = axis
    if task:
        out["TaskName"] = task
    return out


def from_bytes(data: bytes, *, task: str = "") -> Dict[str, Any]:
    return from_file(io.BytesIO(data), task=task)


def from_file(fp: Any, *, task: str = "") -> Dict[str, Any]:
    """The sidecar keys of a DICOM file read from ``fp`` up to its pixel data."""
    import pydicom

    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    return from_dataset(ds, task=task)


def slice_timing(ds: Any) -> Optional[List[float]]:
    """Siemens' per-slice times (CSA ``MosaicRefAcqTimes`` is private; the public
    ``(0019,1029)`` list in ms), else none: dcm2niix derives them from every slice's
    acquisition time, which one header cannot."""
    elem = ds.get((0x0019, 0x1029))
    if elem is None or elem.value in (None, b"", ""):
        return None
    try:
        values = [
            float(v)
            for v in (
                elem.value if isinstance(elem.value, (list, tuple, _multivalue())) else [elem.value]
            )
        ]
    except (TypeError, ValueError):
        return None
    return [round(v / 1000.0, 6) for v in values]


def phase_encoding_axis(ds: Any) -> str:
    axis = str(ds.get("InPlanePhaseEncodingDirection", "") or "").upper()
    return {"COL": "j", "ROW": "i"}.get(axis, "")


def merge(ours: Mapping[str, Any], dcm2niix: Mapping[str, Any]) -> Dict[str, Any]:
    """dcm2niix's sidecar plus our keys it lacks (``TaskName``, XNAT provenance): one document
    whichever was read first."""
    out = dict(dcm2niix)
    for key, value in ours.items():
        out.setdefault(key, value)
    return out


def dumps(doc: Mapping[str, Any]) -> bytes:
    # a lone surrogate from a JSON sidecar on XNAT stays a JSON escape (else the sidecar's read
    # failed with an unexpected UnicodeEncodeError); within a size cap (xnatfs/jsondoc.py)
    return dumps_bounded(doc, "BIDS sidecar")


def _multivalue() -> Any:
    """pydicom's list type for multi-valued elements (imported on first use, see above)."""
    from pydicom.multival import MultiValue

    return MultiValue
