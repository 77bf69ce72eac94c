"""Hostile names from XNAT (issue 17 §8): '.'/'..' escaped reversibly, control characters never
split a log line."""

from __future__ import annotations

import io
import logging

import pytest

from xnatfs.cli import setup_logging
from xnatfs.logfmt import escape_controls
from xnatfs.tree.paths import escape_name, unescape_name


@pytest.mark.parametrize(
    "name, shown",
    [
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("%2E", "%252E"),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("a/..", "a%2F.."),
        ("../x", "..%2Fx"),
        ("nul\0", "nul%00"),
    ],
)
def test_dot_names_are_escaped_reversibly(name, shown):
    assert escape_name(name) == shown
    assert shown not in (".", "..") and "/" not in shown
    assert unescape_name(shown) == name


def test_escaping_is_a_bijection_on_tricky_names():
    names = [".", "..", "%2E", "%2E%2E", "%252E", "a%2Eb", "%", "%%2E"]
    shown = [escape_name(n) for n in names]
    assert len(set(shown)) == len(names)
    assert [unescape_name(s) for s in shown] == names


def test_every_log_record_is_one_line_whatever_the_name():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", stream)
        logging.getLogger("xnatfs.test").error(
            "read /P/%s: GET %s -> 500",
            "evil\n2026-01-01 ERROR forged\r\x1b[2J\u2028x",
            "http://h/data/a\nb",
        )
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "evil\\n2026-01-01 ERROR forged\\r\\x1b[2J\\u2028x" in text
    assert "\x1b" not in text and "\r" not in text


def test_escape_controls_leaves_plain_text_alone():
    assert escape_controls("résumé – notes.txt (T1w)") == "résumé – notes.txt (T1w)"
