"""contrib/slurm/xnatfs_slurm.py: one mount per user per node, reference-counted by job.

Side effects are fakes: a mount table, the commands run, and which jobs Slurm still runs.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "xnatfs_slurm", ROOT / "contrib" / "slurm" / "xnatfs_slurm.py"
)
slurm = importlib.util.module_from_spec(_spec)
sys.modules["xnatfs_slurm"] = slurm
_spec.loader.exec_module(slurm)


class Node:
    """A fake node: its mount table, the commands it ran, the jobs Slurm knows."""

    def __init__(self) -> None:
        self.mounts: Dict[str, str] = {}  # path -> live|dead
        self.commands: List[List[str]] = []
        self.slurm_jobs: Optional[Set[str]] = set()  # None: squeue broken
        self.mount_rc = 0
        self.umount_rc = 0
        self.lock = threading.Lock()

    def run(self, cmd) -> int:
        cmd = list(cmd)
        with self.lock:
            self.commands.append(cmd)
        if cmd[0] == "runuser":
            mnt = cmd[cmd.index("mount") + 2]
            assert self.mounts.get(mnt) != "live", "mounted twice"
            if self.mount_rc == 0:
                self.mounts[mnt] = "live"
            return self.mount_rc
        if cmd[1:2] == ["umount"]:
            if self.umount_rc == 0:
                self.mounts.pop(cmd[2], None)
            return self.umount_rc
        if cmd[:2] == ["umount", "-l"]:
            self.mounts.pop(cmd[2], None)
            return 0
        raise AssertionError(cmd)

    def state(self, path: Path) -> str:
        return self.mounts.get(str(path), "absent")

    def running(self, jobs):
        if self.slurm_jobs is None:
            return None
        return {j for j in jobs if j in self.slurm_jobs}

    def mounts_run(self) -> int:
        return sum(1 for c in self.commands if c[0] == "runuser")


@pytest.fixture
def node() -> Node:
    return Node()


@pytest.fixture
def nm(tmp_path, node):
    s = slurm.Settings(
        url="https://xnat.example.org",
        mount_root=tmp_path / "xnat",
        cache_root=tmp_path / "scratch",
        state_dir=tmp_path / "run",
        xnatfs="/usr/local/bin/xnatfs",
        mount_args=["--max-requests", "8"],
    )
    return slurm.NodeMounts(
        s, run=node.run, state=node.state, running=node.running, chown=lambda p, u: None
    )


def start(nm, node, job, user="ann"):
    node.slurm_jobs.add(job)
    return nm.start(job, user)


def test_first_job_mounts_as_the_user_with_a_node_local_cache(nm, node, tmp_path):
    mnt = start(nm, node, "101")
    assert mnt == tmp_path / "xnat" / "ann"
    (cmd,) = node.commands
    assert cmd[:4] == ["runuser", "-u", "ann", "--"]
    assert cmd[4:8] == ["/usr/local/bin/xnatfs", "mount", "https://xnat.example.org", str(mnt)]
    assert cmd[cmd.index("--cache-dir") + 1] == str(tmp_path / "scratch" / "ann")
    assert cmd[-2:] == ["--max-requests", "8"]
    assert (tmp_path / "scratch" / "ann").is_dir() and mnt.is_dir()


def test_later_jobs_share_the_mount_and_the_last_one_unmounts(nm, node):
    for job in ("1", "2", "3"):
        start(nm, node, job)
    assert node.mounts_run() == 1
    assert nm.jobs("ann") == ["1", "2", "3"]
    assert nm.stop("2", "ann") is False
    assert nm.stop("1", "ann") is False
    assert node.state(nm.mountpoint("ann")) == "live"
    assert nm.stop("3", "ann") is True
    assert node.state(nm.mountpoint("ann")) == "absent"
    assert ["/usr/local/bin/xnatfs", "umount", str(nm.mountpoint("ann"))] in node.commands


def test_users_are_counted_apart(nm, node):
    start(nm, node, "1", "ann")
    start(nm, node, "2", "bob")
    assert node.mounts_run() == 2
    assert nm.stop("1", "ann") is True
    assert node.state(nm.mountpoint("bob")) == "live"


def test_start_and_stop_are_idempotent(nm, node):
    start(nm, node, "7")
    start(nm, node, "7")  # a prolog run twice
    assert node.mounts_run() == 1 and nm.jobs("ann") == ["7"]
    assert nm.stop("7", "ann") is True
    assert nm.stop("7", "ann") is False  # an epilog run twice
    assert nm.stop("999", "ann") is False  # an epilog for a job never seen
    assert [c for c in node.commands if "umount" in c[:2] or c[1:2] == ["umount"]]


def test_jobs_whose_epilog_never_came_are_forgotten(nm, node):
    start(nm, node, "1")
    start(nm, node, "2")
    node.slurm_jobs.discard("1")  # job 1 ended while slurmd was down: no epilog
    assert nm.stop("2", "ann") is True  # so job 2 is the last one
    assert nm.jobs("ann") == []


def test_jobs_are_kept_when_slurm_cannot_be_asked(nm, node):
    start(nm, node, "1")
    start(nm, node, "2")
    node.slurm_jobs = None  # squeue fails: never unmount under a possibly running job
    assert nm.stop("2", "ann") is False
    assert node.state(nm.mountpoint("ann")) == "live"


def test_dead_mount_is_cleared_before_mounting_again(nm, node):
    start(nm, node, "1")
    node.mounts[str(nm.mountpoint("ann"))] = "dead"  # the daemon was killed (OOM)
    start(nm, node, "2")
    assert ["umount", "-l", str(nm.mountpoint("ann"))] in node.commands
    assert node.mounts_run() == 2 and node.state(nm.mountpoint("ann")) == "live"


def test_busy_unmount_falls_back_to_lazy(nm, node):
    start(nm, node, "1")
    node.umount_rc = 1  # a process of the job still has a file open
    assert nm.stop("1", "ann") is True
    assert node.commands[-1] == ["umount", "-l", str(nm.mountpoint("ann"))]


def test_failed_mount_does_not_count_the_job(nm, node):
    node.mount_rc = 1
    with pytest.raises(SystemExit):
        start(nm, node, "1")
    assert nm.jobs("ann") == []
    node.mount_rc = 0
    start(nm, node, "2")
    assert node.state(nm.mountpoint("ann")) == "live"


@pytest.mark.parametrize("bad", ["", "..", "a/b", "-rf"])
def test_hostile_names_are_refused(nm, node, bad):
    with pytest.raises(SystemExit):
        nm.start("1", bad)
    with pytest.raises(SystemExit):
        nm.start(bad, "ann")
    assert node.commands == []


def test_concurrent_prologs_and_epilogs_mount_once(nm, node):
    """32 array tasks start at once, then end at once: one mount, one unmount."""
    jobs = [str(i) for i in range(32)]
    node.slurm_jobs.update(jobs)
    threads = [threading.Thread(target=nm.start, args=(j, "ann")) for j in jobs]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert node.mounts_run() == 1 and len(nm.jobs("ann")) == 32
    results: List[bool] = []
    threads = [threading.Thread(target=lambda j=j: results.append(nm.stop(j, "ann"))) for j in jobs]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert results.count(True) == 1
    assert node.state(nm.mountpoint("ann")) == "absent"


def test_settings_from_env_need_the_url():
    with pytest.raises(SystemExit):
        slurm.Settings.from_env({})
    s = slurm.Settings.from_env(
        {"XNATFS_URL": "https://x", "XNATFS_MOUNT_ARGS": "--read-only --max-requests 4"}
    )
    assert s.mount_args == ["--read-only", "--max-requests", "4"]
    assert s.state_dir == Path("/run/xnatfs-slurm")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)
def test_a_users_symlink_in_a_shared_cache_root_is_not_followed_by_roots_chown(tmp_path, node):
    """The prolog runs as root and chowns ``<cache root>/<user>`` to the user.  With the cache
    root on a world-writable scratch (``XNATFS_CACHE_ROOT=/scratch``, sticky like /tmp), a user
    could make ``/scratch/<user>`` a symlink to a root-owned folder (``/etc``) before a job:
    ``os.chown`` followed it and gave the user that folder."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch.chmod(0o1777)
    victim = tmp_path / "etc"
    victim.mkdir()
    (scratch / "nobody").symlink_to(victim)
    s = slurm.Settings(
        url="https://xnat.example.org",
        mount_root=tmp_path / "xnat",
        cache_root=scratch,
        state_dir=tmp_path / "run",
    )
    nm = slurm.NodeMounts(s, run=node.run, state=node.state, running=node.running)
    node.slurm_jobs.add("7")
    with pytest.raises(SystemExit):
        nm.start("7", "nobody")
    assert victim.stat().st_uid == 0
    assert node.mounts_run() == 0
    # a folder someone else made there before the user's first job: refused too
    (scratch / "nobody").unlink()
    (scratch / "nobody").mkdir(mode=0o777)
    os.chown(scratch / "nobody", 12345, 12345)
    with pytest.raises(SystemExit):
        nm.start("7", "nobody")
    assert (scratch / "nobody").stat().st_uid == 12345
    # a plain folder the user made (or none yet) is theirs to use, private
    (scratch / "nobody").rmdir()
    assert nm.start("7", "nobody") == tmp_path / "xnat" / "nobody"
    st = (scratch / "nobody").stat()
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid and st.st_mode & 0o777 == 0o700
