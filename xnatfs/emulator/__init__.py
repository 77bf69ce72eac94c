"""A faithful XNAT server for tests, the demo and benchmarks (imports nothing else from xnatfs).

    from xnatfs.emulator import Emulator
    emu = Emulator(data_dir, user="admin", password="admin", seed="empty").start()
    emu.url, emu.faults, emu.expire_sessions(), emu.access_records(), emu.stop()

Modules: ``server`` (cheroot serving, faults, access log), ``app`` (authentication and the
router; its docstring maps URLs to handler modules), ``serving`` (what every handler answers
with), ``resolve`` (archive URL grammar), ``listings``, ``objects``, ``documents``, ``files``,
``uploads``, ``services`` (handlers by area), ``prearchive`` + ``prearchive_http``, ``importer``,
``store`` (SQLite + archive directory), ``auth`` (sessions), ``formats`` (ResultSet writers),
``xsd`` (schemas for xnatpy), ``seed``/``dicom`` (demo data), ``cli`` (``python -m
xnatfs.emulator``).
"""

from __future__ import annotations

from .server import AccessRecord, Emulator, Faults

__all__ = ["Emulator", "Faults", "AccessRecord"]
