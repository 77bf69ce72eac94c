"""Spool: write-side files on disk; positional I/O; a failed write (ENOSPC) is undone.

ENOSPC is produced for real on a 64 KiB tmpfs when we may mount one (root), and by a patched
``os.pwrite`` otherwise (that test always runs, so the undo logic is covered everywhere).
"""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

from xnatfs.uploads import spool as spool_mod
from xnatfs.uploads.spool import Spool


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def test_directory_and_files_are_private(tmp_path):
    sp = Spool(tmp_path / "spool")
    assert stat.S_IMODE(os.stat(sp.directory).st_mode) == 0o700
    with sp.create() as f:
        assert stat.S_IMODE(os.stat(f.path).st_mode) == 0o600
        assert os.path.dirname(f.path) == sp.directory


def test_write_read_truncate_size(tmp_path):
    sp = Spool(tmp_path)
    f = sp.create()
    assert f.size == 0 and not f.modified
    assert f.write(0, b"hello") == 5
    assert f.write(5, memoryview(b" world")) == 6
    assert f.size == 11 and f.modified
    assert f.read(0, 100) == b"hello world"
    assert f.read(6, 5) == b"world"
    assert f.read(20, 5) == b""
    f.write(2, b"LL")
    assert f.read(0, 11) == b"heLLo world"
    f.write(15, b"!")  # a gap becomes zeros
    assert f.size == 16 and f.read(11, 5) == b"\0\0\0\0!"
    f.truncate(5)
    assert f.size == 5 and f.read(0, 100) == b"heLLo"
    f.truncate(8)
    assert f.read(0, 100) == b"heLLo\0\0\0"
    f.fsync()
    f.close()
    with open(f.path, "rb") as fh:
        assert fh.read() == b"heLLo\0\0\0"


def test_copy_from_existing_file(tmp_path):
    src = tmp_path / "cached.nii"
    data = payload(3 * (1 << 20) + 17)  # more than one copy chunk
    src.write_bytes(data)
    sp = Spool(tmp_path / "spool")
    f = sp.create(copy_from=src)
    assert f.size == len(data) and not f.modified
    f.write(0, b"XY")
    assert f.read(0, 4) == b"XY" + data[2:4]
    assert src.read_bytes() == data  # the cached copy is untouched
    f.close()


def test_closed_file_answers_ebadf(tmp_path):
    f = Spool(tmp_path).create()
    f.close()
    f.close()  # idempotent
    assert f.closed
    for call in (lambda: f.write(0, b"x"), lambda: f.read(0, 1), lambda: f.truncate(0), f.fsync):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF


def test_bad_arguments_are_einval(tmp_path):
    f = Spool(tmp_path).create()
    with pytest.raises(OSError) as info:
        f.write(-1, b"x")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        f.truncate(-1)
    assert info.value.errno == errno.EINVAL
    f.close()


def test_leftovers_and_discard(tmp_path):
    sp = Spool(tmp_path)
    kept_open = sp.create()
    closed = sp.create()
    closed.write(0, b"left by a crash")
    closed.close()
    discarded = sp.create()
    discarded.discard()
    assert not os.path.exists(discarded.path)
    assert sp.leftovers() == [closed.path]
    assert Spool(tmp_path).leftovers() == sorted([closed.path, kept_open.path])  # a new process
    assert sp.discard_leftovers() == 1
    assert not os.path.exists(closed.path) and os.path.exists(kept_open.path)
    kept_open.close()


def test_concurrent_writes_to_one_handle(tmp_path):
    f = Spool(tmp_path).create()
    block = 4096

    def writer(k: int) -> None:
        for i in range(k, 64, 8):
            f.write(i * block, bytes([i]) * block)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert f.size == 64 * block
    for i in range(64):
        assert f.read(i * block, block) == bytes([i]) * block
    f.close()


def test_failed_write_is_undone_patched(tmp_path, monkeypatch):
    """A pwrite that writes part of the data and then fails with ENOSPC: the file goes back to
    its old size and the bytes it overwrote come back."""
    f = Spool(tmp_path).create()
    f.write(0, b"A" * 100)
    real_pwrite = os.pwrite
    calls = []

    def flaky_pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) == 1:  # first call: a short write
            return real_pwrite(fd, bytes(data[:30]), offset)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(spool_mod.os, "pwrite", flaky_pwrite)
    with pytest.raises(OSError) as info:
        f.write(80, b"B" * 50)  # overwrites 20 bytes, grows by 30
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert f.size == 100
    assert os.stat(f.path).st_size == 100
    assert f.read(0, 200) == b"A" * 100
    assert f.write(100, b"C") == 1  # still usable
    f.close()


def test_enospc_on_tiny_tmpfs(tiny_fs):
    sp = Spool(tiny_fs / "spool")
    f = sp.create()
    f.write(0, b"K" * 8192)
    with pytest.raises(OSError) as info:
        f.write(4096, payload(256 * 1024))
    assert info.value.errno == errno.ENOSPC
    assert f.size == 8192
    assert f.read(0, 1 << 20) == b"K" * 8192
    assert os.stat(f.path).st_size == 8192
    # the space the partial write took was given back: a write that fits succeeds
    f.write(8192, b"tail" * 1024)
    assert f.read(8192, 8) == b"tailtail"
    f.close()


def test_copy_that_does_not_fit_leaves_nothing(tiny_fs, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(payload(256 * 1024))
    sp = Spool(tiny_fs / "spool")
    with pytest.raises(OSError) as info:
        sp.create(copy_from=src)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(sp.directory) == []
