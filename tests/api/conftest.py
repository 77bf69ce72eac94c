"""Fixtures of the client tests."""

from __future__ import annotations

import pytest

from xnatfs.emulator import Emulator


@pytest.fixture(scope="module")
def emu(shared_emulator) -> Emulator:
    """The module's read-only demo emulator (conftest ``shared_emulator``)."""
    return shared_emulator.emu
