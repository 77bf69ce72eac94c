"""XNAT's config service: one text entry per ``tool``/``path``, site-wide (``/data/config/{TOOL}/
{PATH}``) or per project (``/data/projects/{P}/config/{TOOL}/{PATH}``), ``docs/XNAT-API.md`` §12.

Why the emulator has it: XNAT's DICOM-to-BIDS container reads its BIDS map from here
(``config/bids/bidsmap``, project then site), and so does the BIDS view; without it that
mapping source could only be tested against a stub.

What is answered, as XNAT's ``ConfigResource`` (src ``restlet/resources/ConfigResource.java``):

* ``GET ...?contents=true``: the stored text as it is (``text/plain``, no ResultSet, whatever
  ``format=`` says); 404 when the entry is absent or disabled (204 with ``accept-not-found=true``);
  on a project, ``defaultToSiteWide=true`` falls back to the site's entry.
* ``GET`` without it: a ResultSet with XNAT's columns ``tool, path, project, user, create_date,
  reason, contents, unversioned, version, status`` (``meta=true`` blanks ``contents``).
* ``PUT``: the contents are the body (raw, ``inbody=true``, or the one part of a multipart
  form), or the ``contents`` field of an ``application/json`` body; ``status=enabled|disabled``
  (query or JSON) switches the entry.  201 when new, 200 when replaced.  Site entries need a site
  administrator; project entries a user who may change the project (in the emulator: any
  member), else 403.  No body and no status: 400; blank contents: 500 (XNAT's
  ``ConfigServiceException``).
* ``DELETE``: disables the entry (same permissions), 200.

Stored in the store's settings (``config/{tool}/{path}`` of the project, or of the site) as one
JSON record per entry.  Tool listings (``/data/config``, ``/data/config/{TOOL}``) are not
emulated (``docs/FIDELITY.md``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from werkzeug.wrappers import Response

from .formats import java_timestamp
from .resolve import NOT_FOUND
from .serving import Ctx, HttpError, text_response, truthy, write_table
from .store import ProjectRow

#: ConfigResource.configColumns, in XNAT's order
COLUMNS = [
    "tool",
    "path",
    "project",
    "user",
    "create_date",
    "reason",
    "contents",
    "unversioned",
    "version",
    "status",
]

_STATUSES = {"enabled": "enabled", "true": "enabled", "disabled": "disabled", "false": "disabled"}


def handle(ctx: Ctx, project: Optional[str], rest: str) -> Response:
    """``rest`` is ``{TOOL}/{PATH...}`` below ``config``; ``project`` None for the site's."""
    tool, _, path = rest.strip("/").partition("/")
    if not tool or not path:
        raise HttpError(404, NOT_FOUND)
    proj = _project(ctx, project)
    method = ctx.request.method
    if method in ("GET", "HEAD"):
        return _get(ctx, proj, tool, path)
    _check_write(ctx, proj)
    if method == "PUT":
        return _put(ctx, proj, tool, path)
    if method == "DELETE":
        entry = _load(ctx, proj, tool, path)
        if entry is not None:
            entry["status"] = "disabled"
            _save(ctx, proj, tool, path, entry)
        return text_response("")
    raise HttpError(405, "Method Not Allowed")


def _project(ctx: Ctx, project: Optional[str]) -> Optional[ProjectRow]:
    """XNAT: an unknown project is 404, one the user cannot read 403."""
    if project is None:
        return None
    p = ctx.store.get_project(project)
    if p is None:
        raise HttpError(404, f"The requested project {project} does not exist.")
    if not ctx.store.can_read(ctx.user, p.id):
        raise HttpError(403, f"User {ctx.user.name} can not access project {project}")
    return p


def _check_write(ctx: Ctx, proj: Optional[ProjectRow]) -> None:
    if ctx.user.admin or proj is not None:  # a reader of an emulated project may change it
        return
    raise HttpError(403, "User does not have privileges to modify config for this project")


def _setting(tool: str, path: str) -> str:
    return f"config/{tool}/{path}"


def _load(ctx: Ctx, proj: Optional[ProjectRow], tool: str, path: str) -> Optional[dict[str, Any]]:
    st, name = ctx.store, _setting(tool, path)
    raw = st.get_project_setting(proj.id, name) if proj else st.get_site_setting(name)
    return None if raw is None else json.loads(raw)


def _save(
    ctx: Ctx, proj: Optional[ProjectRow], tool: str, path: str, entry: dict[str, Any]
) -> None:
    st, name, raw = ctx.store, _setting(tool, path), json.dumps(entry)
    if proj is not None:
        st.set_project_setting(proj.id, name, raw)
    else:
        st.set_site_setting(name, raw)


def _get(ctx: Ctx, proj: Optional[ProjectRow], tool: str, path: str) -> Response:
    args = ctx.request.args
    entry = _load(ctx, proj, tool, path)
    if entry is None and proj is not None and truthy(args.get("defaultToSiteWide")):
        entry = _load(ctx, None, tool, path)
    contents, meta = truthy(args.get("contents")), truthy(args.get("meta"))
    if contents and not meta:
        if entry is None or entry["status"] == "disabled":
            return _not_found(ctx, proj, tool, path)
        return text_response(entry["contents"])
    if entry is None:
        return _not_found(ctx, proj, tool, path)
    row = dict(entry, tool=tool, path=path, project=proj.id if proj else "")
    if meta and not contents:
        row["contents"] = ""
    return write_table(ctx.request, [row], COLUMNS, {})


def _not_found(ctx: Ctx, proj: Optional[ProjectRow], tool: str, path: str) -> Response:
    if truthy(ctx.request.args.get("accept-not-found")):
        return text_response("", status=204)
    raise HttpError(
        404,
        f"Couldn't find config for user {ctx.user.name} and project "
        f"{proj.id if proj else None} on tool [{tool}] path [{path}]",
    )


def _put(ctx: Ctx, proj: Optional[ProjectRow], tool: str, path: str) -> Response:
    contents, status = _body(ctx)
    if status is not None and status.lower() not in _STATUSES:
        raise HttpError(
            400,
            "Only valid values for the status flag are enabled or true and "
            f"disabled or false: {status}",
        )
    entry = _load(ctx, proj, tool, path)
    if contents is None:
        if status is None:
            raise HttpError(
                400,
                "You must specify either the status querystring parameter or a "
                "configuration object in the request body.",
            )
        if entry is not None:
            entry["status"] = _STATUSES[status.lower()]
            _save(ctx, proj, tool, path, entry)
        return text_response("")
    if not contents.strip():
        raise HttpError(500, "No contents provided")
    created = entry is None
    # XNAT keeps an enabled entry whose contents are unchanged as it is (PUT is idempotent)
    if entry is None or entry["contents"] != contents or entry["status"] != "enabled" or status:
        version = 1 if entry is None else int(entry["version"]) + 1
        entry = {
            "user": ctx.user.name,
            "create_date": _timestamp(),
            "reason": ctx.request.args.get("reason", ""),
            "contents": contents,
            "unversioned": "false",
            "version": str(version),
            "status": _STATUSES[status.lower()] if status else "enabled",
        }
        _save(ctx, proj, tool, path, entry)
    return text_response("", status=201 if created else 200)


def _body(ctx: Ctx) -> tuple[Optional[str], Optional[str]]:
    """(contents or None, status or None) from the request, as ``ConfigResource.handlePut``."""
    request = ctx.request
    status = request.args.get("status")
    mimetype = (request.mimetype or "").lower()
    if mimetype == "application/json":
        raw = b"".join(ctx.body_chunks())
        try:
            doc = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            raise HttpError(400, "The request body is not JSON.") from None
        if not isinstance(doc, dict):
            raise HttpError(400, "The request body is not a JSON object.")
        status = doc.get("status", status)
        contents = doc.get("contents")
        return (None if contents is None else str(contents)), status
    if mimetype == "multipart/form-data":
        parts = [fs for key in request.files for fs in request.files.getlist(key)]
        if len(parts) > 1:
            raise HttpError(400, "Config contents are limited to a single file")
        try:
            return (parts[0].stream.read().decode("utf-8") if parts else None), status
        finally:
            for fs in parts:
                fs.close()
    if mimetype == "application/x-www-form-urlencoded" and not truthy(request.args.get("inbody")):
        request.form  # noqa: B018 - a form, not a file: no contents
        return None, status
    raw = b"".join(ctx.body_chunks())
    return (raw.decode("utf-8") if raw else None), status


def _timestamp() -> str:
    """The entry's creation as XNAT's table shows it (a ``java.sql.Timestamp`` from the
    database, §1.1)."""
    return java_timestamp(time.time())
