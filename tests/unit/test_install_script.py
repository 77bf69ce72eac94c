"""``scripts/install.sh`` puts ``xnatfs`` on PATH and says where (issue 16 §7); its lint step
names each check that failed (issue 14 item 7).

The script runs on a copy of the checkout with a stand-in virtualenv (two tiny executables), so
no apt or pip is involved; ``XNATFS_BIN_DIR`` replaces ``/usr/local/bin``/``~/.local/bin``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install.sh"


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "install.sh")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for tool in ("xnatfs", "mount.xnatfs"):
        (venv_bin / tool).write_text(f'#!/bin/sh\necho {tool} "$@"\n')
        (venv_bin / tool).chmod(0o755)
    return root


def _link(root: Path, bin_dir: Path, path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XNATFS_BIN_DIR=str(bin_dir), PATH=path)
    return subprocess.run(
        ["bash", str(root / "scripts" / "install.sh"), "link"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_link_puts_both_commands_on_path_and_says_where(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    bin_dir = tmp_path / "bin"
    res = _link(root, bin_dir, f"{bin_dir}:{os.environ['PATH']}")
    assert res.returncode == 0, res.stderr
    assert f"linked xnatfs and mount.xnatfs into {bin_dir}" in res.stdout
    assert "not on your PATH" not in res.stdout
    for tool in ("xnatfs", "mount.xnatfs"):
        assert os.readlink(bin_dir / tool) == str(root / ".venv" / "bin" / tool)
    found = subprocess.run(
        ["sh", "-c", "xnatfs --version"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin"),
    )
    assert found.stdout.strip() == "xnatfs --version"
    # again: the links are replaced, not an error
    assert _link(root, bin_dir, os.environ["PATH"]).returncode == 0


def test_link_says_when_the_folder_is_not_on_path_and_leaves_other_files(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xnatfs").write_text("another installation\n")
    res = _link(root, bin_dir, "/usr/bin:/bin")
    assert res.returncode == 0, res.stderr
    assert f"{bin_dir} is not on your PATH" in res.stdout
    assert "is not a link: left alone" in res.stderr
    assert (bin_dir / "xnatfs").read_text() == "another installation\n"
    assert os.readlink(bin_dir / "mount.xnatfs") == str(root / ".venv" / "bin" / "mount.xnatfs")


def _lint(tmp_path: Path, results: Dict[str, int]) -> subprocess.CompletedProcess:
    """``install.sh lint`` with stand-in ruff and mypy that exit as ``results`` says
    (``"check"``, ``"format"``, ``"mypy"``: exit status; a missing key: that tool is absent)."""
    root = _checkout(tmp_path)
    venv_bin = root / ".venv" / "bin"
    (venv_bin / "python").symlink_to(sys.executable)
    if "check" in results:
        (venv_bin / "ruff").write_text(
            '#!/bin/sh\necho ruff "$@"\n'
            f'case "$1" in check) exit {results["check"]};; *) exit {results["format"]};; esac\n'
        )
        (venv_bin / "ruff").chmod(0o755)
    if "mypy" in results:
        (venv_bin / "mypy").write_text(f'#!/bin/sh\necho mypy "$@"\nexit {results["mypy"]}\n')
        (venv_bin / "mypy").chmod(0o755)
    return subprocess.run(
        ["bash", str(root / "scripts" / "install.sh"), "lint"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lint_runs_ruff_and_mypy_and_says_clean(tmp_path: Path) -> None:
    res = _lint(tmp_path, {"check": 0, "format": 0, "mypy": 0})
    assert res.returncode == 0, res.stderr
    assert "ruff check --no-cache ." in res.stdout
    assert "ruff format --no-cache --check ." in res.stdout
    assert "mypy xnatfs" in res.stdout
    assert "xnatfs lint: clean" in res.stdout
    assert "FAILED" not in res.stderr


def test_lint_runs_every_check_and_names_the_failed_ones(tmp_path: Path) -> None:
    res = _lint(tmp_path, {"check": 1, "format": 0, "mypy": 1})
    assert res.returncode == 1
    # the format check still ran after ruff check failed
    assert "ruff format --no-cache --check ." in res.stdout
    assert "!!! lint FAILED: ruff check, mypy xnatfs !!!" in res.stderr
    assert "xnatfs lint: clean" not in res.stdout


def test_lint_fails_when_a_tool_is_missing(tmp_path: Path) -> None:
    res = _lint(tmp_path, {})
    assert res.returncode == 1
    assert ".venv/bin/ruff is missing" in res.stderr
    if sys.version_info >= (3, 10):
        res = _lint(tmp_path / "again", {"check": 0, "format": 0})
        assert res.returncode == 1
        assert ".venv/bin/mypy is missing" in res.stderr
        assert "!!! lint FAILED: mypy xnatfs !!!" in res.stderr
