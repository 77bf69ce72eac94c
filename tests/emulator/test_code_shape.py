"""The emulator's code stays in reviewable pieces (issue 14): no import hooks, and the handlers
answer through the one shared ``serving`` module (no private response helpers).  Class and
function sizes are checked for all of ``xnatfs/`` in ``tests/unit/test_code_shape.py``."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "xnatfs" / "emulator"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PKG.glob("*.py"))]


def test_no_import_hooks_and_no_private_response_helpers() -> None:
    offenders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "importlib" for a in node.names):
                offenders.append(f"{path.name} imports importlib")
            if (
                isinstance(node, ast.ImportFrom)
                and node.level
                and any(a.name.startswith("_") for a in node.names)
            ):
                offenders.append(f"{path.name} imports a private name from .{node.module}")
            if isinstance(node, ast.ClassDef) and node.name in ("_Http", "Http"):
                offenders.append(f"{path.name} defines its own response helper {node.name}")
    assert offenders == []
