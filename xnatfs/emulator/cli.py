"""Command line of the emulator: ``python -m xnatfs.emulator --data DIR ...`` (also
``xnatfs emulator``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)


def build_parser(prog: str = "python -m xnatfs.emulator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run an emulated XNAT server.")
    p.add_argument("--data", required=True, help="data directory (kept across restarts)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0 = pick a free one)")
    p.add_argument("--user", default="admin", help="admin user name")
    p.add_argument("--password", default="admin", help="admin password")
    p.add_argument(
        "--seed",
        choices=("demo", "empty"),
        default="empty",
        help="data to create in an empty data directory",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    p.add_argument("--access-log", default=None, help="file for 'METHOD PATH STATUS BYTES' lines")
    p.add_argument(
        "--session-timeout",
        type=float,
        default=900.0,
        help="idle JSESSION expiry in seconds (default 900)",
    )
    p.add_argument(
        "--buffering-proxy",
        action="store_true",
        help="store chunked uploads, as an XNAT behind nginx's request buffering does "
        "(without it they are refused with 500, as XNAT itself does)",
    )
    p.add_argument(
        "--no-checksums",
        dest="checksums",
        action="store_false",
        help="list files without their MD5, as a site with checksums off does",
    )
    p.add_argument("--context-path", default="", help="serve under a context path, e.g. /xnat")
    p.add_argument("--log-level", default="WARNING", help="Python log level (default WARNING)")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m xnatfs.emulator") -> int:
    """``prog``: the name usage lines show (``xnatfs emulator`` when run through xnatfs)."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    from .server import Emulator

    emu = Emulator(
        args.data,
        user=args.user,
        password=args.password,
        seed=args.seed,
        latency_ms=args.latency_ms,
        access_log=args.access_log,
        session_timeout=args.session_timeout,
        host=args.host,
        port=args.port,
        context_path=args.context_path,
        buffering_proxy=args.buffering_proxy,
        checksums=args.checksums,
    )
    try:
        emu.start()
    except OSError as e:
        print(f"xnatfs emulator: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"XNAT emulator listening on {emu.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return 0
