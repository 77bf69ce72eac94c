"""Fixtures for the client acceptance tests: one demo emulator per test session (port 0, a temp
data dir), and connected xnatpy / pyxnat clients.

Tests that write create their own uniquely named objects (the ``unique`` fixture), so they can
share the one seeded emulator and run in any order.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Iterator

import pytest

ADMIN = ("admin", "admin")
ALICE = ("alice", "alice-pw")

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from xnatfs.emulator import Emulator

    data_dir = tmp_path_factory.mktemp("emulator-data")
    emu = Emulator(data_dir, user=ADMIN[0], password=ADMIN[1], seed="demo", port=0)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def url(emulator) -> str:
    return emulator.url


@pytest.fixture(scope="package", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No ~/.netrc or pyxnat config of the machine may leak into the clients."""
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("HOME", "NETRC")}
    os.environ["HOME"] = str(home)
    os.environ["NETRC"] = str(home / ".netrc")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _import_pyxnat_derivatives() -> None:
    """pyxnat 1.6.4 imports every ``pyxnat.core.derivatives`` module when an ``Interface`` is
    built, and those import numpy, pandas and nibabel at module level, although only the
    derivative helpers (FreeSurfer stats parsers...) use them, never the REST calls.  When the
    venv lacks them, import the derivatives once with placeholder modules that fail on first
    use, then take the placeholders out of ``sys.modules`` again (so pydicom & co. still see no
    numpy)."""
    import importlib
    import importlib.util
    import pkgutil
    import sys
    import types

    try:
        import pyxnat.core.derivatives as derivatives
    except ImportError:
        return
    missing = [m for m in ("numpy", "pandas", "nibabel") if importlib.util.find_spec(m) is None]
    if not missing:
        return

    def placeholder(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)

        def __getattr__(attr: str):
            raise ImportError(f"{name} is not installed (placeholder for pyxnat derivatives)")

        mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
        return mod

    for name in missing:
        sys.modules[name] = placeholder(name)
    try:
        for info in pkgutil.iter_modules(derivatives.__path__, derivatives.__name__ + "."):
            importlib.import_module(info.name)
    finally:
        for name in missing:
            sys.modules.pop(name, None)
    log.info("pyxnat derivatives imported with placeholders for %s", ", ".join(missing))


_counter = itertools.count(1)


@pytest.fixture()
def unique(request: pytest.FixtureRequest) -> str:
    """A label no other test uses: ``T<n>`` plus the test's short name."""
    short = "".join(ch for ch in request.node.name.upper() if ch.isalnum())[-12:]
    return f"T{next(_counter)}{short}"


def forget_xnat_session(session: object) -> None:
    """xnatpy keeps every listing of every session in one class-level list and, on any delete,
    reloads them all; a listing of a closed session (kept alive e.g. by a failed test's
    traceback) then raises XNATNotConnectedError in an unrelated test.  Drop them."""
    try:
        from xnat.core import XNATListing
    except ImportError:
        return
    keep = []
    for ref in getattr(XNATListing, "__ALL_LISTINGS__", []):
        listing = ref()
        try:
            alive = listing is not None and listing.xnat_session is not session
        except Exception:  # noqa: BLE001 - a half-destroyed listing is dropped too
            alive = False
        if alive:
            keep.append(ref)
    XNATListing.__ALL_LISTINGS__ = keep


@pytest.fixture()
def xnat_session(url: str):
    import xnat

    session = xnat.connect(
        url, user=ADMIN[0], password=ADMIN[1], loglevel="WARNING", default_timeout=60
    )
    try:
        yield session
    finally:
        session.disconnect()
        forget_xnat_session(session)


@pytest.fixture(scope="session")
def pyxnat_ready() -> None:
    _import_pyxnat_derivatives()


@pytest.fixture()
def pyxnat_interface(url: str, pyxnat_ready: None):
    import pyxnat

    intf = pyxnat.Interface(server=url, user=ADMIN[0], password=ADMIN[1])
    try:
        yield intf
    finally:
        intf.disconnect()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root
