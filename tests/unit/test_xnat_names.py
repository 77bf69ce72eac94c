"""Hostile names from XNAT (issue 17 §8): '.'/'..' escaped reversibly, control characters never
split a log line."""

from __future__ import annotations

import io
import logging

import pytest

from xnatfs.cli import setup_logging
from xnatfs.logfmt import escape_controls
from xnatfs.tree.paths import escape_name, unescape_name
from xnatfs.view.paths import canonical_name


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


@pytest.mark.parametrize(
    "name, shown",
    [
        ("50%_mask.nii.gz", "50%_mask.nii.gz"),
        ("100%", "100%"),
        ("%", "%"),
        ("%2", "%2"),
        ("%2F", "%252F"),
        ("%2f", "%252f"),
        ("a%25b", "a%2525b"),
        ("%00", "%2500"),
        ("%2e", "%252e"),
        ("%/", "%%2F"),
        ("%%2E", "%%252E"),
    ],
)
def test_a_percent_is_escaped_only_where_it_would_read_as_an_escape(name, shown):
    assert escape_name(name) == shown
    assert unescape_name(shown) == name


def test_escaping_round_trips_every_short_name_of_the_tricky_characters():
    """Every name of up to 5 characters over the characters the rule turns on (itertools, no
    sampling): escape then unescape is the identity, so the mapping is a bijection, and no
    shown name holds ``/`` or NUL or is ``.``/``..``."""
    import itertools

    alphabet = ["%", "2", "5", "F", "f", "0", "E", "/", "\0", "."]
    for n in range(6):
        for chars in itertools.product(alphabet, repeat=n):
            name = "".join(chars)
            shown = escape_name(name)
            assert "/" not in shown and "\0" not in shown and shown not in (".", ".."), name
            assert unescape_name(shown) == name, (name, shown)


@pytest.mark.parametrize(
    "written, canonical",
    [("50%25.txt", "50%.txt"), ("a%2fb", "a%2Fb"), ("%252F", "%252F"), ("plain", "plain")],
)
def test_other_spellings_have_one_canonical_name(written, canonical):
    assert canonical_name(written) == canonical
    assert canonical_name(canonical) == canonical


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


def test_a_traceback_cannot_forge_a_log_line_either():
    """An unexpected error is logged with its traceback (``fs/errmap``), whose last line is the
    exception's message: a name in it (``KeyError(name)``) could still split the record and
    forge a line, or carry a terminal escape, after the message itself was escaped."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", stream)
        try:
            try:
                raise KeyError("evil\n2026-01-01 00:00:00,000 ERROR [x] forged\x1b[2J")
            except KeyError as inner:
                raise ValueError("outer\nforged too") from inner
        except ValueError:
            logging.getLogger("xnatfs.test").exception("getattr /P/x: unexpected")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert "Traceback" in text and "KeyError" in text and "ValueError" in text, text
    assert not any(ln.startswith(("2026-01-01", "forged")) for ln in text.splitlines()[1:]), text
    assert "\x1b" not in text, text
    assert "evil\\n2026-01-01" in text and "outer\\nforged too" in text, text
