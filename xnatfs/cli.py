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
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence
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
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="on-disk cache (default: $XDG_CACHE_HOME/xnatfs, mode 0700)")
    p.add_argument("--cache-size", default="10G", help="content cache limit (default 10G)")
    p.add_argument("--listing-ttl", type=float, default=60.0,
                   help="seconds a listing is trusted (default 60)")
    p.add_argument("--max-threads", type=int, default=16,
                   help="FUSE worker threads = HTTP pool size (default 16)")
    p.add_argument("--max-downloads", type=int, default=8,
                   help="parallel file downloads into the cache (default 8)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="longest wait of any file operation in seconds (default 60)")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--read-timeout", type=float, default=30.0)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--read-only", action="store_true", help="refuse every write (EROFS)")
    p.add_argument("--allow-delete", action="store_true",
                   help="allow rm, rmdir, overwriting files and prearchive deletes")
    p.add_argument("--experiment-type", default="xnat:mrSessionData",
                   help="xsiType of experiments made with mkdir (default xnat:mrSessionData)")
    p.add_argument("--scan-type", default="xnat:mrScanData",
                   help="xsiType of scans made with mkdir (default xnat:mrScanData)")
    p.add_argument("--netrc", default=None, help="netrc file (default $NETRC or ~/.netrc)")
    p.add_argument("--ca-bundle", default=None, help="CA bundle for TLS verification")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
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

    p = sub.add_parser("mount", help="mount an XNAT server")
    p.add_argument("url", help="XNAT base URL, e.g. https://xnat.example.org (context path included)")
    p.add_argument("mountpoint")
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

    sub.add_parser("emulator", help="run the XNAT emulator alone (see 'xnatfs emulator -h')",
                   add_help=False)
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    url = args.url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL: {args.url}")
    if parts.username or parts.password:
        raise UsageError("credentials do not belong in the URL (they would be visible in the "
                         "process list): use ~/.netrc, the prompt, or XNATFS_USER/XNATFS_PASSWORD")
    try:
        cache_size = parse_size(args.cache_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Options(
        url=url, cache_dir=Path(args.cache_dir or default_cache_dir()).expanduser().resolve(),
        cache_size=cache_size, listing_ttl=args.listing_ttl, max_threads=args.max_threads,
        max_downloads=args.max_downloads, fs_timeout=args.timeout,
        connect_timeout=args.connect_timeout, read_timeout=args.read_timeout,
        retries=args.retries, verify=args.ca_bundle or True,
        read_only=args.read_only, allow_delete=args.allow_delete,
        experiment_type=args.experiment_type, scan_type=args.scan_type,
        fuse_options=_fuse_opts(args.fuse_options))


# ---------------------------------------------------------------------------------- logging
def setup_logging(level: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(
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
def _credentials(args: argparse.Namespace, url: str) -> Any:
    from xnatfs.xnat.auth import Credentials, resolve_credentials

    if args.credentials_stdin:
        data = json.loads(sys.stdin.readline() or "{}")
        return Credentials(data["username"], data["password"], source=data.get("source", "parent"))
    return resolve_credentials(url, netrc_path=args.netrc)


def _check_server(options: Options, creds: Any) -> None:
    """Log in once with a short-lived client so that a wrong password or an unreachable server
    is one clear line before anything is mounted (STYLE.md §6)."""
    from xnatfs.xnat import errors as xe
    from xnatfs.xnat.client import ClientOptions, XnatClient

    client = XnatClient(options.url, creds, ClientOptions(
        pool_size=1, connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
        retries=1, verify=options.verify, heartbeat=False))
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


def _prepare_mountpoint(mountpoint: str) -> str:
    from xnatfs.fs import mounting

    path = os.path.abspath(mountpoint)
    if mounting.clear_stale(path):
        log.info("cleared a stale mount at %s", path)
    if mounting.is_mounted(path):
        raise UsageError(f"{path} is already mounted (xnatfs umount {path})")
    if not os.path.isdir(path):
        raise UsageError(f"mount point {path} is not a directory (mkdir -p {path})")
    return path


def _load_fuse() -> Any:
    from xnatfs.fs import fuselib

    try:
        return fuselib.load()
    except fuselib.FuseMissing as exc:
        raise UsageError(str(exc)) from None


def cmd_mount(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    options = options_from_args(args)
    mountpoint = _prepare_mountpoint(args.mountpoint)
    _load_fuse()
    creds = _credentials(args, options.url)
    if args.foreground:
        if not args.credentials_stdin:
            _check_server(options, creds)
        return run_foreground(options, creds, mountpoint)
    _check_server(options, creds)
    return spawn_daemon(args, options, creds, mountpoint)


def _log_file(args: argparse.Namespace, options: Options, mountpoint: str) -> Path:
    from xnatfs.runtime import private_dir

    if args.log_file:
        return Path(args.log_file)
    logs = Path(private_dir(options.cache_dir / "logs"))
    return logs / (mountpoint.strip("/").replace("/", "_") + ".log")


def daemon_argv(args: argparse.Namespace, options: Options, mountpoint: str) -> List[str]:
    """The child's command line: every option explicit, credentials on stdin."""
    argv = [sys.executable, "-m", "xnatfs", "mount", options.url, mountpoint, "--foreground",
            "--credentials-stdin", "--cache-dir", str(options.cache_dir),
            "--cache-size", str(options.cache_size), "--listing-ttl", str(options.listing_ttl),
            "--max-threads", str(options.max_threads),
            "--max-downloads", str(options.max_downloads), "--timeout", str(options.fs_timeout),
            "--connect-timeout", str(options.connect_timeout),
            "--read-timeout", str(options.read_timeout), "--retries", str(options.retries),
            "--log-level", args.log_level,
            "--experiment-type", options.experiment_type, "--scan-type", options.scan_type]
    if options.read_only:
        argv.append("--read-only")
    if options.allow_delete:
        argv.append("--allow-delete")
    if args.ca_bundle:
        argv += ["--ca-bundle", args.ca_bundle]
    for opt in args.fuse_options:
        argv += ["-o", opt]
    return argv


def spawn_daemon(args: argparse.Namespace, options: Options, creds: Any, mountpoint: str) -> int:
    from xnatfs.fs import mounting

    log_path = _log_file(args, options, mountpoint)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_fh:
        os.chmod(log_path, 0o600)
        child = subprocess.Popen(daemon_argv(args, options, mountpoint), stdin=subprocess.PIPE,
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
    for key, value in options.fuse_options.items():
        if key in ("big_writes", "large_read") and getattr(mfusepy, "fuse_version_major", 3) >= 3:
            log.warning("ignoring -o %s: libfuse3 refuses it (fuse-notes.md §1.3)", key)
            continue
        kwargs[key] = value
    return kwargs


def run_foreground(options: Options, creds: Any, mountpoint: str,
                   on_ready: Any = None) -> int:
    """Mount and serve until unmounted or signalled; exit status 0 on a clean stop."""
    mfusepy = _load_fuse()
    from xnatfs.fs.ops import XnatOperations
    from xnatfs.runtime import Runtime

    runtime = Runtime(options, creds)
    try:
        runtime.start()
    except Exception:
        runtime.close()
        raise
    ops = XnatOperations(runtime, on_ready=on_ready)
    log.info("mounting %s at %s (libfuse %s)", options.url, mountpoint,
             getattr(mfusepy, "fuse_version_major", "?"))
    try:
        mfusepy.FUSE(ops, mountpoint, foreground=True, raw_fi=True,
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
    for section in ("requests", "listing_cache", "content_cache", "errors"):
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
    data = args.data or workdir / "archive"
    user, password = "admin", "admin"
    emu = Emulator(data, user=user, password=password, seed="demo", port=args.port)
    print("xnatfs demo: starting the XNAT emulator with demo data ...", flush=True)
    emu.start()
    options = Options(url=emu.url, cache_dir=workdir / "cache")
    argv = [sys.executable, "-m", "xnatfs", "mount", emu.url, mountpoint, "--foreground",
            "--credentials-stdin", "--cache-dir", str(options.cache_dir), "--log-level", "warning"]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    assert child.stdin is not None
    child.stdin.write(json.dumps({"username": user, "password": password}).encode() + b"\n")
    child.stdin.close()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not mounting.wait_mounted(mountpoint, time.monotonic() + MOUNT_WAIT_S,
                                     alive=lambda: child.poll() is None):
            raise UsageError("the demo mount did not come up (see the messages above)")
        print(f"""
xnatfs demo is running.
  XNAT emulator : {emu.url}   (user {user}, password {password})
  mounted at    : {mountpoint}

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
        print("xnatfs demo: unmounted and stopped.")
    return 0


def cmd_emulator(argv: List[str]) -> int:
    from xnatfs.emulator.cli import main as emulator_main

    return emulator_main(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        return cmd_emulator(argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {"mount": cmd_mount, "umount": cmd_umount, "status": cmd_status,
                "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except UsageError as exc:
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
    own = {"cache_dir", "cache_size", "listing_ttl", "max_threads", "max_downloads", "timeout",
           "connect_timeout", "read_timeout", "retries", "netrc", "ca_bundle", "log_level",
           "log_file"}
    dropped = {"_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "defaults"}
    cmd: List[str] = ["mount", source, mountpoint]
    fuse: List[str] = []
    for key, value in opts.items():
        if key in own:
            cmd += ["--" + key.replace("_", "-"), str(value)]
        elif key in dropped or key.startswith("x-"):
            continue
        else:
            fuse.append(key if value is True else f"{key}={value}")
    if fuse:
        cmd += ["-o", ",".join(fuse)]
    return main(cmd)
