"""The per-message fast paths (benchmarks/RESULTS.md, "Per-message cost") answer exactly what the
code they replace answered: the ``stat`` the kernel gets for a LOOKUP, GETATTR or readdirplus
entry (``_fill_stat`` against mfusepy's ``set_st_attrs``, through ``XnatFUSE.fgetattr``), the
deadline of a call (``deadline.scope`` as a class, against the generator it was), the parts
of a path (``split_path`` kept per path), and the checks of a listing's rows (``has_dot_segment``
on a plain path, ``outside_listing`` with its objects kept)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import random
import re
import time
from types import SimpleNamespace
from typing import Any, Dict, Iterator, Optional
from urllib.parse import unquote

import pytest

from xnatfs import deadline
from xnatfs.cache.key import ContentKey
from xnatfs.fs import ops as fsops
from xnatfs.fs.ops import XnatFUSE, mfusepy
from xnatfs.view.paths import split_path
from xnatfs.xnat import parse

ATTRS: Dict[str, int] = {
    "st_mode": 0o100644,
    "st_nlink": 1,
    "st_size": 123_456_789_012,
    "st_uid": 1000,
    "st_gid": 100,
    "st_blocks": (123_456_789_012 + 511) // 512,
    "st_blksize": 1 << 20,
    "st_mtime": 1_764_950_000_123_456_789,
    "st_ctime": 1_764_950_001_000_000_001,
    "st_atime": 999_999_999,
    "st_birthtime": 5,  # no such field on Linux: skipped by both
}


def _stat_bytes(fill: Any) -> bytes:
    st = mfusepy.c_stat()
    ctypes.memset(ctypes.byref(st), 0xA5, ctypes.sizeof(st))  # a dirty buffer, as libfuse's
    fill(st)
    return bytes(st)


class _Ops:
    """What ``fgetattr`` asks of the operations: ``getattr`` by path."""

    def __init__(self, attrs: Dict[str, int]) -> None:
        self.attrs = attrs
        self.asked: list = []

    def getattr(self, path: Optional[str], fh: Any = None) -> Dict[str, int]:
        self.asked.append((path, fh))
        return dict(self.attrs)


def _fuse(operations: Any) -> Any:
    fuse = XnatFUSE.__new__(XnatFUSE)  # not mounted: the attributes the dispatch reads
    fuse.operations = operations
    fuse.raw_fi, fuse.use_ns = True, True
    fuse.encoding, fuse.errors = "utf-8", "surrogateescape"
    return fuse


def _mfusepy_stat(attrs: Dict[str, int]) -> bytes:
    def fill(st: Any) -> None:
        ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
        mfusepy.set_st_attrs(st, attrs, use_ns=True)

    return _stat_bytes(fill)


@pytest.mark.parametrize("attrs", [ATTRS, {"st_mode": 0o40755, "st_nlink": 2, "st_mtime": 0}])
def test_the_fast_stat_is_mfusepys_byte_for_byte(attrs):
    def fast(st: Any) -> None:
        ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
        fsops._fill_stat(st, attrs)

    assert _stat_bytes(fast) == _mfusepy_stat(attrs)


def test_fgetattr_answers_what_mfusepys_did(monkeypatch):
    ops = _Ops(ATTRS)
    fuse = _fuse(ops)
    got = {}
    for fast in (True, False):
        monkeypatch.setattr(fsops, "FAST_STAT", fast)
        st = mfusepy.c_stat()
        ctypes.memset(ctypes.byref(st), 0xA5, ctypes.sizeof(st))
        assert fuse.fgetattr("/P/ä".encode(), ctypes.pointer(st), None) == 0
        got[fast] = bytes(st)
    assert got[True] == got[False] == _mfusepy_stat(ATTRS)
    assert ops.asked == [("/P/ä", None), ("/P/ä", None)]


def test_an_error_of_getattr_still_answers_its_errno():
    class Missing:
        def getattr(self, path: Optional[str], fh: Any = None) -> Dict[str, int]:
            raise mfusepy.FuseOSError(errno.ENOENT)

    fuse = _fuse(Missing())
    fuse._kept = SimpleNamespace(done=True)
    st = mfusepy.c_stat()
    assert fuse._wrapper(fuse.getattr_fuse_3, b"/gone", ctypes.pointer(st), None) == -errno.ENOENT


@contextlib.contextmanager
def _old_scope(seconds: float) -> Iterator[float]:
    """``deadline.scope`` as it was (a generator): the reference."""
    outer = deadline._DEADLINE.get()
    mine = time.monotonic() + seconds
    if outer is not None and outer <= mine:
        yield outer
        return
    token = deadline._DEADLINE.set(mine)
    try:
        yield mine
    finally:
        deadline._DEADLINE.reset(token)


@pytest.mark.parametrize("scope", [deadline.scope, _old_scope])
def test_a_scope_keeps_an_earlier_deadline_and_is_undone_after_an_error(scope):
    assert deadline.current() is None
    with scope(10.0) as outer:
        assert deadline.current() == outer
        with scope(100.0) as inner:  # later than the enclosing one: the enclosing one stays
            assert inner == outer == deadline.current()
        with scope(1.0) as inner:  # earlier: it applies inside only
            assert inner < outer and deadline.current() == inner
            assert 0.0 < deadline.left(60.0) <= 1.0
        assert deadline.current() == outer
        with pytest.raises(KeyError):
            with scope(0.5):
                raise KeyError("x")
        assert deadline.current() == outer
    assert deadline.current() is None
    assert deadline.left(60.0) == 60.0


def test_one_scope_object_per_call():
    """Each ``with`` gets its own scope (a shared one would reset another thread's token)."""
    assert deadline.scope(1.0) is not deadline.scope(1.0)


@pytest.mark.parametrize(
    "path, parts",
    [
        ("/", ()),
        ("", ()),
        ("/P/subjects/S", ("P", "subjects", "S")),
        ("//P//a/", ("P", "a")),
        ("/P/50%25.txt", ("P", "50%25.txt")),
    ],
)
def test_split_path_kept_gives_the_same_parts(path, parts):
    assert split_path(path) == parts
    assert split_path(path) == parts  # the kept answer
    assert split_path.__wrapped__(path) == parts  # the function itself


def _dot_segment_reference(path: str) -> bool:
    """``parse.has_dot_segment`` as it was before its plain-path fast path: every reading."""
    for form, decode in ((path, True), (unquote(path), False)):
        for seg in re.split(r"[/\\]", form):
            head = seg.partition(";")[0]
            if (unquote(head) if decode else head) in (".", ".."):
                return True
    return False


def test_the_plain_path_dot_check_finds_what_every_reading_finds():
    """The regex for paths with nothing to decode, split or cut answers as the full check
    did, on every path of up to 6 pieces from an alphabet of the pieces that matter."""
    pieces = ["/", ".", "..", "a", "a.b", "%2e", "%2F", ";", ";x", "\\", "//", "\n"]
    rng = random.Random(12)
    paths = {"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(20000)}
    paths |= {".", "..", "/.", "/..", "./", "../", "", "a/./b", "a/../b", "x/.../y", "a/..\n"}
    for path in sorted(paths):
        assert parse.has_dot_segment(path) is _dot_segment_reference(path), path


def test_listing_rows_checked_with_kept_objects_answer_as_before():
    """``outside_listing`` keeps the listed object and each row's object (per listing, per
    scan resource): the same rows are kept or marked whichever came first."""
    listed = "/data/experiments/XE1/scans/ALL"
    rows = [
        "/data/experiments/XE1/scans/4/resources/12/files/a.dcm",
        "/data/experiments/XE2/scans/4/resources/12/files/a.dcm",
        "/data/projects/P/subjects/S/experiments/XE1/scans/4/resources/12/files/b",
        "/data/experiments/XE1/scans/4/resources/12/files/a.dcm",
    ]
    first = [parse.outside_listing(uri, listed) for uri in rows]
    assert first == ["", "file URI is not under the object it was listed in", "", ""]
    assert [parse.outside_listing(uri, listed) for uri in reversed(rows)] == first[::-1]
    own = "/data/experiments/XE1/scans/4/resources/12"
    assert parse.outside_listing(rows[0], own) == ""
    assert parse.outside_listing(rows[0], "/data/experiments/XE1/scans/4/resources/13") != ""


@pytest.mark.parametrize("uri", ["/data/f/a.dcm", "/data/f/résumé – notes.txt", '/data/f/"q"\\x'])
def test_a_keys_name_is_the_one_json_dumps_gave(uri):
    """``ContentKey.hexname`` with its encoder made once: the names of entries already on disk
    (``json.dumps``, ``ensure_ascii=False``) are unchanged, non-ASCII and escapes included."""
    for key in (ContentKey(uri, 5, "ab" * 16), ContentKey(uri, None, "", 1.5, origin="https://x")):
        fields = [key.uri, key.size, key.digest, key.mtime] + ([key.origin] if key.origin else [])
        text = json.dumps(fields, ensure_ascii=False)
        assert key.hexname() == hashlib.sha256(text.encode("utf-8")).hexdigest()
