#!/usr/bin/env python3
"""One xnatfs mount per user per node, shared by all of that user's jobs on the node (Slurm).

Why not one mount per job: a node running 32 array tasks of one user would hold 32 mounts,
32 caches of the same bytes and 32 times the requests on XNAT.  Why not one mount per node for
everybody: XNAT must authorize each user as themselves.  So the first job of a user on a node
mounts ``$XNATFS_MOUNT_ROOT/<user>`` (as that user, with their own ``~/.netrc``, a node-local
cache on scratch), later jobs reuse it, and the last job to end unmounts it.

Run from Slurm's ``Prolog=``/``Epilog=`` (as root, on the compute node; see
``prolog.sh``/``epilog.sh`` beside this file), or by hand::

    xnatfs_slurm.py start|stop JOBID USER      # what prolog/epilog do
    xnatfs_slurm.py status [USER]              # jobs and mount state

Reference counting: one file per job under ``$XNATFS_SLURM_STATE/<user>/jobs/``, changed only
under an exclusive ``flock`` of ``<user>/lock``, so concurrent prologs and epilogs of one user
serialise and never race a mount against an unmount.  Every operation is idempotent (a
prolog run twice counts the job once; an epilog for an unknown job changes nothing), and every
operation first drops job files of jobs Slurm no longer runs (an epilog that never ran after a
slurmd crash must not keep a mount forever).  If Slurm cannot be asked (``squeue`` fails), the
files are kept: unmounting under a running job would be worse than a mount that stays.

A mount left dead by a killed daemon (``ENOTCONN``) is cleared (``umount -l``) before mounting
again.  The unmount waits for nothing: xnatfs keeps unsent uploads in its journal on the
node-local cache and sends them at the next mount of that user on that node (README
"Writing"), so users who write should keep scratch persistent or write elsewhere.

Settings (environment, or ``/etc/xnatfs/slurm.env`` with KEY=VALUE lines):
``XNATFS_URL`` (required), ``XNATFS_MOUNT_ROOT`` (``/xnat``), ``XNATFS_CACHE_ROOT``
(``/scratch/xnatfs``: ``<root>/<user>`` is the user's cache, node-local), ``XNATFS_SLURM_STATE``
(``/run/xnatfs-slurm``, tmpfs: a reboot forgets every job, as it should), ``XNATFS_BIN``
(``xnatfs``), ``XNATFS_MOUNT_ARGS`` (extra options, e.g. ``--max-requests 8``).

This file does not import xnatfs: it runs under the system's python3.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set

Runner = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class Settings:
    url: str
    mount_root: Path = Path("/xnat")
    cache_root: Path = Path("/scratch/xnatfs")
    state_dir: Path = Path("/run/xnatfs-slurm")
    xnatfs: str = "xnatfs"
    mount_args: List[str] = field(default_factory=list)

    @classmethod
    def from_env(cls, env: Dict[str, str]) -> "Settings":
        if not env.get("XNATFS_URL"):
            raise SystemExit("xnatfs_slurm: XNATFS_URL is not set (/etc/xnatfs/slurm.env)")
        return cls(
            url=env["XNATFS_URL"],
            mount_root=Path(env.get("XNATFS_MOUNT_ROOT", "/xnat")),
            cache_root=Path(env.get("XNATFS_CACHE_ROOT", "/scratch/xnatfs")),
            state_dir=Path(env.get("XNATFS_SLURM_STATE", "/run/xnatfs-slurm")),
            xnatfs=env.get("XNATFS_BIN", "xnatfs"),
            mount_args=shlex.split(env.get("XNATFS_MOUNT_ARGS", "")),
        )


def _proc_mounts() -> Set[str]:
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
        return {line.split()[1].replace("\\040", " ") for line in fh if line.strip()}


def mount_state(path: Path) -> str:
    """``"live"``, ``"dead"`` (in the mount table, but the daemon is gone: ENOTCONN) or
    ``"absent"``."""
    if str(path) not in _proc_mounts():
        return "absent"
    try:
        os.stat(path)
        return "live"
    except OSError:
        return "dead"


def slurm_running_jobs(job_ids: Iterable[str]) -> Optional[Set[str]]:
    """Which of ``job_ids`` Slurm still runs on any node; None if Slurm cannot say."""
    ids = sorted(set(job_ids))
    if not ids:
        return set()
    try:
        res = subprocess.run(
            ["squeue", "-h", "-o", "%A", "-j", ",".join(ids)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        # squeue exits 1 when none of the ids is known any more
        return set() if "Invalid job id" in res.stderr else None
    return {line.strip() for line in res.stdout.splitlines() if line.strip()}


def _run(cmd: Sequence[str]) -> int:
    return subprocess.run(list(cmd), timeout=120).returncode


class NodeMounts:
    """The logic, with every side effect injected (tests pass fakes)."""

    def __init__(
        self,
        settings: Settings,
        run: Runner = _run,
        state: Callable[[Path], str] = mount_state,
        running: Callable[[Iterable[str]], Optional[Set[str]]] = slurm_running_jobs,
        chown: Optional[Callable[[Path, str], None]] = None,
    ) -> None:
        self.s = settings
        self.run = run
        self.state = state
        self.running = running
        self.chown = chown if chown is not None else _chown_to

    def mountpoint(self, user: str) -> Path:
        return self.s.mount_root / user

    def _jobs_dir(self, user: str) -> Path:
        return self.s.state_dir / user / "jobs"

    def jobs(self, user: str) -> List[str]:
        d = self._jobs_dir(user)
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def _locked(self, user: str):
        _check_name(user)
        d = self.s.state_dir / user
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fh = open(d / "lock", "a+")  # noqa: SIM115 - closed by the caller
        fcntl.flock(fh, fcntl.LOCK_EX)
        return fh

    def _prune(self, user: str, keep: str = "") -> None:
        """Forget jobs Slurm no longer runs (their epilog never came)."""
        known = [j for j in self.jobs(user) if j != keep]
        alive = self.running(known)
        if alive is None:
            return
        for job in known:
            if job not in alive:
                (self._jobs_dir(user) / job).unlink(missing_ok=True)

    def start(self, job: str, user: str) -> Path:
        """Count ``job`` for ``user`` and make sure the user's mount is live."""
        _check_name(job)
        with self._locked(user):
            self._prune(user, keep=job)
            jobs = self._jobs_dir(user)
            jobs.mkdir(parents=True, exist_ok=True)
            (jobs / job).touch()
            mnt = self.mountpoint(user)
            state = self.state(mnt)
            if state == "live":
                return mnt
            if state == "dead":
                self.run(["umount", "-l", str(mnt)])
            cache = self.s.cache_root / user
            for d in (mnt, cache):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.chown(d, user)
            rc = self.run(
                [
                    "runuser",
                    "-u",
                    user,
                    "--",
                    self.s.xnatfs,
                    "mount",
                    self.s.url,
                    str(mnt),
                    "--cache-dir",
                    str(cache),
                    *self.s.mount_args,
                ]
            )
            if rc != 0:
                (jobs / job).unlink(missing_ok=True)
                raise SystemExit(f"xnatfs_slurm: mounting {mnt} for {user} failed ({rc})")
            return mnt

    def stop(self, job: str, user: str) -> bool:
        """Forget ``job``; unmount when it was the user's last job here.  True if unmounted."""
        _check_name(job)
        with self._locked(user):
            (self._jobs_dir(user) / job).unlink(missing_ok=True)
            self._prune(user)
            if self.jobs(user):
                return False
            mnt = self.mountpoint(user)
            state = self.state(mnt)
            if state == "absent":
                return False
            if state == "live" and self.run([self.s.xnatfs, "umount", str(mnt)]) == 0:
                return True
            # busy (a leftover process of the job) or dead: detach it, the kernel finishes
            self.run(["umount", "-l", str(mnt)])
            return True


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.startswith("-"):
        raise SystemExit(f"xnatfs_slurm: refusing name {name!r}")


def _chown_to(path: Path, user: str) -> None:
    """Give the folder ``path`` to ``user`` (mode 0700), never what a symlink there points to,
    nor a folder another user made: this runs as root, and with the cache or mount root on a
    world-writable scratch a user could have made ``<root>/<user>`` a symlink to ``/etc``
    (``os.chown`` follows it), or made another user's folder before that user's first job."""
    pw = pwd.getpwnam(user)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SystemExit(
            f"xnatfs_slurm: refusing {path}: not a plain folder ({exc.strerror})"
        ) from None
    try:
        owner = os.fstat(fd).st_uid
        if owner not in (0, pw.pw_uid):
            # made by someone else before the user's first job: they chose its mode and may
            # hold it open; the user's cache (XNAT's bytes, the upload journal) must not be there
            raise SystemExit(f"xnatfs_slurm: refusing {path}: owned by uid {owner}, not {user}")
        os.fchown(fd, pw.pw_uid, pw.pw_gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _env() -> Dict[str, str]:
    env: Dict[str, str] = {}
    conf = Path(os.environ.get("XNATFS_SLURM_CONF", "/etc/xnatfs/slurm.env"))
    if conf.is_file():
        for line in conf.read_text().splitlines():
            key, eq, value = line.strip().partition("=")
            if eq and not key.startswith("#"):
                env[key.strip()] = value.strip().strip('"')
    env.update({k: v for k, v in os.environ.items() if k.startswith("XNATFS_")})
    return env


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("start", "stop", "status"):
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    nm = NodeMounts(Settings.from_env(_env()))
    if args[0] == "status":
        users = args[1:] or (
            sorted(p.name for p in nm.s.state_dir.iterdir()) if nm.s.state_dir.is_dir() else []
        )
        for user in users:
            print(
                f"{user}: {nm.state(nm.mountpoint(user))} {nm.mountpoint(user)} "
                f"jobs={','.join(nm.jobs(user)) or '-'}"
            )
        return 0
    if len(args) != 3:
        print("usage: xnatfs_slurm.py start|stop JOBID USER", file=sys.stderr)
        return 2
    if args[0] == "start":
        print(nm.start(args[1], args[2]))
    else:
        nm.stop(args[1], args[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
