"""Running it like a service: fstab, readiness, stats and metrics, the cache command, config."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN, Mount, needs_fuse
from tests.mount.helpers import downloads, forget_pages, hash_files, sh
from xnatfs.fs.mounting import is_mounted

pytestmark = [needs_fuse]

DICOM = "DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/2/resources/DICOM/files"
VENV_XNATFS = str(Path(sys.executable).parent / "xnatfs")


def _netrc(tmp_path: Path, url: str) -> Path:
    host = url.split("//", 1)[1].split("/", 1)[0]
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host} login {ADMIN[0]} password {ADMIN[1]}\n")
    netrc.chmod(0o600)
    return netrc


def test_fstab_mount_and_umount(shared_emulator, tmp_path):
    mnt = tmp_path / "fstab-mnt"
    mnt.mkdir()
    netrc = _netrc(tmp_path, shared_emulator.url)
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{VENV_XNATFS}#{shared_emulator.url} {mnt} fuse "
        f"noauto,_netdev,nofail,netrc={netrc},cache_dir={tmp_path / 'c'},"
        f"listing_ttl=30 0 0\n"
    )
    res = subprocess.run(
        ["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True, timeout=90
    )
    try:
        assert res.returncode == 0, res.stderr + res.stdout
        assert "DEMO1" in os.listdir(mnt)
        line = [x for x in Path("/proc/mounts").read_text().splitlines() if str(mnt) in x][0]
        assert "fuse.xnatfs" in line
    finally:
        res = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert not is_mounted(str(mnt))


def test_foreground_mount_sends_ready_to_systemd(shared_emulator, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = sock_path
    try:
        m = Mount(shared_emulator.url, tmp_path / "m", tmp_path / "c", tmp_path / "log", []).start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message
    finally:
        sock.close()
        m.umount()


def test_stats_and_metrics_follow_the_access_log(make_emulator, make_mount):
    emu = make_emulator()
    m = make_mount(emu.url, "--prefetch", "0")
    files = sorted(os.listdir(m.path / DICOM))[:5]
    hash_files([str(m.path / DICOM / f) for f in files])
    stats = json.loads(sh(["cat", str(m.path / ".xnatfs" / "stats")]).stdout)
    log = collections.Counter(f"{method} {status}" for method, _p, status, _b in emu.since(0))
    assert stats["requests"]["requests"] == dict(log)
    assert stats["content_cache"]["misses"] == 5
    metrics = sh(["cat", str(m.path / ".xnatfs" / "metrics")]).stdout
    assert f'xnatfs_requests_total{{method="GET",status="200"}} {log["GET 200"]}' in metrics
    assert "# TYPE xnatfs_content_cache_bytes gauge" in metrics
    # reading more moves the counters
    hash_files([str(m.path / DICOM / f) for f in sorted(os.listdir(m.path / DICOM))[5:8]])
    again = json.loads(sh(["cat", str(m.path / ".xnatfs" / "stats")]).stdout)
    assert again["content_cache"]["misses"] == 8
    status = sh([sys.executable, "-m", "xnatfs", "status", str(m.path)]).stdout
    assert emu.url in status and "uploads not yet on XNAT: none" in status


def test_cache_prefetch_then_reads_download_nothing(shared_emulator, make_mount, tmp_path):
    cache = tmp_path / "cache"
    m = make_mount(shared_emulator.url, cache=cache)
    res = sh(
        [sys.executable, "-m", "xnatfs", "cache", "prefetch", str(m.path / DICOM)], timeout=120
    )
    assert "prefetched" in res.stdout
    mark = shared_emulator.mark()
    names = sorted(os.listdir(m.path / DICOM))
    assert all(os.getxattr(m.path / DICOM / n, "user.xnat.cache_state") == b"cached" for n in names)
    paths = [str(m.path / DICOM / n) for n in names]
    forget_pages(paths)  # the reads below reach the daemon, which has them all cached
    hash_files(paths)
    assert downloads(shared_emulator.since(mark)) == []
    # clear is refused while the mount uses the cache; usage works
    res = sh(
        [sys.executable, "-m", "xnatfs", "cache", "clear", "--cache-dir", str(cache)], check=False
    )
    assert res.returncode == 1 and "in use" in res.stderr
    res = sh([sys.executable, "-m", "xnatfs", "cache", "usage", "--cache-dir", str(cache)])
    assert f"{len(names)} files" in res.stdout or "files" in res.stdout
    m.umount()
    res = sh([sys.executable, "-m", "xnatfs", "cache", "prune", "0", "--cache-dir", str(cache)])
    assert ": 0 files" in res.stdout
    res = sh([sys.executable, "-m", "xnatfs", "cache", "clear", "--cache-dir", str(cache)])
    assert "removed" in res.stdout


def _xnatfs(args, tmp_path, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("XNATFS_")}
    full_env.update({"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "xnatfs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def test_bad_input_is_one_clear_line(tmp_path):
    res = _xnatfs(["mount", "http://127.0.0.1:9", str(tmp_path), "--no-such-option"], tmp_path)
    assert res.returncode == 2 and "unrecognized arguments: --no-such-option" in res.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[defaults]\ncache_size = \n")
    res = _xnatfs(["config", "http://x.org", "--config", str(cfg)], tmp_path)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and str(cfg) in res.stderr
    cfg.write_text('[defaults]\npassword = "secret"\n')
    cfg.chmod(0o644)
    res = _xnatfs(["config", "http://x.org", "--config", str(cfg)], tmp_path)
    assert res.returncode == 1 and "chmod 600" in res.stderr and "secret" not in res.stderr
    cfg.write_text("[defaults]\nlisting_tll = 5\n")
    res = _xnatfs(["config", "http://x.org", "--config", str(cfg)], tmp_path)
    assert res.returncode == 1 and "listing_tll" in res.stderr


def test_config_precedence_and_masking(tmp_path):
    cfg = tmp_path / "cfg" / "xnatfs" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        '[defaults]\nlisting_ttl = 30\ncache_size = "1G"\n\n'
        '[servers."http://x.org"]\nlisting_ttl = 90\nuser = "u"\npassword = "pw"\n'
    )
    cfg.chmod(0o600)
    res = _xnatfs(
        ["config", "http://x.org", "--cache-size", "2G"], tmp_path, {"XNATFS_MAX_THREADS": "7"}
    )
    assert res.returncode == 0, res.stderr
    lines = {line.split("=")[0].strip(): line for line in res.stdout.splitlines() if "=" in line}
    assert '"2G"' in lines["cache_size"] and "command line" in lines["cache_size"]
    assert "7" in lines["max_threads"] and "environment" in lines["max_threads"]
    assert "90" in lines["listing_ttl"] and "config file" in lines["listing_ttl"]
    assert "pw" not in res.stdout and "********" in lines["password"]
