"""The README's reference lists match the code (issue 16 §10): every ``user.xnat.*`` attribute
the tree serves is documented, every ``xnatfs mount`` option is in the command summary, and the
escaping example is what ``escape_name`` does.  (The write examples are run for real by
``tests/mount/test_readme.py``.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Set

from xnatfs.cli import build_parser
from xnatfs.tree.paths import escape_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _served_attributes() -> Set[str]:
    """Names given to ``_attrs(...)`` and ``attrs={...}`` in the tree, plus ``cache_state``."""
    names = {"cache_state"}
    for module in ("layouts/xnat/loaders.py", "tree/overlay.py"):
        tree = ast.parse((ROOT / "xnatfs" / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_attrs":
                names |= {kw.arg for kw in node.keywords if kw.arg}
            if (
                isinstance(node, ast.keyword)
                and node.arg == "attrs"
                and isinstance(node.value, ast.Dict)
            ):
                names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return names


def test_every_served_attribute_is_documented() -> None:
    served = _served_attributes()
    assert {"date", "resource", "scan_type", "digest"} <= served  # the parse found the calls
    bullet = _section("What you see").split("- **Extended attributes**", 1)[1].split("\n- ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", bullet))
    assert served - documented == set(), (
        f"undocumented user.xnat.* attributes: {sorted(served - documented)}"
    )


def test_every_mount_option_is_in_the_command_summary() -> None:
    parser = build_parser()
    mount = next(
        a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "mount"
    )[1]
    options = {
        s
        for action in mount._actions
        for s in action.option_strings
        if s.startswith("--") and action.help != "==SUPPRESS==" and s != "--help"
    }
    summary = _section("Commands").split("```", 2)[1]
    missing = {o for o in options if not re.search(re.escape(o) + r"\b", summary)}
    # each option has one long form in the summary (e.g. --foreground, not also -f)
    assert missing == set(), f"mount options missing from the README summary: {sorted(missing)}"


def test_escaping_example_is_true() -> None:
    text = _section("The path rule")
    shown = re.findall(r"file XNAT\s+lists as `([^`]+)` shows as `([^`]+)`", text)
    assert len(shown) >= 2, "the escaping examples are gone"
    assert [escape_name(xnat) for xnat, _ in shown] == [name for _, name in shown]
    assert any(xnat != name for xnat, name in shown), "no example of an escaped name"
    assert any(xnat == name and "%" in xnat for xnat, name in shown), "a bare % stays bare"
    assert "T1w%2FMPRAGE" not in README  # scan folders are named by ID, not type
