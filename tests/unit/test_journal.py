"""Journal: durable entries (data file + atomically written sidecar), reload after a crash.

Crashes are simulated two ways: by leaving on disk what a kill -9 would leave (temp files,
sidecars without data, data without sidecars), and by stopping ``add``/``update``/``remove``
at every single file-system call in turn (``Crash`` is a BaseException, so no ``except
OSError`` cleanup runs, as with a real kill) and then reloading a fresh Journal.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.helpers.crash import Crash, CrashingOs
from xnatfs.uploads import journal as journal_mod
from xnatfs.uploads.journal import FAILED, PENDING, UPLOADING, Journal
from xnatfs.uploads.spool import Spool
from xnatfs.uploads.target import UploadTarget

TARGET = {
    "kind": "file",
    "resource_uri": "/data/projects/P/resources/R",
    "relpath": "a/x.nii",
    "overwrite": False,
}
MNT_PATH = "/P/resources/R/files/a/x.nii"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def spooled(spool: Spool, data: bytes):
    f = spool.create()
    f.write(0, data)
    return f


@pytest.fixture
def dirs(tmp_path):
    return Spool(tmp_path / "spool"), tmp_path / "journal"


def files(directory) -> list:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------- add/update/remove
def test_add_moves_the_spool_file_and_is_durable(dirs):
    spool, jdir = dirs
    j = Journal(jdir)
    j.reload()
    data = payload(5000)
    f = spooled(spool, data)
    entry = j.add(f, TARGET, MNT_PATH)
    assert f.closed and not os.path.exists(f.path)
    assert (entry.size, entry.md5, entry.state, entry.tries) == (5000, md5(data), PENDING, 0)
    assert entry.target == UploadTarget.from_json(TARGET) and entry.target is not TARGET
    assert entry.path == MNT_PATH
    with open(entry.data_path, "rb") as fh:
        assert fh.read() == data
    assert stat.S_IMODE(os.stat(jdir).st_mode) == 0o700
    assert files(jdir) == sorted([entry.id + ".data", entry.id + ".json"])
    for name in files(jdir):
        assert stat.S_IMODE(os.stat(jdir / name).st_mode) == 0o600
    doc = json.loads((jdir / (entry.id + ".json")).read_text())
    assert {
        k: doc[k]
        for k in (
            "id",
            "target",
            "path",
            "size",
            "md5",
            "state",
            "tries",
            "next_attempt",
            "last_error",
            "created",
        )
    } == {
        "id": entry.id,
        "target": TARGET,
        "path": MNT_PATH,
        "size": 5000,
        "md5": md5(data),
        "state": "pending",
        "tries": 0,
        "next_attempt": 0.0,
        "last_error": "",
        "created": entry.created,
    }
    # a new process sees the same entry
    again = Journal(jdir).reload()
    assert again == [entry]
    assert again[0].data_path == entry.data_path


def test_add_from_a_plain_path(tmp_path):
    src = tmp_path / "upload.zip"
    src.write_bytes(b"PK zip bytes")
    j = Journal(tmp_path / "journal")
    entry = j.add(src, {"kind": "import", "project": "P"}, "/P/subjects/S/experiments/s.zip")
    assert not src.exists()
    assert entry.md5 == md5(b"PK zip bytes")
    assert stat.S_IMODE(os.stat(entry.data_path).st_mode) == 0o600


def test_update_persists_and_never_resurrects(dirs):
    spool, jdir = dirs
    j = Journal(jdir)
    entry = j.add(spooled(spool, b"abc"), TARGET, MNT_PATH)
    newer = j.update(dataclasses.replace(entry, tries=3, last_error="503", next_attempt=12.5))
    assert j.get(entry.id) == newer
    assert Journal(jdir).reload()[0].tries == 3
    j.remove(newer)
    assert files(jdir) == []
    assert j.get(entry.id) is None and j.entries() == []
    with pytest.raises(KeyError):
        j.update(newer)
    assert files(jdir) == []
    j.remove(newer)  # idempotent


def test_lookups_by_path(dirs):
    spool, jdir = dirs
    j = Journal(jdir)
    a1 = j.add(spooled(spool, b"v1"), TARGET, "/P/resources/R/files/a.txt")
    b = j.add(spooled(spool, b"b"), TARGET, "/P/resources/R/files/sub/b.txt")
    a2 = j.add(spooled(spool, b"v2!"), TARGET, "/P/resources/R/files/a.txt")
    assert j.pending_for("/P/resources/R/files/a.txt") == a2
    assert j.pending_for("/P/resources/R/files/zzz") is None
    assert j.versions_for("/P/resources/R/files/a.txt") == [a1, a2]
    assert j.by_path() == {"/P/resources/R/files/a.txt": a2, "/P/resources/R/files/sub/b.txt": b}
    assert j.pending_in("/P/resources/R/files/") == [a2]
    assert j.pending_in("/P/resources/R/files/sub") == [b]
    assert j.entries() == [a1, b, a2]
    j.remove(a2)
    assert j.pending_for("/P/resources/R/files/a.txt") == a1
    j.remove(a1)
    assert "/P/resources/R/files/a.txt" not in j.by_path()
    # order survives a restart (seq is persisted)
    assert [e.id for e in Journal(jdir).reload()] == [b.id]


def test_a_renamed_entry_is_the_newest_version_of_its_new_name(dirs):
    """rsync's temporary file (written first) renamed over a name whose later version is
    still pending: the renamed one is the newest change of that name, also after a restart.
    With its old number the pending version counted as newer and its bytes won."""
    spool, jdir = dirs
    j = Journal(jdir)
    temp = j.add(spooled(spool, b"new"), TARGET, "/P/resources/R/files/.a.txt.Xy12Ab")
    pending = j.add(spooled(spool, b"old"), TARGET, "/P/resources/R/files/a.txt")
    renamed = j.renamed(temp, TARGET, "/P/resources/R/files/a.txt")
    assert renamed.seq > pending.seq
    assert j.versions_for("/P/resources/R/files/a.txt") == [pending, renamed]
    assert j.pending_for("/P/resources/R/files/a.txt") == renamed
    again = Journal(jdir)
    again.reload()
    assert [e.id for e in again.versions_for("/P/resources/R/files/a.txt")] == [
        pending.id,
        renamed.id,
    ]


def test_add_across_filesystems_copies(dirs, monkeypatch):
    spool, jdir = dirs
    j = Journal(jdir)
    f = spooled(spool, b"far away")
    real_rename = os.rename

    def rename(src, dst):
        if str(src).startswith(spool.directory):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(journal_mod.os, "rename", rename)
    entry = j.add(f, TARGET, MNT_PATH)
    monkeypatch.undo()
    assert not os.path.exists(f.path)
    with open(entry.data_path, "rb") as fh:
        assert fh.read() == b"far away"
    assert not [n for n in files(jdir) if n.endswith(".tmp")]


class FsyncCountingOs:
    """Stands in for ``os`` in journal.py and spool.py: counts fsyncs per inode."""

    def __init__(self) -> None:
        self.inodes: list = []

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd):
        self.inodes.append(os.fstat(fd).st_ino)
        return os.fsync(fd)


def test_add_fsyncs_the_bytes_once(dirs, monkeypatch):
    """An open ``SpoolFile`` is fsynced by ``add`` through its own descriptor; fsync(2) is of
    the file, not the descriptor, and nothing writes in between, so the second fsync of the
    same bytes through another descriptor (before: 2 of the 6 fsyncs of every add) went.
    The crash ordering is checked by ``test_kill_at_any_point_of_add``; a path (no
    ``SpoolFile``) is still fsynced by ``add`` itself."""
    from xnatfs.uploads import spool as spool_mod

    spool, jdir = dirs
    counting = FsyncCountingOs()
    monkeypatch.setattr(journal_mod, "os", counting)
    monkeypatch.setattr(spool_mod, "os", counting)
    j = Journal(jdir)
    f = spooled(spool, b"bytes")
    inode = os.stat(f.path).st_ino
    entry = j.add(f, TARGET, MNT_PATH)
    assert counting.inodes.count(inode) == 1  # before: 2
    assert len(counting.inodes) == 5  # bytes, sidecar, journal dir twice, spool dir
    g = spooled(spool, b"more")
    g.close()  # closed: add must fsync it itself
    inode = os.stat(g.path).st_ino
    j.add(g.path, TARGET, MNT_PATH)
    assert counting.inodes.count(inode) == 1
    assert Journal(jdir).reload()[0] == entry


def test_enospc_on_add_leaves_no_entry_and_keeps_the_bytes(tiny_fs):
    spool = Spool(tiny_fs / "spool")
    j = Journal(tiny_fs / "journal")
    f = spooled(spool, b"precious")
    f.close()
    filler = spool.create()
    with pytest.raises(OSError):
        filler.write(0, b"\0" * (1 << 20))  # fill the disk (the failed write is undone ...)
    n = 0
    while True:  # ... so fill it page by page instead
        try:
            filler.write(filler.size, b"\1" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
        n += 1
    with pytest.raises(OSError) as info:
        j.add(f.path, TARGET, MNT_PATH)
    assert info.value.errno == errno.ENOSPC
    assert j.entries() == [] and files(j.directory) == []
    with open(f.path, "rb") as fh:
        assert fh.read() == b"precious"
    filler.discard()
    entry = j.add(f.path, TARGET, MNT_PATH)
    assert Journal(j.directory).reload() == [entry]


def test_enospc_on_update_keeps_the_previous_sidecar_whole(tiny_fs):
    """A sidecar rewrite (a failed attempt's tries and error) on a full disk: ENOSPC, the
    previous sidecar intact and no temp file left, so a later mount reads the entry as it
    was, never a truncated sidecar."""
    spool = Spool(tiny_fs / "spool")
    j = Journal(tiny_fs / "journal")
    entry = j.add(spooled(spool, b"precious"), TARGET, MNT_PATH)
    before = (Path(j.directory) / f"{entry.id}.json").read_bytes()
    filler = spool.create()
    while True:  # fill the disk page by page (a failed write is undone)
        try:
            filler.write(filler.size, b"\1" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
    newer = dataclasses.replace(entry, tries=3, last_error="503 " + "x" * 8000)
    with pytest.raises(OSError) as info:
        j.update(newer)
    assert info.value.errno == errno.ENOSPC
    assert (Path(j.directory) / f"{entry.id}.json").read_bytes() == before
    assert files(j.directory) == sorted([entry.id + ".data", entry.id + ".json"])
    assert Journal(j.directory).reload() == [entry]
    filler.discard()


class DirFsyncFailsOs:
    """Stands in for ``os`` in journal.py: the ``n``-th fsync of a directory fails (ENOSPC;
    on NFS and some other filesystems an fsync can say so), every other call is real."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            self.seen += 1
            if self.seen == self.n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.fsync(fd)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_add_whose_directory_fsync_fails_is_all_or_nothing(dirs, monkeypatch, n):
    """``add`` either returns a durable entry or raises with no entry, the bytes still in
    the open spool file (the caller tells the user, and a later close adds them).  A
    failing directory fsync after the sidecar's or the data's rename raised from ``add``
    but left that sidecar (a later mount rolled the "failed" add forward) or the data
    renamed away from under the spool file (its next writes went into a nameless entry,
    and the next close found no spool file: ENOENT)."""
    spool, jdir = dirs
    j = Journal(jdir)
    f = spooled(spool, b"first ")
    monkeypatch.setattr(journal_mod, "os", DirFsyncFailsOs(n))
    try:
        entry = j.add(f, TARGET, MNT_PATH)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        monkeypatch.undo()
        assert Journal(jdir).reload() == [] and files(jdir) == []
        f.write(6, b"second")  # the file goes on in its spool ...
        entry = j.add(f, TARGET, MNT_PATH)  # ... and a later close adds all of it
        with open(entry.data_path, "rb") as fh:
            assert fh.read() == b"first second"
    monkeypatch.undo()
    assert Journal(jdir).reload() == [entry]


# ---------------------------------------------------------------------------- reload
def test_reload_repairs_what_a_crash_left(dirs):
    spool, jdir = dirs
    j = Journal(jdir)
    keep = j.add(spooled(spool, b"keep"), TARGET, "/P/resources/R/files/keep")
    busy = j.update(
        dataclasses.replace(
            j.add(spooled(spool, b"busy"), TARGET, "/P/resources/R/files/busy"),
            state=UPLOADING,
            tries=2,
        )
    )
    done = j.update(
        dataclasses.replace(
            j.add(spooled(spool, b"done"), TARGET, "/P/resources/R/files/done"), state="done"
        )
    )
    gone = j.add(spooled(spool, b"gone"), TARGET, "/P/resources/R/files/gone")
    os.unlink(gone.data_path)  # a remove interrupted between its two unlinks
    lost = j.add(spooled(spool, b"lost sidecar"), TARGET, "/P/resources/R/files/lost")
    os.unlink(jdir / (lost.id + ".json"))
    bad = j.add(spooled(spool, b"bad sidecar"), TARGET, "/P/resources/R/files/bad")
    (jdir / (bad.id + ".json")).write_text('{"id": "')
    (jdir / (".%s.json.abcd.tmp" % keep.id)).write_text('{"half')  # an interrupted update
    (jdir / ("%s.data.1234.tmp" % keep.id)).write_bytes(b"half a copy")

    fresh = Journal(jdir)
    got = {e.id: e for e in fresh.reload()}
    assert fresh.loaded
    assert got[keep.id] == keep
    assert got[busy.id].state == PENDING and got[busy.id].tries == 2
    assert done.id not in got and not os.path.exists(done.data_path)
    assert gone.id not in got and not (jdir / (gone.id + ".json")).exists()
    for orphan, data in ((lost, b"lost sidecar"), (bad, b"bad sidecar")):
        e = got[orphan.id]
        assert e.state == FAILED and e.target is None and e.path == ""
        assert e.size == len(data) and e.md5 == md5(data)
        assert "sidecar" in e.last_error and e.data_path in e.last_error
        with open(e.data_path, "rb") as fh:
            assert fh.read() == data
    assert (jdir / (bad.id + ".json.bad")).exists()
    assert not [n for n in files(jdir) if n.endswith(".tmp")]
    # the repairs are on disk: a second reload finds the same
    assert {e.id: e for e in Journal(jdir).reload()} == got


def test_reload_completes_an_interrupted_add(dirs):
    spool, jdir = dirs
    j = Journal(jdir)
    f = spooled(spool, b"half added")
    entry = j.add(f, TARGET, MNT_PATH)
    os.rename(entry.data_path, f.path)  # as if the crash came before the rename
    assert Journal(jdir).reload() == [entry]
    assert not os.path.exists(f.path)
    with open(entry.data_path, "rb") as fh:
        assert fh.read() == b"half added"


def test_keep_orphan_moves_a_leftover_in(dirs):
    spool, jdir = dirs
    j = Journal(jdir)
    f = spooled(spool, b"written before a crash")
    f.close()
    for path in spool.leftovers():
        e = j.keep_orphan(path, "spool file left by an unclean shutdown")
    assert not os.path.exists(f.path)
    assert e.state == FAILED and e.size == 22 and e.target is None
    assert "unclean shutdown" in e.last_error
    assert Journal(jdir).reload() == [e]


# ---------------------------------------------------------------------------- kill -9 anywhere
def run_until_crash(monkeypatch, crash_at: int, action) -> bool:
    """Run ``action`` with a crash at mutating call ``crash_at``; True if it crashed."""
    fake = CrashingOs(crash_at)
    monkeypatch.setattr(journal_mod, "os", fake)
    try:
        action()
        return False
    except Crash:
        return True
    finally:
        monkeypatch.setattr(journal_mod, "os", os)


def test_kill_at_any_point_of_add(tmp_path, monkeypatch):
    data = payload(70_000)
    crash_points = 0
    for k in range(1, 100):
        base = tmp_path / str(k)
        spool, jdir = Spool(base / "spool"), base / "journal"
        j = Journal(jdir)
        f = spooled(spool, data)
        crashed = run_until_crash(monkeypatch, k, lambda j=j, f=f: j.add(f, TARGET, MNT_PATH))
        got = Journal(jdir).reload()
        if got:  # a complete entry, holding the bytes
            assert len(got) == 1
            e = got[0]
            assert (e.target, e.path, e.size, e.md5, e.state) == (
                UploadTarget.from_json(TARGET),
                MNT_PATH,
                len(data),
                md5(data),
                PENDING,
            )
            with open(e.data_path, "rb") as fh:
                assert fh.read() == data
            assert not os.path.exists(f.path)
        else:  # no entry, and the bytes are still in the spool
            assert crashed
            with open(f.path, "rb") as fh:
                assert fh.read() == data
        assert sorted(os.listdir(jdir)) == (
            [] if not got else sorted([got[0].id + ".data", got[0].id + ".json"])
        )
        if not crashed:
            break
        crash_points += 1
    assert crash_points >= 6, "the simulation should have stopped add() at several points"


def test_kill_at_any_point_of_update_and_remove(tmp_path, monkeypatch):
    for k in range(1, 100):
        base = tmp_path / str(k)
        spool, jdir = Spool(base / "spool"), base / "journal"
        j = Journal(jdir)
        entry = j.add(spooled(spool, b"bytes"), TARGET, MNT_PATH)
        newer = dataclasses.replace(entry, tries=1, last_error="503")
        crashed_update = run_until_crash(monkeypatch, k, lambda j=j, newer=newer: j.update(newer))
        got = Journal(jdir).reload()
        assert got in ([entry], [newer])  # old or new version, always whole

        j = Journal(jdir)
        j.reload()
        crashed_remove = run_until_crash(monkeypatch, k, lambda j=j, got=got: j.remove(got[0]))
        after = Journal(jdir).reload()
        assert after in ([], got)
        if after:
            with open(after[0].data_path, "rb") as fh:
                assert fh.read() == b"bytes"
        if not crashed_update and not crashed_remove:
            break


def test_kill_at_any_point_of_a_rename_that_supersedes_entries(tmp_path, monkeypatch):
    """``renamed(..., supersedes=...)``: the renamed record and the records its rename
    replaces go in one step as far as a crash can tell (review8i): after a kill at any call,
    either the old record under the old name beside the replaced ones, or the renamed one
    alone; and ``read_entries`` (umount's report) agrees with ``reload``."""
    other = "/P/resources/R/files/a/y.nii"
    points = 0
    for k in range(1, 100):
        base = tmp_path / str(k)
        spool, jdir = Spool(base / "spool"), base / "journal"
        j = Journal(jdir)
        older = j.add(spooled(spool, b"older"), TARGET, MNT_PATH)
        newest = j.add(spooled(spool, b"newest"), TARGET, MNT_PATH)
        over = j.add(spooled(spool, b"renamed over"), TARGET, other)
        crashed = run_until_crash(
            monkeypatch,
            k,
            lambda j=j, e=newest, gone=(older, over): j.renamed(e, TARGET, other, supersedes=gone),
        )
        reported = {e.id for e in journal_mod.read_entries(jdir)}
        got = Journal(jdir).reload()
        shown = {e.path: Path(e.data_path).read_bytes() for e in got}  # newest per path
        assert shown in (
            {MNT_PATH: b"newest", other: b"renamed over"},
            {other: b"newest"},
        ), (k, shown)
        if shown == {other: b"newest"}:
            assert [e.id for e in got] == [newest.id]
        assert reported >= {e.id for e in got}
        if not crashed:
            break
        points += 1
    assert points >= 4


def test_kill_at_any_point_of_remove_all_leaves_all_or_none(tmp_path, monkeypatch):
    """``remove_all``: the versions a same-bytes close drops go in one step as far as a crash
    can tell: after a kill at any call, the next ``reload`` finds all three or none (removed
    one by one, a kill in between left the later ones), ``read_entries`` (umount's report)
    lists no more than that, and no tombstone is left once ``reload`` ran."""
    seen, points = set(), 0
    for k in range(1, 100):
        base = tmp_path / str(k)
        spool, jdir = Spool(base / "spool"), base / "journal"
        j = Journal(jdir)
        versions = [j.add(spooled(spool, b"v%d" % i), TARGET, MNT_PATH) for i in range(3)]
        crashed = run_until_crash(monkeypatch, k, lambda j=j, v=versions: j.remove_all(v))
        reported = {e.id for e in journal_mod.read_entries(jdir)}
        got = [e.id for e in Journal(jdir).reload()]
        assert got in ([v.id for v in versions], []), (k, got)
        assert reported <= set(got), (k, reported)
        assert not [n for n in os.listdir(jdir) if n.endswith(".drop")]
        seen.add(len(got))
        if not crashed:
            assert got == [] and j.versions_for(MNT_PATH) == []
            break
        points += 1
    assert points >= 6 and seen == {0, 3}


def test_remove_all_whose_removal_fails_drops_the_entry_at_the_next_reload(dirs, monkeypatch):
    """A removal that fails after the tombstone is written (EIO on an unlink): the entry
    leaves the index at once (the uploader must not send it), and the tombstone, kept,
    drops its files at the next ``reload``."""
    spool, jdir = dirs
    j = Journal(jdir)
    j.reload()
    first, second = (j.add(spooled(spool, d), TARGET, MNT_PATH) for d in (b"one", b"two"))
    remove = j.remove

    def failing(entry):
        if entry.id == second.id:
            raise OSError(errno.EIO, "I/O error")
        remove(entry)

    monkeypatch.setattr(j, "remove", failing)
    j.remove_all([first, second])
    assert j.versions_for(MNT_PATH) == []
    assert os.path.exists(second.data_path)
    assert journal_mod.read_entries(jdir) == []
    assert Journal(jdir).reload() == []
    assert not os.path.exists(second.data_path)
    assert os.listdir(jdir) == []


def test_add_without_digest_leaves_it_to_the_uploader_or_to_reload(dirs):
    """(the uploader's side: test_uploader.py, hashed beside the upload)"""
    spool, jdir = dirs
    j = Journal(jdir)
    j.reload()
    data = payload(70_000, seed=3)
    entry = j.add(spooled(spool, data), TARGET, MNT_PATH, digest=False)
    assert (entry.size, entry.md5) == (70_000, "")
    with open(entry.data_path, "rb") as fh:
        assert fh.read() == data  # the bytes are in place (and fsynced) without their digest
    # an entry whose digest was never stored (crash during its first upload) gets it on reload
    other = j.add(spooled(spool, data[:100]), TARGET, MNT_PATH + "2", digest=False)
    j2 = Journal(jdir)
    [reloaded] = [e for e in j2.reload() if e.id == other.id]
    assert reloaded.md5 == md5(data[:100])
    with open(os.path.join(jdir, other.id + ".json")) as fh:
        assert json.load(fh)["md5"] == md5(data[:100])


# ---------------------------------------------------------------------------- the target record
def _old_sidecar(jdir, entry_id: str, target: dict, data: bytes) -> None:
    """A sidecar exactly as the version before ``UploadTarget`` wrote it (target = a plain dict
    with the writer's keys, ``listing`` a JSON list), beside its data file."""
    os.makedirs(jdir, mode=0o700, exist_ok=True)
    (jdir / f"{entry_id}.data").write_bytes(data)
    doc = {
        "id": entry_id,
        "seq": 3,
        "target": target,
        "path": "/P/x",
        "size": len(data),
        "md5": md5(data),
        "created": 1700000000.0,
        "tries": 2,
        "next_attempt": 0.0,
        "last_error": "HTTP 503",
        "state": "uploading",
        "v": 1,
    }
    (jdir / f"{entry_id}.json").write_text(json.dumps(doc, indent=1, sort_keys=True))


@pytest.mark.parametrize(
    "old, want",
    [
        (
            {
                "kind": "file",
                "resource_uri": "/data/projects/P/resources/R",
                "relpath": "a/x.nii",
                "overwrite": True,
                "listing": ["P", "resources", "R", "files"],
            },
            UploadTarget.file(
                "/data/projects/P/resources/R",
                "a/x.nii",
                listing=("P", "resources", "R", "files"),
                overwrite=True,
            ),
        ),
        (
            {
                "kind": "import",
                "project": "P",
                "subject": "S1",
                "dest": "/archive",
                "listing": ["P", "subjects", "S1", "experiments"],
                "content_type": "application/x-tar",
            },
            UploadTarget.archive_import(
                "P",
                "/archive",
                listing=("P", "subjects", "S1", "experiments"),
                subject="S1",
                content_type="application/x-tar",
            ),
        ),
        # an import written before content_type existed, into a prearchive (no subject)
        (
            {"kind": "import", "project": "P", "dest": "/prearchive/projects/P", "listing": ["P"]},
            UploadTarget.archive_import("P", "/prearchive/projects/P", listing=("P",)),
        ),
    ],
)
def test_sidecar_of_the_previous_version_loads_and_is_rewritten_the_same(tmp_path, old, want):
    jdir = tmp_path / "journal"
    _old_sidecar(jdir, "0001-old", old, b"old bytes")
    [entry] = Journal(jdir).reload()
    assert entry.target == want
    assert (entry.state, entry.tries, entry.size) == (PENDING, 2, 9)  # uploading -> pending
    # reload rewrote the sidecar (state changed): the target keeps the old JSON shape
    doc = json.loads((jdir / "0001-old.json").read_text())
    expected = dict(old, content_type=want.content_type) if want.is_import else old
    assert doc["target"] == expected
    assert UploadTarget.from_json(doc["target"]) == want


def test_target_of_an_unknown_kind_is_kept_not_dropped(tmp_path):
    """A kind this version does not know (a newer version's, or a damaged sidecar) loads as
    it did before the record existed: the bytes stay listed (the writer refuses the upload)."""
    jdir = tmp_path / "journal"
    _old_sidecar(jdir, "0002-odd", {"kind": "mystery", "project": "P"}, b"keep me")
    [entry] = Journal(jdir).reload()
    assert entry.target is not None and entry.target.kind == "mystery"
    assert not entry.target.is_file and not entry.target.is_import
    assert entry.target.to_json() == {"kind": "mystery", "project": "P"}


@pytest.mark.parametrize(
    "target",
    [
        UploadTarget.file("/data/projects/P/resources/R", "a/b c.nii", listing=("P", "R")),
        UploadTarget.file("/data/projects/P/resources/R", "x", overwrite=True),
        UploadTarget.archive_import(
            "P", "/archive", listing=("P",), subject="S", content_type="application/x-tar"
        ),
        UploadTarget.archive_import("P", "/prearchive/projects/P"),
    ],
)
def test_a_target_survives_the_sidecar(dirs, target):
    """What the writer gives ``add`` is what a restarted journal hands the uploader."""
    spool, jdir = dirs
    j = Journal(jdir)
    j.reload()
    entry = j.add(spooled(spool, b"bytes"), target, MNT_PATH)
    assert entry.target == target
    [again] = Journal(jdir).reload()
    assert again.target == target and isinstance(again.target, UploadTarget)
    doc = json.loads((jdir / (entry.id + ".json")).read_text())["target"]
    assert doc["kind"] == target.kind and ("subject" in doc) == (target.subject is not None)
