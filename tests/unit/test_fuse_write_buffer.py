"""``XnatFUSE.write`` hands ``Operations.write`` a view of libfuse's buffer, valid during the
call only: libfuse reuses that buffer for the worker thread's next request.  Whatever the write
path keeps of the view past the call (a queued slice, a deferred spool write) would write the
next request's bytes in place of this one's.  Through the real adapter, write handle and spool:
the spool holds the bytes of the call, whatever the buffer holds afterwards."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

from xnatfs.fs.ops import XnatFUSE, XnatOperations, mfusepy
from xnatfs.tree.handles import HandleOps, WriteHandle
from xnatfs.tree.local import LocalFile
from xnatfs.uploads import Spool, UploadTarget

SIZE = 1 << 20


def test_a_write_keeps_nothing_of_libfuses_buffer(tmp_path):
    writer = HandleOps.__new__(HandleOps)  # what ``_write`` reads of the writer
    writer.allow_delete = False
    writer.fs_timeout = 60.0
    target = UploadTarget.file("/data/projects/P/resources/R", "f.bin")
    lf = LocalFile(("P", "f.bin"), target, spool=Spool(tmp_path / "spool").create(), handles=1)
    options = SimpleNamespace(uid=None, gid=None, allow_other_write=False)
    runtime = SimpleNamespace(options=options, note_write=lambda n: None)
    ops = XnatOperations(runtime)
    fi = mfusepy.fuse_file_info()
    ops._add_handle(WriteHandle(writer, lf), fi)
    fuse = SimpleNamespace(raw_fi=True, operations=ops, encoding="utf-8", errors="surrogateescape")

    buf = ctypes.create_string_buffer(SIZE)  # libfuse's buffer of one worker thread
    for i, byte in enumerate(b"ABC"):
        ctypes.memset(buf, byte, SIZE)
        pointer = ctypes.cast(buf, ctypes.POINTER(ctypes.c_byte))
        assert (
            XnatFUSE.write(fuse, b"/P/f.bin", pointer, SIZE, i * SIZE, ctypes.pointer(fi)) == SIZE
        )
    ctypes.memset(buf, ord("Z"), SIZE)  # the next request

    assert lf.spool is not None
    assert lf.spool.read(0, 3 * SIZE) == b"A" * SIZE + b"B" * SIZE + b"C" * SIZE
    lf.spool.discard()
