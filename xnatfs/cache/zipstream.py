"""A zip archive split into its members while it streams in (push parser, no seeking).

XNAT's zip download (``docs/XNAT-API.md`` §3.3) is streamed without a Content-Length, so its
central directory — the part ``zipfile`` needs first — arrives last.  ``ZipSplitter`` reads the
local headers instead, as the bytes come: each member is handed out as soon as its bytes are
there, so a reader of the fifth file of a 400-file scan does not wait for the other 395.

Streamed zips mark members with a *data descriptor* (flag bit 3): sizes and CRC follow the
data.  A deflated member ends by itself (its deflate stream says so); a stored one cannot be
delimited without knowing its size, which ``size_of`` supplies (the resource's file listing has
every size).  Only STORED and DEFLATED members are understood; anything else (other methods,
encryption, a stored member of unknown size) stops the split with ``ZipStreamError`` — callers
fetch what is left another way.  Why not ``stream-unzip`` (PyPI): it refuses exactly these
members — stored, with a data descriptor, no length in the local header ("NotStreamUnzippable",
stream-unzip.docs.trade.gov.uk/limitations) — which is how the emulator (Python's ``zipfile``
writing to a socket) sends them; only the listing's sizes make them splittable.

Knows nothing of XNAT, the cache or HTTP: bytes in, member callbacks out.
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable, Optional, Union

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_END = b"PK\x05\x06"
_END64 = b"PK\x06\x06"
_DESCRIPTOR = 0x08074B50
_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_NAME_EXTRA = struct.Struct("<HH")  # the header's name and extra lengths, at offset 26
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_STORED, _DEFLATED = 0, 8
#: most bytes one ``decompress`` call may produce: a member that inflates a thousandfold
#: (a zip bomb) then costs this much memory at a time, not its whole size (issue 17 §4)
INFLATE_STEP = 1 << 20
_FLAG_ENCRYPTED, _FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x1, 0x8, 0x800

#: ``on_start(name)`` -> a sink for the member's bytes (it may get a memoryview, valid only
#: during the call), or None to skip the member
OnStart = Callable[[str], Optional[Callable[[Union[bytes, memoryview]], None]]]
#: ``on_end(name, ok)``: the member ended; ok is False when its size or CRC did not match
OnEnd = Callable[[str, bool], None]


class ZipStreamError(ValueError):
    """The stream cannot be split further (not a zip, an unsupported member, cut short)."""


class ZipSplitter:
    """Feed it the archive's bytes in any chunking; it calls ``on_start``/``on_end`` per member.

    ``size_of(name)`` gives a stored member's size when its header does not (None: unknown).
    ``feed`` raises ``ZipStreamError`` when the stream cannot be followed; the member in
    progress then gets no ``on_end``.  ``close()`` checks that the stream ended at a member
    boundary.  Not thread-safe: one feeder.
    """

    def __init__(
        self,
        size_of: Callable[[str], Optional[int]],
        on_start: OnStart,
        on_end: OnEnd,
        check_crc: bool = True,
    ) -> None:
        self._size_of = size_of
        #: compute and compare each member's CRC-32 (a caller that checks an MD5 of every
        #: member it keeps can spare the time: on_end's ``ok`` then means "size matches")
        self._check_crc = check_crc
        self._on_start = on_start
        self._on_end = on_end
        self._buf = bytearray()
        self._state = "header"
        self._name = ""
        self._sink: Optional[Callable[[Union[bytes, memoryview]], None]] = None
        self._method = _STORED
        self._has_descriptor = False
        self._zip64 = False
        self._crc_expected = 0
        self._size_expected = 0
        self._left = 0  # stored bytes still to come
        self._inflate: Optional["zlib._Decompress"] = None
        self._crc = 0
        self._produced = 0
        self._limit: Optional[int] = None  # most bytes the member in progress may produce
        #: members seen so far (started, whether or not they were wanted)
        self.members = 0

    # ------------------------------------------------------------------ input
    def feed(self, chunk: Union[bytes, memoryview]) -> None:
        """Take the next bytes of the archive (any chunking; bytes-like, not kept)."""
        view = memoryview(chunk)
        while view:
            state = self._state
            if state == "data":
                view = self._data(view)
                continue
            if state == "done":
                return
            if self._buf:
                # a header or descriptor begun in an earlier chunk: copy only its own bytes
                while True:
                    more = self._wanted(self._buf) - len(self._buf)
                    if more <= 0:
                        break
                    if not view:
                        return
                    self._buf += view[:more]
                    view = view[more:]
                self._structure(self._buf)
                self._buf.clear()
                continue
            need = self._wanted(view)
            if len(view) < need:
                self._buf += view  # shorter than one header: the rest comes with the next chunk
                return
            # parsed in place: a member's header, data and descriptor are never copied whole
            # (the old way copied the rest of the chunk twice per header and descriptor)
            self._structure(view[:need])
            view = view[need:]

    def close(self) -> None:
        """The stream ended: fine only after the last member (or the central directory)."""
        if self._state == "done" or (self._state == "header" and not self._buf):
            return
        raise ZipStreamError(f"archive ended inside {self._name or 'a header'!r}")

    # ------------------------------------------------------------------ headers
    def _wanted(self, data: "bytes | bytearray | memoryview") -> int:
        """How many bytes the header or descriptor at the start of ``data`` takes, as far as
        ``data`` tells (more than ``len(data)``: wait for more; then ask again)."""
        have = len(data)
        if have < 4:
            return 4
        if self._state == "header":
            if data[:4] != _LOCAL:
                return 4  # the end of the members, or garbage: ``_structure`` says which
            if have < _HEADER.size:
                return _HEADER.size
            nlen, xlen = _NAME_EXTRA.unpack_from(data, 26)
            return _HEADER.size + nlen + xlen
        size_len = 8 if self._zip64 else 4
        signed = _U32.unpack_from(data)[0] == _DESCRIPTOR
        return 4 * signed + 4 + 2 * size_len

    def _structure(self, data: "bytes | bytearray | memoryview") -> None:
        """Act on one whole header or descriptor (``_wanted(data)`` bytes)."""
        if self._state == "descriptor":
            self._descriptor(data)
            return
        sig = bytes(data[:4])
        if sig in (_CENTRAL, _END, _END64):
            self._state = "done"
            return
        if sig != _LOCAL:
            raise ZipStreamError(f"no local file header where one was expected ({sig!r})")
        (_, _, flags, method, _, _, crc, csize, usize, nlen, xlen) = _HEADER.unpack_from(data)
        raw_name = bytes(data[_HEADER.size : _HEADER.size + nlen])
        extra = bytes(data[_HEADER.size + nlen : _HEADER.size + nlen + xlen])
        self._begin(raw_name, flags, method, crc, csize, usize, extra)

    def _begin(
        self,
        raw_name: bytes,
        flags: int,
        method: int,
        crc: int,
        csize: int,
        usize: int,
        extra: bytes,
    ) -> None:
        name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", "replace")
        if flags & _FLAG_ENCRYPTED:
            raise ZipStreamError(f"{name}: encrypted members are not supported")
        if method not in (_STORED, _DEFLATED):
            raise ZipStreamError(f"{name}: compression method {method} is not supported")
        self._zip64 = False
        if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF or _zip64_extra(extra) is not None:
            self._zip64 = True
            sizes = _zip64_extra(extra) or ()
            values = list(sizes)
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
        self._name = name
        self._method = method
        self._has_descriptor = bool(flags & _FLAG_DESCRIPTOR)
        self._crc_expected = crc
        self._size_expected = usize
        self._crc = 0
        self._produced = 0
        self.members += 1
        # the listing's size bounds what the member may inflate to (else the header's, when
        # it has one: no descriptor)
        known = self._size_of(name)
        self._limit = (
            known if known is not None and known >= 0 else (None if self._has_descriptor else usize)
        )
        if method == _STORED:
            if self._has_descriptor and usize == 0:
                known = self._size_of(name)
                if known is None:
                    raise ZipStreamError(f"{name}: stored member of unknown size")
                self._size_expected = known
            self._left = self._size_expected
            self._inflate = None
        else:
            self._inflate = zlib.decompressobj(-15)
        self._sink = self._on_start(name)
        self._state = "data"
        if method == _STORED and self._left == 0:
            self._data_done()

    # ------------------------------------------------------------------ member data
    def _data(self, view: memoryview) -> memoryview:
        if self._method == _STORED:
            n = min(self._left, len(view))
            self._emit(view[:n])
            self._left -= n
            view = view[n:]
            if self._left == 0:
                self._data_done()
            return view
        assert self._inflate is not None
        data: "bytes | memoryview" = view
        while True:
            out = self._inflate.decompress(data, INFLATE_STEP)
            if out:
                self._emit(out)
            if self._inflate.eof:
                # what follows the member is the end of ``view`` (no copy of it)
                left = len(self._inflate.unused_data)
                self._data_done()
                return view[len(view) - left :]
            data = self._inflate.unconsumed_tail
            if not data:
                return memoryview(b"")

    def _emit(self, data: "bytes | memoryview") -> None:
        if not data:
            return
        if self._limit is not None and self._produced + len(data) > self._limit:
            raise ZipStreamError(
                f"{self._name}: longer than its listed size of {self._limit} bytes"
            )
        if self._check_crc:
            self._crc = zlib.crc32(data, self._crc)
        self._produced += len(data)
        if self._sink is not None:
            self._sink(data)  # a memoryview, as OnStart says

    def _data_done(self) -> None:
        if self._has_descriptor:
            self._state = "descriptor"
            return
        self._finish(self._crc_expected, self._size_expected)

    def _descriptor(self, data: "bytes | bytearray | memoryview") -> None:
        at = 4 if _U32.unpack_from(data)[0] == _DESCRIPTOR else 0
        crc = _U32.unpack_from(data, at)[0]
        if self._zip64:
            usize = _U64.unpack_from(data, at + 12)[0]
        else:
            usize = _U32.unpack_from(data, at + 8)[0]
        self._finish(crc, usize)

    def _finish(self, crc: int, usize: int) -> None:
        ok = self._produced == usize and (not self._check_crc or self._crc == crc)
        name, self._sink = self._name, None
        self._state = "header"
        self._on_end(name, ok)


def _zip64_extra(extra: bytes) -> Optional[tuple]:
    """The 8-byte values of a zip64 extra field (id 1), or None when there is none."""
    at = 0
    while at + 4 <= len(extra):
        ident, length = struct.unpack_from("<HH", extra, at)
        if ident == 1:
            body = extra[at + 4 : at + 4 + length]
            return tuple(struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8))
        at += 4 + length
    return None
