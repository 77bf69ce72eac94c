"""The dataset-level files of a BIDS view: ``dataset_description.json``, ``README``,
``participants.tsv`` and ``participants.json`` (BIDS 1.9 "Modality agnostic files")."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from xnatfs import __version__
from xnatfs.jsondoc import dumps_bounded

BIDS_VERSION = "1.9.0"

#: participants.tsv columns: BIDS name → (XNAT subject fields tried in order, description)
PARTICIPANT_COLUMNS: Tuple[Tuple[str, Tuple[str, ...], str], ...] = (
    ("sex", ("gender", "sex", "demographics/gender"), "Sex as recorded in XNAT (M/F/O/U)"),
    ("age", ("age", "demographics/age"), "Age in years as recorded in XNAT"),
    ("yob", ("yob", "demographics/yob"), "Year of birth as recorded in XNAT"),
    ("group", ("group", "sub_group"), "Subject group as recorded in XNAT"),
)


def _dump(doc: Any) -> bytes:
    # a lone surrogate from XNAT's JSON stays a JSON escape (else UnicodeEncodeError: EIO);
    # within a size cap (xnatfs/jsondoc.py)
    return dumps_bounded(doc, "dataset_description.json", sort_keys=False)


def authors(project_fields: Mapping[str, str]) -> List[str]:
    """The project's PI as XNAT lists it (``pi_firstname``, ``pi_lastname``), if any."""
    name = " ".join(
        str(project_fields.get(k, "") or "").strip() for k in ("pi_firstname", "pi_lastname")
    ).strip()
    return [name] if name else []


def dataset_description(
    project_id: str, project_name: str, author_names: Sequence[str] = ()
) -> bytes:
    doc: Dict[str, Any] = {
        "Name": project_name or project_id,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": [
            {
                "Name": "xnatfs",
                "Version": __version__,
                "Description": "BIDS view of an XNAT project (dcm2niix on first read)",
            }
        ],
        "SourceDatasets": [{"URL": f"xnat:/data/projects/{project_id}"}],
    }
    if author_names:
        doc["Authors"] = list(author_names)
    return _dump(doc)


def readme(project_id: str, project_name: str, description: str) -> bytes:
    text = (
        f"{project_name or project_id}\n{'=' * len(project_name or project_id)}\n\n"
        f"{description.strip() or 'An XNAT project.'}\n\n"
        f"This dataset is a read-only view of XNAT project {project_id} made by xnatfs.\n"
        "Images are converted from DICOM with dcm2niix when first read; every file carries\n"
        "user.xnat.* extended attributes naming the XNAT scan it came from.\n"
        "Scans left out are listed, with the reason, in .xnatfs-unmatched.tsv.\n"
    )
    return text.encode("utf-8")


#: what may split a TSV cell or line for some reader: tab, CR (pandas and Python's csv end a
#: line at a lone CR), every other C0/C1 control, DEL, the Unicode line/paragraph separators
_TSV_BREAKS_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def tsv_cell(value: str) -> str:
    """``value`` as one TSV cell: every character that could end the cell or the line is a
    space.  Values come from XNAT (subject fields, series descriptions, labels): with only tab
    and LF replaced, ``M\rsub-ghost`` in a subject's field gave participants.tsv a row of a
    participant that does not exist."""
    return _TSV_BREAKS_RE.sub(" ", value)


def _field(fields: Mapping[str, str], names: Sequence[str]) -> str:
    for name in names:
        value = tsv_cell(str(fields.get(name, "") or "")).strip()
        if value:
            return value
    return ""


def participant_columns(subjects: Sequence[Mapping[str, str]]) -> List[str]:
    """The optional columns at least one subject has a value for."""
    return [col for col, names, _ in PARTICIPANT_COLUMNS if any(_field(s, names) for s in subjects)]


def participants_tsv(rows: Sequence[Tuple[str, Mapping[str, str]]]) -> bytes:
    """``rows``: (BIDS subject label, XNAT subject fields), in the order shown."""
    cols = participant_columns([fields for _, fields in rows])
    names = {col: n for col, n, _ in PARTICIPANT_COLUMNS}
    lines = ["\t".join(["participant_id"] + cols)]
    for label, fields in rows:
        lines.append(
            "\t".join([f"sub-{label}"] + [_field(fields, names[c]) or "n/a" for c in cols])
        )
    return ("\n".join(lines) + "\n").encode("utf-8")


def participants_json(rows: Sequence[Tuple[str, Mapping[str, str]]]) -> bytes:
    cols = participant_columns([fields for _, fields in rows])
    doc: Dict[str, Any] = {
        "participant_id": {"Description": "BIDS label of the XNAT subject (see user.xnat.label)"}
    }
    for col, _, text in PARTICIPANT_COLUMNS:
        if col in cols:
            doc[col] = {"Description": text}
    return _dump(doc)
