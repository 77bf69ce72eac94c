"""Which BIDS name a scan gets: a dcm2bids config, XNAT's own BIDS map, or a built-in heuristic.

Precedence (docs/BIDS.md): a dcm2bids config (``--bids-config FILE`` or ``bids_config`` in the
TOML config) decides alone, as dcm2bids would: a scan no description matches, or that several
descriptions match, is left out.  Without one, XNAT's BIDS map (the JSON list of
``{"series_description", "bidsname"}`` that XNAT's DICOM-to-BIDS container reads from the
project's then the site's config service entry ``config/bids/bidsmap``) names the scans it
lists, and the heuristic the others.  Every scan left out has a reason, shown in
``.xnatfs-unmatched.tsv``.

Why criteria read XNAT's fields first: ``ls`` of the view must not download DICOM.  The fields
XNAT lists for a scan (``SeriesDescription``, ``SeriesNumber``, ``Modality``…, :func:`xnat_fields`)
cost nothing; a criterion on another DICOM field (``EchoTime``, ``ImageType``…) reads the one
DICOM header the sidecar needs anyway (``ScanFacts.header``), once per scan.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from xnatfs.bids.dataset import tsv_cell
from xnatfs.bids.names import BidsName, alnum, parse_entities

#: BIDS suffixes by datatype, used to place an XNAT ``bidsname`` (the same families as XNAT's
#: DICOM-to-BIDS script: anat / func / dwi / fmap)
ANAT_SUFFIXES = (
    "T1w",
    "T2w",
    "T1rho",
    "T1map",
    "T2map",
    "T2starw",
    "T2star",
    "FLAIR",
    "FLASH",
    "PD",
    "PDw",
    "PDmap",
    "PDT2",
    "inplaneT1",
    "inplaneT2",
    "angio",
    "UNIT1",
    "MP2RAGE",
)
FUNC_SUFFIXES = ("bold", "sbref", "cbv", "phase", "physio", "stim")
DWI_SUFFIXES = ("dwi",)
FMAP_SUFFIXES = (
    "phasediff",
    "phase1",
    "phase2",
    "magnitude",
    "magnitude1",
    "magnitude2",
    "fieldmap",
    "epi",
)


@dataclass
class ScanFacts:
    """What is known of a scan without a download, plus a way to one DICOM header."""

    scan_id: str
    type: str = ""
    series_description: str = ""
    xsi_type: str = ""
    quality: str = ""
    modality: str = "MR"
    #: the sidecar built from one DICOM header (dcm2niix key names), read on first need
    header: Optional[Callable[[], Mapping[str, Any]]] = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return self.series_description or self.type

    def xnat_fields(self) -> Dict[str, Any]:
        """dcm2niix sidecar keys answered by XNAT's listing (no download)."""
        return {
            "SeriesDescription": self.description,
            "ProtocolName": self.type or self.description,
            "SeriesNumber": self.scan_id,
            "Modality": self.modality,
            "XnatScanType": self.type,
            "XnatQuality": self.quality,
            "XnatXsiType": self.xsi_type,
        }

    def get(self, key: str) -> Any:
        fields = self.xnat_fields()
        if key in fields and fields[key] not in ("", None):
            return fields[key]
        if self.header is None:
            return ""
        return self.header().get(key, "")


@dataclass(frozen=True)
class Match:
    """A scan's BIDS name, or why it has none (``name`` None, ``reason`` set)."""

    name: Optional[BidsName]
    source: str
    reason: str = ""
    #: the dcm2bids description's ``id`` (``#<index>`` when it has none)
    config_id: str = ""
    #: the ids its ``IntendedFor`` names (None: the config says nothing, the default rule)
    intended_for: Optional[Tuple[str, ...]] = None


# ------------------------------------------------------------------------ dcm2bids configs
@dataclass(frozen=True)
class Description:
    datatype: str
    suffix: str
    criteria: Mapping[str, Any]
    entities: Tuple[Tuple[str, str], ...] = ()
    id: str = ""
    intended_for: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True)
class Dcm2BidsConfig:
    """A dcm2bids configuration (``descriptions`` and the matching switches it reads)."""

    descriptions: Tuple[Description, ...]
    case_sensitive: bool = True
    search_method: str = "fnmatch"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Dcm2BidsConfig":
        out: List[Description] = []
        for i, d in enumerate(doc.get("descriptions") or ()):
            datatype = d.get("datatype") or d.get("dataType")
            suffix = d.get("suffix") or d.get("modalityLabel")
            criteria = d.get("criteria")
            if not datatype or not suffix or not isinstance(criteria, dict):
                raise ValueError(
                    f"dcm2bids config: description {i} needs datatype, suffix and criteria"
                )
            custom = d.get("custom_entities", d.get("customLabels", ""))
            if isinstance(custom, (list, tuple)):
                custom = "_".join(str(c) for c in custom)
            out.append(
                Description(
                    str(datatype),
                    str(suffix),
                    dict(criteria),
                    tuple(parse_entities(str(custom or "")).items()),
                    str(d.get("id") or f"#{i}"),
                    _intended_ids(d),
                )
            )
        method = str(doc.get("search_method", "fnmatch"))
        if method not in ("fnmatch", "re"):
            raise ValueError(f"dcm2bids config: search_method {method!r} (fnmatch or re)")
        return cls(tuple(out), bool(doc.get("case_sensitive", True)), method)

    @classmethod
    def load(cls, path: str) -> "Dcm2BidsConfig":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    # matching follows dcm2bids' ``Sidecar.isLink``: every criterion must hold; a string is a
    # shell-style pattern on the value's text; a list matches a list element by element; a
    # one-key dict is ``any`` (one of several patterns) or a number comparison
    def _compare(self, value: Any, pattern: Any) -> bool:
        name, pat = str(value), str(pattern)
        if self.search_method == "re":
            return re.match(pat, name) is not None
        if not self.case_sensitive:
            name, pat = name.lower(), pat.lower()
        return fnmatch.fnmatchcase(name, pat)

    def _compare_list(self, value: Any, pattern: Any) -> bool:
        if (
            not isinstance(value, (list, tuple))
            or not isinstance(pattern, list)
            or len(value) != len(pattern)
        ):
            return False
        return all(self._compare(v, p) for v, p in zip(value, pattern))

    def _criterion(self, value: Any, pattern: Any) -> bool:
        if isinstance(pattern, dict):
            if len(pattern) != 1:
                raise ValueError("dcm2bids config: a dict criterion has exactly one key")
            op, arg = next(iter(pattern.items()))
            if op == "any":
                return any(
                    self._compare_list(value, p)
                    if isinstance(value, (list, tuple))
                    else self._compare(value, p)
                    for p in arg
                )
            return _compare_number(op, value, arg)
        if isinstance(value, (list, tuple)):
            return self._compare_list(value, pattern)
        if value in ("", None) or pattern in ("", None):
            return value in ("", None) and pattern in ("", None)
        return self._compare(value, pattern)

    def matches(self, facts: ScanFacts) -> List[Description]:
        return [
            d
            for d in self.descriptions
            if all(self._criterion(facts.get(k), p) for k, p in d.criteria.items())
        ]

    def map(self, facts: ScanFacts) -> Match:
        found = self.matches(facts)
        if not found:
            return Match(None, "config", "no description of the dcm2bids config matches")
        if len(found) > 1:
            return Match(
                None,
                "config",
                f"{len(found)} descriptions of the dcm2bids config "
                "match (dcm2bids leaves such scans out)",
            )
        d = found[0]
        return Match(BidsName(d.datatype, d.suffix, d.entities), "config", "", d.id, d.intended_for)


def _intended_ids(d: Mapping[str, Any]) -> Optional[Tuple[str, ...]]:
    """The description ids a field map's ``IntendedFor`` names: dcm2bids 3's
    ``"sidecar_changes": {"IntendedFor": "<id>" | ["<id>", ...]}``, or dcm2bids 2's
    ``"intendedFor": <index> | [<index>, ...]`` (indexes into ``descriptions``, as ``#<i>``).
    None when the description names none."""
    changes = d.get("sidecar_changes", d.get("sidecarChanges")) or {}
    value: Any = None
    if isinstance(changes, dict):
        value = changes.get("IntendedFor", changes.get("intendedFor"))
    if value is None:
        value = d.get("intendedFor", d.get("IntendedFor"))
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return tuple(f"#{v}" if isinstance(v, int) else str(v) for v in items)


def _compare_number(op: str, value: Any, arg: Any) -> bool:
    try:
        x = float(value)
        if op in ("btw", "btwe"):
            lo, hi = float(arg[0]), float(arg[1])
            return lo < x < hi if op == "btw" else lo <= x <= hi
        ref = float(arg[0] if isinstance(arg, list) else arg)
    except (TypeError, ValueError, IndexError):
        return False
    return {"gt": x > ref, "lt": x < ref, "ge": x >= ref, "le": x <= ref}.get(op, False)


# ------------------------------------------------------------------------ XNAT's BIDS map
def datatype_of(suffix: str) -> Optional[str]:
    low = suffix.lower()
    for datatype, suffixes in (
        ("anat", ANAT_SUFFIXES),
        ("func", FUNC_SUFFIXES),
        ("dwi", DWI_SUFFIXES),
        ("fmap", FMAP_SUFFIXES),
    ):
        if low in (s.lower() for s in suffixes):
            return datatype
    return None


def _canonical_suffix(suffix: str) -> str:
    for s in ANAT_SUFFIXES + FUNC_SUFFIXES + DWI_SUFFIXES + FMAP_SUFFIXES:
        if s.lower() == suffix.lower():
            return s
    return suffix


@dataclass(frozen=True)
class XnatBidsMap:
    """XNAT's BIDS map: series description (case-insensitive, whole) → ``bidsname`` such as
    ``T1w`` or ``task-rest_bold``.  Project entries come before site entries, as in XNAT's
    DICOM-to-BIDS script."""

    entries: Tuple[Tuple[str, str], ...]

    @classmethod
    def from_lists(cls, *docs: Any) -> "XnatBidsMap":
        seen: Dict[str, str] = {}
        for doc in docs:
            for row in doc if isinstance(doc, list) else ():
                if isinstance(row, dict) and row.get("series_description") and row.get("bidsname"):
                    seen.setdefault(str(row["series_description"]).lower(), str(row["bidsname"]))
        return cls(tuple(seen.items()))

    def map(self, facts: ScanFacts) -> Optional[Match]:
        wanted = dict(self.entries).get(facts.description.lower())
        if wanted is None:
            return None
        head, _, suffix = wanted.rpartition("_")
        datatype = datatype_of(suffix)
        if datatype is None:
            return Match(None, "xnat-bidsmap", f"XNAT's BIDS map says {wanted!r}: unknown suffix")
        entities = {k: v for k, v in parse_entities(head).items() if k not in ("sub", "ses", "run")}
        return Match(
            BidsName(datatype, _canonical_suffix(suffix), tuple(entities.items())), "xnat-bidsmap"
        )


# ------------------------------------------------------------------------ heuristic
_LOCALIZER = re.compile(
    r"localizer|localiser|scout|survey|\baahead|\bloc\b|calibration|"
    r"phoenix|report|screen ?save",
    re.I,
)
_DERIVED = re.compile(
    r"moco|_adc\b|\badc\b|_fa\b|\bfa\b|_trace|tracew|colfa|tensor|_mpr\b|"
    r"\bmip\b|\bsub\b|derived",
    re.I,
)
_DIR = re.compile(r"(?:^|[_\- ])(?:dir[-_]?)?(AP|PA|LR|RL|SI|IS)(?=$|[_\- ])", re.I)
_TASK = re.compile(r"task[-_ ]?([A-Za-z0-9]+)", re.I)
_FUNC_WORDS = re.compile(
    r"\b(?:f?mri|bold|func|epi|ep2d|ep_?bold|fmri|run\d*|ap|pa|lr|rl|"
    r"mb\d*|sms|\d+)\b",
    re.I,
)


def _direction(desc: str) -> Dict[str, str]:
    m = _DIR.search(desc)
    return {"dir": m.group(1).upper()} if m else {}


def _task(desc: str) -> str:
    m = _TASK.search(desc)
    if m:
        return alnum(m.group(1))
    if re.search(r"rest", desc, re.I):
        return "rest"
    words = re.sub(r"[_\-.]+", " ", desc)
    return alnum(_FUNC_WORDS.sub(" ", words))


def heuristic(facts: ScanFacts) -> Match:
    """The built-in rules, on the scan's series description (else its type), first hit wins:
    localizers and derived series are left out; SBRef and bold/fMRI/rest (``task-`` from the
    description: ``task-<x>``, ``rest``, else what is left once the words bold/fMRI/EPI… are
    removed; none left: out, BIDS needs a task); dwi/DTI; field maps (spin-echo ``epi`` with
    ``dir-``, ``phasediff``, ``magnitude1``); SWI (``acq-SWI_T2starw``); FLAIR; T2*; T2w; PDw;
    T1w/MPRAGE/SPGR.

    Long because: the rules are one table of cases read top to bottom, first hit wins."""
    d = facts.description
    low = d.lower()
    src = "heuristic"
    if not d:
        return Match(None, src, "no series description or type")
    if facts.modality and facts.modality.upper() not in ("MR", ""):
        return Match(None, src, f"modality {facts.modality} (the heuristic knows MR)")
    if _LOCALIZER.search(d):
        return Match(None, src, "localizer/scout/report series")
    if _DERIVED.search(d):
        return Match(None, src, "derived series (ADC/FA/MoCo/trace/MPR)")
    if "sbref" in low:
        task = _task(re.sub("sbref", "", d, flags=re.I))
        if not task:
            return Match(None, src, "single-band reference without a task name")
        return Match(
            BidsName("func", "sbref", (("task", task),) + tuple(_direction(d).items())), src
        )
    if re.search(r"fmri|bold|\brest|resting|task[-_ ]|func", low):
        task = _task(d)
        if not task:
            return Match(
                None,
                src,
                "functional series without a task name in its description "
                "(BIDS needs task-<label>: use a config)",
            )
        return Match(
            BidsName("func", "bold", (("task", task),) + tuple(_direction(d).items())), src
        )
    if re.search(r"dwi|dti|diffusion|dmri", low):
        return Match(BidsName("dwi", "dwi", tuple(_direction(d).items())), src)
    if re.search(r"field[ _-]?map|fmap|b0map|topup|se[-_]?epi|spin ?echo", low):
        if "phase" in low:
            return Match(BidsName("fmap", "phasediff"), src)
        if "magn" in low:
            return Match(BidsName("fmap", "magnitude1"), src)
        direction = _direction(d)
        if not direction:
            return Match(
                None,
                src,
                "field map of unknown kind (no AP/PA, phase or magnitude in its description; "
                "a GRE field map in two series: a config with an ImageType criterion)",
            )
        return Match(BidsName("fmap", "epi", tuple(direction.items())), src)
    if re.search(r"\bswi\b|swi_|susceptib", low):
        return Match(BidsName("anat", "T2starw", (("acq", "SWI"),)), src)
    if "flair" in low:
        return Match(BidsName("anat", "FLAIR"), src)
    if re.search(r"t2\*|t2star|t2_?starw?|\bgre\b.*t2", low):
        return Match(BidsName("anat", "T2starw"), src)
    if re.search(r"t2|space|tse", low):
        return Match(BidsName("anat", "T2w"), src)
    if re.search(r"\bpd\b|pdw|proton", low):
        return Match(BidsName("anat", "PDw"), src)
    if re.search(r"t1|mprage|mp-rage|mp_rage|spgr|tfl|bravo|mpr\b", low):
        return Match(BidsName("anat", "T1w"), src)
    return Match(None, src, f"the heuristic knows no BIDS kind for {d!r}")


# ------------------------------------------------------------------------ the chain
@dataclass
class Mapper:
    """The precedence chain: config alone, else XNAT's map then the heuristic."""

    config: Optional[Dcm2BidsConfig] = None
    xnat_map: Optional[XnatBidsMap] = None

    def map(self, facts: ScanFacts) -> Match:
        if facts.quality.lower() == "unusable":
            return Match(None, "quality", "scan quality is 'unusable' in XNAT")
        if self.config is not None:
            return self.config.map(facts)
        if self.xnat_map is not None:
            found = self.xnat_map.map(facts)
            if found is not None:
                return found
        return heuristic(facts)


def load_config(path: Union[str, None]) -> Optional[Dcm2BidsConfig]:
    return Dcm2BidsConfig.load(path) if path else None


def unmatched_tsv(rows: Sequence[Tuple[str, str, str, str, str]]) -> bytes:
    """``.xnatfs-unmatched.tsv``: subject, session, scan, description, reason."""

    lines = ["subject\tsession\tscan\tdescription\treason"]
    lines += ["\t".join(tsv_cell(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")
