"""BIDS names from XNAT labels: the label rule, the session rule, run numbers, file names.

Why a rule of our own: BIDS labels are ``[0-9a-zA-Z]+`` while XNAT labels may hold ``_``, ``-``,
dots and (through the REST API) any character.  The rule must be *deterministic* (the same
archive always shows the same names, so a pipeline's outputs stay matched to its inputs) and
*collision-free* (two XNAT subjects never share one ``sub-`` folder).

The label rule (:class:`LabelMap`), documented in docs/BIDS.md:

1. Unicode is decomposed (NFKD) and every character that is not an ASCII letter or digit is
   dropped: ``SUBJ_01`` → ``SUBJ01``, ``Zoë.2`` → ``Zoe2``.
2. A label that was already alphanumeric keeps its name.  A label that changed in step 1 and
   then equals another label's name, or that is empty after step 1, gets the first 6 hex digits
   of the SHA-256 of its original (UTF-8) label appended: ``SUBJ_01`` next to ``SUBJ01`` shows
   as ``SUBJ01`` + hash.  More digits are taken in the (astronomically unlikely) case that this
   still collides.  The hash depends only on the label, so a name never depends on the order in
   which XNAT lists the objects.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]+")
_VALID = re.compile(r"[0-9A-Za-z]+")
_HASH_DIGITS = 6

#: BIDS entity order in file names (BIDS 1.9 appendix "Entity table"; the ones a raw MR
#: dataset uses)
ENTITY_ORDER: Tuple[str, ...] = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "chunk",
)


def alnum(label: str) -> str:
    """Step 1 of the label rule: NFKD, then only ASCII letters and digits."""
    decomposed = unicodedata.normalize("NFKD", label)
    return _NOT_ALNUM.sub("", decomposed.encode("ascii", "ignore").decode("ascii"))


def label_hash(label: str, digits: int = _HASH_DIGITS) -> str:
    return hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:digits]


def is_label(value: str) -> bool:
    return bool(_VALID.fullmatch(value))


class LabelMap:
    """XNAT label → BIDS label for one namespace (the subjects of a project, the sessions of a
    subject), by the rule in the module docstring."""

    def __init__(self, labels: Iterable[str]) -> None:
        originals = list(dict.fromkeys(labels))
        self._map: Dict[str, str] = {}
        taken: Dict[str, str] = {}
        for label in originals:  # already valid: keep the name
            if is_label(label):
                self._map[label] = label
                taken[label] = label
        clean = {label: alnum(label) for label in originals if label not in self._map}
        counts: Dict[str, int] = {}
        for c in clean.values():
            counts[c] = counts.get(c, 0) + 1
        pending: List[str] = []
        for label, c in clean.items():
            if c and counts[c] == 1 and c not in taken:
                self._map[label] = c
                taken[c] = label
            else:
                pending.append(label)
        for label in sorted(pending):
            digits = _HASH_DIGITS
            name = clean[label] + label_hash(label, digits)
            while name in taken:
                digits += 2
                name = clean[label] + label_hash(label, digits)
            self._map[label] = name
            taken[name] = label
        self._reverse = {v: k for k, v in self._map.items()}

    def __getitem__(self, label: str) -> str:
        return self._map[label]

    def original(self, bids_label: str) -> Optional[str]:
        return self._reverse.get(bids_label)

    def items(self) -> Iterable[Tuple[str, str]]:
        return self._map.items()


def distinct_originals(candidates: Mapping[str, Sequence[str]]) -> Dict[str, str]:
    """object key -> the label to give :class:`LabelMap` for it, distinct for every key.

    ``candidates[key]``: the labels to try, in order (a session: the part of the experiment
    label after the subject's, then the whole label, then the ID).  A key keeps its first
    candidate unless another key has the same one; then every key sharing it moves on to its
    next.  Why: :class:`LabelMap` maps distinct labels to distinct names, but two objects with
    one label shared a folder: experiments ``S01_MR1`` and ``MR1`` of subject ``S01`` both
    showed as ``ses-MR1``, one T1w hiding the other under one name (and their bval/bvec could
    mix).  The result depends only on the candidates, never on the listing order."""
    chosen = {key: (list(c) or [key])[0] for key, c in candidates.items()}
    level = {key: 0 for key in candidates}
    for _ in range(1 + max((len(c) for c in candidates.values()), default=0)):
        counts: Dict[str, int] = {}
        for label in chosen.values():
            counts[label] = counts.get(label, 0) + 1
        shared = [k for k, label in chosen.items() if counts[label] > 1]
        if not shared:
            break
        for key in shared:
            level[key] += 1
            options = list(candidates[key])
            # past the last candidate: the last one with the key itself, unique among keys
            chosen[key] = (
                options[level[key]]
                if level[key] < len(options)
                else f"{options[-1] if options else ''}\0{key}"
            )
    return chosen


def session_label(subject_label: str, experiment_label: str) -> str:
    """The part of an experiment label that names the session: XNAT's habit is
    ``<subject>_<visit>`` (``SUBJ01_MR1``), so a leading subject label and separator are
    dropped when something is left (``MR1``); otherwise the whole label.  The result still goes
    through a :class:`LabelMap` (per subject)."""
    for sep in ("_", "-", "."):
        prefix = subject_label + sep
        if experiment_label.startswith(prefix) and len(experiment_label) > len(prefix):
            return experiment_label[len(prefix) :]
    return experiment_label


def sessions_shown(sessions_per_subject: Mapping[str, int]) -> bool:
    """The session rule: ``ses-`` folders appear for every subject as soon as one subject of
    the project has more than one session with a mapped scan, and for none otherwise (BIDS
    wants the level present for all subjects or for none)."""
    return any(n > 1 for n in sessions_per_subject.values())


@dataclass(frozen=True)
class BidsName:
    """Where one scan lands: ``datatype`` folder, ``suffix`` and the entities (without sub/ses
    and run, which the layout adds)."""

    datatype: str
    suffix: str
    entities: Tuple[Tuple[str, str], ...] = ()

    def kind(self) -> Tuple[str, str, Tuple[Tuple[str, str], ...]]:
        """What two scans must share to be runs of one another."""
        return (self.datatype, self.suffix, tuple(sorted(self.entities)))


def number_runs(kinds: Sequence[Tuple[object, ...]]) -> List[Optional[int]]:
    """Run numbers in scan order: a kind that occurs once gets none, a kind that occurs n > 1
    times gets 1..n in the order given (the caller sorts scans by their XNAT scan order)."""
    total: Dict[Tuple[object, ...], int] = {}
    for k in kinds:
        total[k] = total.get(k, 0) + 1
    seen: Dict[Tuple[object, ...], int] = {}
    out: List[Optional[int]] = []
    for k in kinds:
        if total[k] == 1:
            out.append(None)
            continue
        seen[k] = seen.get(k, 0) + 1
        out.append(seen[k])
    return out


def file_stem(entities: Mapping[str, str], suffix: str) -> str:
    """``sub-01_ses-1_task-rest_run-1_bold``: entities in BIDS order, then unknown ones in
    name order (so a config's custom entity is never lost), then the suffix."""
    known = [k for k in ENTITY_ORDER if entities.get(k)]
    extra = sorted(k for k in entities if k not in ENTITY_ORDER and entities[k])
    return "_".join([f"{k}-{entities[k]}" for k in known + extra] + [suffix])


def parse_entities(text: str) -> Dict[str, str]:
    """``"acq-highres_task-rest"`` (dcm2bids ``custom_entities``, XNAT ``bidsname`` prefix) →
    ``{"acq": "highres", "task": "rest"}``; values are made labels by :func:`alnum`."""
    out: Dict[str, str] = {}
    for part in text.replace(" ", "_").split("_"):
        if "-" not in part:
            continue
        key, _, value = part.partition("-")
        key, value = alnum(key).lower(), alnum(value)
        if key and value:
            out[key] = value
    return out
