"""The XNAT emulator's WSGI application: authentication, cookies and the router.

Each area has its own handler module, all answering through ``serving.py``:

    /data/services/auth, /JSESSION, /xapi, /data/services/*     services.py
    /data/projects|subjects|experiments/...   (path grammar)    resolve.py
        collection listings, /data/search                       listings.py
        single objects (GET/PUT/POST/DELETE), prearchive_code   objects.py (+ documents.py)
        .../config/{TOOL}/{PATH} (and /data/config/...)         config.py
        .../files[/path] (GET/HEAD/DELETE, downloads)           files.py
        .../files uploads                                       uploads.py
    /data/prearchive..., /data/services/{archive,prearchive}    prearchive_http.py
    /data/services/import                                       importer.py

A new endpoint is one branch in :func:`_data` (or :func:`services.services`) calling a handler
``f(ctx, ...) -> Response``; a handler raises :class:`serving.HttpError` for an error page.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Request, Response

from . import config, files, formats, listings, objects, prearchive_http, services
from .auth import SessionTable, authenticate, is_browser
from .resolve import NOT_FOUND, Chain, parse_chain, resolve, resolve_parent_for_create
from .serving import AppConfig, Ctx, DropConnection, HttpError, error_response, text_response
from .store import Conflict, InvalidInput, NotFound, Store, TruncatedUpload, UserRow

log = logging.getLogger(__name__)


class XnatApp:
    """WSGI callable; ``control(request, user)`` answers ``/emulator/*`` (faults), and
    ``body_filter`` sees every request body (the server's faults may cut it)."""

    def __init__(
        self,
        store: Store,
        sessions: SessionTable,
        config: AppConfig,
        control: Optional[Callable[[Request, Optional[UserRow]], Response]] = None,
        body_filter: Optional[Callable[[Request, Iterator[bytes]], Iterator[bytes]]] = None,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.config = config
        self.control = control
        self.body_filter = body_filter
        self.started = time.time()
        #: per-thread: the session that authenticated the request being served
        self._local = threading.local()

    # -------------------------------------------------------------------------------- WSGI entry
    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        session_cookie: Optional[str] = None
        try:
            response, session_cookie = self.dispatch(request)
        except HttpError as e:
            response = error_response(e.status, e.message, e.headers)
        except DropConnection:
            raise
        except NotFound as e:
            response = error_response(404, str(e))
        except Conflict as e:
            response = error_response(409, str(e))
        except (InvalidInput, TruncatedUpload) as e:
            response = error_response(400, str(e))
        except ClientDisconnected:
            response = error_response(400, "The request body was truncated.")
        except Exception:  # a server never answers with a traceback
            log.exception("internal error on %s %s", request.method, request.full_path)
            response = error_response(500, "Internal Server Error")
        self.add_cookies(response, session_cookie)
        reason = formats.HTTP_REASONS.get(response.status_code)
        if reason:
            response.status = f"{response.status_code} {reason}"
        return response(environ, start_response)

    def add_cookies(self, response: Response, session_id: Optional[str]) -> None:
        cp = self.config.context_path or "/"
        now_ms = int(time.time() * 1000)
        timeout_ms = int(self.sessions.timeout * 1000)
        # Quoted because of the comma; xnatpy's regex requires the quotes (§5.1).
        response.headers.add(
            "Set-Cookie", f'SESSION_EXPIRATION_TIME="{now_ms},{timeout_ms}"; Version=1; Path={cp}'
        )
        if session_id:
            response.headers.add("Set-Cookie", f"JSESSIONID={session_id}; Path={cp}; HttpOnly")

    def _strip_context(self, path: str) -> str:
        cp = self.config.context_path
        if not cp:
            return path
        if path == cp:
            return "/"
        if path.startswith(cp + "/"):
            return path[len(cp) :]
        raise HttpError(404, NOT_FOUND)

    def dispatch(self, request: Request) -> tuple[Response, Optional[str]]:
        """Authenticate, answer the public paths, then route by prefix; returns the response
        and the id of a session this request opened (for its cookie)."""
        path = self._strip_context(request.path)
        cp = self.config.context_path
        auth = authenticate(
            self.store,
            self.sessions,
            request.cookies.get("JSESSIONID"),
            request.headers.get("Authorization", ""),
        )
        new_sid = auth.session.id if auth.new_session and auth.session else None
        self._local.auth_session = auth.session
        user = auth.user
        ua = request.headers.get("User-Agent", "")

        if path.startswith("/emulator/"):
            if self.control is None:
                raise HttpError(404, "Not found")
            if user is None or not user.admin:
                raise HttpError(
                    401,
                    "Authentication required.",
                    {"WWW-Authenticate": f'Basic realm="{self.config.site_id}"'},
                )
            return self.control(request, user), None

        # Public paths: the login page, the auth service.
        if path in ("/", "/app/template/Login.vm", "/login"):
            if path == "/" and user is not None:
                return Response(formats.home_page(user.name), content_type="text/html"), new_sid
            if path == "/":
                return self._redirect_login(), None
            return Response(formats.login_page(cp), content_type="text/html;charset=UTF-8"), None
        if path.rstrip("/") == "/data/services/auth":
            return services.login_service(request, self.store, self.sessions)

        if auth.bad_credentials or user is None:
            data_path = path.startswith(("/data", "/REST", "/xapi", "/fs"))
            if data_path and not is_browser(ua):
                msg = (
                    "Authentication failed." if auth.bad_credentials else "Authentication required."
                )
                raise HttpError(
                    401, msg, {"WWW-Authenticate": f'Basic realm="{self.config.site_id}"'}
                )
            return self._redirect_login(), None

        ctx = Ctx(request, self.store, user, self.config, body_filter=self.body_filter)
        if path.startswith("/xapi/"):
            return services.xapi(ctx, path[len("/xapi") :], self.started), new_sid
        for prefix in ("/data", "/REST"):
            if path == prefix or path.startswith(prefix + "/"):
                ctx.path = path[len(prefix) :]
                return self._data(ctx), new_sid
        raise HttpError(404, NOT_FOUND)

    def _redirect_login(self) -> Response:
        r = Response(b"", status=302)
        r.headers["Location"] = f"{self.config.context_path}/app/template/Login.vm"
        return r

    # -------------------------------------------------------------------------------- /data
    def _data(self, ctx: Ctx) -> Response:
        """The router below ``/data`` (and its ``/REST`` and ``/data/archive`` aliases, §0)."""
        path = ctx.path
        trailing = path.endswith("/") and len(path) > 1
        segments = [s for s in path.split("/") if s != ""]
        # Keep empty components inside files paths out; "." / ".." are refused later.
        if not segments:
            raise HttpError(404, NOT_FOUND)
        head = segments[0]
        if head == "archive":
            segments = segments[1:]
            if not segments:
                raise HttpError(404, NOT_FOUND)
            head = segments[0]
        if head == "JSESSION":
            return services.jsession(ctx, self.sessions, self._local.auth_session)
        if head == "auth":
            return text_response(f"User '{ctx.user.name}' is logged in")
        if head == "version":
            raise HttpError(404, NOT_FOUND)  # gone in 1.7+ (§0)
        if head == "prearchive":
            return prearchive_http.handle(ctx)
        if head == "services":
            return services.services(ctx, segments[1:])
        if head == "search":
            return listings.search(ctx, segments[1:])
        if head == "config":
            return config.handle(ctx, None, "/".join(segments[1:]))
        if head == "user" and segments[1:2] == ["cache"]:
            raise HttpError(404, NOT_FOUND)
        if head in ("projects", "subjects", "experiments"):
            return archive(ctx, parse_chain(segments, trailing))
        raise HttpError(404, NOT_FOUND)


def archive(ctx: Ctx, chain: Chain) -> Response:
    """An archive path by shape: files tail, ``status``/``prearchive_code``/``config``,
    collection, object."""
    method = ctx.request.method
    write = method in ("PUT", "POST", "DELETE")
    if chain.files is not None:
        return files.files(ctx, chain)
    if chain.extra == "status":
        return objects.status(ctx, chain)
    if chain.extra == "prearchive_code":
        return objects.prearchive_code(ctx, chain)
    if chain.extra == "config":
        assert chain.links[0][0] == "project"
        return config.handle(ctx, chain.links[0][1], chain.extra_arg or "")
    if chain.collection is not None:
        r = resolve(ctx.store, chain.links, ctx.user, write)
        if method in ("GET", "HEAD"):
            return listings.listing(ctx, chain.collection, r)
        raise HttpError(405, "Method Not Allowed")
    # single object: resolve the parents, then the last link (may not exist yet for PUT)
    kind, key = chain.links[-1]
    if method in ("PUT", "POST"):
        parent = resolve_parent_for_create(ctx.store, chain.links[:-1], kind, ctx.user)
        return objects.create(ctx, kind, key, parent)
    if method == "DELETE" and kind == "resource":
        return objects.delete_resources(ctx, chain.links[:-1], key)
    r = resolve(ctx.store, chain.links, ctx.user, write)
    if method == "DELETE":
        return objects.delete(ctx, kind, r)
    if method in ("GET", "HEAD"):
        return objects.get_object(ctx, kind, r)
    raise HttpError(405, "Method Not Allowed")


__all__ = ["XnatApp", "AppConfig", "HttpError", "DropConnection"]
