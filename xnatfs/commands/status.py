"""``xnatfs umount``, ``xnatfs status`` and ``xnatfs refresh``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TextIO

from xnatfs.commands.common import UsageError
from xnatfs.logfmt import escape_controls

#: longest ``xnatfs umount`` waits for the daemon to finish after the unmount
UMOUNT_WAIT_S = 20.0


def cmd_umount(args: argparse.Namespace) -> int:
    from xnatfs.fs import mounting

    path = os.path.abspath(args.mountpoint)
    if not mounting.is_mounted(path):
        raise UsageError(f"{path} is not mounted")
    daemons = mounting.daemon_pids(path)
    cache_dir = _cache_dir_of(path)
    result = mounting.unmount(path, lazy=args.lazy)
    if result.returncode != 0:
        raise UsageError(
            f"unmount of {path} failed: {result.stderr.strip()} "
            f"(busy? try: xnatfs umount --lazy {path})"
        )
    # the daemon still closes its caches and the upload journal after the kernel let go of
    # the mount: return when it is done, so that a mount or `xnatfs cache` right after finds
    # the cache directory free (bounded: a daemon stuck past this is only reported)
    left = mounting.wait_gone(daemons, UMOUNT_WAIT_S)
    if left:
        print(
            f"xnatfs: {path} is unmounted; its daemon (pid {', '.join(map(str, left))}) is "
            f"still finishing after {UMOUNT_WAIT_S:g} s",
            file=sys.stderr,
        )
    elif cache_dir:
        _report_not_uploaded(path, cache_dir)
    return 0


def _cache_dir_of(mountpoint: str) -> "str | None":
    """The cache directory of a running mount (its ``.xnatfs/stats``), None when unreadable."""
    try:
        with open(os.path.join(mountpoint, ".xnatfs", "stats"), encoding="utf-8") as fh:
            value = json.load(fh).get("cache_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _report_not_uploaded(mountpoint: str, cache_dir: str) -> None:
    """What was written in the mount and is not on XNAT (the daemon's journal after it exited):
    the rule is that the user is told which of the two holds each write, and the daemon's own
    warning at shutdown goes to a log file nobody reads at ``umount``."""
    from xnatfs.uploads.journal import FAILED, journal_dir, read_entries, uploads_dir

    directory = journal_dir(uploads_dir(cache_dir))
    entries = read_entries(directory)
    if not entries:
        return
    failed = sum(1 for e in entries if e.state == FAILED)
    files = "1 file written" if len(entries) == 1 else f"{len(entries)} files written"
    _say(
        f"xnatfs: {files} in {mountpoint} {'is' if len(entries) == 1 else 'are'} not on XNAT: "
        f"kept in {directory}; pending uploads resume at the next mount with --cache-dir "
        f"{cache_dir}"
        + (f"; {failed} failed (not retried: mount again and see xnatfs status)" if failed else ""),
        file=sys.stderr,
    )
    for e in entries[:_REPORT_MAX]:
        why = f": {e.last_error}" if e.last_error else ""
        _say(f"  {e.state:9} {e.path or e.id} ({e.size} bytes){why}", file=sys.stderr)
    if len(entries) > _REPORT_MAX:
        print(f"  ... and {len(entries) - _REPORT_MAX} more", file=sys.stderr)


#: most entries ``umount`` lists one by one
_REPORT_MAX = 20


def _say(text: str, file: "TextIO | None" = None) -> None:
    """One line of the report, every control character escaped (a newline too: one item, one
    line): paths and XNAT's error texts are in it, and an escape printed raw is run by the
    terminal (``logfmt.for_terminal``)."""
    print(escape_controls(text), file=file)


def cmd_status(args: argparse.Namespace) -> int:
    stats_path = os.path.join(args.mountpoint, ".xnatfs", "stats")
    try:
        with open(stats_path, encoding="utf-8") as fh:
            stats = json.load(fh)
    except PermissionError:
        # .xnatfs/ is the mount owner's alone (docs/SECURITY.md), also on an allow_other mount;
        # what any user may still do there: read, `xnatfs refresh`, `findmnt` for its server
        try:
            owner = f" (uid {os.stat(os.path.join(args.mountpoint, '.xnatfs')).st_uid})"
        except OSError:
            owner = ""
        raise UsageError(
            f"{args.mountpoint}: only the user who mounted it{owner} may read its status; "
            f"'findmnt {args.mountpoint}' shows its server, 'xnatfs refresh PATH' works for "
            f"every user who can read PATH"
        ) from None
    except OSError as exc:
        raise UsageError(f"{args.mountpoint} is not an xnatfs mount ({exc.strerror})") from None
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))  # ASCII: controls are \u escapes
        return 0
    _say(f"xnatfs {stats.get('version')} — {stats.get('url')} (up {stats.get('uptime_s')} s)")
    server = stats.get("server") or {}
    if server.get("state") in ("down", "probing"):
        _say(
            f"server: DOWN for {server.get('down_for_s')} s ({server.get('last_error')}); "
            f"calls that need it fail at once (Host is down), next check in "
            f"{server.get('next_check_in_s')} s; {server.get('calls_failed_fast')} failed so far"
        )
    elif server:
        _say(f"server: up (down {server.get('times_down', 0)} times since the mount)")
    for section in ("requests", "listing_cache", "content_cache", "bids", "errors"):
        value = stats.get(section)
        _say(f"{section}: {json.dumps(value, sort_keys=True) if value else '-'}")
    uploads = stats.get("uploads") or []
    _say(f"uploads not yet on XNAT: {len(uploads) or 'none'}")
    for item in uploads:
        line = (
            f"  {item.get('state', '?'):9} {item.get('path') or item.get('id')} "
            f"({item.get('size', 0)} bytes, {item.get('tries', 0)} tries)"
        )
        if item.get("last_error"):
            line += f": {item['last_error']}"
        _say(line)
    failed = [item for item in uploads if item.get("state") == "failed" and item.get("path")]
    if failed:
        # a failed file stays listed (README "Writes become uploads"); rm is how it goes
        example = os.path.join(os.path.abspath(args.mountpoint), failed[0]["path"].lstrip("/"))
        _say(
            f"failed files are not retried: to discard one, rm it in the mount "
            f"(rm '{example}'); to retry, fix the cause, copy it out, rm it and copy it in "
            f"again"
        )
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    """Each path's listings loaded anew (``fs/control.py``); one line per path that failed."""
    from xnatfs.fs import control

    failed = 0
    for path in args.paths:
        try:
            control.refresh(path)
        except OSError as exc:
            failed += 1
            reason = exc.strerror or str(exc)
            print(f"xnatfs: {escape_controls(path)}: {reason}", file=sys.stderr)
    return 1 if failed else 0
