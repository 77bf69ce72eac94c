"""What xnatfs prints to a terminal carries no control character a server (or a name) put in
it: an ANSI/OSC escape in an error message would be run by the terminal (retitle it, move the
cursor over earlier lines, on some terminals worse).  The log has its formatter for this
(``logfmt.SafeFormatter``); these are the lines printed outside the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from xnatfs import cli

#: an OSC "set the window title" sequence, as a hostile server would send it
HOSTILE = "\x1b]0;owned\x07\x1b[2K"


def _env(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("XNATFS_")
        and k not in ("NETRC", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    env.update(
        {
            "HOME": str(tmp_path),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "XNATFS_USER": "someone",
            "XNATFS_PASSWORD": "not-the-password",
        }
    )
    return env


def test_a_servers_error_text_is_printed_escaped(hostile, tmp_path):
    """The login answered 500 with escapes in its text: ``xnatfs mount`` printed them raw in
    its one error line."""
    hostile.login_answer = ("500 Internal Server Error", f"{HOSTILE}broken".encode())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "mount", hostile.url, str(mnt)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path),
    )
    assert res.returncode == 1, res
    assert "broken" in res.stderr, res.stderr
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr, repr(res.stderr)
    assert "\\x1b]0;owned\\x07" in res.stderr, res.stderr


def test_status_prints_upload_errors_and_paths_escaped(tmp_path, capsys):
    """``xnatfs status`` printed an upload's last error (XNAT's error text) and path raw."""
    mnt = tmp_path / "mnt"
    (mnt / ".xnatfs").mkdir(parents=True)
    stats = {
        "version": "x",
        "url": "https://xnat.example",
        "uptime_s": 1,
        "uploads": [
            {
                "state": "failed",
                "path": f"/P/resources/R/files/a{HOSTILE}.txt",
                "size": 3,
                "tries": 1,
                "last_error": f"PUT -> 500: {HOSTILE}broken",
            }
        ],
    }
    (mnt / ".xnatfs" / "stats").write_text(json.dumps(stats))
    assert cli.main(["status", str(mnt)]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "a\\x1b]0;owned" in out, out
    assert "\x1b" not in out and "\x07" not in out, repr(out)


def test_cache_prefetch_reports_a_refused_file_escaped_and_goes_on(hostile, make_mount, tmp_path):
    """``xnatfs cache prefetch`` over a folder holding a refused row (a bad listed size: its
    stat is EIO) whose name carries an escape: the walk's ``getsize`` raised and the command
    ended in a traceback, reading nothing; the names it reports were printed raw."""
    from tests.security.hostile import GOOD_BYTES, file_row

    m = make_mount(hostile.url, "--timeout", "3", "--read-only")
    hostile.mode = "custom"
    hostile.rows = [file_row(f"bad{HOSTILE}.bin", -5), file_row("good.txt", len(GOOD_BYTES))]
    res = subprocess.run(
        [sys.executable, "-m", "xnatfs", "cache", "prefetch", str(m.path / "H/resources/R/files")],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path),
    )
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr, res.stderr
    assert "prefetched 1 of 2 files" in res.stdout, res.stdout
    assert "bad\\x1b]0;owned\\x07" in res.stderr, res.stderr
    assert "\x1b" not in res.stderr + res.stdout
