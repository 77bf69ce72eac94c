"""The ``xnatfs`` command line: mount, umount, status, demo, emulator; ``mount.xnatfs`` for fstab.

This is the only module that configures logging and the only one (besides tests) that may import
the emulator.  ``xnatfs mount`` without ``--foreground`` starts the filesystem as a detached child
process (``mount --foreground`` with the credentials on its stdin, never in argv or the
environment), waits until the mount answers, and exits 0 — or prints why it failed and exits 1,
leaving no stale mount (``commands/daemon.py``).  The commands live in ``xnatfs/commands/``;
this module parses, dispatches, and keeps the two entry points (``xnatfs.cli:main``,
``xnatfs.cli:mount_helper_main``) and ``demo``/``emulator``, the commands that import the
emulator.  Every setting's option comes from the one table, ``xnatfs/settings.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from xnatfs import __version__
from xnatfs import settings as table
from xnatfs.commands.cache import cmd_cache
from xnatfs.commands.common import UsageError, check_url, load_fuse, setup_logging
from xnatfs.commands.daemon import (
    daemon_argv,
    daemon_env,
    fuse_kwargs,
    run_foreground,
    spawn_daemon,
)
from xnatfs.commands.mount import (
    _credentials,
    _prepare_mountpoint,
    cmd_config,
    cmd_mount,
    options_from_settings,
    settings_from_args,
)
from xnatfs.commands.status import cmd_refresh, cmd_status, cmd_umount
from xnatfs.logfmt import for_terminal
from xnatfs.options import Options

# the names other modules and the tests use as ``cli.X`` (prearchive_cli, tests/unit)
__all__ = [
    "UsageError",
    "build_parser",
    "check_url",
    "daemon_argv",
    "daemon_env",
    "fuse_kwargs",
    "main",
    "mount_helper_main",
    "options_from_settings",
    "run_foreground",
    "settings_from_args",
    "setup_logging",
    "spawn_daemon",
    "_credentials",
]


def add_mount_options(p: argparse.ArgumentParser) -> None:
    """The options of ``xnatfs mount``/``xnatfs config``: the settings table's, plus the few
    that are not settings (foreground, ``-o``, the daemon's ``--credentials-stdin``)."""
    p.add_argument(
        "--foreground",
        "-f",
        action="store_true",
        help="stay in the foreground (systemd, debugging); logs go to stderr",
    )
    table.add_arguments(p)
    p.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        help="FUSE options, comma separated (e.g. allow_other)",
    )
    p.add_argument("--credentials-stdin", action="store_true", help=argparse.SUPPRESS)


def _add_cache_parser(sub: Any) -> None:
    """``xnatfs cache usage|prune|clear|verify|prefetch``."""
    p = sub.add_parser("cache", help="inspect or manage the content cache")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    for name, text in (
        ("usage", "size and number of cached files"),
        ("prune", "evict least recently used files down to SIZE"),
        ("clear", "empty the cache (refused while a mount uses it)"),
    ):
        c = cache_sub.add_parser(name, help=text)
        c.add_argument(
            "--cache-dir", default=None, help="cache directory (default: $XDG_CACHE_HOME/xnatfs)"
        )
        if name == "prune":
            c.add_argument("size", help="e.g. 5G")
    c = cache_sub.add_parser(
        "verify", help="check every cached file (size and MD5); works while a mount uses the cache"
    )
    c.add_argument(
        "--cache-dir", default=None, help="cache directory (default: $XDG_CACHE_HOME/xnatfs)"
    )
    c.add_argument(
        "--repair", action="store_true", help="drop bad entries (the next read fetches them again)"
    )
    c = cache_sub.add_parser("prefetch", help="read paths of a mount into its cache")
    c.add_argument("paths", nargs="+", help="files or folders inside an xnatfs mount")
    c.add_argument("--threads", type=int, default=8)


def build_parser() -> argparse.ArgumentParser:
    """The ``xnatfs`` command line: one sub-parser per command.

    Long because: one block per sub-command, read top to bottom like ``xnatfs -h``."""
    parser = argparse.ArgumentParser(
        prog="xnatfs", description="Mount an XNAT archive as a filesystem."
    )
    parser.add_argument("--version", action="version", version=f"xnatfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "mount",
        help="mount an XNAT server",
        description="Mount an XNAT server.",
        epilog="Credentials (never on the command line): user and password in the config "
        "file (which must then be private), else the netrc entry for the host (--netrc FILE, "
        "else $NETRC, else ~/.netrc; refused when group- or world-readable), else a prompt on "
        "a terminal, else XNATFS_USER/XNATFS_PASSWORD. 'xnatfs config URL' shows the netrc.",
    )
    p.add_argument(
        "url", help="XNAT base URL, e.g. https://xnat.example.org (context path included)"
    )
    p.add_argument("mountpoint")
    add_mount_options(p)

    p = sub.add_parser(
        "config",
        help="print the effective settings for a server (secrets masked) and where each comes from",
    )
    p.add_argument("url")
    add_mount_options(p)

    p = sub.add_parser("umount", help="unmount")
    p.add_argument("mountpoint")
    p.add_argument("--lazy", "-z", action="store_true", help="detach even if busy")

    p = sub.add_parser("status", help="show a mount's statistics")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "refresh",
        help="show another client's changes now: forget a mount's listings at and below PATH",
        description="Forget the mount's cached listings at and below each PATH (a file: its "
        "folder), so changes made on XNAT by others show now rather than after --listing-ttl.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = sub.add_parser("demo", help="run the bundled XNAT emulator with demo data and mount it")
    p.add_argument("mountpoint", nargs="?", default="xnat-demo")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="emulator data directory (default: a fresh temporary one)",
    )
    p.add_argument("--port", type=int, default=0)

    _add_cache_parser(sub)

    from xnatfs import prearchive_cli

    prearchive_cli.add_parser(sub)
    sub.add_parser(
        "emulator", help="run the XNAT emulator alone (see 'xnatfs emulator -h')", add_help=False
    )
    sub.add_parser(
        "cache-proxy",
        help="run a shared nginx cache of file bytes for many mounts "
        "(see 'xnatfs cache-proxy -h', docs/SCALING.md)",
        add_help=False,
    )
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    """Emulator with demo data + a mount of it; Ctrl-C unmounts and stops both.  (Over 60
    lines: a third of it is the banner's text, kept in one piece to read as printed.)"""
    import tempfile

    from xnatfs.emulator import Emulator
    from xnatfs.fs import mounting

    setup_logging("warning")
    mountpoint = os.path.abspath(args.mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    mountpoint = _prepare_mountpoint(mountpoint)
    load_fuse()
    workdir = Path(tempfile.mkdtemp(prefix="xnatfs-demo-"))
    os.chmod(workdir, 0o700)
    data = args.data.resolve() if args.data else workdir / "archive"
    user, password = "admin", "admin"
    emu = Emulator(data, user=user, password=password, seed="demo", port=args.port)
    print("xnatfs demo: starting the XNAT emulator with demo data ...", flush=True)
    emu.start()
    options = Options(url=emu.url, cache_dir=workdir / "cache")
    log_path = workdir / "xnatfs.log"
    # the mount's log goes to a file the banner names, not over the banner (issue 16 §7)
    daemon = mounting.MountDaemon(
        mounting.xnatfs_argv(
            emu.url, mountpoint, "--cache-dir", str(options.cache_dir), "--log-level", "info"
        ),
        mountpoint,
        log_path,
        {"username": user, "password": password},
    ).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            daemon.wait(mounting.MOUNT_WAIT_S)
        except mounting.MountFailed:
            raise UsageError(
                f"the demo mount did not come up; last log lines ({log_path}):\n{daemon.tail()}"
            ) from None
        from xnatfs.emulator.seed import DEMO_USER

        kept = (
            f"{data} (kept: run 'xnatfs demo --data {data}' again to see your writes)"
            if args.data
            else f"{data} (removed at exit; --data DIR keeps it)"
        )
        print(
            f"""
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

Press Ctrl-C to unmount and stop.""",
            flush=True,
        )
        while not stop.is_set() and daemon.alive():
            stop.wait(0.5)
    finally:
        daemon.stop(grace=15)
        emu.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("xnatfs demo: unmounted and stopped.")
    return 0


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
        # and for "xnatfs#URL" sources (docs/FUSE.md §3.1)
        return mount_helper_main(argv)
    parser = build_parser()
    if not argv:
        # the commands and what each does, as git prints them, not argparse's one-line
        # "the following arguments are required: command"
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    handlers = {
        "mount": cmd_mount,
        "umount": cmd_umount,
        "status": cmd_status,
        "refresh": cmd_refresh,
        "demo": cmd_demo,
        "config": cmd_config,
        "cache": cmd_cache,
        "prearchive": _cmd_prearchive,
    }
    from xnatfs.config import ConfigError

    try:
        return handlers[args.command](args)
    except (UsageError, ConfigError) as exc:
        # escaped: the message may quote a server's error text (logfmt.for_terminal)
        print(f"xnatfs: {for_terminal(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # credentials errors and friends: one line
        from xnatfs.xnat.errors import XnatError

        if isinstance(exc, XnatError):
            print(f"xnatfs: {for_terminal(str(exc))}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


def mount_helper_main(argv: Optional[Sequence[str]] = None) -> int:
    """``mount.xnatfs SOURCE MOUNTPOINT [-o opts]``: mount(8)'s calling convention (fstab).

    Options named like xnatfs's long options (``cache_dir=``, ``listing_ttl=``, ...) are taken
    by xnatfs; the rest go to libfuse; options mount(8) adds that libfuse does not take
    (``_netdev``, ``nofail``, ``noauto``, ``user``...) are dropped (``settings.helper_args``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: mount.xnatfs URL MOUNTPOINT [-o options]", file=sys.stderr)
        return 1
    source, mountpoint, rest = argv[0], argv[1], argv[2:]
    if source.startswith("xnatfs#"):
        source = source[len("xnatfs#") :]
    opts: Dict[str, object] = {}
    i = 0
    while i < len(rest):
        if rest[i] == "-o" and i + 1 < len(rest):
            opts.update(table.parse_fuse_opts([rest[i + 1]]))
            i += 2
        else:
            i += 1
    own, fuse = table.helper_args(opts)
    cmd: List[str] = ["mount", source, mountpoint, *own]
    if fuse:
        cmd += ["-o", ",".join(fuse)]
    return main(cmd)
