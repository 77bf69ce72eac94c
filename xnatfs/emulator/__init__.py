"""A faithful XNAT server for tests, the demo and benchmarks (imports nothing else from xnatfs).

    from xnatfs.emulator import Emulator
    emu = Emulator(data_dir, user="admin", password="admin", seed="empty").start()
    emu.url, emu.faults, emu.expire_sessions(), emu.access_records(), emu.stop()

Modules: ``server`` (cheroot serving, faults, access log), ``app`` (routing and handlers),
``store`` (SQLite + archive directory), ``auth`` (sessions), ``formats`` (ResultSet writers),
``xsd`` (schemas for xnatpy), ``cli`` (``python -m xnatfs.emulator``).
"""
from __future__ import annotations

from .server import AccessRecord, Emulator, Faults

__all__ = ["Emulator", "Faults", "AccessRecord"]
