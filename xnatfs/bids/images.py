"""Which images a conversion made, and their BIDS names.

Why a rule of our own: dcm2niix writes one NIfTI per echo and per image part of a series, and
says which is which in two places — the file name (its documented suffixes: ``_e<N>`` for echo
N of a multi-echo series, ``_ph`` for phase, ``_real``, ``_imaginary``) and each image's sidecar
(``EchoNumber``, ``EchoTime``, ``ImageType`` holding ``P``/``PHASE``, ``REAL``, ``IMAGINARY``).
A GRE field-map series gives magnitude echo 1, magnitude echo 2 and the phase difference
(``5_e1``, ``5_e2``, ``5_e2_ph``); a multi-echo series one image per echo.  BIDS names them
``magnitude1``/``magnitude2``/``phasediff`` (field maps, or ``phase1``/``phase2`` when there is
one phase per echo) and ``echo-<n>`` (+ ``part-<mag|phase|real|imag>``) elsewhere.

The rule (:func:`bids_images`, documented in docs/BIDS.md): one image keeps the scan's name; a
field-map series (suffix ``magnitude*``/``phase*``) is named by part and echo; any other series
takes ``echo-`` when its images differ in echo and ``part-`` when they differ in part.  When
that cannot name every image distinctly (an unknown dcm2niix suffix such as ``_c1`` coil or
``_i00002``, three echoes of a field map…) only the first image is shown, under the scan's
name, as before this rule — never two images under one name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from xnatfs.bids.names import BidsName

#: field-map suffixes of the GRE kind (BIDS "Case 1/2": phase difference or two phases)
GRE_FMAP_SUFFIXES = ("phasediff", "phase1", "phase2", "magnitude", "magnitude1", "magnitude2")
#: dcm2niix's name suffixes we read (its docs, "file naming": _e<N>, _ph, _real, _imaginary)
_SUFFIX = re.compile(r"_(e\d+|ph|real|imaginary)$")


@dataclass(frozen=True)
class Image:
    """One image of a conversion: ``stem`` is dcm2niix's (``5_e2_ph``, no extension)."""

    stem: str
    echo: int = 0  # 0: not a multi-echo image
    part: str = "mag"  # mag / phase / real / imag
    echo_time: Optional[float] = None  # seconds, from its sidecar
    #: dcm2niix added a suffix we do not know (coil, instance…): cannot be named by this rule
    unknown: bool = False


def classify(stem: str, doc: Mapping[str, Any]) -> Image:
    """An image from dcm2niix's output stem (relative to the series stem) and its sidecar."""
    rest, echo, part = stem, 0, ""
    while True:
        m = _SUFFIX.search(rest)
        if m is None:
            break
        token = m.group(1)
        if token.startswith("e"):
            echo = int(token[1:])
        else:
            part = {"ph": "phase", "real": "real", "imaginary": "imag"}[token]
        rest = rest[: m.start()]
    image_type = [str(t).upper() for t in (doc.get("ImageType") or ())]
    if not part:
        if "P" in image_type or "PHASE" in image_type:
            part = "phase"
        elif "REAL" in image_type:
            part = "real"
        elif "IMAGINARY" in image_type:
            part = "imag"
        else:
            part = "mag"
    echo = echo or _as_int(doc.get("EchoNumber"))
    te = doc.get("EchoTime")
    return Image(
        stem=stem,
        echo=echo,
        part=part,
        echo_time=float(te) if isinstance(te, (int, float)) else None,
        unknown="_" in rest,
    )


def _as_int(value: Any) -> int:
    """A sidecar's integer field, 0 when it is missing or not a number."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def from_outputs(outputs: Mapping[str, bytes]) -> List[Image]:
    """Every image of dcm2niix's outputs (by name), classified; its series stem is the
    shortest image stem (``-f %s``: the series number)."""
    stems = sorted(n[: -len(".nii.gz")] for n in outputs if n.endswith(".nii.gz"))
    if not stems:
        return []
    base = min(stems, key=len)
    base = base if all(s.startswith(base) for s in stems) else _common_stem(stems)
    out = []
    for stem in stems:
        doc: Mapping[str, Any] = {}
        raw = outputs.get(stem + ".json")
        if raw is not None:
            try:
                loaded = json.loads(raw.decode("utf-8"))
                doc = loaded if isinstance(loaded, dict) else {}
            except (ValueError, RecursionError):  # broken, or nested past the recursion limit
                doc = {}
        image = classify(stem[len(base) :], doc)
        out.append(Image(stem, image.echo, image.part, image.echo_time, image.unknown))
    return out


def _common_stem(stems: Sequence[str]) -> str:
    """The series stem when the shortest image stem is not a prefix of all (``5_e1``,
    ``5_e2``): the common prefix cut back to before dcm2niix's first ``_``."""
    prefix = stems[0]
    for s in stems[1:]:
        while not s.startswith(prefix):
            prefix = prefix[:-1]
    cut = prefix.find("_")
    return prefix if cut < 0 else prefix[:cut]


@dataclass(frozen=True)
class Named:
    """An image and the name it is shown under (``name`` replaces the scan's)."""

    image: Image
    name: BidsName
    #: keys its sidecar gets that dcm2niix does not write (``EchoTime1``/``EchoTime2``)
    extra: Tuple[Tuple[str, Any], ...] = ()


def bids_images(scan: BidsName, images: Sequence[Image]) -> List[Named]:
    """The images shown for a scan named ``scan`` (rule in the module docstring), first the
    one a reader of the scan's own name gets (see :func:`primary`)."""
    if not images:
        return []
    if len(images) == 1:
        return [Named(images[0], scan)]
    if any(i.unknown for i in images):
        return [Named(images[0], scan)]
    if scan.datatype == "fmap":
        named = _gre_fmap(scan, images) if scan.suffix in GRE_FMAP_SUFFIXES else None
    else:
        named = _echo_parts(scan, images)
    if named is None or len({n.name for n in named}) != len(named):
        return [Named(images[0], scan)]
    return named


def _gre_fmap(scan: BidsName, images: Sequence[Image]) -> Optional[List[Named]]:
    mags = sorted((i for i in images if i.part == "mag"), key=lambda i: (i.echo, i.stem))
    phases = sorted((i for i in images if i.part == "phase"), key=lambda i: (i.echo, i.stem))
    if len(mags) + len(phases) != len(images) or len(mags) > 2 or len(phases) > 2:
        return None
    out = [
        Named(m, BidsName("fmap", f"magnitude{n}", scan.entities)) for n, m in enumerate(mags, 1)
    ]
    if len(phases) == 2:
        out += [
            Named(p, BidsName("fmap", f"phase{n}", scan.entities)) for n, p in enumerate(phases, 1)
        ]
    elif phases:
        extra: Tuple[Tuple[str, Any], ...] = ()
        times = [m.echo_time for m in mags]
        if len(times) == 2 and None not in times:
            # BIDS: EchoTime1/EchoTime2 (s) of the phase difference are the magnitudes' echo
            # times (what dcm2bids and heudiconv write)
            extra = (("EchoTime1", times[0]), ("EchoTime2", times[1]))
        out.append(Named(phases[0], BidsName("fmap", "phasediff", scan.entities), extra))
    return _primary_first(scan, out)


def _echo_parts(scan: BidsName, images: Sequence[Image]) -> Optional[List[Named]]:
    echoes = {i.echo for i in images}
    parts = {i.part for i in images}
    if len(echoes) == 1 and len(parts) == 1:
        return None
    ordered = sorted(images, key=lambda i: (i.echo, _PART_ORDER.get(i.part, 9), i.stem))
    out = []
    for image in ordered:
        ents = dict(scan.entities)
        if len(echoes) > 1:
            ents["echo"] = str(image.echo)
        if len(parts) > 1:
            ents["part"] = image.part
        out.append(Named(image, BidsName(scan.datatype, scan.suffix, tuple(sorted(ents.items())))))
    return out


_PART_ORDER = {"mag": 0, "phase": 1, "real": 2, "imag": 3}


def _primary_first(scan: BidsName, named: List[Named]) -> List[Named]:
    """The image named as the scan itself first (a field-map scan mapped to ``phasediff``
    that holds magnitudes and phase): its name stays the same before and after conversion."""
    same = [n for n in named if n.name == scan]
    return same + [n for n in named if n.name != scan]


def primary(named: Sequence[Named]) -> Optional[Named]:
    """The image a reader of the scan's pre-conversion name gets: the first of
    :func:`bids_images` (the one named as the scan when there is one)."""
    return named[0] if named else None
