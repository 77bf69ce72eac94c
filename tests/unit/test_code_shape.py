"""The product code stays in reviewable pieces (issue 14): no class in ``xnatfs/`` (emulator
included) over 600 lines, and no function over 60 lines unless its docstring says why in a line
of its own kind: "Long because: ..." (or the older "(Over 60 lines: ...)")."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import List

PKG = Path(__file__).resolve().parents[2] / "xnatfs"

MAX_CLASS = 600
MAX_FUNCTION = 60
#: the two spellings of a reason the code uses (whitespace, line breaks included, is one space)
REASON = re.compile(r"Long because:|Over 60 lines:", re.IGNORECASE)


def _has_reason(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    doc = ast.get_docstring(node) or ""
    return bool(REASON.search(" ".join(doc.split())))


def offenders(root: Path = PKG) -> List[str]:
    """Every class over MAX_CLASS lines and every function over MAX_FUNCTION lines without a
    reason, as ``path:line: what``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if isinstance(node, ast.ClassDef):
                if length > MAX_CLASS:
                    found.append(f"{rel}:{node.lineno}: class {node.name} has {length} lines")
            elif length > MAX_FUNCTION and not _has_reason(node):
                found.append(
                    f"{rel}:{node.lineno}: {node.name}() has {length} lines and no "
                    "'Long because:' line in its docstring"
                )
    return found


def test_no_class_or_function_over_the_limits() -> None:
    assert offenders() == []


def test_the_check_sees_a_long_function_and_its_reason(tmp_path: Path) -> None:
    """The check itself: a long function without a reason is found, with one it is not, and
    a class over the limit is found whatever its docstring says."""
    pkg = tmp_path / "xnatfs"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION))
    (pkg / "a.py").write_text(
        f"def bare():\n{body}\n"
        f'def told():\n    """Does it.\n\n    Long because: one table.'
        f'"""\n{body}\n'
        f'def older():\n    """Does it.  (Over 60\n    lines: a banner.)'
        f'"""\n{body}\n'
        f"def short():\n    return 1\n"
    )
    (pkg / "b.py").write_text(
        'class Big:\n    """Long because: no excuse for classes."""\n'
        + "".join(f"    y{i} = {i}\n" for i in range(MAX_CLASS))
    )
    assert offenders(pkg) == [
        f"xnatfs/a.py:1: bare() has {MAX_FUNCTION + 1} lines and no 'Long because:' line in "
        "its docstring",
        f"xnatfs/b.py:1: class Big has {MAX_CLASS + 2} lines",
    ]
