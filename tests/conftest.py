"""Shared fixtures: the emulator, real mounts through /dev/fuse, and log checks.

Tiers (docs/ARCHITECTURE.md §12): ``tests/unit`` (no sockets, no FUSE), ``tests/emulator`` and
``tests/api``
(HTTP against the emulator on port 0), ``tests/mount`` (real mounts in a subprocess),
``tests/clients`` (xnatpy and pyxnat against the emulator).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import pytest

HAVE_FUSE = os.path.exists("/dev/fuse")
FUSE_SKIP_REASON = (
    "/dev/fuse is missing on this machine: the FUSE mount tests cannot run "
    "(run as root on a machine with the fuse kernel module)"
)
needs_fuse = pytest.mark.skipif(not HAVE_FUSE, reason=FUSE_SKIP_REASON)

ADMIN = ("admin", "admin-pw")


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A test that runs ``cli.main`` in-process gets ``setup_logging``'s handler on the root
    logger, writing to that test's captured stderr, which pytest closes after it.  Left there,
    every later log line of the process (an upload worker's retry line) raised "I/O operation
    on closed file" inside logging, and a race test in tests/api timed out after tests/unit
    had run in the same process.  Each test ends with the root logger as it found it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Tests marked ``slow`` (10 s or more, mostly waiting on a fault's timers) run first.
    The suite runs on one pytest-xdist worker per CPU (``scripts/install.sh test``), which
    hands tests out as workers become free: a long test left to the end kept one worker busy
    for a minute while the other had nothing left (measured: the 500/503 upload-fault runs,
    30-70 s each).  The sort is stable, so every worker collects the same order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


SDCFLOWS_TEST = Path(__file__).parent / "bids" / "test_sdcflows_mount.py"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not HAVE_FUSE:
        terminalreporter.write_sep("!", "FUSE MOUNT TESTS SKIPPED: " + FUSE_SKIP_REASON, red=True)
    _say_sdcflows_deselected(terminalreporter, config)


def _say_sdcflows_deselected(terminalreporter, config) -> None:
    """The SDCFlows check is deselected without SDCFlows (tests/bids/conftest.py); said here,
    by the process that reports: under pytest-xdist the workers collect, and their terminal
    lines are not shown."""
    from tests.helpers.optional import sdcflows_python

    asked = [Path(str(arg).split("::", 1)[0]).resolve() for arg in config.args]
    if sdcflows_python() or not any(
        SDCFLOWS_TEST == where or where in SDCFLOWS_TEST.parents for where in asked
    ):
        return
    terminalreporter.write_line(
        "tests/bids/test_sdcflows_mount.py deselected: SDCFlows is not installed "
        "(set XNATFS_SDCFLOWS_PYTHON to an interpreter that has it to run it)"
    )


# ------------------------------------------------------------------------------ emulator
class EmulatorRun:
    """An emulator on a free port with an access log the tests can read."""

    def __init__(self, data: Path, log: Path, **kwargs):
        from xnatfs.emulator import Emulator

        self.data, self.log, self.kwargs = data, log, kwargs
        self.emu = Emulator(data, user=ADMIN[0], password=ADMIN[1], access_log=log, **kwargs)

    def start(self) -> "EmulatorRun":
        self.emu.start()
        self.url = self.emu.url
        return self

    def stop(self) -> None:
        self.emu.stop()

    def restart(self, **faults: Any) -> None:
        """Start again on the same port and the same data (after ``stop``), with the faults
        it was made with, or ``faults`` from its first request on."""
        from xnatfs.emulator import Emulator

        port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
        kwargs = dict(self.kwargs, port=port, seed="empty", **faults)
        self.emu = Emulator(
            self.data, user=ADMIN[0], password=ADMIN[1], access_log=self.log, **kwargs
        )
        self.emu.start()

    @property
    def faults(self):
        return self.emu.faults

    def records(self) -> List[tuple]:
        """(method, path_qs, status, bytes) per request, from the access log file."""
        out = []
        if self.log.exists():
            for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split(" ")
                if len(parts) >= 4:
                    out.append((parts[0], parts[1], int(parts[2]), parts[3]))
        return out

    def mark(self) -> int:
        """Position in the access log; ``since(mark)`` gives the requests after it.  Waits until
        requests already answered are written (the line follows the last byte sent)."""
        self.emu.wait_idle()
        return len(self.records())

    def since(self, mark: int) -> List[tuple]:
        self.emu.wait_idle()
        return self.records()[mark:]


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """A seeded demo archive made once per test run; tests copy it instead of seeding again."""
    base = tmp_path_factory.mktemp("demo-template")
    run = EmulatorRun(base / "data", base / "seed-access.log", seed="demo").start()
    run.stop()
    return base / "data"


@pytest.fixture
def make_emulator(tmp_path, demo_template):
    """Factory: ``make_emulator(seed="demo"|"empty", **faults)`` -> started EmulatorRun."""
    runs: List[EmulatorRun] = []

    def make(seed: str = "demo", **kwargs) -> EmulatorRun:
        n = len(runs)
        data = tmp_path / f"emu{n}"
        if seed == "demo":
            shutil.copytree(demo_template, data)
            seed = "empty"  # already seeded
        run = EmulatorRun(data, tmp_path / f"emu{n}-access.log", seed=seed, **kwargs).start()
        runs.append(run)
        return run

    yield make
    for run in runs:
        try:
            run.stop()
        except Exception:  # noqa: BLE001 - already stopped by the test
            pass


@pytest.fixture(scope="module")
def shared_emulator(tmp_path_factory, demo_template):
    """One demo emulator for a whole module of read-only tests."""
    base = tmp_path_factory.mktemp("shared-emu")
    shutil.copytree(demo_template, base / "data")
    run = EmulatorRun(base / "data", base / "access.log", seed="empty").start()
    yield run
    run.stop()


# ------------------------------------------------------------------------------ mounts
def _mounted(path: Path) -> bool:
    from xnatfs.fs.mounting import is_mounted

    return is_mounted(str(path))


class Mount:
    """``python -m xnatfs mount --foreground`` in a subprocess (never a thread of pytest: a hung
    FUSE request would hang the test run, docs/FUSE.md §3.6), through the product's own mount
    harness (``xnatfs.fs.mounting.MountDaemon``: spawn, wait, stop)."""

    def __init__(
        self, url: str, mnt: Path, cache: Path, log: Path, args: List[str], credentials=ADMIN
    ):
        self.url, self.path, self.cache, self.logfile = url, mnt, cache, log
        self.args, self.credentials = args, credentials
        self.daemon = None

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        return self.daemon.proc if self.daemon is not None else None

    def start(self, timeout: float = 30.0) -> "Mount":
        from xnatfs.fs import mounting

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError:  # a dead mount left there (ENOTCONN): xnatfs mount must clear it
            pass
        argv = mounting.xnatfs_argv(
            self.url, self.path, "--cache-dir", str(self.cache), "--log-level", "debug", *self.args
        )
        self.daemon = mounting.MountDaemon(
            argv,
            self.path,
            self.logfile,
            {"username": self.credentials[0], "password": self.credentials[1]},
        ).start()
        try:
            self.daemon.wait(timeout, tail_lines=60)
        except mounting.MountFailed as exc:
            if exc.returncode is not None:
                pytest.fail(str(exc))
            self.cleanup()
            pytest.fail(f"{exc}\n{Path('/proc/self/mounts').read_text()[-2000:]}")
        return self

    def _answers(self) -> bool:
        """Mounted and answering (a dead mount left by a killed daemon is neither)."""
        from xnatfs.fs import mounting

        return _mounted(self.path) and mounting._answers(str(self.path))

    def log_tail(self, n: int = 60) -> str:
        from xnatfs.fs.mounting import log_tail

        return log_tail(self.logfile, n, missing="")

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace")

    def umount(self) -> subprocess.CompletedProcess:
        """The product's own umount; asserts it and the daemon exit 0 (S3QL t4_fuse)."""
        res = subprocess.run(
            [sys.executable, "-m", "xnatfs", "umount", str(self.path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        assert self.proc.wait(timeout=20) == 0, self.log_tail()
        return res

    def dump_threads(self, timeout: float = 5.0) -> None:
        """Ask a live daemon for its threads' stacks (SIGUSR1, ``xnatfs/commands/daemon.py``)
        and wait until they are in its log, so that a failed test shows what the mount was
        waiting for."""
        if self.proc is None or self.proc.poll() is not None:
            return
        before = self.logfile.stat().st_size if self.logfile.exists() else 0
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.logfile, "rb") as fh:
                fh.seek(before)
                # the main thread comes last (``python -m xnatfs``: its bottom frame is runpy's)
                if b"in _run_module_as_main" in fh.read():
                    return
            time.sleep(0.05)

    def cleanup(self) -> None:
        """After a failure: force the mount away and end the daemon (bounded)."""
        if self.daemon is not None:
            self.daemon.stop(grace=3)


@pytest.fixture
def make_mount(tmp_path, request):
    """Factory: ``make_mount(emulator_run, *extra_args)`` -> a live Mount, unmounted after."""
    if not HAVE_FUSE:
        pytest.skip(FUSE_SKIP_REASON)
    mounts: List[Mount] = []

    def make(
        url: str,
        *args: str,
        cache: Optional[Path] = None,
        credentials=ADMIN,
        name: Optional[str] = None,
    ) -> Mount:
        n = len(mounts)
        m = Mount(
            url,
            tmp_path / (name or f"mnt{n}"),
            cache or tmp_path / f"cache{n}",
            tmp_path / f"mount{n}.log",
            list(args),
            credentials,
        ).start()
        mounts.append(m)
        return m

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for m in mounts:
        if m.proc is not None and m.proc.poll() is None and _mounted(m.path) and not failed:
            m.umount()
        else:
            if failed:
                m.dump_threads()
            m.cleanup()
        if failed:
            print(f"--- xnatfs log ({m.logfile}) ---\n{m.log_tail(400)}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def run(cmd: List[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Plain file operations on the mount go through a subprocess with a timeout (SIGKILL frees
    a task blocked in a FUSE request; the test run never hangs)."""
    return subprocess.run(cmd, capture_output=True, timeout=timeout, **kwargs)
