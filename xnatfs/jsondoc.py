"""JSON documents xnatfs serves from XNAT's JSON (``.xnat.json``, BIDS sidecars,
``dataset_description.json``), pretty-printed within a size cap.

Why (2026-12-05, sec9): ``json.dumps(indent=2)`` writes each value on a line of its own,
indented by its depth, so a small document can print huge: 200 KB of valid JSON, 500 arrays
deep around 100,000 zeros, printed as 100 MB; at the caps on what the client parses (64 MiB,
4,000,000 values) a ``.xnat.json`` could have been gigabytes in the daemon's memory.  And a
document nested close to the recursion limit parses (C) but may not print (the indenting
encoder is Python code, one frame per level): ``RecursionError``, an unexpected error.
"""

from __future__ import annotations

import errno
import io
import json
from typing import Any

__all__ = ["MAX_SERVED_JSON", "dumps_bounded"]

#: largest JSON document xnatfs serves: XNAT's object documents and sidecars are KiB to a few
#: MiB; the same figure as the cap on what the client reads (``xnat/body.MAX_DOCUMENT_BYTES``)
MAX_SERVED_JSON = 64 << 20


def dumps_bounded(
    doc: Any, what: str, *, sort_keys: bool = True, limit: int = MAX_SERVED_JSON
) -> bytes:
    """``doc`` as indented JSON + newline, UTF-8 (a lone surrogate stays the JSON escape it was:
    it is valid in XNAT's JSON, not encodable), or ``OSError(EIO)`` naming ``what`` when the
    text would pass ``limit`` characters or the document is too deep to print."""
    encoder = json.JSONEncoder(indent=2, sort_keys=sort_keys, ensure_ascii=False)
    out = io.StringIO()
    size = 0
    try:
        for chunk in encoder.iterencode(doc):
            size += len(chunk)
            if size > limit:
                raise OSError(
                    errno.EIO, f"{what}: more than {limit} characters as JSON: not served"
                )
            out.write(chunk)
    except RecursionError:
        raise OSError(errno.EIO, f"{what}: nested too deeply to be written as JSON") from None
    out.write("\n")
    return out.getvalue().encode("utf-8", "backslashreplace")
