"""The mount daemon: its command line and environment, spawning it and waiting for its mount
(``fs/mounting.MountDaemon``), and the foreground FUSE loop it runs.

Running the daemon as a fresh process (instead of forking a process that already has threads)
means every thread starts after "daemonizing" (docs/FUSE.md §3.1).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping

from xnatfs import settings as table
from xnatfs.commands.common import UsageError, load_fuse
from xnatfs.fs import mounting
from xnatfs.options import Options

log = logging.getLogger("xnatfs")


def _log_file(args: argparse.Namespace, options: Options, mountpoint: str) -> Path:
    """``--log-file``, else ``<cache-dir>/logs/<mountpoint>.log``."""
    from xnatfs.private import private_dir

    if args.log_file:
        return Path(args.log_file)
    try:
        # the cache folder first: one of another user's is refused before anything is made
        # in it (xnatfs.private)
        private_dir(options.cache_dir)
        logs = Path(private_dir(options.cache_dir / "logs"))
    except OSError as exc:
        raise UsageError(f"cache folder: {exc.strerror}") from None
    return logs / (mountpoint.strip("/").replace("/", "_") + ".log")


def daemon_argv(
    args: argparse.Namespace, options: Options, mountpoint: str, log_level: str
) -> List[str]:
    """The child's command line: every setting explicit (from the table, ``settings.py``),
    credentials on stdin, the caller's ``-o`` options as given."""
    argv = mounting.xnatfs_argv(options.url, mountpoint, *table.daemon_args(options, log_level))
    for opt in args.fuse_options:
        argv += ["-o", opt]
    return argv


def daemon_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """The daemon's environment: the caller's without the credential variables.  The daemon
    gets its credentials on stdin only; left in its environment the password would be readable
    in ``/proc/PID/environ`` for as long as the mount lives (issue 17 §7)."""
    from xnatfs.xnat.auth import ENV_PASSWORD, ENV_USER

    return {key: value for key, value in environ.items() if key not in (ENV_USER, ENV_PASSWORD)}


def drop_credentials_from_environment(
    args: argparse.Namespace, options: Options, creds: Any, mountpoint: str, log_level: str
) -> None:
    """A foreground mount (systemd ``EnvironmentFile=``, ``docker run -e``) whose environment
    holds ``XNATFS_USER``/``XNATFS_PASSWORD`` replaces itself (same PID, so systemd's
    ``Type=notify`` still sees its main process) by the daemon command line with the credentials
    on stdin and an environment without them: ``/proc/PID/environ`` shows the environment the
    process was started with for its whole life (issue 17 §7)."""
    if daemon_env(os.environ) == dict(os.environ):
        return
    read_end, write_end = os.pipe()
    os.write(
        write_end,
        json.dumps(
            {"username": creds.username, "password": creds.password, "source": creds.source}
        ).encode()
        + b"\n",
    )
    os.close(write_end)
    os.dup2(read_end, 0)
    os.close(read_end)
    argv = daemon_argv(args, options, mountpoint, log_level)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, daemon_env(os.environ))


def spawn_daemon(
    args: argparse.Namespace, options: Options, creds: Any, mountpoint: str, log_level: str
) -> int:
    """Start the daemon, wait until its mount answers; on failure stop it, clear what it left
    and raise the reason with the tail of its log."""
    log_path = _log_file(args, options, mountpoint)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    daemon = mounting.MountDaemon(
        daemon_argv(args, options, mountpoint, log_level),
        mountpoint,
        log_path,
        {"username": creds.username, "password": creds.password, "source": creds.source},
        env=daemon_env(os.environ),
        log_mode=0o600,
    )
    try:
        daemon.start()
    except OSError as exc:  # the log file refused (mounting.open_log), or not creatable
        why = exc.strerror or str(exc)
        raise UsageError(why if str(log_path) in why else f"{log_path}: {why}") from None
    try:
        daemon.wait(mounting.MOUNT_WAIT_S)
    except mounting.MountFailed:
        daemon.end(grace=0)  # SIGTERM, then SIGKILL: bounded
        mounting.clear_stale(mountpoint)
        raise UsageError(
            f"mount of {options.url} at {mountpoint} failed; last log lines "
            f"({log_path}):\n{daemon.tail()}"
        ) from None
    print(f"xnatfs: mounted {options.url} at {mountpoint} (log: {log_path})")
    return 0


def fuse_kwargs(options: Options, mfusepy: Any) -> Dict[str, object]:
    """libfuse options: kernel caches matched to the listing TTL (docs/FUSE.md §2.3)."""
    ttl = options.listing_ttl
    kwargs: Dict[str, object] = {
        "fsname": f"xnatfs#{options.url}",
        "subtype": "xnatfs",
        "attr_timeout": ttl,
        "entry_timeout": ttl,
        "negative_timeout": min(ttl, 10.0),
        "auto_unmount": True,
        # unlink is unlink: without it libfuse turns the removal of a file some process still
        # has open into a rename to .fuse_hidden*, and XNAT has no rename (EXDEV), so `mv`
        # inside the mount failed at random ("cannot remove ... Invalid cross-device link")
        # whenever the kernel had not yet sent the RELEASE of its own copy's read.  Open
        # handles go on reading by their handle (docs/FUSE.md §2.4)
        "hard_remove": True,
    }
    if getattr(mfusepy, "fuse_version_major", 3) >= 3:
        kwargs["max_threads"] = options.max_threads
        # libfuse 3.14 checks the unset max_idle_threads (UINT_MAX) as a value and prints
        # "Ignoring invalid max threads value 4294967295" on every mount (libfuse#1003,
        # docs/FUSE.md §1.3): a valid value silences it; idle workers are kept up to the pool
        kwargs["max_idle_threads"] = options.max_threads
    for key, value in options.fuse_options.items():
        if key in ("big_writes", "large_read") and getattr(mfusepy, "fuse_version_major", 3) >= 3:
            log.warning("ignoring -o %s: libfuse3 refuses it (docs/FUSE.md §1.3)", key)
            continue
        kwargs[key] = value
    if options.read_only and options.zero_message_opens:
        # the kernel opens files alone (fs/noopen.py): it must refuse a write open itself
        # (EROFS), since no OPEN reaches the daemon to refuse it
        kwargs["ro"] = True
    if kwargs.get("allow_other") or kwargs.get("allow_root"):
        # other users reach the mount: the kernel must check the modes shown (owner-only
        # write bits unless --allow-other-write), else anyone could write to XNAT as the
        # owner (issue 17 §2, docs/FUSE.md §3.4)
        kwargs["default_permissions"] = True
    elif options.allow_other_write:
        log.warning("--allow-other-write has no effect without -o allow_other")
    return kwargs


def _raise_open_files_limit(want: int = 65536) -> None:
    """Lift the soft open-files limit towards the hard one (as Go's runtime does): a bulk zip
    holds a partial file open for each file it brings (``policies.bulkzip.BulkZip``), and 1024
    is a common soft default."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.info("open-files limit stays at %d: %s", soft, exc)


#: The daemon's threshold for Python's youngest GC generation (Python's default: 700
#: allocations).  A listing of 2,000 files or a bulk zip's 2,000 downloads makes tens of
#: thousands of objects at once, and each 700 started a collection: a cold ``cp -r`` of the
#: fMRI run (2,000 x 64 KiB) ran ~190 of them, 72-119 ms of the daemon's CPU, with 20-25 ms
#: full collections inside the first open (the bulk zip's registration, before its request);
#: at 20,000, 6 collections, 21-25 ms (RESULTS.md, "Before the zip").  Cycles are still
#: collected, a little later.  0 keeps Python's.
GC_YOUNGEST = 20_000


def _tune_gc() -> None:
    """Set the youngest generation's threshold (``GC_YOUNGEST``), the older ones as they are."""
    import gc

    if GC_YOUNGEST:
        _, middle, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNGEST, middle, oldest)


def dump_threads_on_sigusr1() -> None:
    """``kill -USR1 <daemon>`` writes every thread's Python stack to stderr (the daemon's log
    file, or the journal under systemd) and the mount goes on: what a hung mount is waiting
    for, without a debugger (py-spy showed the request-limiter deadlock of a CI run; this
    gives the same picture with nothing installed, and in CI the test fixture asks for it
    when a mount test fails).  faulthandler's handler runs in C, so it answers even when every
    Python thread is stuck on a lock.  libfuse handles only HUP, INT, TERM and PIPE."""
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)


def run_foreground(
    options: Options,
    creds: Any,
    mountpoint: str,
    on_ready: Any = None,
    on_first_request: Any = None,
) -> int:
    """Mount and serve until unmounted or signalled; exit status 0 on a clean stop."""
    mfusepy = load_fuse()
    from xnatfs.fs.ops import XnatFUSE, XnatOperations
    from xnatfs.runtime import Runtime

    _raise_open_files_limit()
    _tune_gc()
    dump_threads_on_sigusr1()
    # everything the daemon creates (cache index, lock, journal, spool) is private whatever
    # the caller's umask; the folders are 0700 as well (docs/SECURITY.md)
    os.umask(0o077)
    runtime = Runtime(options, creds)
    try:
        runtime.start()
    except PermissionError as exc:
        # a folder or file under the cache folder that is a link or another user's
        # (xnatfs.private): one line
        runtime.close()
        raise UsageError(f"cache folder: {exc.strerror or exc}") from None
    except Exception as exc:
        runtime.close()
        from xnatfs.runtime import full_disk_at_start

        full = full_disk_at_start(options.cache_dir, exc)
        if full is not None:  # one line, not a traceback (docs/RELIABILITY.md)
            raise UsageError(full) from None
        raise
    ops = XnatOperations(runtime, on_ready=on_ready, on_first_request=on_first_request)
    log.info(
        "mounting %s at %s (libfuse %s)",
        options.url,
        mountpoint,
        getattr(mfusepy, "fuse_version_major", "?"),
    )
    try:
        XnatFUSE(ops, mountpoint, foreground=True, raw_fi=True, **fuse_kwargs(options, mfusepy))
    except RuntimeError as exc:
        # libfuse3 returns 8 after SIGTERM/SIGINT although the unmount was clean
        # (docs/FUSE.md §1.3); anything else is a real failure
        if str(exc) not in ("8", "7"):
            log.error("FUSE loop failed: %s", exc)
            return 1
    finally:
        runtime.close()
    log.info("unmounted %s", mountpoint)
    return 0
