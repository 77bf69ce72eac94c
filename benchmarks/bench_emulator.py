"""Download throughput of the emulator vs ``python -m http.server`` on the same file.

Usage: ``python benchmarks/bench_emulator.py [--size-mib 256] [--rounds 3]``. Prints MiB/s of
both and the ratio emulator/http.server (target >= 0.5).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from xnatfs.emulator import Emulator

CHUNK = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def timed_download(session: requests.Session, url: str, expected: int) -> float:
    t0 = time.perf_counter()
    n = 0
    with session.get(url, stream=True, timeout=60) as r:
        r.raise_for_status()
        for chunk in r.iter_content(CHUNK):
            n += len(chunk)
    dt = time.perf_counter() - t0
    if n != expected:
        raise RuntimeError(f"{url}: got {n} bytes, expected {expected}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib * CHUNK
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "served"
        src.mkdir()
        big = src / "big.bin"
        with open(big, "wb") as f:
            block = os.urandom(CHUNK)
            for _ in range(args.size_mib):
                f.write(block)
        emu = Emulator(Path(tmp) / "emu", seed="empty").start()
        httpd = None
        try:
            s = requests.Session()
            s.auth = ("admin", "admin")
            s.put(f"{emu.url}/data/projects/BENCH", timeout=30).raise_for_status()
            with open(big, "rb") as f:
                r = s.put(
                    f"{emu.url}/data/projects/BENCH/resources/DATA/files/big.bin",
                    data=f,
                    timeout=300,
                )
                r.raise_for_status()
            emu_url = f"{emu.url}/data/projects/BENCH/resources/DATA/files/big.bin"
            port = free_port()
            httpd = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(src),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_listening(port)
            plain_url = f"http://127.0.0.1:{port}/big.bin"
            plain = requests.Session()
            emu_times, plain_times = [], []
            for _ in range(args.rounds):
                plain_times.append(timed_download(plain, plain_url, size))
                emu_times.append(timed_download(s, emu_url, size))
            best_emu, best_plain = min(emu_times), min(plain_times)
            mib = size / CHUNK
            print(f"http.server: {mib / best_plain:8.1f} MiB/s (best of {args.rounds})")
            print(f"emulator:    {mib / best_emu:8.1f} MiB/s (best of {args.rounds})")
            print(f"ratio emulator/http.server: {best_plain / best_emu:.2f} (target >= 0.5)")
        finally:
            if httpd is not None:
                httpd.terminate()
                httpd.wait(timeout=10)
            emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
