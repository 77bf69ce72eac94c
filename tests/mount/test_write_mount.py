"""Writes become uploads (docs/LAYOUT.md §1.3), for real through /dev/fuse against the emulator.

What the server holds is checked with xnatpy, an independent client; request counts come from
the emulator's access log.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys

import pytest
import requests

from tests.conftest import ADMIN, Mount, needs_fuse
from tests.mount.helpers import api, dicom_zip, hash_files, md5, sh, wait_for

pytestmark = [needs_fuse]

PROTOCOLS = "DEMO1/resources/protocols/files"
SUBJ01 = "DEMO1/subjects/SUBJ01"


def server_files(emu, project="DEMO1", resource="protocols"):
    """path -> (size, digest) of a project resource, straight from the server (xnatpy)."""
    import xnat

    with xnat.connect(emu.url, user=ADMIN[0], password=ADMIN[1], loglevel="ERROR") as s:
        res = s.projects[project].resources[resource]
        return {f.path: (int(f.size), f.digest) for f in res.files.values()}


def puts(records):
    return [p for m, p in api(records) if m in ("PUT", "POST")]


@pytest.fixture
def emu(make_emulator):
    return make_emulator()


def test_cp_small_files_and_ls_shows_them(emu, make_mount, tmp_path):
    m = make_mount(emu.url)
    files = m.path / PROTOCOLS
    rnd = random.Random(1)
    blobs = {f"out{i}.nii": rnd.randbytes(1000 + i) for i in range(5)}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
        sh(["cp", str(tmp_path / name), str(files / name)])
        # after close() returns: ls -l shows it with its size, xnatfs says it is on the server
        assert os.stat(files / name).st_size == len(data)
    on_server = server_files(emu)
    for name, data in blobs.items():
        assert on_server[name] == (len(data), md5(data))
    got = hash_files([str(files / n) for n in blobs])
    assert {os.path.basename(p): v for p, v in got.items()} == {
        n: [md5(d), len(d)] for n, d in blobs.items()
    }


def test_cp_256_mib(emu, make_mount, tmp_path):
    m = make_mount(emu.url)
    src = tmp_path / "big.nii"
    h = hashlib.md5()
    rnd = random.Random(2)
    with open(src, "wb") as fh:
        for _ in range(256):
            chunk = rnd.randbytes(1 << 20)
            h.update(chunk)
            fh.write(chunk)
    sh(["cp", str(src), str(m.path / PROTOCOLS / "big.nii")], timeout=300)
    assert server_files(emu)["big.nii"] == (256 << 20, h.hexdigest())


_ATOMIC_WRITE = r"""
import json, os, sys, tempfile
folder, name = sys.argv[1], sys.argv[2]
with tempfile.NamedTemporaryFile("w", dir=folder, delete=False) as f:
    json.dump({"subject": "01"}, f)
os.replace(f.name, os.path.join(folder, name))
"""


def test_sed_in_place_and_pythons_write_then_replace(emu, make_mount):
    """Two idioms that write a temporary file beside the target and rename it over: `sed -i`
    (`sedXXXXXX`) and Python's `tempfile` + `os.replace` (`tmpXXXXXXXX`).  Their temporary
    names are held back like rsync's, so the rename uploads the file under its final name
    only.  Before, the temporary file was uploaded at close, the rename answered EXDEV (XNAT
    has no move): sed failed, Python raised, and the temporary file stayed on XNAT."""
    m = make_mount(emu.url, "--allow-delete")
    files = m.path / PROTOCOLS
    params = files / "params.txt"
    sh(["sh", "-c", f"printf 'a=1\\nb=2\\n' > '{params}'"])
    sh(["sed", "-i", "s/a=1/a=3/", str(params)])
    assert params.read_bytes() == b"a=3\nb=2\n"
    sh([sys.executable, "-c", _ATOMIC_WRITE, str(files), "sidecar.json"])
    assert (files / "sidecar.json").read_bytes() == b'{"subject": "01"}'
    on_server = server_files(emu)
    assert on_server["params.txt"] == (8, md5(b"a=3\nb=2\n"))
    assert on_server["sidecar.json"] == (17, md5(b'{"subject": "01"}'))
    strays = [n for n in on_server if n.startswith(("sed", "tmp"))]
    assert strays == []
    assert set(os.listdir(files)) == {n for n in on_server if "/" not in n} | {"mri"}


def test_sed_in_place_without_allow_delete_is_refused_and_leaves_nothing(emu, make_mount):
    """Without --allow-delete, `sed -i` of a file on XNAT is a replace with other bytes:
    refused (EACCES at the rename), and sed's removal of its temporary file (never on XNAT,
    so no delete is needed) leaves nothing behind; a new file by `os.replace` is fine."""
    m = make_mount(emu.url)
    files = m.path / PROTOCOLS
    before = server_files(emu)
    res = sh(["sed", "-i", "s/a/b/", str(files / "README.txt")], check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    sh([sys.executable, "-c", _ATOMIC_WRITE, str(files), "new.json"])
    after = server_files(emu)
    assert after == {**before, "new.json": (17, md5(b'{"subject": "01"}'))}
    assert set(os.listdir(files)) == {n for n in after if "/" not in n} | {"mri"}


def test_git_repository_in_a_resource(emu, make_mount, tmp_path):
    """git writes every ref, its index and its config as `NAME.lock` renamed over `NAME`, and
    every object as `tmp_obj_XXXXXX` renamed to its hash.  Those names are held back like
    sed's, so `git init`, `add`, `commit` work in a resource (analysis code kept beside its
    results).  Before, the first lock file was uploaded at close and its rename answered EXDEV:
    `git init` failed with "unable to write symref for HEAD: Invalid cross-device link"."""
    m = make_mount(emu.url, "--allow-delete")
    repo = m.path / PROTOCOLS / "code"
    git = ["git", "-c", "user.email=a@example.org", "-c", "user.name=a", "-C", str(repo)]
    sh(["git", "init", "-q", str(repo)])
    (repo / "analysis.py").write_text("print('hello')\n")
    sh([*git, "add", "analysis.py"])
    sh([*git, "commit", "-q", "-m", "first"])
    assert sh([*git, "status", "--porcelain"]).stdout == ""
    assert sh([*git, "log", "--format=%s"]).stdout == "first\n"
    # what git left is what XNAT has: a clone of the repository from XNAT's copy (read back
    # through a second, fresh mount) checks out the same file.  Once the uploads are done: an
    # object git renamed from its held-back temporary name is uploaded after the rename, and
    # under load the clone came first ("unable to read sha1 file", the blob still queued)
    stats = m.path / ".xnatfs" / "stats"
    wait_for(lambda: not json.loads(stats.read_text())["uploads"], 60, "git's files on XNAT")
    on_server = server_files(emu)
    assert not [n for n in on_server if n.endswith(".lock") or "/tmp_obj_" in n]
    assert "code/.git/HEAD" in on_server and "code/analysis.py" in on_server
    fresh = make_mount(emu.url)
    sh(["git", "clone", "-q", str(fresh.path / PROTOCOLS / "code"), str(tmp_path / "clone")])
    assert (tmp_path / "clone" / "analysis.py").read_text() == "print('hello')\n"


_SQLITE = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("create table t (x)")
seen = []
for x in range(1, 4):
    db.execute("insert into t values (?)", (x,))
    db.commit()
    seen.append([r[0] for r in db.execute("select x from t")])
print(seen)
"""


def test_sqlite_transactions_read_back_through_one_connection(emu, make_mount):
    """SQLite writes its pages, fsyncs and reads them back through one descriptor at every
    transaction; the file is uploaded at each fsync.  Before, after the second upload the
    descriptor read the first upload's bytes (same size): every select after the first commit
    showed the first transaction's rows, and the rows were lost for that connection.  Its
    rollback journal (`NAME.db-journal`, removed at every commit) is held back and never
    reaches XNAT."""
    m = make_mount(emu.url, "--allow-delete")
    db = m.path / PROTOCOLS / "results.db"
    out = sh([sys.executable, "-c", _SQLITE, str(db)]).stdout
    assert out == "[[1], [1, 2], [1, 2, 3]]\n"
    on_server = server_files(emu)
    assert "results.db" in on_server and "results.db-journal" not in on_server
    assert on_server["results.db"] == (db.stat().st_size, md5(db.read_bytes()))


_ROTATING_LOG = r"""
import logging, logging.handlers, sys
handler = logging.handlers.RotatingFileHandler(sys.argv[1], maxBytes=100, backupCount=2)
log = logging.getLogger("pipeline")
log.addHandler(handler)
for i in range(12):
    log.warning("record %02d of the pipeline", i)
handler.close()
"""


def test_a_rotating_log_keeps_its_records(emu, make_mount):
    """Python's RotatingFileHandler closes its log and renames it (log -> log.1 -> log.2)
    itself, with no fallback.  XNAT has no move: each rename answered EXDEV, logging printed a
    traceback per record and dropped every record after the first rotation.  With
    --allow-delete the rename now moves the file on XNAT (uploaded under the new name, the old
    one deleted), so the last records are all there, in order."""
    m = make_mount(emu.url, "--allow-delete")
    files = m.path / PROTOCOLS
    res = sh([sys.executable, "-c", _ROTATING_LOG, str(files / "run.log")])
    assert "Logging error" not in res.stderr, res.stderr
    kept = []
    for name in ("run.log.2", "run.log.1", "run.log"):
        kept += (files / name).read_text().splitlines()
    assert kept == [f"record {i:02d} of the pipeline" for i in range(12 - len(kept), 12)]
    assert len(kept) >= 6  # three files of at least two records each
    on_server = server_files(emu)
    for name in ("run.log", "run.log.1", "run.log.2"):
        data = (files / name).read_bytes()
        assert on_server[name] == (len(data), md5(data))


def test_rsync_tree_uploads_each_file_once(emu, make_mount, tmp_path):
    m = make_mount(emu.url)
    src = tmp_path / "tree"
    expected = {}
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.txt", "other/d e.txt"):
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = (rel * 100).encode()
        p.write_bytes(data)
        expected["rs/" + rel] = (len(data), md5(data))
    (m.path / PROTOCOLS / "rs").mkdir()
    mark = emu.mark()
    res = sh(
        ["rsync", "-a", f"{src}/", str(m.path / PROTOCOLS / "rs") + "/"], check=False, timeout=120
    )
    assert res.returncode == 0, res.stderr
    on_server = server_files(emu)
    for rel, value in expected.items():
        assert on_server[rel] == value
    uploads = [p for p in puts(emu.since(mark)) if "/files/" in p]
    assert len(uploads) == len(expected), uploads  # temp names were never uploaded
    assert not any("/." in p for p in uploads)


def test_mkdir_makes_objects_with_their_xsi_types(emu, make_mount):
    import xnat

    m = make_mount(emu.url, "--experiment-type", "xnat:ctSessionData")
    subj = m.path / "DEMO1" / "subjects" / "NEWSUBJ"
    subj.mkdir()
    (subj / "resources" / "NOTES").mkdir()
    exp = subj / "experiments" / "NEWSUBJ_CT1"
    exp.mkdir()
    (exp / "scans" / "7").mkdir()
    (exp / "scans" / "7" / "resources" / "RAW").mkdir()
    (exp / "resources" / "QC").mkdir()
    assert "NEWSUBJ_CT1" in os.listdir(subj / "experiments")
    with xnat.connect(emu.url, user=ADMIN[0], password=ADMIN[1], loglevel="ERROR") as s:
        subject = s.projects["DEMO1"].subjects["NEWSUBJ"]
        assert "NOTES" in subject.resources
        e = subject.experiments["NEWSUBJ_CT1"]
        assert e.__xsi_type__ == "xnat:ctSessionData"
        assert e.scans["7"].__xsi_type__ == "xnat:mrScanData"
        assert "RAW" in e.scans["7"].resources and "QC" in e.resources


def test_local_folder_lasts_until_a_file_lands(emu, make_mount, tmp_path):
    m = make_mount(emu.url)
    folder = m.path / PROTOCOLS / "newdir" / "inner"
    os.makedirs(folder)
    assert os.path.isdir(folder)
    (tmp_path / "x.txt").write_bytes(b"hello")
    sh(["cp", str(tmp_path / "x.txt"), str(folder / "x.txt")])
    assert server_files(emu)["newdir/inner/x.txt"] == (5, md5(b"hello"))
    assert os.listdir(folder) == ["x.txt"]


def test_dicom_zip_into_experiments_becomes_a_session(emu, make_mount, tmp_path):
    import xnat

    m = make_mount(emu.url)
    dicom_zip(tmp_path / "study.zip", "SUBJ02")
    exps = m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments"
    before = set(os.listdir(exps))
    sh(["cp", str(tmp_path / "study.zip"), str(exps / "study.zip")], timeout=120)
    new = set(os.listdir(exps)) - before
    assert len(new) == 1, (before, os.listdir(exps))
    label = new.pop()
    assert sorted(os.listdir(exps / label / "scans")) == ["1", "2"]
    with xnat.connect(emu.url, user=ADMIN[0], password=ADMIN[1], loglevel="ERROR") as s:
        e = s.projects["DEMO1"].subjects["SUBJ02"].experiments[label]
        assert len(e.scans["1"].resources["DICOM"].files) == 3
        assert e.scans["2"].type == "T2w"


def test_zip_into_prearchive_then_mv_archives_it(emu, make_mount, tmp_path):
    m = make_mount(emu.url)
    dicom_zip(tmp_path / "pre.zip", "PREPAT", series=((5, "DWI", 2),))
    pre = m.path / ".prearchive" / "DEMO1"
    before = {(ts, s) for ts in os.listdir(pre) for s in os.listdir(pre / ts)}
    sh(["cp", str(tmp_path / "pre.zip"), str(pre / "pre.zip")], timeout=120)
    after = {(ts, s) for ts in os.listdir(pre) for s in os.listdir(pre / ts)}
    new = after - before
    assert len(new) == 1
    ts, session = new.pop()
    assert os.listdir(pre / ts / session / "scans") == ["5"]
    target = m.path / "DEMO1" / "subjects" / "SUBJ03" / "experiments" / "SUBJ03_DWI"
    sh(["mv", str(pre / ts / session), str(target)], timeout=120)
    assert os.listdir(target / "scans") == ["5"]
    assert (ts, session) not in {(t, s) for t in os.listdir(pre) for s in os.listdir(pre / t)}


def test_failed_upload_is_pending_then_uploaded(emu, make_mount, tmp_path):
    m = make_mount(emu.url, "--timeout", "20")
    files = m.path / PROTOCOLS
    data = b"precious bytes" * 1000
    (tmp_path / "p.dat").write_bytes(data)
    os.listdir(files)  # listings cached: only the upload meets the fault
    emu.faults.error_rate = 1.0
    emu.faults.error_status = 503
    res = sh(["cp", str(tmp_path / "p.dat"), str(files / "p.dat")], check=False, timeout=90)
    assert res.returncode != 0 and "Input/output error" in res.stderr
    assert os.getxattr(files / "p.dat", "user.xnat.cache_state").decode() in (
        "pending",
        "uploading",
    )
    assert os.stat(files / "p.dat").st_size == len(data)
    assert hash_files([str(files / "p.dat")])[str(files / "p.dat")] == [md5(data), len(data)]
    status = sh(["python", "-m", "xnatfs", "status", str(m.path)], check=False)
    assert "p.dat" in status.stdout, status.stdout + status.stderr
    assert "upload" in m.log_text() and "p.dat" in m.log_text()
    emu.faults.error_rate = 0.0
    wait_for(
        lambda: server_files(emu).get("p.dat") == (len(data), md5(data)),
        60,
        what="the retried upload",
    )


def test_cp_back_of_the_original_after_a_failed_cp_is_what_xnat_keeps(emu, make_mount, tmp_path):
    """--allow-delete; `cp change f` while XNAT answers 503 to PUTs (EIO: pending), then
    `cp orig f` (the user undoes it): answers 0, since XNAT holds those bytes, and the
    pending change leaves the journal.  Before: it stayed queued and landed once XNAT
    answered, and XNAT held the change the user had undone."""
    m = make_mount(emu.url, "--allow-delete", "--timeout", "20")
    target = m.path / PROTOCOLS / "README.txt"
    original = target.read_bytes()  # listed and cached: only the uploads meet the fault
    (tmp_path / "orig.txt").write_bytes(original)
    (tmp_path / "change.txt").write_bytes(b"a change the user undoes\n")
    emu.faults.fault_methods = "PUT"
    emu.faults.error_status = 503
    emu.faults.error_rate = 1.0
    res = sh(["cp", str(tmp_path / "change.txt"), str(target)], check=False, timeout=90)
    assert res.returncode != 0 and "Input/output error" in res.stderr  # told: pending
    res = sh(["cp", str(tmp_path / "orig.txt"), str(target)], check=False, timeout=90)
    assert res.returncode == 0, res.stderr
    emu.faults.error_rate = 0.0
    journal = m.cache / "uploads" / "journal"
    wait_for(
        lambda: not [n for n in os.listdir(journal) if n.endswith(".json")],
        60,
        what="an empty journal",
    )
    assert server_files(emu)["README.txt"] == (len(original), md5(original))
    assert target.read_bytes() == original


def test_fsync_retried_after_eio_answers_eio_while_xnat_is_down(emu, make_mount):
    """write, fsync -> EIO (XNAT answers 503: pending in the journal), fsync again while it
    still does -> EIO again (the upload tried anew), and close() the same.  Before: the
    second fsync and the close answered 0 with the bytes only in the journal."""
    m = make_mount(emu.url, "--timeout", "20")
    path = m.path / PROTOCOLS / "results.csv"
    os.listdir(m.path / PROTOCOLS)  # listings cached: only the upload meets the fault
    emu.faults.fault_methods = "PUT"
    emu.faults.error_status = 503
    emu.faults.error_rate = 1.0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    answers = []
    try:
        os.write(fd, b"a,b\n1,2\n")
        for _ in range(2):
            try:
                os.fsync(fd)
                answers.append(0)
            except OSError as exc:
                answers.append(exc.errno)
    finally:
        try:
            os.close(fd)
            answers.append(0)
        except OSError as exc:
            answers.append(exc.errno)
    assert answers == [errno.EIO] * 3
    url = f"{emu.url}/data/projects/DEMO1/resources/protocols/files/results.csv"
    assert requests.get(url, auth=ADMIN, timeout=30).status_code == 404  # not on XNAT
    assert os.getxattr(path, "user.xnat.cache_state").decode() in ("pending", "uploading")
    emu.faults.error_rate = 0.0
    wait_for(
        lambda: server_files(emu).get("results.csv") == (8, md5(b"a,b\n1,2\n")),
        60,
        what="the retried upload",
    )


def test_dropped_connection_mid_upload(emu, make_mount, tmp_path):
    m = make_mount(emu.url, "--timeout", "20")
    data = random.Random(3).randbytes(3 << 20)
    (tmp_path / "d.bin").write_bytes(data)
    os.listdir(m.path / PROTOCOLS)
    emu.faults.drop_rate = 1.0
    res = sh(
        ["cp", str(tmp_path / "d.bin"), str(m.path / PROTOCOLS / "d.bin")], check=False, timeout=90
    )
    assert res.returncode != 0
    emu.faults.drop_rate = 0.0
    wait_for(
        lambda: server_files(emu).get("d.bin") == (len(data), md5(data)),
        60,
        what="the retried upload",
    )


@pytest.mark.slow
def test_kill_9_mid_upload_then_remount_completes(emu, tmp_path):
    data = random.Random(4).randbytes(2 << 20)
    (tmp_path / "k.bin").write_bytes(data)
    cache = tmp_path / "cache"
    m = Mount(emu.url, tmp_path / "m", cache, tmp_path / "m.log", []).start()
    try:
        emu.faults.latency_ms = 4000  # the upload will still be on its way when we kill
        cp = subprocess.Popen(
            ["cp", str(tmp_path / "k.bin"), str(m.path / PROTOCOLS / "k.bin")],
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: list((cache / "uploads" / "journal").glob("*.json")),
            30,
            what="the journal entry",
        )
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        cp.wait(timeout=30)
        emu.faults.latency_ms = 0
        assert "k.bin" not in server_files(emu)
        m2 = Mount(emu.url, tmp_path / "m", cache, tmp_path / "m2.log", []).start()
        try:
            wait_for(
                lambda: server_files(emu).get("k.bin") == (len(data), md5(data)),
                60,
                what="the resumed upload",
            )
        finally:
            m2.umount()
    finally:
        m.cleanup()


def test_umount_says_what_is_not_on_xnat(emu, tmp_path):
    """A write whose upload fails stays in the journal; `xnatfs umount` says so (the daemon's
    own warning goes to its log), and the next mount of the cache uploads it.  Before, umount
    printed nothing, and took ~8 s more while the logout waited for the down server."""
    cache = tmp_path / "cache"
    m = Mount(emu.url, tmp_path / "m", cache, tmp_path / "m.log", []).start()
    try:
        os.listdir(m.path / PROTOCOLS)
        emu.faults.drop_rate = 1.0
        src = tmp_path / "kept.txt"
        src.write_bytes(b"written while XNAT was unreachable\n")
        res = sh(["cp", str(src), str(m.path / PROTOCOLS / "kept.txt")], check=False)
        assert res.returncode != 0
        said = m.umount().stderr
    finally:
        emu.faults.drop_rate = 0.0
        m.cleanup()
    assert "xnatfs: 1 file written in" in said and "is not on XNAT" in said, said
    assert f"/{PROTOCOLS}/kept.txt" in said and str(cache / "uploads" / "journal") in said
    data = (tmp_path / "kept.txt").read_bytes()
    m2 = Mount(emu.url, tmp_path / "m", cache, tmp_path / "m2.log", []).start()
    try:
        wait_for(
            lambda: server_files(emu).get("kept.txt") == (len(data), md5(data)),
            60,
            what="the upload resumed by the next mount",
        )
        assert m2.umount().stderr == ""  # nothing left to report
    finally:
        m2.cleanup()


def test_bad_input_changes_nothing_on_the_server(emu, make_mount, tmp_path):
    m = make_mount(emu.url)
    mark = emu.mark()
    res = sh(["mkdir", str(m.path / "DEMO1" / "subjects" / "bad label")], check=False)
    assert res.returncode != 0 and "Invalid argument" in res.stderr
    res = sh(["mkdir", str(m.path / "DEMO1" / "subjects" / ("x" * 80))], check=False)
    assert "Invalid argument" in res.stderr
    (tmp_path / "f.txt").write_bytes(b"data")
    res = sh(
        ["cp", str(tmp_path / "f.txt"), str(m.path / "DEMO1" / "subjects" / "f.txt")], check=False
    )
    assert "Operation not permitted" in res.stderr
    res = sh(
        ["cp", str(tmp_path / "f.txt"), str(m.path / SUBJ01 / "experiments" / "f.txt")], check=False
    )
    assert "Operation not permitted" in res.stderr
    existing = sorted(os.listdir(m.path / PROTOCOLS))
    existing = [n for n in existing if os.path.isfile(m.path / PROTOCOLS / n)][0]
    res = sh(["cp", str(tmp_path / "f.txt"), str(m.path / PROTOCOLS / existing)], check=False)
    assert "Permission denied" in res.stderr
    res = sh(["mkdir", str(m.path / PROTOCOLS / existing / "sub")], check=False)
    assert "Not a directory" in res.stderr
    res = sh(["rm", str(m.path / PROTOCOLS / existing)], check=False)
    assert "Permission denied" in res.stderr
    assert [p for p in puts(emu.since(mark))] == []
    assert [r for r in api(emu.since(mark)) if r[0] == "DELETE"] == []
    log = m.log_text()
    assert "bad label" in log and "--allow-delete" in log


def test_full_spool_disk_is_enospc(emu, make_mount, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip()}")
    try:
        m = make_mount(emu.url, cache=small / "cache")
        (tmp_path / "big.bin").write_bytes(os.urandom(4 << 20))
        res = sh(
            ["cp", str(tmp_path / "big.bin"), str(m.path / PROTOCOLS / "big.bin")], check=False
        )
        assert "No space left on device" in res.stderr
        assert "big.bin" not in server_files(emu)
        m.umount()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_allow_delete_overwrite_rm_rmdir(emu, make_mount, tmp_path):
    m = make_mount(emu.url, "--allow-delete")
    files = m.path / PROTOCOLS
    (tmp_path / "v1").write_bytes(b"version one")
    (tmp_path / "v2").write_bytes(b"version two!")
    sh(["cp", str(tmp_path / "v1"), str(files / "v.txt")])
    sh(["cp", str(tmp_path / "v2"), str(files / "v.txt")])
    assert server_files(emu)["v.txt"] == (12, md5(b"version two!"))
    sh(["rm", str(files / "v.txt")])
    assert "v.txt" not in server_files(emu)
    assert "v.txt" not in os.listdir(files)
    res = sh(["rmdir", str(m.path / "DEMO1" / "resources" / "protocols")], check=False)
    assert "Directory not empty" in res.stderr
    (m.path / "DEMO1" / "resources" / "EMPTY").mkdir()
    sh(["rmdir", str(m.path / "DEMO1" / "resources" / "EMPTY")])
    assert "EMPTY" not in os.listdir(m.path / "DEMO1" / "resources")


def test_two_mounts_see_each_others_uploads(emu, make_mount, tmp_path):
    a = make_mount(emu.url, "--listing-ttl", "1")
    b = make_mount(emu.url, "--listing-ttl", "1")
    os.listdir(b.path / PROTOCOLS)
    (tmp_path / "shared.txt").write_bytes(b"from a")
    sh(["cp", str(tmp_path / "shared.txt"), str(a.path / PROTOCOLS / "shared.txt")])
    wait_for(
        lambda: "shared.txt" in os.listdir(b.path / PROTOCOLS), 10, what="mount b to list the file"
    )
    assert hash_files([str(b.path / PROTOCOLS / "shared.txt")])[
        str(b.path / PROTOCOLS / "shared.txt")
    ] == [md5(b"from a"), 6]


def test_echo_redirect_and_append_semantics(emu, make_mount):
    m = make_mount(emu.url)
    target = m.path / PROTOCOLS / "echo.txt"
    sh(["sh", "-c", f"echo hello > '{target}'"])
    assert server_files(emu)["echo.txt"] == (6, md5(b"hello\n"))
    # appending to a file already on XNAT is an overwrite: refused without --allow-delete
    res = sh(["sh", "-c", f"echo more >> '{target}'"], check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr


def test_touch_then_append(emu, make_mount):
    """`touch f` makes a file XNAT cannot store (empty); the kernel keeps its name, so a later
    `>> f` opens it without asking.  That open used to fail ("Directory nonexistent": ENOENT,
    the file was dropped at its close); the empty file is now shown for as long as the kernel
    holds its name, and the append uploads as any new file."""
    m = make_mount(emu.url)
    log = m.path / PROTOCOLS / "touched.log"
    sh(["sh", "-c", f"touch '{log}' && test -e '{log}' && echo first >> '{log}'"])
    assert server_files(emu)["touched.log"] == (6, md5(b"first\n"))
    stamp = m.path / PROTOCOLS / "stamp"
    sh(["touch", str(stamp)])
    assert stamp.stat().st_size == 0 and stamp.read_bytes() == b""
    assert os.getxattr(stamp, "user.xnat.cache_state") == b"empty"
    assert "stamp" not in server_files(emu)


def test_a_log_held_open_while_other_processes_append_and_close(emu, make_mount):
    """A long-running program keeps its log open (O_APPEND) while short ones append to it and
    close (`echo ... >> log`): every close uploads what the file holds, and the open log's
    next write continues from those bytes (the journal's copy, or XNAT's once confirmed), so
    XNAT ends with every line in order, none lost and no zeros in place of any."""
    m = make_mount(emu.url)
    log = m.path / PROTOCOLS / "run.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    expected = b"start\n"
    try:
        os.write(fd, b"start\n")
        for i in range(8):
            sh(["sh", "-c", f"echo step{i} >> '{log}'"])
            expected += f"step{i}\n".encode()
            assert server_files(emu)["run.log"] == (len(expected), md5(expected))
            os.write(fd, f"main{i}\n".encode())
            expected += f"main{i}\n".encode()
    finally:
        os.close(fd)
    assert server_files(emu)["run.log"] == (len(expected), md5(expected))
    assert log.read_bytes() == expected


def test_four_shells_appending_to_one_log_lose_no_line(emu, make_mount):
    """Four shell loops append to one log at once (`echo ... >> log`, 25 each): every close
    uploads the file as it is then, while other appenders write.  Before the per-file lock
    (`LocalFile.io`) 27 to 71 of the 100 lines were missing on XNAT in three runs, with at most
    two errors reported to the shells, and once the log began with zeros: writes landed in a
    spool that a concurrent close then dropped, or in one started from nothing.  With
    --allow-delete, so that an append after the file was uploaded and released continues
    XNAT's copy instead of being refused."""
    m = make_mount(emu.url, "--allow-delete")
    log = m.path / PROTOCOLS / "shared.log"
    loops = [
        subprocess.Popen(
            ["sh", "-c", f"for i in $(seq 1 25); do echo p{p}-$i >> '{log}' || exit 1; done"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    errors = [(p.wait(timeout=300), p.communicate()[1]) for p in loops]
    assert errors == [(0, "")] * 4
    want = {f"p{p}-{i}" for p in range(4) for i in range(1, 26)}
    local = log.read_text().split()
    assert sorted(local) == sorted(want)
    assert server_files(emu)["shared.log"] == (len(log.read_bytes()), md5(log.read_bytes()))


def test_a_file_opened_while_local_reads_xnats_copy_once_uploaded(emu, make_mount):
    """A handle opened while the file was being written outlives its local copy: the writer's
    close() uploads it and the journal drops its copy once XNAT confirmed it.  Its reads then
    come from XNAT's copy.  They failed with EIO before ("the local copy is gone"), and so could
    a program that wrote a file, closed it and read it back at once, when its READ came before
    the writer's RELEASE (the kernel sends it after close() returns; seen once in CI)."""
    m = make_mount(emu.url)
    target = m.path / PROTOCOLS / "read-while-uploaded.bin"
    data = random.Random(3).randbytes(300_000)
    with open(target, "wb") as out:
        out.write(data)
        out.flush()
        reader = open(target, "rb")  # noqa: SIM115 - closed below, after the writer
    try:
        assert server_files(emu)["read-while-uploaded.bin"] == (len(data), md5(data))
        assert reader.read() == data
    finally:
        reader.close()
    assert target.read_bytes() == data


_FSYNC_THEN_WRITE = r"""
import os, sys
dst, src, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
a, b = data[:cut], data[cut:]
fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, a)
os.fsync(fd)  # uploads the first part; XNAT confirms it
os.write(fd, b)
os.close(fd)
"""


def test_writes_after_an_fsync_continue_from_the_uploaded_bytes(emu, make_mount, tmp_path):
    """write, fsync (XNAT confirms the first part), write more, close: XNAT gets the whole
    file.  The old code continued in an empty spool after the confirmed upload and sent zeros
    in place of the first part, with the right size (found by the B5 work)."""
    import sys

    m = make_mount(emu.url)
    rnd = random.Random(7)
    a, b = rnd.randbytes(300_000), rnd.randbytes(200_000)
    dst = m.path / PROTOCOLS / "fsync-then-write.bin"
    src = tmp_path / "src.bin"
    src.write_bytes(a + b)
    res = subprocess.run(
        [sys.executable, "-c", _FSYNC_THEN_WRITE, str(dst), str(src), str(len(a))],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert server_files(emu)["fsync-then-write.bin"] == (len(a) + len(b), md5(a + b))
    assert hash_files([str(dst)])[str(dst)] == [md5(a + b), len(a) + len(b)]


def test_cp_writes_in_1_mib_requests(emu, make_mount, tmp_path):
    """``st_blksize`` is 1 MiB (``fs/ops.py`` IO_BLOCK), so ``cp`` writes 1 MiB at a time and the
    kernel sends 1 MiB FUSE writes: 8 requests for 8 MiB, not 64 (with the 4 KiB default cp
    wrote 128 KiB at a time); the bytes arrive whole."""
    import json

    m = make_mount(emu.url)
    data = random.Random(3).randbytes(8 << 20)
    src = tmp_path / "eight.bin"
    src.write_bytes(data)
    dst = m.path / PROTOCOLS / "eight.bin"
    sh(["cp", str(src), str(dst)])
    writes = json.loads(sh(["cat", str(m.path / ".xnatfs" / "stats")]).stdout)["fuse_writes"]
    assert writes["bytes"] == len(data)
    assert writes["requests"] <= 9, writes
    assert os.stat(dst).st_blksize == 1 << 20
    assert server_files(emu)["eight.bin"] == (len(data), md5(data))
    metrics = sh(["cat", str(m.path / ".xnatfs" / "metrics")]).stdout
    line = next(
        ln for ln in metrics.splitlines() if ln.startswith("xnatfs_fuse_write_bytes_total ")
    )
    assert float(line.split()[1]) == len(data)


_READ_AFTER_FSYNC = r"""
import os, sys
dst = sys.argv[1]
fd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"first part, ")
os.fsync(fd)  # uploaded and confirmed: the local copy is gone
assert os.pread(fd, 100, 0) == b"first part, ", "XNAT's copy after the upload"
os.write(fd, b"second part")  # a local copy again, from XNAT's bytes
assert os.pread(fd, 100, 0) == b"first part, second part", "the local copy again"
os.close(fd)
"""


def test_reads_follow_the_file_through_an_upload_and_more_writes(emu, make_mount):
    """One O_RDWR handle: write, fsync (uploaded, local copy gone), read (XNAT's copy), write
    more (a local copy again), read (the local copy, not XNAT's older one), close."""
    import sys

    m = make_mount(emu.url)
    dst = m.path / PROTOCOLS / "read-after-fsync.txt"
    res = subprocess.run(
        [sys.executable, "-c", _READ_AFTER_FSYNC, str(dst)], capture_output=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    want = b"first part, second part"
    assert server_files(emu)["read-after-fsync.txt"] == (len(want), md5(want))


@pytest.mark.parametrize("name", ["e%41f.txt", "a?b.txt"])
def test_writes_after_an_fsync_continue_from_this_files_bytes(emu, make_mount, tmp_path, name):
    """write, fsync, write more, close, for a name whose raw form in a URL names another
    file: ``e%41f.txt`` (``eAf.txt`` decoded, on XNAT with other bytes of the same size) or
    a cut path (``a?b.txt``: ``a``).  The second write fills the descriptor from XNAT's copy
    of the file.  Before, that copy was asked for by the raw name: the write failed (EEXIST
    for ``eAf.txt``'s bytes, ENOENT for ``a``) and XNAT kept only the first part."""
    import sys
    from urllib.parse import quote

    a, b = b"first part, confirmed\n", b"and more\n"
    decoy = b"D" * len(a)
    r = requests.put(
        f"{emu.url}/data/projects/{PROTOCOLS}/eAf.txt?inbody=true",
        data=decoy,
        auth=ADMIN,
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    m = make_mount(emu.url)
    src = tmp_path / "src.bin"
    src.write_bytes(a + b)
    dst = m.path / PROTOCOLS / name
    res = subprocess.run(
        [sys.executable, "-c", _FSYNC_THEN_WRITE, str(dst), str(src), str(len(a))],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    # not xnatpy (server_files): it asks for such a file by its raw URI too (size: a HEAD)
    files = f"{emu.url}/data/projects/{PROTOCOLS}"
    assert requests.get(f"{files}/{quote(name)}", auth=ADMIN, timeout=30).content == a + b
    assert requests.get(f"{files}/eAf.txt", auth=ADMIN, timeout=30).content == decoy
    uri = os.getxattr(dst, "user.xnat.uri").decode()
    assert requests.get(f"{emu.url}{uri}", auth=ADMIN, timeout=30).content == a + b
