"""The one log formatter: one record is one line, whatever a server or a user put in a name.

A file name may hold a newline or an ANSI escape (XNAT allows it, a hostile server sends it, an
untrusted archive extracted into the mount carries it); logged raw it would split its line or
forge another one (issue 17 §8).  Every control character of the message and of the other
fields is shown as a Python-style escape (``\\n``, ``\\x1b``); a traceback, added after the
message, keeps the newlines between its lines, and the messages in it are escaped.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any, Optional, Set

__all__ = ["SafeFormatter", "escape_controls", "for_terminal"]

#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_one(m: "re.Match[str]") -> str:
    c = m.group(0)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
        c, f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
    )


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (a no-op for most text)."""
    return _CONTROL_RE.sub(_escape_one, text)


def for_terminal(text: str) -> str:
    """``text`` to print on a terminal: every control character escaped but the newline.  An
    error line or ``xnatfs status`` shows text a server chose (its error message, a name); an
    ANSI/OSC escape printed raw is run by the terminal (retitle it, rewrite earlier lines)."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def _escape_chain(te: Optional[traceback.TracebackException], seen: Set[int]) -> None:
    """Escape the message of every exception of a traceback (its ``__cause__``/``__context__``
    chain included); the frames are our own source lines."""
    while te is not None and id(te) not in seen:
        seen.add(id(te))
        # ``_str``: the message TracebackException formats (CPython 3.8-3.13; absent, no-op)
        text = getattr(te, "_str", None)
        if isinstance(text, str):
            vars(te)["_str"] = escape_controls(text)
        if te.__cause__ is not None:
            _escape_chain(te.__cause__, seen)
        te = te.__context__


class SafeFormatter(logging.Formatter):
    """``logging.Formatter`` whose message (and thread/logger names) cannot hold a control
    character; ``exc_info`` text is appended by the base class afterwards, its frames as
    usual and each exception's message escaped too (an unexpected error logged with its
    traceback, ``fs/errmap``, may carry a name: ``ValueError("a\\n<forged line>")``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name for it
        record.message = escape_controls(record.message)
        record.threadName = escape_controls(str(record.threadName))
        record.name = escape_controls(record.name)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # logging's name for it
        try:
            te = traceback.TracebackException(*ei)
            _escape_chain(te, set())
            return "".join(te.format()).rstrip("\n")
        except Exception:  # noqa: BLE001 - never lose the record over its traceback
            return escape_controls(super().formatException(ei))
