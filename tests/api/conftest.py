"""Fixtures of the client tests."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import pytest

from tests.api.helpers import ADMIN, options, reset_faults
from xnatfs.emulator import Emulator
from xnatfs.xnat.client import XnatClient


@pytest.fixture(scope="module")
def emu(shared_emulator) -> Emulator:
    """The module's read-only demo emulator (conftest ``shared_emulator``)."""
    return shared_emulator.emu


@pytest.fixture
def client(emu: Emulator) -> Iterator[XnatClient]:
    """A started client of the module's emulator, with its faults cleared before and after."""
    reset_faults(emu)
    c = XnatClient(emu.url, ADMIN, options())
    c.start()
    yield c
    reset_faults(emu)
    c.close()


@pytest.fixture
def make_runtime(make_emulator, tmp_path):
    """Factory: ``make_runtime(**options)`` -> a started ``Runtime`` (client, caches, tree,
    writer) against a fresh demo emulator (``rt.emu``), driven through the calls the FUSE
    adapter makes; closed after the test.  ``emulator={...}``: the emulator's own settings
    (``checksums=False``: a site with checksums off)."""
    from tests.conftest import ADMIN
    from xnatfs.options import Options
    from xnatfs.runtime import Runtime
    from xnatfs.xnat.auth import Credentials

    made = []

    def make(emulator=None, **options):
        emu = make_emulator(**(emulator or {}))
        options.setdefault("prefetch", 0)
        rt = Runtime(
            Options(url=emu.url, cache_dir=tmp_path / f"cache{len(made)}", **options),
            Credentials(*ADMIN),
        )
        rt.start()
        rt.emu = emu
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def runtime(make_runtime):
    """A started ``Runtime`` with default options (``make_runtime``)."""
    return make_runtime()


@pytest.fixture
def runtimes(make_emulator, tmp_path):
    """Factory of runtimes on one emulator and one cache directory (a mount, then the next
    mount of the same cache; ``make(**options)`` changes options), closed after the test.
    ``emulator={...}`` in the first call: the emulator's own settings (``make_runtime``)."""
    from tests.conftest import ADMIN
    from xnatfs.options import Options
    from xnatfs.runtime import Runtime
    from xnatfs.xnat.auth import Credentials

    emus = []
    made = []

    def make(emulator=None, **extra):
        if not emus:
            emus.append(make_emulator(**(emulator or {})))
        emu = emus[0]
        options = Options(url=emu.url, cache_dir=tmp_path / "cache", prefetch=0)
        rt = Runtime(dataclasses.replace(options, **extra), Credentials(*ADMIN))
        rt.start()
        rt.emu = emu
        made.append(rt)
        return rt

    yield make
    for rt in made:
        with contextlib.suppress(Exception):
            rt.close()
