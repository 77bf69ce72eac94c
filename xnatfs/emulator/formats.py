"""Wire formats of XNAT's ``/data`` API: ResultSet tables (JSON/CSV/HTML/XML), dates, error pages.

Every writer here reproduces a quirk of the real server (docs/XNAT-API.md §1.1, §1.2, §5.1):
the JSON envelope is written by hand (not ``json.dumps`` of a dict) because XNAT's writer puts
``, `` and ``"key": "value"`` with spaces around the meta fields, and every cell is a string.
"""

from __future__ import annotations

import csv
import html
import io
import json
import time
from email.utils import formatdate
from typing import Any, Mapping, Optional, Sequence

Row = Mapping[str, Any]

HTTP_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    417: "Expectation Failed",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def cell(value: Any) -> str:
    """XFTTable.ValueParser: ``toString()`` of everything, null -> "" (§1.1)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def java_timestamp(epoch: Optional[float], digits: int = 3) -> str:
    """``java.sql.Timestamp.toString()``: fraction with trailing zeros dropped, at least ``.0``.

    ``insert_date`` columns carry milliseconds, ``last_modified`` microseconds (§1.1).
    """
    if epoch is None:
        return ""
    whole = int(epoch)
    frac = round(epoch - whole, digits)
    if frac >= 1:
        whole, frac = whole + 1, 0.0
    base = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole))
    fs = f"{frac:.{digits}f}"[2:].rstrip("0") or "0"
    return f"{base}.{fs}"


def java_date(epoch: Optional[float]) -> str:
    """``java.util.Date.toString()``: ``EEE MMM dd HH:mm:ss zzz yyyy`` (item
    ``meta.start_date``)."""
    if epoch is None:
        return ""
    t = time.localtime(epoch)
    return (
        time.strftime("%a %b %d %H:%M:%S ", t)
        + (time.strftime("%Z", t) or "UTC")
        + time.strftime(" %Y", t)
    )


def http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


def _json_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def resultset_json(
    rows: Sequence[Row],
    columns: Sequence[str],
    meta: Mapping[str, str],
    column_props: Optional[Sequence[Mapping[str, str]]] = None,
) -> bytes:
    """``{"ResultSet":{["Columns":[..],]"Result":[..], "totalRecords": "N", "title": ".."}}``."""
    result = [{c: cell(r.get(c)) for c in columns} for r in rows]
    parts = ['{"ResultSet":{']
    if column_props is not None:
        parts.append(
            '"Columns":'
            + json.dumps(list(column_props), separators=(",", ":"), ensure_ascii=False)
            + ","
        )
    parts.append('"Result":' + json.dumps(result, separators=(",", ":"), ensure_ascii=False))
    for k, v in meta.items():
        parts.append(f", {_json_str(k)}: {_json_str(cell(v))}")
    parts.append("}}")
    return "".join(parts).encode("utf-8")


def resultset_csv(rows: Sequence[Row], columns: Sequence[str]) -> bytes:
    """Header row + data rows, ``\\n`` line endings, CSV escaping, null as empty (§1.2)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([cell(r.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8")


def _cells(
    out: list[str], rows: Sequence[Row], columns: Sequence[str], row_tag: str, cell_tag: str
) -> None:
    """One element per row with one escaped element per column (HTML and XML tables)."""
    for r in rows:
        out.append(f"<{row_tag}>")
        out.extend(f"<{cell_tag}>{html.escape(cell(r.get(c)))}</{cell_tag}>" for c in columns)
        out.append(f"</{row_tag}>")


def resultset_html(rows: Sequence[Row], columns: Sequence[str], title: str = "") -> bytes:
    e = html.escape
    out = ["<html><head><title>", e(title or "XNAT"), "</title></head><body>"]
    out.append(
        '<table class="x_rs_t" cellpadding="0" cellspacing="0"><thead class="x_rs_thead"><tr>'
    )
    out.extend(f"<th>{e(c)}</th>" for c in columns)
    out.append("</tr></thead><tbody>")
    _cells(out, rows, columns, "tr", "td")
    out.append("</tbody></table></body></html>")
    return "".join(out).encode("utf-8")


def resultset_xml(rows: Sequence[Row], columns: Sequence[str], meta: Mapping[str, str]) -> bytes:
    """XFTTable XML form (rarely used; §1.2)."""
    e = html.escape
    attrs = "".join(f' {k}="{e(cell(v))}"' for k, v in meta.items())
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<ResultSet xmlns="http://nrg.wustl.edu/xe" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"{attrs}>',
        "<results><columns>",
    ]
    out.extend(f"<column>{e(c)}</column>" for c in columns)
    out.append("</columns><rows>")
    _cells(out, rows, columns, "row", "cell")
    out.append("</rows></results></ResultSet>")
    return "".join(out).encode("utf-8")


def error_page(status: int, message: str) -> bytes:
    """Restlet 1.1's default status page: starts with ``<html>`` and holds ``<h3>msg</h3>``
    (§5.1)."""
    reason = HTTP_REASONS.get(status, "Error")
    section = {
        400: "10.4.1",
        401: "10.4.2",
        403: "10.4.4",
        404: "10.4.5",
        405: "10.4.6",
        406: "10.4.7",
        409: "10.4.10",
        417: "10.4.18",
        500: "10.5.1",
        503: "10.5.4",
    }
    link = f"http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html#sec{section.get(status, '10')}"
    body = (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{html.escape(message or reason)}</h3>"
        f'<p>You can get technical details <a href="{link}">here</a>.<br>\n'
        'Please continue your visit at our <a href="/">home page</a>.\n</p>\n</body>\n</html>\n'
    )
    return body.encode("utf-8")


def login_page(context_path: str = "", message: str = "") -> bytes:
    """The HTML login page a browser (or a redirected client) gets with status 200 (§5.1)."""
    msg = f'<div class="error">{html.escape(message)}</div>' if message else ""
    body = (
        '<!DOCTYPE html>\n<html>\n<head>\n<title>XNAT</title>\n</head>\n<body id="login">\n'
        f"{msg}"
        f'<form name="form1" method="post" action="{context_path}/j_spring_security_check" '
        'id="login_form">\n'
        '<label for="username">User</label><input type="text" id="username" name="j_username">\n'
        '<label for="password">Password</label><input type="password" id="password" '
        'name="j_password">\n<button class="btn1" id="loginButton" type="submit">Login</button>\n'
        "</form>\n</body>\n</html>\n"
    )
    return body.encode("utf-8")


def home_page(user: str) -> bytes:
    body = (
        "<!DOCTYPE html>\n<html>\n<head>\n<title>XNAT</title>\n</head>\n<body>\n"
        f'<span id="user_info">Logged in as: &nbsp;<a href="#">{html.escape(user)}</a></span>\n'
        "</body>\n</html>\n"
    )
    return body.encode("utf-8")
