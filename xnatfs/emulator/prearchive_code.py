"""A project's prearchive setting, ``/data/projects/{P}/prearchive_code[/{CODE}]``
(``docs/XNAT-API.md`` §6).

Why it matters: an import that names a project but no ``dest`` lands where this setting says,
not always in the prearchive.  XNAT's codes (enum ``org.nrg.framework.constants.PrearchiveCode``):
``0`` manual (the session waits in the prearchive), ``4`` auto-archive, ``5`` auto-archive with
overwrite.  **A fresh project is 4** (reported by a client verified live against XNAT 1.9.2.1),
so xnatpy's documented ``services.import_(zip, project=, subject=)`` creates an archived
experiment.  ``GET`` answers the bare integer as text (not JSON); ``PUT .../prearchive_code/CODE``
sets it (200).
"""

from __future__ import annotations

from typing import Any

MANUAL = 0
AUTO_ARCHIVE = 4
AUTO_ARCHIVE_OVERWRITE = 5
CODES = (MANUAL, AUTO_ARCHIVE, AUTO_ARCHIVE_OVERWRITE)
#: what a project that never set it answers (XNAT's default for a new project)
DEFAULT = AUTO_ARCHIVE

_SETTING = "prearchive_code"


def get(store: Any, project: str) -> int:
    value = store.get_project_setting(project, _SETTING)
    try:
        return int(value) if value is not None else DEFAULT
    except ValueError:
        return DEFAULT


def parse(text: str) -> int:
    """The ``CODE`` path segment; ValueError for anything XNAT would refuse."""
    code = int(text.strip())
    if code not in CODES:
        raise ValueError(f"Invalid prearchive code: {text}")
    return code


def set_code(store: Any, project: str, code: int) -> None:
    store.set_project_setting(project, _SETTING, str(parse(str(code))))


def destination(code: int) -> tuple[str, str]:
    """(dest kind, overwrite) for an import with a project and no ``dest``.  Code 5 archives
    with ``overwrite=append`` (XNAT's auto-archive-overwrite merges into an existing session)."""
    if code == MANUAL:
        return "prearchive", "none"
    return "archive", ("append" if code == AUTO_ARCHIVE_OVERWRITE else "none")
