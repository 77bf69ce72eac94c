"""The ``xnatfs`` command line: mount, umount, status, demo, emulator; ``mount.xnatfs`` for fstab.

This is the only module that configures logging and the only one (besides tests) that may import
the emulator.  ``xnatfs mount`` without ``--foreground`` starts the filesystem as a detached child
process (``mount --foreground`` with the credentials on its stdin, never in argv or the
environment), waits until the mount answers, and exits 0 — or prints why it failed and exits 1,
leaving no stale mount.  Running the daemon as a fresh process (instead of forking a process that
already has threads) means every thread starts after "daemonizing" (fuse-notes.md §3.1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from xnatfs import __version__
from xnatfs.options import Options, default_cache_dir, parse_size

log = logging.getLogger("xnatfs")

#: how long ``xnatfs mount`` waits for the daemon's mount to answer
MOUNT_WAIT_S = 60.0


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


# ---------------------------------------------------------------------------------- parsing
def _fuse_opts(values: Sequence[str]) -> Dict[str, object]:
    """``-o a,b=c -o d`` -> ``{"a": True, "b": "c", "d": True}``."""
    out: Dict[str, object] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, val = item.partition("=")
            out[key] = val if eq else True
    return out


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground (systemd, debugging); logs go to stderr")
    # Defaults are None here: the effective value comes from xnatfs.config (command line >
    # XNATFS_* environment > config file > built-in default), which knows the defaults.
    p.add_argument("--config", default=None,
                   help="config file (default $XNATFS_CONFIG or ~/.config/xnatfs/config.toml)")
    p.add_argument("--cache-dir", default=None,
                   help="on-disk cache (default: $XDG_CACHE_HOME/xnatfs, mode 0700)")
    p.add_argument("--cache-size", default=None, help="content cache limit (default 10G)")
    p.add_argument("--listing-ttl", type=float, default=None,
                   help="seconds a listing is trusted (default 60)")
    p.add_argument("--max-threads", type=int, default=None,
                   help="FUSE worker threads = HTTP pool size (default 16)")
    p.add_argument("--max-downloads", type=int, default=None,
                   help="parallel file downloads into the cache (default 8)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="files of a folder downloaded ahead of the one opened (default 16, 0 off)")
    p.add_argument("--bids-config", default=None, metavar="FILE",
                   help="dcm2bids configuration file for the BIDS view MNT/.bids (docs/BIDS.md)")
    p.add_argument("--bulk-zip", type=int, default=None,
                   help="fetch a resource with at least N uncached files as one zip when one "
                   "of them is opened (default 32, 0 off)")
    p.add_argument("--walk-ahead", type=int, default=None,
                   help="listings loaded in parallel ahead of find/cp -r/du (default 4, 0 off)")
    p.add_argument("--max-requests", type=int, default=None,
                   help="HTTP requests in flight at most, every activity together; backs off "
                   "by itself on 429/503/timeouts (default 16)")
    p.add_argument("--read-ahead-kb", type=int, default=None,
                   help="kernel read-ahead of the mount (default 1024: 1 MiB reads; 0 keeps "
                   "the kernel's)")
    p.add_argument("--timeout", type=float, default=None,
                   help="longest wait of any file operation in seconds (default 60)")
    p.add_argument("--connect-timeout", type=float, default=None, help="(default 5)")
    p.add_argument("--read-timeout", type=float, default=None, help="(default 30)")
    p.add_argument("--retries", type=int, default=None, help="(default 3)")
    p.add_argument("--read-only", action="store_true", default=None,
                   help="refuse every write (EROFS)")
    p.add_argument("--allow-delete", action="store_true", default=None,
                   help="allow rm, rmdir, overwriting files and prearchive deletes")
    p.add_argument("--catalog-times", action="store_true", default=None,
                   help="show files' times from XNAT's resource catalogs (one more request "
                   "per resource listing)")
    p.add_argument("--allow-other-write", action="store_true", default=None,
                   help="with -o allow_other: let other local users write too (as you, on "
                   "XNAT); without it they can only read (see -o umask=)")
    p.add_argument("--dir-mode", default=None,
                   help="permission bits shown for directories (default 0755; group/other "
                   "never get write bits unless --allow-other-write)")
    p.add_argument("--file-mode", default=None,
                   help="permission bits shown for files (default 0644; the same rule)")
    p.add_argument("--nonempty", action="store_true", default=None,
                   help="mount even if the mount point holds files (they stay hidden while "
                   "mounted); also -o nonempty")
    p.add_argument("--experiment-type", default=None,
                   help="xsiType of experiments made with mkdir (default xnat:mrSessionData)")
    p.add_argument("--scan-type", default=None,
                   help="xsiType of scans made with mkdir (default xnat:mrScanData)")
    p.add_argument("--netrc", default=None, help="netrc file (default $NETRC or ~/.netrc)")
    p.add_argument("--ca-bundle", default=None, help="CA bundle for TLS verification")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-file", default=None,
                   help="daemon log (default: <cache-dir>/logs/<mountpoint>.log)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[],
                   help="FUSE options, comma separated (e.g. allow_other)")
    p.add_argument("--credentials-stdin", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xnatfs",
                                     description="Mount an XNAT archive as a filesystem.")
    parser.add_argument("--version", action="version", version=f"xnatfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "mount", help="mount an XNAT server", description="Mount an XNAT server.",
        epilog="Credentials (never on the command line): user and password in the config "
        "file (which must then be private), else the netrc entry for the host (--netrc FILE, "
        "else $NETRC, else ~/.netrc; refused when group- or world-readable), else a prompt on "
        "a terminal, else XNATFS_USER/XNATFS_PASSWORD. 'xnatfs config URL' shows the netrc.")
    p.add_argument("url", help="XNAT base URL, e.g. https://xnat.example.org (context path included)")
    p.add_argument("mountpoint")
    _add_mount_options(p)

    p = sub.add_parser("config", help="print the effective settings for a server (secrets "
                       "masked) and where each comes from")
    p.add_argument("url")
    _add_mount_options(p)

    p = sub.add_parser("umount", help="unmount")
    p.add_argument("mountpoint")
    p.add_argument("--lazy", "-z", action="store_true", help="detach even if busy")

    p = sub.add_parser("status", help="show a mount's statistics")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="run the bundled XNAT emulator with demo data and mount it")
    p.add_argument("mountpoint", nargs="?", default="xnat-demo")
    p.add_argument("--data", type=Path, default=None,
                   help="emulator data directory (default: a fresh temporary one)")
    p.add_argument("--port", type=int, default=0)

    p = sub.add_parser("cache", help="inspect or manage the content cache")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    for name, text in (("usage", "size and number of cached files"),
                       ("prune", "evict least recently used files down to SIZE"),
                       ("clear", "empty the cache (refused while a mount uses it)")):
        c = cache_sub.add_parser(name, help=text)
        c.add_argument("--cache-dir", default=None,
                       help="cache directory (default: $XDG_CACHE_HOME/xnatfs)")
        if name == "prune":
            c.add_argument("size", help="e.g. 5G")
    c = cache_sub.add_parser("verify", help="check every cached file (size and MD5); works "
                             "while a mount uses the cache")
    c.add_argument("--cache-dir", default=None,
                   help="cache directory (default: $XDG_CACHE_HOME/xnatfs)")
    c.add_argument("--repair", action="store_true",
                   help="drop bad entries (the next read fetches them again)")
    c = cache_sub.add_parser("prefetch", help="read paths of a mount into its cache")
    c.add_argument("paths", nargs="+", help="files or folders inside an xnatfs mount")
    c.add_argument("--threads", type=int, default=8)

    from xnatfs import prearchive_cli

    prearchive_cli.add_parser(sub)
    sub.add_parser("emulator", help="run the XNAT emulator alone (see 'xnatfs emulator -h')",
                   add_help=False)
    sub.add_parser("cache-proxy", help="run a shared nginx cache of file bytes for many mounts "
                   "(see 'xnatfs cache-proxy -h', docs/SCALING.md)", add_help=False)
    return parser


def check_url(url: str) -> str:
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL: {url}")
    if parts.username or parts.password:
        raise UsageError("credentials do not belong in the URL (they would be visible in the "
                         "process list): use ~/.netrc, the prompt, or XNATFS_USER/XNATFS_PASSWORD")
    return url


def settings_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Every setting -> (value, source), by the precedence of ``xnatfs.config``."""
    from xnatfs import config as xc

    url = check_url(args.url)
    given = {key: getattr(args, key) for key in xc.KEYS if getattr(args, key, None) is not None}
    return xc.effective_settings(url, given, os.environ, xc.load_config(args.config))


def _take_owner_options(fuse: Dict[str, object]) -> Dict[str, int]:
    """``uid=``, ``gid=`` and ``umask=`` are applied by xnatfs, not passed to libfuse.

    libfuse3's own ``umask=`` *replaces* every mode with ``0777 & ~umask``, so ``umask=0`` would
    give other users write bits; ours only takes bits away (issue 17 §2).
    """
    out: Dict[str, int] = {}
    for key, base in (("uid", 10), ("gid", 10), ("umask", 8)):
        if key not in fuse:
            continue
        value = fuse.pop(key)
        try:
            out[key] = int(str(value), base)
        except ValueError:
            raise UsageError(f"-o {key}={value}: not a number") from None
        if out[key] < 0 or (key == "umask" and out[key] > 0o777):
            raise UsageError(f"-o {key}={value}: out of range")
    return out


def options_from_settings(url: str, settings: Dict[str, Any], fuse_options: Sequence[str]
                          ) -> Options:
    v = {key: value for key, (value, _source) in settings.items()}
    fuse = _fuse_opts(fuse_options)
    owner = _take_owner_options(fuse)
    # libfuse3 has no "nonempty" (it always allows it): xnatfs checks the mount point itself
    nonempty = fuse.pop("nonempty", None) is not None or bool(v["nonempty"])
    return Options(
        url=check_url(url), cache_dir=Path(v["cache_dir"]).expanduser().resolve(),
        cache_size=v["cache_size"], listing_ttl=v["listing_ttl"], max_threads=v["max_threads"],
        max_downloads=v["max_downloads"], prefetch=v["prefetch"], walk_ahead=v["walk_ahead"],
        bulk_zip=v["bulk_zip"], max_requests=v["max_requests"],
        read_ahead_kb=v["read_ahead_kb"], fs_timeout=v["timeout"],
        connect_timeout=v["connect_timeout"], read_timeout=v["read_timeout"],
        retries=v["retries"], verify=v["ca_bundle"] or True, read_only=v["read_only"],
        allow_delete=v["allow_delete"], allow_other_write=v["allow_other_write"],
        catalog_times=v["catalog_times"],
        experiment_type=v["experiment_type"], scan_type=v["scan_type"], fuse_options=fuse,
        uid=owner.get("uid"), gid=owner.get("gid"), umask=owner.get("umask", 0),
        dir_mode=v["dir_mode"], file_mode=v["file_mode"], nonempty=nonempty,
        bids_config=str(v["bids_config"] or ""))


# ---------------------------------------------------------------------------------- logging
def setup_logging(level: str, stream: Any = None) -> None:
    from xnatfs.logfmt import SafeFormatter  # one line per record, controls escaped

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(SafeFormatter(
        "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # urllib3 logs full URLs at DEBUG, never credentials, but is noisy
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # mfusepy's own logger prints a traceback for every ENOENT at DEBUG; our ops log their
    # failures themselves (fs/errmap.py)
    logging.getLogger("fuse").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------- mount
def _credentials(args: argparse.Namespace, url: str, settings: Dict[str, Any]) -> Any:
    from xnatfs.config import SOURCE_FILE
    from xnatfs.xnat.auth import Credentials, resolve_credentials

    if args.credentials_stdin:
        data = json.loads(sys.stdin.readline() or "{}")
        return Credentials(data["username"], data["password"], source=data.get("source", "parent"))
    user, user_src = settings["user"]
    password, password_src = settings["password"]
    if user and password and SOURCE_FILE in (user_src, password_src):
        return Credentials(user, password, source="config file")
    return resolve_credentials(url, netrc_path=settings["netrc"][0])


def _check_server(options: Options, creds: Any) -> None:
    """Log in once with a short-lived client so that a wrong password or an unreachable server
    is one clear line before anything is mounted (STYLE.md §6)."""
    from xnatfs.xnat import errors as xe
    from xnatfs.xnat.client import ClientOptions, XnatClient

    client = XnatClient(options.url, creds, ClientOptions(
        pool_size=1, connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
        retries=1, verify=options.verify, heartbeat=False,
        deadline=options.fs_timeout))  # the check is bounded like every call (issue 17 §1)
    # the outcome is the one line below: the client's own log line of the same refusal would
    # print first, timestamped (issue 16 §5); at --log-level debug it stays
    client_log = logging.getLogger("xnatfs.xnat")
    old_level = client_log.level
    if not client_log.isEnabledFor(logging.DEBUG):
        client_log.setLevel(logging.CRITICAL)
    try:
        client.start()
    except xe.Unauthorized:
        raise UsageError(f"{options.url}: login refused for user '{creds.username}' "
                         f"(credentials from {creds.source}): check the user name and password")
    except (xe.Unreachable, xe.XnatTimeout) as exc:
        raise UsageError(f"cannot reach {options.url}: {exc.message or exc}")
    except xe.XnatError as exc:
        raise UsageError(f"{options.url} does not answer like an XNAT server: {exc}")
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - best-effort logout of the check session
            pass
        client_log.setLevel(old_level)


def _prepare_mountpoint(mountpoint: str, nonempty: bool = False) -> str:
    """The absolute mount point, after clearing a stale mount there; one clear line (a
    ``UsageError``) when it cannot or should not be mounted on (issue 16 §6)."""
    from xnatfs.fs import mounting

    path = os.path.abspath(mountpoint)
    if mounting.clear_stale(path):
        log.info("cleared a stale mount at %s", path)
    if mounting.is_mounted(path):
        raise UsageError(f"{path} is already mounted (xnatfs umount {path})")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"mount point {path} is a file, not a directory: mount on a "
                         "directory (an empty one)")
    if not os.path.isdir(path):
        raise UsageError(f"mount point {path} does not exist (mkdir -p {path})")
    if not nonempty:
        try:
            with os.scandir(path) as entries:
                busy = any(True for _ in entries)
        except OSError:
            busy = False  # unreadable to us: libfuse decides
        if busy:
            # its files would be hidden while mounted; sshfs and rclone refuse it too
            raise UsageError(f"mount point {path} is not empty: its files would be hidden "
                             "while mounted; use an empty directory, or --nonempty "
                             "(-o nonempty) to mount over them")
    return path


def _load_fuse() -> Any:
    from xnatfs.fs import fuselib

    try:
        return fuselib.load()
    except fuselib.FuseMissing as exc:
        raise UsageError(str(exc)) from None


def cmd_mount(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    setup_logging(settings["log_level"][0])
    options = options_from_settings(args.url, settings, args.fuse_options)
    mountpoint = _prepare_mountpoint(args.mountpoint, options.nonempty)
    _load_fuse()
    creds = _credentials(args, options.url, settings)
    if args.foreground:
        if not args.credentials_stdin:
            _check_server(options, creds)
            _drop_credentials_from_environment(args, options, creds, mountpoint,
                                               settings["log_level"][0])
        from xnatfs import notify

        def ready() -> None:
            notify.notify_ready(f"serving {options.url} at {mountpoint}")

        def first_request() -> None:
            # INIT has been answered once any other request arrives (fuse-notes.md §2.2)
            from xnatfs.fs.mounting import set_read_ahead

            if options.read_ahead_kb:
                set_read_ahead(mountpoint, options.read_ahead_kb)

        return run_foreground(options, creds, mountpoint, on_ready=ready,
                              on_first_request=first_request)
    _check_server(options, creds)
    return spawn_daemon(args, options, creds, mountpoint, settings["log_level"][0])


def cmd_config(args: argparse.Namespace) -> int:
    from xnatfs import config as xc

    settings = settings_from_args(args)
    if settings["netrc"][0] is None:
        # show the file the credentials really come from (xnat/auth.py: $NETRC, else ~/.netrc)
        from xnatfs.xnat.auth import _default_netrc

        path, explicit = _default_netrc(os.environ)
        exists = "" if os.path.exists(path) else ", missing"
        settings["netrc"] = (path, ("environment ($NETRC)" if explicit else "default") + exists)
    print(xc.render(settings, xc.load_config(args.config)), end="")
    return 0


def _log_file(args: argparse.Namespace, options: Options, mountpoint: str) -> Path:
    from xnatfs.runtime import private_dir

    if args.log_file:
        return Path(args.log_file)
    logs = Path(private_dir(options.cache_dir / "logs"))
    return logs / (mountpoint.strip("/").replace("/", "_") + ".log")


def daemon_argv(args: argparse.Namespace, options: Options, mountpoint: str,
                log_level: str) -> List[str]:
    """The child's command line: every option explicit, credentials on stdin."""
    argv = [sys.executable, "-m", "xnatfs", "mount", options.url, mountpoint, "--foreground",
            "--credentials-stdin", "--cache-dir", str(options.cache_dir),
            "--cache-size", str(options.cache_size), "--listing-ttl", str(options.listing_ttl),
            "--max-threads", str(options.max_threads),
            "--max-downloads", str(options.max_downloads), "--timeout", str(options.fs_timeout),
            "--prefetch", str(options.prefetch), "--read-ahead-kb", str(options.read_ahead_kb),
            "--walk-ahead", str(options.walk_ahead), "--bulk-zip", str(options.bulk_zip),
            "--max-requests", str(options.max_requests),
            "--connect-timeout", str(options.connect_timeout),
            "--read-timeout", str(options.read_timeout), "--retries", str(options.retries),
            "--log-level", log_level, "--config", os.devnull,
            "--experiment-type", options.experiment_type, "--scan-type", options.scan_type]
    if options.read_only:
        argv.append("--read-only")
    if options.allow_delete:
        argv.append("--allow-delete")
    if options.allow_other_write:
        argv.append("--allow-other-write")
    if options.catalog_times:
        argv.append("--catalog-times")
    if options.bids_config:
        argv += ["--bids-config", options.bids_config]
    if options.nonempty:
        argv.append("--nonempty")
    for flag, mode in (("--dir-mode", options.dir_mode), ("--file-mode", options.file_mode)):
        if mode is not None:
            argv += [flag, f"{mode:04o}"]
    if isinstance(options.verify, str):
        # from whichever source set it (command line, environment, config file): the child
        # reads no config file, and a relative path must not depend on its working directory
        argv += ["--ca-bundle", os.path.abspath(options.verify)]
    for opt in args.fuse_options:
        argv += ["-o", opt]
    return argv


def daemon_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """The daemon's environment: the caller's without the credential variables.  The daemon
    gets its credentials on stdin only; left in its environment the password would be readable
    in ``/proc/PID/environ`` for as long as the mount lives (issue 17 §7)."""
    from xnatfs.xnat.auth import ENV_PASSWORD, ENV_USER

    return {key: value for key, value in environ.items()
            if key not in (ENV_USER, ENV_PASSWORD)}


def _drop_credentials_from_environment(args: argparse.Namespace, options: Options, creds: Any,
                                       mountpoint: str, log_level: str) -> None:
    """A foreground mount (systemd ``EnvironmentFile=``, ``docker run -e``) whose environment
    holds ``XNATFS_USER``/``XNATFS_PASSWORD`` replaces itself (same PID, so systemd's
    ``Type=notify`` still sees its main process) by the daemon command line with the credentials
    on stdin and an environment without them: ``/proc/PID/environ`` shows the environment the
    process was started with for its whole life (issue 17 §7)."""
    if daemon_env(os.environ) == dict(os.environ):
        return
    read_end, write_end = os.pipe()
    os.write(write_end, json.dumps({"username": creds.username, "password": creds.password,
                                    "source": creds.source}).encode() + b"\n")
    os.close(write_end)
    os.dup2(read_end, 0)
    os.close(read_end)
    argv = daemon_argv(args, options, mountpoint, log_level)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, daemon_env(os.environ))


def spawn_daemon(args: argparse.Namespace, options: Options, creds: Any, mountpoint: str,
                 log_level: str) -> int:
    from xnatfs.fs import mounting

    log_path = _log_file(args, options, mountpoint)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_fh:
        os.chmod(log_path, 0o600)
        child = subprocess.Popen(daemon_argv(args, options, mountpoint, log_level),
                                 stdin=subprocess.PIPE, env=daemon_env(os.environ),
                                 stdout=log_fh, stderr=log_fh, start_new_session=True,
                                 close_fds=True)
    assert child.stdin is not None
    child.stdin.write(json.dumps({"username": creds.username, "password": creds.password,
                                  "source": creds.source}).encode() + b"\n")
    child.stdin.close()
    ok = mounting.wait_mounted(mountpoint, time.monotonic() + MOUNT_WAIT_S,
                               alive=lambda: child.poll() is None)
    if ok:
        print(f"xnatfs: mounted {options.url} at {mountpoint} (log: {log_path})")
        return 0
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
    mounting.clear_stale(mountpoint)
    tail = _tail(log_path)
    raise UsageError(f"mount of {options.url} at {mountpoint} failed; last log lines "
                     f"({log_path}):\n{tail}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def fuse_kwargs(options: Options, mfusepy: Any) -> Dict[str, object]:
    """libfuse options: kernel caches matched to the listing TTL (fuse-notes.md §2.3)."""
    ttl = options.listing_ttl
    kwargs: Dict[str, object] = {
        "fsname": f"xnatfs#{options.url}", "subtype": "xnatfs",
        "attr_timeout": ttl, "entry_timeout": ttl, "negative_timeout": min(ttl, 10.0),
        "auto_unmount": True,
    }
    if getattr(mfusepy, "fuse_version_major", 3) >= 3:
        kwargs["max_threads"] = options.max_threads
        # libfuse 3.14 checks the unset max_idle_threads (UINT_MAX) as a value and prints
        # "Ignoring invalid max threads value 4294967295" on every mount (libfuse#1003,
        # fuse-notes.md §1.3): a valid value silences it; idle workers are kept up to the pool
        kwargs["max_idle_threads"] = options.max_threads
    for key, value in options.fuse_options.items():
        if key in ("big_writes", "large_read") and getattr(mfusepy, "fuse_version_major", 3) >= 3:
            log.warning("ignoring -o %s: libfuse3 refuses it (fuse-notes.md §1.3)", key)
            continue
        kwargs[key] = value
    if kwargs.get("allow_other") or kwargs.get("allow_root"):
        # other users reach the mount: the kernel must check the modes shown (owner-only
        # write bits unless --allow-other-write), else anyone could write to XNAT as the
        # owner (issue 17 §2, fuse-notes.md §3.4)
        kwargs["default_permissions"] = True
    elif options.allow_other_write:
        log.warning("--allow-other-write has no effect without -o allow_other")
    return kwargs


def _raise_open_files_limit(want: int = 65536) -> None:
    """Lift the soft open-files limit towards the hard one (as Go's runtime does): a bulk zip
    holds a partial file open for each file it brings (``Tree._bulk``), and 1024 is a
    common soft default."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.info("open-files limit stays at %d: %s", soft, exc)


def run_foreground(options: Options, creds: Any, mountpoint: str,
                   on_ready: Any = None, on_first_request: Any = None) -> int:
    """Mount and serve until unmounted or signalled; exit status 0 on a clean stop."""
    mfusepy = _load_fuse()
    from xnatfs.fs.ops import XnatFUSE, XnatOperations
    from xnatfs.runtime import Runtime

    _raise_open_files_limit()
    # everything the daemon creates (cache index, lock, journal, spool) is private whatever
    # the caller's umask; the folders are 0700 as well (docs/SECURITY.md)
    os.umask(0o077)
    runtime = Runtime(options, creds)
    try:
        runtime.start()
    except Exception:
        runtime.close()
        raise
    ops = XnatOperations(runtime, on_ready=on_ready, on_first_request=on_first_request)
    log.info("mounting %s at %s (libfuse %s)", options.url, mountpoint,
             getattr(mfusepy, "fuse_version_major", "?"))
    try:
        XnatFUSE(ops, mountpoint, foreground=True, raw_fi=True,
                     **fuse_kwargs(options, mfusepy))
    except RuntimeError as exc:
        # libfuse3 returns 8 after SIGTERM/SIGINT although the unmount was clean
        # (fuse-notes.md §1.3); anything else is a real failure
        if str(exc) not in ("8", "7"):
            log.error("FUSE loop failed: %s", exc)
            return 1
    finally:
        runtime.close()
    log.info("unmounted %s", mountpoint)
    return 0


# ---------------------------------------------------------------------------------- others
def cmd_umount(args: argparse.Namespace) -> int:
    from xnatfs.fs import mounting

    path = os.path.abspath(args.mountpoint)
    if not mounting.is_mounted(path):
        raise UsageError(f"{path} is not mounted")
    result = mounting.unmount(path, lazy=args.lazy)
    if result.returncode != 0:
        raise UsageError(f"unmount of {path} failed: {result.stderr.strip()} "
                         f"(busy? try: xnatfs umount --lazy {path})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    stats_path = os.path.join(args.mountpoint, ".xnatfs", "stats")
    try:
        with open(stats_path, encoding="utf-8") as fh:
            stats = json.load(fh)
    except OSError as exc:
        raise UsageError(f"{args.mountpoint} is not an xnatfs mount ({exc.strerror})") from None
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    print(f"xnatfs {stats.get('version')} — {stats.get('url')} (up {stats.get('uptime_s')} s)")
    for section in ("requests", "listing_cache", "content_cache", "bids", "errors"):
        value = stats.get(section)
        print(f"{section}: {json.dumps(value, sort_keys=True) if value else '-'}")
    uploads = stats.get("uploads") or []
    print(f"uploads not yet on XNAT: {len(uploads) or 'none'}")
    for item in uploads:
        line = f"  {item.get('state', '?'):9} {item.get('path') or item.get('id')} " \
               f"({item.get('size', 0)} bytes, {item.get('tries', 0)} tries)"
        if item.get("last_error"):
            line += f": {item['last_error']}"
        print(line)
    failed = [item for item in uploads if item.get("state") == "failed" and item.get("path")]
    if failed:
        # a failed file stays listed (README "Writes become uploads"); rm is how it goes
        example = os.path.join(os.path.abspath(args.mountpoint), failed[0]["path"].lstrip("/"))
        print(f"failed files are not retried: to discard one, rm it in the mount "
              f"(rm '{example}'); to retry, fix the cause, copy it out, rm it and copy it in "
              f"again")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Emulator with demo data + a mount of it; Ctrl-C unmounts and stops both."""
    import tempfile

    from xnatfs.emulator import Emulator
    from xnatfs.fs import mounting

    setup_logging("warning")
    mountpoint = os.path.abspath(args.mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    mountpoint = _prepare_mountpoint(mountpoint)
    _load_fuse()
    workdir = Path(tempfile.mkdtemp(prefix="xnatfs-demo-"))
    os.chmod(workdir, 0o700)
    data = args.data.resolve() if args.data else workdir / "archive"
    user, password = "admin", "admin"
    emu = Emulator(data, user=user, password=password, seed="demo", port=args.port)
    print("xnatfs demo: starting the XNAT emulator with demo data ...", flush=True)
    emu.start()
    options = Options(url=emu.url, cache_dir=workdir / "cache")
    log_path = workdir / "xnatfs.log"
    argv = [sys.executable, "-m", "xnatfs", "mount", emu.url, mountpoint, "--foreground",
            "--credentials-stdin", "--cache-dir", str(options.cache_dir), "--log-level", "info"]
    with open(log_path, "ab") as log_fh:
        # the mount's log goes to a file the banner names, not over the banner (issue 16 §7)
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log_fh, stderr=log_fh,
                                 start_new_session=True)
    assert child.stdin is not None
    child.stdin.write(json.dumps({"username": user, "password": password}).encode() + b"\n")
    child.stdin.close()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not mounting.wait_mounted(mountpoint, time.monotonic() + MOUNT_WAIT_S,
                                     alive=lambda: child.poll() is None):
            raise UsageError(f"the demo mount did not come up; last log lines ({log_path}):"
                             f"\n{_tail(log_path)}")
        from xnatfs.emulator.seed import DEMO_USER

        kept = (f"{data} (kept: run 'xnatfs demo --data {data}' again to see your writes)"
                if args.data else f"{data} (removed at exit; --data DIR keeps it)")
        print(f"""
xnatfs demo is running.
  XNAT emulator : {emu.url}
  users         : {user} / {password} (sees everything),
                  {DEMO_USER[0]} / {DEMO_USER[1]} (sees only DEMO1)
  mounted at    : {mountpoint} (as {user})
  archive data  : {kept}
  cache         : {options.cache_dir} (xnatfs cache usage; removed at exit)
  log           : {log_path} (removed at exit)

Try, in another terminal:
  ls {mountpoint}
  ls -l {mountpoint}/DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1/resources/DICOM/files
  find {mountpoint}/DEMO1/resources
  getfattr -d {mountpoint}/DEMO1/subjects/SUBJ01/experiments/SUBJ01_MR1/scans/1

Press Ctrl-C to unmount and stop.""", flush=True)
        while not stop.is_set() and child.poll() is None:
            stop.wait(0.5)
    finally:
        if mounting.is_mounted(mountpoint):
            mounting.unmount(mountpoint, lazy=True)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
        emu.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("xnatfs demo: unmounted and stopped.")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``xnatfs cache usage|prune|clear|verify|prefetch``."""
    if args.cache_command == "prefetch":
        return _prefetch(args.paths, args.threads)
    if args.cache_command == "verify":
        return _verify(Path(args.cache_dir or default_cache_dir()).expanduser(), args.repair)
    import fcntl

    from xnatfs.cache.content import ContentCache

    if args.cache_command == "usage" and not args.cache_dir:
        # the default cache and those of the running mounts (the demo's is a temporary one)
        dirs = _caches_in_use(Path(default_cache_dir()).expanduser())
        if dirs:
            for one in dirs:
                cmd_cache(argparse.Namespace(**dict(vars(args), cache_dir=str(one))))
            return 0
    cache_dir = Path(args.cache_dir or default_cache_dir()).expanduser()
    content = cache_dir / "content"
    if not content.is_dir():
        raise UsageError(f"no xnatfs cache at {cache_dir}")
    lock = open(cache_dir / "lock", "a+")  # noqa: SIM115 - held for the whole command
    try:
        exclusive = args.cache_command == "clear"
        try:
            fcntl.flock(lock, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"{cache_dir} is in use by a mount: unmount it first") from None
        size_limit = parse_size(args.size) if args.cache_command == "prune" else 2 ** 62
        cc = ContentCache(str(content), size_limit=size_limit, fetch=_no_fetch)
        cc.start()  # start() evicts down to size_limit (prune)
        try:
            if args.cache_command == "clear":
                removed = cc.clear()
                print(f"removed {removed} cached files from {cache_dir}")
            stats = cc.stats
            print(f"{cache_dir}: {stats.get('entries', 0)} files, "
                  f"{cc.size() / 2**20:.1f} MiB on disk")
        finally:
            cc.close()
    finally:
        lock.close()
    return 0


def _verify(cache_dir: Path, repair: bool) -> int:
    """``xnatfs cache verify``: size and MD5 of every entry, with a progress bar; exit 1 if
    bad entries remain (0 after ``--repair`` dropped them all)."""
    from tqdm import tqdm

    from xnatfs.cache.content import verify_entries

    if not (cache_dir / "content" / "index").is_dir():
        raise UsageError(f"no xnatfs cache at {cache_dir}")
    bar: Any = None

    def on_total(entries: int, total: int) -> None:
        nonlocal bar
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"verify {entries} files",
                   disable=None, file=sys.stderr)

    try:
        report = verify_entries(cache_dir / "content", repair=repair,
                                progress=lambda n: bar.update(n), on_total=on_total)
    finally:
        if bar is not None:
            bar.close()
    for line in report.problems:
        print(f"xnatfs: cache verify: bad entry {line}", file=sys.stderr)
    print(f"{cache_dir}: {report.checked} files checked ({report.hashed} by MD5, the others "
          f"by size: no MD5 listed), {report.bad} bad"
          + (f", {report.dropped} dropped" if repair else ""))
    return 0 if report.bad == report.dropped else 1


def _no_fetch(uri: str, sink: Any) -> None:
    raise OSError(f"the cache command does not download ({uri})")


def _prefetch(paths: Sequence[str], threads: int) -> int:
    """Read every file below ``paths`` through the mount (filling its cache), with a progress
    bar; the daemon does the downloading, in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from xnatfs.fs.mounting import xnatfs_mounts

    mounts = xnatfs_mounts()
    files: List[Tuple[str, int]] = []
    for top in paths:
        # reading files elsewhere would only copy them into nothing; realpath: a link to a
        # mount is fine (it stats through the mount, which prefetch reads anyway)
        absolute = os.path.realpath(top)
        if not any(absolute == m or absolute.startswith(m.rstrip("/") + "/") for m in mounts):
            raise UsageError(f"{top} is not inside an xnatfs mount (mounted: "
                             f"{', '.join(mounts) or 'none'}); nothing was read")
        if os.path.isfile(top):
            files.append((top, os.path.getsize(top)))
            continue
        if not os.path.isdir(top):
            raise UsageError(f"{top}: no such file or directory")
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                files.append((path, os.path.getsize(path)))
    failed: List[str] = []
    with tqdm(total=sum(size for _, size in files), unit="B", unit_scale=True,
              desc="prefetch", disable=None) as bar:
        def read(item: Tuple[str, int]) -> None:
            path, _size = item
            try:
                with open(path, "rb") as fh:
                    while True:
                        chunk = fh.read(1 << 20)
                        if not chunk:
                            break
                        bar.update(len(chunk))
            except OSError as exc:
                failed.append(f"{path}: {exc.strerror}")

        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="prefetch") as pool:
            list(pool.map(read, files))
    for line in failed:
        print(f"xnatfs: prefetch {line}", file=sys.stderr)
    print(f"prefetched {len(files) - len(failed)} of {len(files)} files")
    return 1 if failed else 0


def _caches_in_use(default: Path) -> List[Path]:
    """The default cache directory if it holds a cache, then the cache directory of each
    running xnatfs mount (from its ``.xnatfs/stats``); empty when there is none of either."""
    from xnatfs.fs.mounting import xnatfs_mounts

    out = [default] if (default / "content").is_dir() else []
    for mnt in xnatfs_mounts():
        found = _mount_stats(mnt).get("cache_dir")
        if found and Path(found) not in out and (Path(found) / "content").is_dir():
            out.append(Path(found))
    return out


def _mount_stats(mountpoint: str, timeout: float = 5.0) -> Dict[str, Any]:
    """A mount's ``.xnatfs/stats``, or ``{}`` when it cannot be read within ``timeout`` (another
    user's mount, a stale one, a daemon that does not answer: the reading thread is left
    behind, as a daemon thread, rather than hanging the command)."""
    result: Dict[str, Any] = {}

    def read() -> None:
        try:
            with open(os.path.join(mountpoint, ".xnatfs", "stats"), encoding="utf-8") as fh:
                result.update(json.load(fh))
        except (OSError, ValueError):
            pass

    reader = threading.Thread(target=read, name="stats", daemon=True)
    reader.start()
    reader.join(timeout)
    return dict(result) if not reader.is_alive() else {}


def cmd_emulator(argv: List[str]) -> int:
    from xnatfs.emulator.cli import main as emulator_main

    return emulator_main(argv, prog="xnatfs emulator")


def _cmd_prearchive(args: argparse.Namespace) -> int:
    from xnatfs import prearchive_cli

    return prearchive_cli.run(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; a reader that goes away (``xnatfs status MNT | head -1``) ends it
    quietly with the shell's status for SIGPIPE, 141, instead of a ``BrokenPipeError``
    traceback (issue 16 §5)."""
    try:
        rc = _main(argv)
        sys.stdout.flush()  # inside the try: the last lines may still sit in the buffer
        return rc
    except BrokenPipeError:
        # Python's documented recipe: point stdout at /dev/null so that the flush at exit
        # does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        return cmd_emulator(argv[1:])
    if argv and argv[0] == "cache-proxy":
        from xnatfs.proxy import main as proxy_main

        return proxy_main(argv[1:])
    if argv and "://" in argv[0]:
        # mount.fuse3 runs "xnatfs SOURCE MOUNTPOINT -o OPTIONS" for fstab type fuse.xnatfs
        # and for "xnatfs#URL" sources (fuse-notes.md §3.1)
        return mount_helper_main(argv)
    args = build_parser().parse_args(argv)
    handlers = {"mount": cmd_mount, "umount": cmd_umount, "status": cmd_status,
                "demo": cmd_demo, "config": cmd_config, "cache": cmd_cache,
                "prearchive": _cmd_prearchive}
    from xnatfs.config import ConfigError

    try:
        return handlers[args.command](args)
    except (UsageError, ConfigError) as exc:
        print(f"xnatfs: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - credentials errors and friends: one line
        from xnatfs.xnat.errors import XnatError

        if isinstance(exc, XnatError):
            print(f"xnatfs: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


def mount_helper_main(argv: Optional[Sequence[str]] = None) -> int:
    """``mount.xnatfs SOURCE MOUNTPOINT [-o opts]``: mount(8)'s calling convention (fstab).

    Options named like xnatfs's long options (``cache_dir=``, ``listing_ttl=``, ...) are taken
    by xnatfs; the rest go to libfuse; options mount(8) adds that libfuse does not take
    (``_netdev``, ``nofail``, ``noauto``, ``user``...) are dropped.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: mount.xnatfs URL MOUNTPOINT [-o options]", file=sys.stderr)
        return 1
    source, mountpoint, rest = argv[0], argv[1], argv[2:]
    if source.startswith("xnatfs#"):
        source = source[len("xnatfs#"):]
    opts: Dict[str, object] = {}
    i = 0
    while i < len(rest):
        if rest[i] == "-o" and i + 1 < len(rest):
            opts.update(_fuse_opts([rest[i + 1]]))
            i += 2
        else:
            i += 1
    from xnatfs.config import KEYS

    own = (set(KEYS) - {"user", "password"}) | {"config", "log_file"}
    flags = {"read_only", "allow_delete", "allow_other_write", "catalog_times", "nonempty"}
    dropped = {"_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "defaults"}
    cmd: List[str] = ["mount", source, mountpoint]
    fuse: List[str] = []
    for key, value in opts.items():
        if key in flags:
            if value is True or str(value).lower() in ("1", "true", "yes"):
                cmd.append("--" + key.replace("_", "-"))
        elif key in own:
            cmd += ["--" + key.replace("_", "-"), str(value)]
        elif key == "ro":
            cmd.append("--read-only")
        elif key in dropped or key.startswith("x-"):
            continue
        else:
            fuse.append(key if value is True else f"{key}={value}")
    if fuse:
        cmd += ["-o", ",".join(fuse)]
    return main(cmd)
