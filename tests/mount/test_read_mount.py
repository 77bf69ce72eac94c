"""The read-only mount, for real through /dev/fuse, against the emulator's demo archive.

Everything is checked with plain file operations in child processes; the tree is compared with
what xnatpy (an independent client) lists.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from tests.conftest import ADMIN, needs_fuse
from tests.mount.helpers import api, downloads, hash_files, md5, put_file, sh, wait_for, wait_until

pytestmark = [needs_fuse]

DEMO_SCAN_FILES = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1/resources/DICOM/files"


@pytest.fixture(scope="module")
def xnat_session(shared_emulator):
    import xnat

    session = xnat.connect(shared_emulator.url, user=ADMIN[0], password=ADMIN[1], loglevel="ERROR")
    yield session
    session.disconnect()


@pytest.fixture
def mnt(shared_emulator, make_mount):
    return make_mount(shared_emulator.url)


def _ls(path) -> set:
    return set(os.listdir(path))


def test_tree_equals_what_xnatpy_lists(mnt, xnat_session):
    root = mnt.path
    projects = set(xnat_session.projects.keys())
    assert {p for p in _ls(root) if not p.startswith(".")} == projects
    for project in xnat_session.projects.values():
        pdir = root / project.id
        assert _ls(pdir) == {"resources", "subjects"}
        assert _ls(pdir / "resources") == {r.label for r in project.resources.values()}
        assert _ls(pdir / "subjects") == {s.label for s in project.subjects.values()}
        for subject in project.subjects.values():
            sdir = pdir / "subjects" / subject.label
            assert _ls(sdir / "experiments") == {e.label for e in subject.experiments.values()}
            assert _ls(sdir / "resources") == {r.label for r in subject.resources.values()}
            for exp in subject.experiments.values():
                edir = sdir / "experiments" / exp.label
                assert _ls(edir) == {"scans", "resources", "assessors"}
                assert _ls(edir / "scans") == {s.id for s in exp.scans.values()}
                assert _ls(edir / "assessors") == {a.label for a in exp.assessors.values()}
                for scan in exp.scans.values():
                    rdir = edir / "scans" / scan.id / "resources"
                    assert _ls(rdir) == {r.label for r in scan.resources.values()}
                    for res in scan.resources.values():
                        top = {f.path.split("/")[0] for f in res.files.values()}
                        assert _ls(rdir / res.label / "files") == top


def test_every_demo_file_reads_back_with_size_and_md5(mnt, xnat_session):
    expected = {}
    for project in xnat_session.projects.values():
        for res in project.resources.values():
            for f in res.files.values():
                expected[
                    str(mnt.path / project.id / "resources" / res.label / "files" / f.path)
                ] = f
        for subject in project.subjects.values():
            for exp in subject.experiments.values():
                edir = (
                    mnt.path / project.id / "subjects" / subject.label / "experiments" / exp.label
                )
                for scan in exp.scans.values():
                    for res in scan.resources.values():
                        for f in res.files.values():
                            expected[
                                str(
                                    edir
                                    / "scans"
                                    / scan.id
                                    / "resources"
                                    / res.label
                                    / "files"
                                    / f.path
                                )
                            ] = f
    assert len(expected) > 100
    # sizes are right before a byte is read (never 0-until-opened)
    for path, f in expected.items():
        assert os.stat(path).st_size == int(f.size), path
    got = hash_files(list(expected), threads=8)
    for path, f in expected.items():
        assert got[path] == [f.digest, int(f.size)], path


def test_subfolders_spaces_and_unicode(mnt, xnat_session):
    files = mnt.path / "DEMO1" / "resources" / "protocols" / "files"
    names = set()
    for dirpath, _dirnames, filenames in os.walk(files):
        names.update(os.path.relpath(os.path.join(dirpath, n), files) for n in filenames)
    listed = {f.path for f in xnat_session.projects["DEMO1"].resources["protocols"].files.values()}
    assert names == listed
    assert any("/" in n for n in names), "demo data has sub-folders"
    assert any(" " in n for n in names)
    assert "résumé – notes.txt" in {os.path.basename(n) for n in names}


def test_attributes_xattrs_and_unlisted_files(mnt, xnat_session):
    scan_dir = mnt.path / DEMO_SCAN_FILES.rsplit("/resources", 1)[0]
    exp = xnat_session.projects["DEMO1"].subjects["SUBJ01"].experiments["SUBJ01_MR1"]
    assert os.getxattr(scan_dir, "user.xnat.id").decode() == "1"
    assert os.getxattr(scan_dir, "user.xnat.scan_type").decode() == exp.scans["1"].type
    exp_dir = scan_dir.parent.parent
    assert os.getxattr(exp_dir, "user.xnat.id").decode() == exp.id
    assert os.getxattr(exp_dir, "user.xnat.xsi_type").decode() == "xnat:mrSessionData"
    f = sorted(os.listdir(mnt.path / DEMO_SCAN_FILES))[0]
    fpath = mnt.path / DEMO_SCAN_FILES / f
    digest = exp.scans["1"].resources["DICOM"].files[f].digest
    assert os.getxattr(fpath, "user.xnat.digest").decode() == digest
    assert os.getxattr(fpath, "user.xnat.cache_state").decode() == "absent"
    hash_files([str(fpath)])
    # the reader has its bytes once the size and MD5 verdict is in; the file is then made
    # durable (fsync) and indexed, so "downloading" may still show for a moment
    states = set()

    def cached() -> bool:
        states.add(os.getxattr(fpath, "user.xnat.cache_state").decode())
        return "cached" in states

    wait_until(cached, what="cache_state 'cached'")
    assert states <= {"downloading", "cached"}, states
    with pytest.raises(OSError) as err:
        os.getxattr(fpath, "security.capability")
    assert err.value.errno in (errno.ENOTSUP, errno.ENODATA)
    assert "user.xnat.uri" in os.listxattr(fpath)
    # the same modes everywhere (a copy taken out stays deletable, issue 16 §3)
    assert os.stat(fpath).st_mode & 0o777 == 0o644
    assert os.stat(scan_dir).st_mode & 0o777 == 0o755
    assert os.stat(scan_dir / "resources").st_mode & 0o777 == 0o755
    assert os.stat(fpath).st_uid == os.getuid()
    # unlisted .xnat.json and .zip
    assert ".xnat.json" not in os.listdir(exp_dir) and ".zip" not in os.listdir(exp_dir)
    import json

    doc = json.loads(sh(["cat", str(exp_dir / ".xnat.json")]).stdout)
    assert doc["items"][0]["data_fields"]["ID"] == exp.id
    import io
    import subprocess
    import zipfile

    data = subprocess.run(["cat", str(scan_dir / ".zip")], capture_output=True, timeout=60).stdout
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert any(n.endswith("/files/" + f) for n in names), names[:5]


def _zip_names(path) -> set:
    """Base names of the members of the zip ``cat path`` gives."""
    import io
    import subprocess
    import zipfile

    out = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(io.BytesIO(out.stdout)).namelist()}


def test_a_resource_zip_read_after_the_resource_changed_holds_its_new_files(
    shared_emulator, make_mount
):
    """Another client adds a file to a resource whose ``.zip`` was read: once the listing TTL
    has passed and ``ls`` shows the file, ``.zip`` holds it too.  The zip was keyed on the
    resource's time, its parent row's, which XNAT does not change when a file is added: the
    first zip was served for ever."""
    url = shared_emulator.url
    put_file(url, "/data/projects/DEMO2/resources/ZR/files/a.txt", b"first file\n")
    m = make_mount(url, "--listing-ttl", "1", "--bulk-zip", "0", "--prefetch", "0")
    res = m.path / "DEMO2" / "resources" / "ZR"
    assert _zip_names(res / ".zip") == {"a.txt"}
    put_file(url, "/data/projects/DEMO2/resources/ZR/files/b.txt", b"second file\n")
    wait_until(lambda: "b.txt" in os.listdir(res / "files"), what="b.txt listed")
    assert _zip_names(res / ".zip") == {"a.txt", "b.txt"}


def test_a_resource_zip_is_fetched_once_while_its_listing_holds(shared_emulator, make_mount):
    """Read twice within the listing TTL, a resource's ``.zip`` costs one request (XNAT's zip),
    none once cached; after ``xnatfs refresh`` of the resource with nothing changed, only the
    listing is asked again: the zip is keyed on what the listing holds, not refetched."""
    url = shared_emulator.url
    put_file(url, "/data/projects/DEMO2/resources/ZONCE/files/a.txt", b"only file\n")
    m = make_mount(url, "--bulk-zip", "0", "--prefetch", "0")
    res = m.path / "DEMO2" / "resources" / "ZONCE"
    assert os.listdir(res / "files") == ["a.txt"]  # the listing, warm
    mark = shared_emulator.mark()
    assert _zip_names(res / ".zip") == {"a.txt"}
    assert _zip_names(res / ".zip") == {"a.txt"}
    got = api(shared_emulator.since(mark))
    assert len(got) == 1 and got[0][1].endswith("/files?format=zip"), got
    os.getxattr(res, "user.xnatfs.refresh")
    mark = shared_emulator.mark()
    assert _zip_names(res / ".zip") == {"a.txt"}
    got = api(shared_emulator.since(mark))
    assert not any("format=zip" in p for _m, p in got), got


def test_request_counts_ls_find_and_negative_lookups(shared_emulator, make_mount):
    url = shared_emulator.url
    for i in range(500):
        put_file(url, f"/data/projects/DEMO2/resources/MANY/files/f{i:03d}.txt", b"x" * (i + 1))
    m = make_mount(url)
    files = m.path / "DEMO2" / "resources" / "MANY" / "files"
    sh(["ls", "-l", str(files.parent.parent)])  # resolve the way down
    mark = shared_emulator.mark()
    out = sh(["ls", "-l", str(files)]).stdout
    assert len(out.splitlines()) == 501
    assert len(api(shared_emulator.since(mark))) == 1, shared_emulator.since(mark)
    mark = shared_emulator.mark()
    sh(["ls", "-l", str(files)])
    assert api(shared_emulator.since(mark)) == []
    # a name missing from a fresh listing: ENOENT with no request
    mark = shared_emulator.mark()
    res = sh(["stat", str(files / "nope.txt")], check=False)
    assert res.returncode != 0 and "No such file" in res.stderr
    assert api(shared_emulator.since(mark)) == []
    # find over a project: at most one request per directory
    mark = shared_emulator.mark()
    out = sh(["find", str(m.path / "DEMO1")]).stdout.splitlines()
    dirs = [p for p in out if os.path.isdir(p)]
    assert len(api(shared_emulator.since(mark))) <= len(dirs)
    assert downloads(shared_emulator.since(mark)) == []


def test_parallel_readers_one_download_per_file(shared_emulator, make_mount):
    url = shared_emulator.url
    rnd = random.Random(7)
    blobs = {f"b{i:02d}.bin": rnd.randbytes(rnd.randint(1, 300_000)) for i in range(50)}
    for name, data in blobs.items():
        put_file(url, f"/data/projects/DEMO2/resources/PAR/files/{name}", data)
    big = rnd.randbytes(24 * 1024 * 1024 + 123)
    put_file(url, "/data/projects/DEMO2/resources/BIG/files/big.bin", big)
    m = make_mount(url, "--bulk-zip", "0")  # file by file: the zip has a test of its own
    base = m.path / "DEMO2" / "resources"
    os.listdir(base / "PAR" / "files")
    os.listdir(base / "BIG" / "files")
    mark = shared_emulator.mark()
    paths = [str(base / "PAR" / "files" / n) for n in blobs] * 2
    got = hash_files(paths, threads=16)
    for name, data in blobs.items():
        assert got[str(base / "PAR" / "files" / name)] == [md5(data), len(data)]
    got = hash_files([str(base / "BIG" / "files" / "big.bin")] * 8, threads=8)
    assert list(got.values()) == [[md5(big), len(big)]]
    dl = downloads(shared_emulator.since(mark))
    assert sorted(dl) == sorted(set(dl)), "one download per file"
    assert len(dl) == 51


def test_remount_serves_cache_without_downloads(shared_emulator, make_mount, tmp_path):
    cache = tmp_path / "keep-cache"
    m = make_mount(shared_emulator.url, cache=cache)
    files = sorted(os.listdir(m.path / DEMO_SCAN_FILES))[:10]
    paths = [str(m.path / DEMO_SCAN_FILES / f) for f in files]
    first = hash_files(paths)
    m.umount()
    assert oct(os.stat(cache).st_mode & 0o777) == "0o700"
    m2 = make_mount(shared_emulator.url, cache=cache)
    paths2 = [str(m2.path / DEMO_SCAN_FILES / f) for f in files]
    mark = shared_emulator.mark()
    second = hash_files(paths2)
    assert downloads(shared_emulator.since(mark)) == []
    assert [first[p] for p in paths] == [second[p] for p in paths2]


def test_server_down_then_back(make_emulator, make_mount):
    emu = make_emulator()
    m = make_mount(
        emu.url,
        "--timeout",
        "15",
        "--connect-timeout",
        "1",
        "--read-timeout",
        "3",
        "--retries",
        "1",
        "--prefetch",
        "0",
    )
    files = m.path / DEMO_SCAN_FILES
    names = sorted(os.listdir(files))
    cached = str(files / names[0])
    first = hash_files([cached])
    emu.stop()
    # cached file: still readable
    assert hash_files([cached]) == first
    # uncached file: fails with EIO or ETIMEDOUT within the deadline (never hangs)
    got = hash_files([str(files / names[1])], timeout=40)
    assert got[str(files / names[1])][0] == "error"
    # EHOSTDOWN once the breaker knows the server is down (xnat/breaker.py)
    assert got[str(files / names[1])][1] in (errno.EIO, errno.ETIMEDOUT, errno.EHOSTDOWN)
    # a directory never listed: fails the same way
    res = sh(
        ["ls", str(m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments")],
        check=False,
        timeout=40,
    )
    assert res.returncode != 0
    assert any(e in res.stderr for e in ("Input/output error", "timed out", "Host is down"))
    assert "DEMO1" in m.log_text()  # the failure was logged with its path
    emu.restart()
    # the breaker's next probe (at most pause_max, 10 s, after the last) finds it back
    wait_for(
        lambda: hash_files([str(files / names[1])])[str(files / names[1])][0] != "error",
        30,
        what="a read once the server is back",
    )
    assert sh(["ls", str(m.path / "DEMO1" / "subjects" / "SUBJ02" / "experiments")]).stdout


def test_expired_session_is_renewed_unnoticed(make_emulator, make_mount):
    emu = make_emulator()
    m = make_mount(emu.url)
    files = m.path / DEMO_SCAN_FILES
    names = sorted(os.listdir(files))
    emu.emu.expire_sessions()
    got = hash_files([str(files / names[2])])
    assert got[str(files / names[2])][0] != "error"
    assert sh(["ls", str(m.path / "DEMO1" / "subjects" / "SUBJ03" / "experiments")]).stdout


def test_server_errors_become_eio_with_a_log_line(make_emulator, make_mount):
    emu = make_emulator()
    m = make_mount(emu.url, "--retries", "1")
    files = m.path / DEMO_SCAN_FILES
    names = sorted(os.listdir(files))
    emu.faults.error_rate = 1.0
    emu.faults.error_status = 500
    got = hash_files([str(files / names[3])])
    assert got[str(files / names[3])] == ["error", errno.EIO]
    log = m.log_text()
    assert names[3] in log and "500" in log and "/files/" in log
    emu.faults.error_rate = 0.0
    # an HTML login page answered with 200 is never taken for data
    emu.faults.html_login_rate = 1.0
    got = hash_files([str(files / names[4])], timeout=60)
    assert got[str(files / names[4])][0] == "error"
    emu.faults.html_login_rate = 0.0
    got = hash_files([str(files / names[4])])
    assert got[str(files / names[4])][0] != "error"


def test_reads_survive_dropped_connections(make_emulator, make_mount):
    emu = make_emulator()
    m = make_mount(emu.url)
    files = m.path / DEMO_SCAN_FILES
    names = sorted(os.listdir(files))[5:8]
    emu.faults.drop_rate = 1.0
    bad = hash_files([str(files / n) for n in names], timeout=90)
    assert all(v[0] == "error" for v in bad.values())
    emu.faults.drop_rate = 0.0
    good = hash_files([str(files / n) for n in names])
    assert all(v[0] != "error" for v in good.values())


def test_ordinary_user_sees_only_her_projects(shared_emulator, make_mount):
    m = make_mount(shared_emulator.url, credentials=("alice", "alice-pw"))
    assert {p for p in os.listdir(m.path) if not p.startswith(".")} == {"DEMO1"}
    res = sh(["ls", str(m.path / "DEMO2")], check=False)
    assert res.returncode != 0 and "No such file" in res.stderr


def test_prearchive_view(mnt):
    pre = mnt.path / ".prearchive"
    assert "DEMO1" in os.listdir(pre)
    found = []
    for dirpath, _dirs, filenames in os.walk(pre):
        found += [os.path.join(dirpath, f) for f in filenames]
    assert found and all("/scans/" in f and "/files/" in f for f in found)
    got = hash_files(found[:3])
    assert all(v[0] != "error" and v[1] > 0 for v in got.values())


def test_read_only_mount_refuses_writes(shared_emulator, make_mount):
    mnt = make_mount(shared_emulator.url, "--read-only")
    fpath = mnt.path / DEMO_SCAN_FILES / sorted(os.listdir(mnt.path / DEMO_SCAN_FILES))[0]
    assert os.stat(fpath).st_mode & 0o777 == 0o444
    target = mnt.path / "DEMO1" / "resources" / "protocols" / "files" / "new.txt"
    res = sh(["sh", "-c", f"echo hi > '{target}'"], check=False)
    assert res.returncode != 0 and "Read-only file system" in res.stderr
    res = sh(["mkdir", str(mnt.path / "DEMO1" / "subjects" / "NEW")], check=False)
    assert "Read-only file system" in res.stderr


def test_stats_file(mnt):
    import json

    os.listdir(mnt.path / "DEMO1" / "subjects")
    stats = json.loads(sh(["cat", str(mnt.path / ".xnatfs" / "stats")]).stdout)
    assert stats["url"] and stats["requests"]
    # the daemon's GC runs at its own threshold (commands/daemon.GC_YOUNGEST), counted
    from xnatfs.commands.daemon import GC_YOUNGEST

    assert stats["gc"]["threshold"][0] == GC_YOUNGEST
    assert len(stats["gc"]["collections"]) == 3


def test_prefetch_downloads_the_next_files_and_read_ahead_is_raised(shared_emulator, make_mount):
    from tests.mount.helpers import wait_for
    from xnatfs.fs.mounting import mount_entry

    m = make_mount(shared_emulator.url, "--prefetch", "4", "--bulk-zip", "0")
    files = m.path / DEMO_SCAN_FILES
    names = sorted(os.listdir(files))
    hash_files([str(files / names[0])])
    wait_for(
        lambda: all(
            os.getxattr(files / n, "user.xnat.cache_state") == b"cached" for n in names[1:5]
        ),
        30,
        what="the prefetched files",
    )
    assert os.getxattr(files / names[6], "user.xnat.cache_state") == b"absent"
    bdi = f"/sys/class/bdi/{mount_entry(str(m.path))[2]}/read_ahead_kb"
    wait_for(lambda: Path(bdi).read_text().strip() == "1024", 10, what="read_ahead_kb")


def test_bulk_zip_fetches_a_many_file_resource_in_one_request(
    shared_emulator, make_mount, tmp_path
):
    from tests.mount.helpers import wait_for

    rnd = random.Random(11)
    blobs = {f"s{i:03d}.dcm": rnd.randbytes(2000 + i) for i in range(40)}
    blobs["sub/deep.dcm"] = rnd.randbytes(777)
    for name, data in blobs.items():
        put_file(shared_emulator.url, f"/data/projects/DEMO2/resources/BULK/files/{name}", data)
    m = make_mount(shared_emulator.url, "--bulk-zip", "32", "--prefetch", "0")
    files = m.path / "DEMO2" / "resources" / "BULK" / "files"
    os.listdir(files)
    mark = shared_emulator.mark()
    sh(["cp", "-r", str(files), str(tmp_path / "copy")], timeout=120)
    for name, data in blobs.items():
        assert (tmp_path / "copy" / name).read_bytes() == data, name
    requests = api(shared_emulator.since(mark))
    assert len([r for r in requests if "format=zip" in r[1]]) == 1, requests
    # the file cp opened first starts alone, before the zip is asked for; nothing else does
    assert len(downloads(shared_emulator.since(mark))) <= 1, requests
    wait_for(
        lambda: all(os.getxattr(files / n, "user.xnat.cache_state") == b"cached" for n in blobs),
        30,
        what="the zip's files to be cached",
    )
    mark = shared_emulator.mark()
    got = hash_files([str(files / n) for n in blobs])
    assert {os.path.relpath(p, files): v for p, v in got.items()} == {
        n: [md5(d), len(d)] for n, d in blobs.items()
    }
    assert api(shared_emulator.since(mark)) == []
