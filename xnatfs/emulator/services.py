"""Sessions, tokens, site information and ``/data/services/*``: the login service, the
``JSESSION`` heartbeat, ``/xapi`` (build info, uptime, schemas), alias tokens, and the hand-off
of import/archive/prearchive services to ``importer.py`` and ``prearchive_http.py`` (§5, §6, §7).

A new site-level service is one more entry in :func:`services` or a branch of ``app._data``
(XNAT's config service, ``/data/config/...`` and ``/data/projects/{P}/config/...``, is
``config.py``, routed from ``app``)."""

from __future__ import annotations

import time
from typing import Any, Optional

from werkzeug.wrappers import Request, Response

from . import importer, prearchive_http
from .auth import SessionTable, check_credentials
from .resolve import NOT_FOUND
from .serving import Ctx, HttpError, json_response, text_response
from .store import Store
from .xsd import SCHEMAS

VERSION = "1.8.10"


def login_service(
    request: Request, store: Store, sessions: SessionTable
) -> tuple[Response, Optional[str]]:
    """``PUT/POST /data/services/auth``: the new session id as text (and as the cookie)."""
    if request.method not in ("PUT", "POST"):
        raise HttpError(405, "Method Not Allowed")
    form = request.form
    username = form.get("username") or form.get("j_username") or ""
    password = form.get("password") or form.get("j_password") or ""
    user = check_credentials(store, username, password) if username else None
    if user is None:
        raise HttpError(401, "Authentication failed.")
    s = sessions.create(user.name)
    return text_response(s.id), s.id


def jsession(ctx: Ctx, sessions: SessionTable, session: Any) -> Response:
    """GET/POST: the session id as text (the heartbeat); DELETE: log out (§5.1)."""
    if ctx.request.method == "DELETE":
        if session is not None:
            sessions.remove(session.id)
        return text_response("")
    if session is None:  # pragma: no cover - authenticate() always yields one
        session = sessions.create(ctx.user.name)
    return text_response(session.id)


def xapi(ctx: Ctx, path: str, started: float) -> Response:
    p = path.rstrip("/")
    if p == "/siteConfig/buildInfo":
        return json_response(
            {
                "version": VERSION,
                "buildNumber": "Emulator",
                "sha": "0000000",
                "branch": "emulator",
                "isDirty": "false",
                "timestamp": "2024-06-01T00:00:00Z",
                "commit": "emulator",
            }
        )
    if p == "/siteConfig/buildInfo/version":
        return text_response(VERSION)
    if p == "/siteConfig/uptime":
        up = int(time.time() - started)
        return json_response(
            {
                "seconds": up % 60,
                "minutes": up // 60 % 60,
                "hours": up // 3600 % 24,
                "days": up // 86400,
            }
        )
    if p == "/siteConfig/siteId":
        return text_response(ctx.config.site_id)
    if p == "/schemas":
        return json_response(sorted(SCHEMAS))
    if p.startswith("/schemas/"):
        name = p[len("/schemas/") :]
        if name.endswith(".xsd"):
            name = name[:-4]
        parts = name.split("/")
        if len(parts) == 2 and parts[0] == parts[1]:
            name = parts[0]
        if name in SCHEMAS:
            return Response(SCHEMAS[name].encode("utf-8"), content_type="text/xml")
        raise HttpError(404, f"Schema {name} not found")
    if p == "/users/username":
        return text_response(ctx.user.name)
    raise HttpError(404, NOT_FOUND)


def services(ctx: Ctx, segs: list[str]) -> Response:
    """``/data/services/<name>/...`` (the auth service is answered before authentication)."""
    if not segs:
        raise HttpError(404, NOT_FOUND)
    if segs[0] == "import":
        return importer.handle(ctx)
    if segs[0] in ("archive", "prearchive", "validate-archive"):
        return prearchive_http.handle(ctx)
    if segs[0] == "tokens":
        return tokens(ctx, segs[1:])
    if segs[0] == "refresh" and segs[1:2] == ["catalog"]:
        return text_response("")
    raise HttpError(404, NOT_FOUND)


def tokens(ctx: Ctx, segs: list[str]) -> Response:
    """``/data/services/tokens/{issue[/user/U],validate/A/S,invalidate/A/S}`` (§5.3)."""
    st, user = ctx.store, ctx.user
    op = segs[0] if segs else ""
    if op == "issue":
        target = user.name
        if len(segs) >= 3 and segs[1] == "user":
            if not user.admin and segs[2] != user.name:
                raise HttpError(403, "Only administrators can issue tokens for other users.")
            if st.get_user(segs[2]) is None:
                raise HttpError(404, f"User {segs[2]} not found")
            target = segs[2]
        tok = st.issue_token(target)
        return json_response(
            {
                "alias": tok.alias,
                "secret": tok.secret,
                "xdatUserId": target,
                "singleUse": False,
                "estimatedExpirationTime": int(tok.expires * 1000),
                "timestamp": int(tok.created * 1000),
                "enabled": True,
                "created": int(tok.created * 1000),
                "id": abs(hash(tok.alias)) % 100000,
                "disabled": 0,
                "validIPAddresses": [],
            }
        )
    if op in ("validate", "invalidate") and len(segs) >= 3:
        found = st.get_token(segs[1])
        if found is None or not found.valid or found.secret != segs[2]:
            raise HttpError(404, "Token not found or invalid.")
        if op == "validate":
            return json_response({"valid": found.user})
        st.invalidate_token(found.alias)
        return json_response({"result": "OK"})
    raise HttpError(404, NOT_FOUND)
