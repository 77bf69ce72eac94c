"""``xnatfs cache usage|prune|clear|verify|prefetch``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from xnatfs.commands.common import UsageError
from xnatfs.logfmt import for_terminal
from xnatfs.options import default_cache_dir, parse_size


def cmd_cache(args: argparse.Namespace) -> int:
    """``xnatfs cache usage|prune|clear|verify|prefetch``; a cache folder whose ``lock`` or
    content folders another user could have planted is refused in one line
    (``xnatfs.private``)."""
    from xnatfs.private import NotPrivate

    try:
        return _cache_command(args)
    except NotPrivate as exc:
        raise UsageError(f"cache folder: {exc.strerror}") from None


def _cache_command(args: argparse.Namespace) -> int:
    """``cmd_cache``, unguarded."""
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
    if not (cache_dir / "content").is_dir():
        raise UsageError(f"no xnatfs cache at {cache_dir}")
    from xnatfs.private import open_cache_lock

    lock = open_cache_lock(cache_dir)  # held for the whole command; a planted link refused
    try:
        exclusive = args.cache_command == "clear"
        try:
            fcntl.flock(lock, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"{cache_dir} is in use by a mount: unmount it first") from None
        # each store has --cache-size of its own (docs/BIDS.md), so prune SIZE applies to each
        size_limit = parse_size(args.size) if args.cache_command == "prune" else 2**62
        for what, store in _stores(cache_dir):
            cc = ContentCache(str(store), size_limit=size_limit, fetch=_no_fetch)
            cc.start()  # start() evicts down to size_limit (prune)
            try:
                if args.cache_command == "clear":
                    removed = cc.clear()
                    print(f"removed {removed} {what} from {cache_dir}")
                print(
                    f"{cache_dir}: {cc.stats.get('entries', 0)} {what}, "
                    f"{cc.size() / 2**20:.1f} MiB on disk"
                )
            finally:
                cc.close()
    finally:
        lock.close()
    return 0


def _stores(cache_dir: Path) -> List[Tuple[str, Path]]:
    """The content stores under a cache directory, by what they hold: XNAT's files
    (``content``) and, once the BIDS view has converted anything, its converted files
    (``bids/content``, ``bids.layout.BidsLayout``; a budget of its own)."""
    stores = [("files", cache_dir / "content")]
    bids = cache_dir / "bids" / "content"
    if (bids / "index").is_dir():
        stores.append(("BIDS-converted files", bids))
    return stores


def _verify(cache_dir: Path, repair: bool) -> int:
    """``xnatfs cache verify``: size and MD5 of every entry, with a progress bar; exit 1 if
    bad entries remain (0 after ``--repair`` dropped them all), in every store."""
    if not (cache_dir / "content" / "index").is_dir():
        raise UsageError(f"no xnatfs cache at {cache_dir}")
    results = [_verify_store(cache_dir, what, store, repair) for what, store in _stores(cache_dir)]
    return 0 if all(results) else 1


def _verify_store(cache_dir: Path, what: str, store: Path, repair: bool) -> bool:
    """One store of ``xnatfs cache verify``; False if bad entries remain."""
    from tqdm import tqdm

    from xnatfs.cache.content import verify_entries

    bar: Any = None

    def on_total(entries: int, total: int) -> None:
        nonlocal bar
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"verify {entries} {what}",
            disable=None,
            file=sys.stderr,
        )

    try:
        report = verify_entries(
            store, repair=repair, progress=lambda n: bar.update(n), on_total=on_total
        )
    finally:
        if bar is not None:
            bar.close()
    for line in report.problems:
        print(f"xnatfs: cache verify: bad entry {line}", file=sys.stderr)
    print(
        f"{cache_dir}: {report.checked} {what} checked ({report.hashed} by MD5, the others "
        f"by size: no MD5 recorded), {report.bad} bad"
        + (f", {report.dropped} dropped" if repair else "")
    )
    return report.bad == report.dropped


def _no_fetch(uri: str, sink: Any) -> None:
    raise OSError(f"the cache command does not download ({uri})")


def _files_to_prefetch(paths: Sequence[str]) -> List[Tuple[str, int]]:
    """(path, size) of every file below ``paths``, each of which must be inside a mount."""
    from xnatfs.fs.mounting import xnatfs_mounts

    mounts = xnatfs_mounts()
    files: List[Tuple[str, int]] = []
    for top in paths:
        # reading files elsewhere would only copy them into nothing; realpath: a link to a
        # mount is fine (it stats through the mount, which prefetch reads anyway)
        absolute = os.path.realpath(top)
        if not any(absolute == m or absolute.startswith(m.rstrip("/") + "/") for m in mounts):
            raise UsageError(
                f"{top} is not inside an xnatfs mount (mounted: "
                f"{', '.join(mounts) or 'none'}); nothing was read"
            )
        if os.path.isfile(top):
            files.append((top, os.path.getsize(top)))
            continue
        if not os.path.isdir(top):
            raise UsageError(f"{top}: no such file or directory")
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    size = os.path.getsize(path)
                except OSError:
                    # a row XNAT listed but xnatfs refuses (a bad size or URI: EIO): the
                    # read reports it; one such file ended the command in a traceback
                    size = 0
                files.append((path, size))
    return files


def _prefetch(paths: Sequence[str], threads: int) -> int:
    """Read every file below ``paths`` through the mount (filling its cache), with a progress
    bar; the daemon does the downloading, in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    files = _files_to_prefetch(paths)
    failed: List[str] = []
    with tqdm(
        total=sum(size for _, size in files),
        unit="B",
        unit_scale=True,
        desc="prefetch",
        disable=None,
    ) as bar:

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
        # escaped: a name XNAT gave may hold a terminal escape
        print(f"xnatfs: prefetch {for_terminal(line)}", file=sys.stderr)
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
