#!/usr/bin/env python3
"""Rewrite citations of documents outside the repository into citations of ``docs/`` pages.

Comments, unit files and Dockerfiles used to cite ``xnat-rest-api.md §N``, ``fuse-notes.md §N``,
``DESIGN.md``/``STYLE.md`` and ``CONTRACTS.md``, which a clone does not contain.  Their facts now
live in ``docs/XNAT-API.md``, ``docs/FUSE.md``, ``docs/LAYOUT.md`` and ``docs/ARCHITECTURE.md``
(section numbers kept), and ``CITATIONS.tsv`` maps each citation string to its new text.

The map is applied literally, in one pass per file, longest string first, so a longer citation
(``xnat-rest-api.md §1.2, §3.1``) wins over its prefix and a replacement is never rewritten
again.  A string that ends in a digit does not match where more digits follow (``§1`` is not a
prefix of ``§10`` or ``§1.2``).  In files under ``docs/`` the replacement drops its ``docs/``
prefix (the pages are siblings there).

A new citation is longer than the old one, so a line may pass the project's 100 columns (ruff
E501).  Such a line is split at its last space before the limit when the split is harmless: in a
comment (the new line repeats the comment's indent and ``#``/``#:``) or inside a triple-quoted
string (a docstring; the new line keeps the indent).  Other long lines are only reported.

Usage: ``python3 scripts/rewrite_citations.py [--map CITATIONS.tsv] [--check] [PATH ...]``;
``--self-test`` checks these rules on small inputs.
(paths default to the code, unit files, images, scripts, benchmarks, docs and README).
``--check`` changes nothing and exits 1 when something would change.  Stdlib only.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tokenize
from typing import Dict, Iterator, List, Tuple

DEFAULT_PATHS = ["xnatfs", "tests", "docker", "systemd", "contrib", "scripts", "benchmarks",
                 "docs", "README.md", "pyproject.toml"]
#: text files worth rewriting; everything else (caches, binaries, data) is left alone
SUFFIXES = (".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".yaml", ".yml", ".sh", ".service",
            ".mount", ".conf", ".rst", ".tsv", ".json")
NAMES = ("Dockerfile", "Makefile")
SKIP_DIRS = {".git", "__pycache__", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
LIMIT = 100


def load_map(path: str) -> List[Tuple[str, str]]:
    """``old<TAB>new`` lines; blank lines and lines starting with ``#`` are skipped."""
    rows: List[Tuple[str, str]] = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0]:
                raise SystemExit(f"{path}:{number}: expected 'old<TAB>new', got {line!r}")
            rows.append((parts[0], parts[1]))
    return rows


def compile_map(rows: List[Tuple[str, str]]) -> "re.Pattern[str]":
    """One alternation, longest first; keys ending in a digit must not run on into more digits."""
    parts = []
    for old, _new in sorted(rows, key=lambda r: -len(r[0])):
        tail = r"(?![0-9]|\.[0-9])" if old[-1].isdigit() else ""
        parts.append(re.escape(old) + tail)
    return re.compile("|".join(parts))


def rewrite(text: str, pattern: "re.Pattern[str]", table: Dict[str, str], in_docs: bool) -> str:
    def new_text(match: "re.Match[str]") -> str:
        new = table[match.group(0)]
        if in_docs:
            new = new.replace("../docs/", "").replace("docs/", "")
        return new
    return pattern.sub(new_text, text)


def _safe_spans(text: str, python: bool) -> Dict[int, List[Tuple[int, int, str]]]:
    """line number (1-based) -> [(start col, end col, kind)] where a line break may go.

    ``kind`` is "comment" or "doc".  For Python the tokenizer finds comments and triple-quoted
    strings; for other files a line whose text starts with ``#`` is a comment."""
    spans: Dict[int, List[Tuple[int, int, str]]] = {}
    lines = text.split("\n")
    if not python:
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("#"):
                spans.setdefault(number, []).append((len(line) - len(line.lstrip()), len(line),
                                                     "comment"))
        return spans
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return spans
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            spans.setdefault(tok.start[0], []).append((tok.start[1], tok.end[1], "comment"))
        elif tok.type == tokenize.STRING and tok.string.lstrip("rRbBuUfF")[:3] in ('"""', "'''"):
            quote = len(tok.string) - len(tok.string.lstrip("rRbBuUfF")) + 3
            for number in range(tok.start[0], tok.end[0] + 1):
                line = lines[number - 1]
                start = tok.start[1] + quote if number == tok.start[0] else 0
                end = tok.end[1] - 3 if number == tok.end[0] else len(line)
                spans.setdefault(number, []).append((start, end, "doc"))
    return spans


def wrap_long_lines(old: str, new: str, python: bool) -> Tuple[str, List[int]]:
    """Split the lines this rewrite pushed past ``LIMIT`` where that is harmless (see above);
    returns the text and the line numbers (in the new text) still too long."""
    old_long = {line for line in old.split("\n") if len(line) > LIMIT}
    spans = _safe_spans(new, python)
    out: List[str] = []
    too_long: List[int] = []
    for number, line in enumerate(new.split("\n"), 1):
        if len(line) <= LIMIT or line in old_long:
            out.append(line)
            continue
        cut = -1
        prefix = ""
        for start, end, kind in spans.get(number, []):
            if kind == "comment":
                body = line[start:].lstrip("#")
                marker = line[start:len(line) - len(body)]
                prefix = " " * start + marker + (" " if body.startswith(" ") else "")
                lo = start + len(marker) + 1
            else:
                prefix = " " * (len(line) - len(line.lstrip()))
                lo = start + 1
            space = line.rfind(" ", lo, min(end, LIMIT + 1))
            while space > lo and line[space + 1:space + 2] == "§":
                space = line.rfind(" ", lo, space)  # keep "FILE §N" on one line
            if space > len(prefix):
                cut = space
                break
        if cut < 0:
            out.append(line)
            too_long.append(len(out))
            continue
        head, tail = line[:cut].rstrip(), line[cut + 1:].lstrip()
        out.append(head)
        out.append(prefix + tail)
        if len(out[-1]) > LIMIT:
            too_long.append(len(out))
    return "\n".join(out), too_long


def files_under(root: str, paths: List[str]) -> Iterator[str]:
    for rel in paths:
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            yield path
            continue
        for directory, subdirs, names in os.walk(path):
            subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
            for name in sorted(names):
                if name.endswith(SUFFIXES) or name in NAMES or name.endswith(".service"):
                    yield os.path.join(directory, name)


def self_test() -> None:
    """The rules above on small inputs (``--self-test``); raises AssertionError on a failure."""
    rows = [("a.md §1", "docs/A.md §1"), ("a.md §1.2", "docs/A.md §1.2"), ("a.md", "docs/A.md")]
    pattern, table = compile_map(rows), dict(rows)
    assert rewrite("(a.md §1.2) (a.md §1) a.md §10", pattern, table, False) == \
        "(docs/A.md §1.2) (docs/A.md §1) docs/A.md §10"
    assert rewrite("see a.md §1", pattern, table, True) == "see A.md §1"
    long_comment = "    # " + "word " * 17 + "(a.md §1)"
    new = rewrite(long_comment, pattern, table, False)
    wrapped, left = wrap_long_lines(long_comment, new, python=True)
    assert left == [] and all(len(x) <= LIMIT for x in wrapped.split("\n")), wrapped
    assert wrapped.split("\n")[1].startswith("    # ") and "docs/A.md §1" in wrapped
    code = "x = '" + "y" * 90 + " a.md §1'"
    wrapped, left = wrap_long_lines(code, rewrite(code, pattern, table, False), python=True)
    assert "\n" not in wrapped and left == [1]  # a string literal is never split


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--map", default="CITATIONS.tsv", help="the old<TAB>new map")
    parser.add_argument("--root", default=".", help="the repository root")
    parser.add_argument("--check", action="store_true", help="report, change nothing")
    parser.add_argument("--self-test", action="store_true", help="check the rules and exit")
    parser.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    args = parser.parse_args(argv)
    if args.self_test:
        self_test()
        print("self-test passed")
        return 0
    rows = load_map(os.path.join(args.root, args.map) if not os.path.isabs(args.map)
                    else args.map)
    table = dict(rows)
    pattern = compile_map(rows)
    map_path = os.path.abspath(os.path.join(args.root, args.map))
    changed = 0
    for path in files_under(args.root, args.paths):
        if os.path.abspath(path) in (map_path, os.path.abspath(__file__)):
            continue  # the map and this script name the old strings on purpose
        try:
            with open(path, encoding="utf-8", newline="") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        rel = os.path.relpath(path, args.root)
        new = rewrite(text, pattern, table, in_docs=rel.split(os.sep)[0] == "docs")
        if new == text:
            continue
        if not rel.endswith(".md"):
            new, too_long = wrap_long_lines(text, new, python=rel.endswith(".py"))
            for number in too_long:
                print(f"{rel}:{number}: longer than {LIMIT} columns after the rewrite",
                      file=sys.stderr)
        changed += 1
        print(f"{'would rewrite' if args.check else 'rewrote'} {rel}")
        if not args.check:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(new)
    print(f"{changed} file(s) {'to change' if args.check else 'changed'}", file=sys.stderr)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
