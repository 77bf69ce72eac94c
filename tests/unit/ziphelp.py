"""Zips as XNAT streams them (no Content-Length, written to a socket): built with zipfile on an
unseekable stream, so every member carries a data descriptor and zero sizes in its header."""

from __future__ import annotations

import io
import zipfile
from typing import Dict


class Unseekable(io.RawIOBase):
    """A write-only stream zipfile cannot seek back in (so it writes data descriptors)."""

    def __init__(self) -> None:
        self.out = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.out += b
        return len(b)


def streamed_zip(
    files: Dict[str, bytes], method: int = zipfile.ZIP_STORED, zip64: bool = False
) -> bytes:
    """The members ``files`` (name -> bytes), in order, as one streamed zip."""
    target = Unseekable()
    with zipfile.ZipFile(target, "w", method, allowZip64=True) as zf:  # type: ignore[arg-type]
        for name, data in files.items():
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=zip64) as out:
                out.write(data)
    return bytes(target.out)
