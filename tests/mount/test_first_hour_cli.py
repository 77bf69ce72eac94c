"""A newcomer's first hour, the command line (issue 16 §5, §7, §9): one clear line per error,
and every command finds what it is about (the demo's cache, a mount's files, the netrc used)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import requests

from tests.conftest import ADMIN, needs_fuse, run
from tests.mount.helpers import end_demo
from xnatfs.fs.mounting import is_mounted

LIBFUSE_THREADS_WARNING = "Ignoring invalid max threads value"
EXPERIMENTS = "DEMO1/subjects/SUBJ01/experiments"


def _env(tmp_path: Path, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """A newcomer's environment: no xnatfs settings, an empty home and default cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNATFS_") and k != "NETRC"}
    env.update({"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")})
    env.update(extra or {})
    return env


def xnatfs(
    *args: str, env: Dict[str, str], timeout: float = 90, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xnatfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def _only_line(res: subprocess.CompletedProcess) -> str:
    """The refusal is exit status 1 and ONE line on stderr: no log line before it."""
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xnatfs: "), res.stderr
    return lines[0]


# ------------------------------------------------------------------------ mount refusals
@needs_fuse
def test_wrong_password_is_one_line(shared_emulator, tmp_path):
    (tmp_path / "m").mkdir()
    line = _only_line(
        xnatfs(
            "mount",
            shared_emulator.url,
            str(tmp_path / "m"),
            env=_env(tmp_path, {"XNATFS_USER": "admin", "XNATFS_PASSWORD": "wrong"}),
        )
    )
    assert "login refused" in line and "wrong" not in line
    assert not is_mounted(str(tmp_path / "m"))


@needs_fuse
def test_not_an_xnat_server_is_one_line(shared_emulator, tmp_path):
    """A wrong context path: the emulator answers the login with a redirect, as a web server
    in front of XNAT would."""
    (tmp_path / "m").mkdir()
    line = _only_line(
        xnatfs(
            "mount",
            shared_emulator.url + "/not-xnat",
            str(tmp_path / "m"),
            env=_env(tmp_path, {"XNATFS_USER": "admin", "XNATFS_PASSWORD": ADMIN[1]}),
        )
    )
    assert "does not answer like an XNAT server" in line
    assert not is_mounted(str(tmp_path / "m"))


# ------------------------------------------------------------------------ a live mount
def _log_problems(text: str) -> List[str]:
    return [
        line
        for line in text.splitlines()
        if re.search(r" (WARNING|ERROR|CRITICAL) ", line) or LIBFUSE_THREADS_WARNING in line
    ]


def test_status_to_a_closed_pipe_exits_quietly(shared_emulator, make_mount, tmp_path):
    """``xnatfs status MNT | head -1``: the reader is gone before status writes (a closed pipe
    makes the race of ``head`` certain)."""
    m = make_mount(shared_emulator.url)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "xnatfs", "status", str(m.path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
    assert res.stderr == ""
    assert res.returncode == 128 + signal.SIGPIPE


def test_ls_attribute_lookups_are_not_errors(shared_emulator, make_mount, tmp_path):
    """``ls -la`` asks for ``security.*`` attributes of every entry (ENOTSUP) and getfattr for
    missing ones (ENODATA): answers, not failures; a real failure is still counted."""
    m = make_mount(shared_emulator.url)
    for rel in ("", "DEMO1", "DEMO1/subjects", "DEMO1/subjects/SUBJ01", EXPERIMENTS):
        assert run(["ls", "-la", str(m.path / rel)]).returncode == 0
    run(["getfattr", "-n", "security.selinux", str(m.path / "DEMO1")])
    run(["getfattr", "-n", "user.xnat.nothing", str(m.path / "DEMO1")])
    assert run(["ls", str(m.path / "DEMO1/no-such")]).returncode != 0
    res = xnatfs("status", "--json", str(m.path), env=_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["errors"] == {}
    # a real failure is still an error: a regular file where XNAT has no place for it
    assert run(["sh", "-c", f"echo x > '{m.path}/DEMO1/subjects/f.txt'"]).returncode != 0
    errors = json.loads(xnatfs("status", "--json", str(m.path), env=_env(tmp_path)).stdout)
    assert sum(errors["errors"].values()) >= 1, errors["errors"]
    m.umount()
    problems = [line for line in _log_problems(m.log_text()) if "f.txt" not in line]
    assert not problems, problems


def test_failed_import_is_one_line_and_rm_discards_it(make_emulator, make_mount, tmp_path):
    """A zip XNAT cannot import: close fails with one ERROR line; the file stays listed as
    ``failed``; ``xnatfs status`` says how to discard it, and a plain ``rm`` (no
    ``--allow-delete``) does."""
    emu = make_emulator()
    m = make_mount(emu.url)
    bad = tmp_path / "session.zip"
    bad.write_bytes(b"this is not a zip of DICOM files\n")
    target = m.path / EXPERIMENTS / "session.zip"
    res = run(["cp", str(bad), str(target)])
    assert res.returncode != 0
    problems = [line for line in _log_problems(m.log_text()) if "session.zip" in line]
    assert len(problems) == 1 and " ERROR " in problems[0], problems
    assert os.getxattr(target, "user.xnat.cache_state") == b"failed"

    res = xnatfs("status", str(m.path), env=_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"rm '{target}'" in res.stdout, res.stdout
    assert run(["rm", str(target)]).returncode == 0
    assert not target.exists()
    res = xnatfs("status", "--json", str(m.path), env=_env(tmp_path))
    assert json.loads(res.stdout)["uploads"] == []


def test_mount_log_has_no_libfuse_threads_warning(shared_emulator, tmp_path):
    """The background mount's log (libfuse 3.14 prints the warning on stderr at start)."""
    host = shared_emulator.url.split("//", 1)[1].split("/", 1)[0]
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text(f"machine {host} login admin password {ADMIN[1]}\n")
    (home / ".netrc").chmod(0o600)
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = _env(tmp_path)
    res = xnatfs("mount", shared_emulator.url, str(mnt), env=env)
    try:
        assert res.returncode == 0, res.stderr
        assert "DEMO1" in os.listdir(mnt)
        log_path = Path(res.stdout.split("(log: ", 1)[1].rstrip().rstrip(")"))
    finally:
        umount = xnatfs("umount", str(mnt), env=env)
    assert umount.returncode == 0, umount.stderr
    text = log_path.read_text()
    assert "mounting" in text and LIBFUSE_THREADS_WARNING not in text, text


# ------------------------------------------------------------------------ finding things
def test_prefetch_refuses_paths_outside_a_mount(shared_emulator, make_mount, tmp_path):
    m = make_mount(shared_emulator.url)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("local\n")
    line = _only_line(xnatfs("cache", "prefetch", str(outside), env=_env(tmp_path)))
    assert "not inside an xnatfs mount" in line and str(outside) in line
    link = tmp_path / "protocols-link"  # a link into the mount is inside it
    link.symlink_to(m.path / "DEMO1/resources/protocols")
    for inside in (m.path / "DEMO1/resources/protocols", link):
        res = xnatfs("cache", "prefetch", str(inside), env=_env(tmp_path))
        assert res.returncode == 0, res.stderr
        assert re.search(r"prefetched ([1-9]\d*) of \1 files", res.stdout), res.stdout


def test_cache_usage_finds_a_running_mounts_cache(shared_emulator, make_mount, tmp_path):
    """No cache at the default place: ``xnatfs cache usage`` reports the mounts' caches."""
    m = make_mount(shared_emulator.url, cache=tmp_path / "elsewhere-cache")
    assert run(["cat", str(m.path / "DEMO1/resources/protocols/files/README.txt")]).returncode == 0
    res = xnatfs("cache", "usage", env=_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert str(tmp_path / "elsewhere-cache") in res.stdout, res.stdout


def test_config_shows_the_netrc_really_used(tmp_path):
    netrc = tmp_path / "xnat.netrc"
    netrc.write_text("machine x login a password b\n")
    netrc.chmod(0o600)
    res = xnatfs("config", "https://xnat.example.org", env=_env(tmp_path, {"NETRC": str(netrc)}))
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if line.startswith("netrc "))
    assert f'"{netrc}"' in line and "NETRC" in line, line
    res = xnatfs("config", "https://xnat.example.org", env=_env(tmp_path))
    line = next(line for line in res.stdout.splitlines() if line.startswith("netrc "))
    assert f'"{tmp_path / "home" / ".netrc"}"' in line and "missing" in line, line


@needs_fuse
def test_demo_says_where_things_are(tmp_path):
    """The demo's banner names its users (checked over HTTP), cache, log and ``--data``;
    ``xnatfs cache usage`` during the demo looks at the demo's cache."""
    mnt = tmp_path / "demo"
    env = _env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xnatfs", "demo", str(mnt)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    banner: List[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any(line.startswith("Press Ctrl-C") for line in banner):
            line = proc.stdout.readline()
            assert line, "demo ended early:\n" + "".join(banner)
            assert time.monotonic() < deadline, "no banner:\n" + "".join(banner)
            banner.append(line)
        text = "".join(banner)
        fields = dict(re.findall(r"^\s+(\w[\w ]*?)\s+: (\S+)", text, re.M))
        url, cache, log = fields["XNAT emulator"], fields["cache"], fields["log"]
        assert "admin / admin" in text and "alice / alice-pw" in text and "--data" in text
        for auth, projects in (
            (("admin", "admin"), {"DEMO1", "DEMO2"}),
            (("alice", "alice-pw"), {"DEMO1"}),
        ):
            r = requests.get(
                url + "/data/projects", params={"format": "json"}, auth=auth, timeout=30
            )
            assert r.status_code == 200
            assert {row["ID"] for row in r.json()["ResultSet"]["Result"]} == projects
        assert run(["cat", str(mnt / "DEMO1/resources/protocols/files/README.txt")]).returncode == 0
        res = xnatfs("cache", "usage", env=env)
        assert res.returncode == 0 and cache in res.stdout, (res.stdout, res.stderr)
        assert Path(log).is_file()
        assert LIBFUSE_THREADS_WARNING not in Path(log).read_text()
        assert LIBFUSE_THREADS_WARNING not in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not is_mounted(str(mnt))
    finally:
        end_demo(proc, mnt)
