"""The module map's import rules (docs/ARCHITECTURE.md §1), checked by walking every import with
``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "xnatfs"

#: the command line: ``cli.py`` and the ``commands/`` package it dispatches to
CLI = {"cli", "commands"}

#: package -> xnatfs packages it must never import
FORBIDDEN = {
    "emulator": CLI | {"fs", "tree", "cache", "uploads", "xnat", "runtime", "options"},
    "xnat": CLI | {"fs", "tree", "cache", "uploads", "emulator", "runtime"},
    "cache": CLI | {"fs", "tree", "uploads", "xnat", "emulator", "runtime"},
    "uploads": CLI | {"fs", "tree", "cache", "xnat", "emulator", "runtime"},
    "tree": CLI | {"fs", "emulator", "runtime"},
    # the view engine knows no XNAT and no layout: layouts and policies plug into it (#14)
    "view": CLI
    | {"fs", "emulator", "runtime", "xnat", "tree", "layouts", "policies", "uploads", "options"},
    # a layout serves the engine; it never reaches up to FUSE, the CLI or the Tree wiring
    "layouts": CLI | {"fs", "emulator", "runtime", "tree", "policies"},
    # read-ahead policies use the engine (and a layout's records), never FUSE or the CLI
    "policies": CLI | {"fs", "emulator", "runtime", "tree"},
    "fs": CLI | {"emulator"},
    "runtime": CLI | {"fs", "emulator"},
    # the CLI's commands may use every product layer, as cli.py does, but not the emulator:
    # ``demo`` and ``emulator`` stay in cli.py, the one module that imports it
    "commands": {"emulator"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative import: resolve against the file's package
                base = path.relative_to(PKG.parent).with_suffix("").parts[: -node.level]
                yield ".".join(base + (node.module,))
            else:
                yield node.module


def test_layers_import_only_downwards():
    violations = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("").parts
        owner = rel[0]
        banned = FORBIDDEN.get(owner, set())
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "xnatfs" and len(parts) > 1 and parts[1] in banned:
                violations.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert not violations, "\n".join(violations)


def test_only_cli_imports_the_emulator():
    offenders = [
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*.py")
        if p.relative_to(PKG).parts[0] not in ("emulator", "cli.py")
        and any(n.startswith("xnatfs.emulator") for n in _imports(p))
    ]
    assert offenders == []


def test_only_the_client_imports_requests():
    offenders = [
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*.py")
        if p.relative_to(PKG).parts[0] not in ("xnat", "emulator")
        and any(n == "requests" or n.startswith("requests.") for n in _imports(p))
    ]
    assert offenders == []


def _module_imports(rel: str):
    return [n for path in sorted((PKG / rel).rglob("*.py")) for n in _imports(path)]


def test_the_view_engine_imports_nothing_from_xnat():
    names = _module_imports("view")
    assert names, "the view package was not found"
    assert [n for n in names if n == "xnatfs.xnat" or n.startswith("xnatfs.xnat.")] == []


def test_the_xnat_layout_imports_nothing_from_fs():
    names = _module_imports("layouts/xnat")
    assert "xnatfs.xnat.errors" in names  # the parse saw the layout's imports
    assert [n for n in names if n == "xnatfs.fs" or n.startswith("xnatfs.fs.")] == []


def test_policies_import_neither_fs_nor_the_cli():
    names = _module_imports("policies")
    assert "xnatfs.view.layout" in names
    assert [
        n
        for n in names
        if n.split(".")[:2] in (["xnatfs", "fs"], ["xnatfs", "cli"], ["xnatfs", "commands"])
    ] == []


def test_the_commands_package_is_checked_as_part_of_the_cli():
    """``xnatfs/commands/`` (the CLI's subcommands) exists and uses the product layers; no
    layer below the CLI imports it (FORBIDDEN), and it never imports the emulator."""
    names = _module_imports("commands")
    assert "xnatfs.fs.mounting" in names  # the parse saw the package's imports
    assert [n for n in names if n.startswith("xnatfs.emulator")] == []
