"""The XNAT emulator's WSGI application: routing, auth checks and the ``/data`` handlers.

Routing is done by hand rather than with a werkzeug ``Map`` because XNAT's archive URLs are a
recursive grammar (``<obj>/resources/<R>/files/<path...>`` at five levels, comma lists, ``ALL``,
``/archive`` and ``/REST`` aliases, prefix matching with trailing slashes, §0). The path is split
into a chain of ``(kind, key)`` pairs, resolved against the store, and handed to one handler per
shape (listing, object, files).

Extension hook for emulator-data (prearchive / import): every path under ``/data/prearchive``,
``/data/services/import``, ``/data/services/archive`` and ``/data/services/prearchive/*`` is sent
to ``handle(request, ctx)`` in ``prearchive.py`` (``importer.py`` for ``services/import``),
imported lazily; missing module or function -> 404. ``handle`` returns a werkzeug ``Response``
(or raises ``HttpError``). ``ctx`` is a :class:`Ctx`:

    ctx.store        the Store (see store.py)
    ctx.user         the authenticated UserRow (never None: auth is checked before the call)
    ctx.path         the path below ``/data`` with leading ``/`` (e.g. ``/prearchive/projects/P``)
    ctx.data_dir     pathlib.Path of the emulator data directory
    ctx.context_path e.g. "" or "/xnat"
    ctx.resultset(rows, columns, meta=None, title=None, request=None) -> Response
                     (honours format=json|csv|html|xml, columns=, filters, sortBy, limit/offset)
    ctx.error(status, message) -> Response   (Restlet HTML status page)
    ctx.text(body, status=200, content_type="text/plain") -> Response
    ctx.uri_list(uris) -> Response           (text/uri-list, CRLF-terminated, §6)
    ctx.read_body(request) -> iterator of bytes chunks of the request body (faults applied;
                     raises HttpError(400) on a truncated body)
    ctx.spool_body(request) -> pathlib.Path  (body streamed into a temp file in the data dir;
                     caller deletes it)
    ctx.app          this XnatApp (for anything else, e.g. ctx.app.archive_response)
"""
from __future__ import annotations

import errno
import fnmatch
import importlib
import itertools
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Request, Response

from . import formats
from . import prearchive_code as prearchive_codes
from .auth import SessionTable, authenticate, check_credentials, is_browser
from .store import (Conflict, ExperimentRow, FileRow, InvalidInput, NotFound, Parent, ProjectRow,
                    ResourceRow, ScanRow, Store, SubjectRow, TruncatedUpload, UserRow,
                    validate_relpath)
from .xsd import ELEMENT_NAMES, SCHEMAS, root_element

log = logging.getLogger(__name__)

VERSION = "1.8.10"
LABEL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SCAN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
RESOURCE_LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
CHUNK = 1024 * 1024

#: query parameters that are never column filters (§1.2)
RESERVED_PARAMS = {
    "format", "columns", "sortBy", "sortOrder", "limit", "offset", "all", "req_format", "xsiType",
    "removeFiles", "overwrite", "extract", "inbody", "content", "tags", "event_reason", "event_type",
    "event_action", "event_id", "update-stats", "accessible", "owner", "member", "collaborator",
    "recent", "favorite", "activeSince", "structure", "compression", "locator", "file_stats",
    "cache_file_stats", "CSRF", "description", "triggerPipelines", "pullDataFromHeaders",
    "fixScanTypes", "allowDataDeletion", "label", "_", "file_format", "file_content", "project",
    "accept-not-found",
}


class HttpError(Exception):
    """Answer ``status`` with the Restlet HTML status page carrying ``message``."""

    def __init__(self, status: int, message: str = "", headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message or formats.HTTP_REASONS.get(status, "Error")
        self.headers = headers or {}


class DropConnection(ConnectionResetError):
    """Raised inside a request/response body to make cheroot close the socket (fault drop)."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "emulator fault: connection dropped")


@dataclass
class AppConfig:
    context_path: str = ""
    site_id: str = "XNAT"
    data_dir: Path = Path(".")


def error_response(status: int, message: str, headers: Optional[dict[str, str]] = None) -> Response:
    r = Response(formats.error_page(status, message), status=status,
                 content_type="text/html;charset=UTF-8")
    for k, v in (headers or {}).items():
        r.headers[k] = v
    return r


def text_response(body: str | bytes, status: int = 200, content_type: str = "text/plain") -> Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return Response(data, status=status, content_type=content_type)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj).encode("utf-8"), status=status, content_type="application/json")


def truthy(value: Optional[str]) -> bool:
    """isQueryVariableTrue: anything but false/0 is true (§1.2)."""
    return value is not None and value.lower() not in ("false", "0")


# ------------------------------------------------------------------------------------ resolution
COLLECTIONS = {"projects": "project", "subjects": "subject", "experiments": "experiment",
               "scans": "scan", "assessors": "assessor", "reconstructions": "reconstruction",
               "resources": "resource"}


@dataclass
class Chain:
    """A parsed archive path: ``links`` of (kind, key); then either a collection listing
    (``collection``), the files tail (``files`` not None) or the last link as object."""

    links: list[tuple[str, str]]
    collection: Optional[str] = None
    files: Optional[str] = None        # relative path after /files ("" = listing)
    files_dir: bool = False            # the path ended in "/"
    extra: Optional[str] = None        # e.g. "status", "prearchive_code"
    extra_arg: Optional[str] = None    # the CODE of PUT .../prearchive_code/CODE


@dataclass
class Resolved:
    project: Optional[ProjectRow] = None
    subject: Optional[SubjectRow] = None
    experiment: Optional[ExperimentRow] = None
    scans: Optional[list[ScanRow]] = None
    assessor: Optional[ExperimentRow] = None
    resources: Optional[list[ResourceRow]] = None
    via_project: bool = False          # URL went through /projects/{P}
    via_subject: bool = False

    def parents(self) -> list[Parent]:
        """The owner(s) of resources at the deepest resolved level."""
        pid = self.project.id if self.project else None
        if self.assessor is not None:
            return [Parent(pid, None, self.assessor.session_id, None, self.assessor.id)]
        if self.scans is not None:
            return [Parent(pid, None, s.experiment_id, s.id) for s in self.scans]
        if self.experiment is not None:
            return [Parent(pid, None, self.experiment.id)]
        if self.subject is not None:
            return [Parent(pid, self.subject.id)]
        return [Parent(pid)]


def parse_chain(segments: list[str], trailing_slash: bool) -> Chain:
    links: list[tuple[str, str]] = []
    i = 0
    while i < len(segments):
        seg = segments[i]
        if seg == "files":
            rest = "/".join(segments[i + 1:])
            return Chain(links, files=rest, files_dir=trailing_slash and bool(rest))
        if seg in ("in", "out") and links and links[-1][0] in ("assessor", "reconstruction"):
            i += 1
            continue
        if seg == "status" and links and i == len(segments) - 1:
            return Chain(links, extra="status")
        if seg == "prearchive_code" and len(links) == 1 and links[0][0] == "project" \
                and i >= len(segments) - 2:
            return Chain(links, extra="prearchive_code",
                         extra_arg=segments[i + 1] if i + 1 < len(segments) else None)
        kind = COLLECTIONS.get(seg)
        if kind is None:
            raise HttpError(404, f"Unknown path segment: {seg}")
        if i + 1 >= len(segments):
            return Chain(links, collection=kind)
        links.append((kind, segments[i + 1]))
        i += 2
    return Chain(links)


def _scan_selector_match(scan: ScanRow, key: str) -> bool:
    if key in ("ALL", "*") or scan.id == key:
        return True
    t = key.replace("[SLASH]", "/").replace("[COMMA]", ",")
    return (scan.type or "NULL") == t if key != "NULL" else scan.type == ""


# ------------------------------------------------------------------------------------ the app
@dataclass
class Ctx:
    """What extension handlers (prearchive/import) get; see the module docstring."""

    store: Store
    user: UserRow
    path: str
    data_dir: Path
    context_path: str
    app: "XnatApp"

    def resultset(self, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                  meta: Optional[dict[str, str]] = None, title: Optional[str] = None,
                  request: Optional[Request] = None) -> Response:
        req = request or self.app.current_request()
        m = dict(meta or {})
        if title:
            m["title"] = title
        return self.app.table(req, list(rows), list(columns), m, honour_columns=False)

    def error(self, status: int, message: str) -> Response:
        return error_response(status, message)

    def text(self, body: str | bytes, status: int = 200, content_type: str = "text/plain") -> Response:
        return text_response(body, status, content_type)

    def uri_list(self, uris: Iterable[str]) -> Response:
        return text_response("".join(u + "\r\n" for u in uris), 200, "text/uri-list")

    def read_body(self, request: Request) -> Iterator[bytes]:
        return self.app.body_chunks(request)

    def spool_body(self, request: Request) -> Path:
        return self.app.spool_body(request)


class XnatApp:
    """WSGI callable; ``faults_hook(request)`` may return a Response to short-circuit (faults)."""

    def __init__(self, store: Store, sessions: SessionTable, config: AppConfig,
                 control: Optional[Callable[[Request, Optional[UserRow]], Response]] = None,
                 body_filter: Optional[Callable[[Request, Iterator[bytes]], Iterator[bytes]]] = None
                 ) -> None:
        self.store = store
        self.sessions = sessions
        self.config = config
        self.control = control
        self.body_filter = body_filter
        self.started = time.time()
        #: per-thread: the request being served and the session that authenticated it
        self._local = threading.local()

    def current_request(self) -> Request:
        return self._local.request

    # -------------------------------------------------------------------------------- WSGI entry
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        self._local.request = request
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
        except Exception:  # noqa: BLE001 - a server never answers with a traceback
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
        response.headers.add("Set-Cookie",
                             f'SESSION_EXPIRATION_TIME="{now_ms},{timeout_ms}"; Version=1; Path={cp}')
        if session_id:
            response.headers.add("Set-Cookie", f"JSESSIONID={session_id}; Path={cp}; HttpOnly")

    def dispatch(self, request: Request) -> tuple[Response, Optional[str]]:
        path = request.path
        cp = self.config.context_path
        if cp:
            if path == cp:
                path = "/"
            elif path.startswith(cp + "/"):
                path = path[len(cp):]
            else:
                raise HttpError(404, "The requested resource was not found.")
        auth = authenticate(self.store, self.sessions, request.cookies.get("JSESSIONID"),
                            request.headers.get("Authorization", ""))
        new_sid = auth.session.id if auth.new_session and auth.session else None
        self._local.auth_session = auth.session
        user = auth.user
        ua = request.headers.get("User-Agent", "")

        if path.startswith("/emulator/"):
            if self.control is None:
                raise HttpError(404, "Not found")
            if user is None or not user.admin:
                raise HttpError(401, "Authentication required.",
                                {"WWW-Authenticate": f'Basic realm="{self.config.site_id}"'})
            return self.control(request, user), None

        # Public paths: the login page, the auth service.
        if path in ("/", "/app/template/Login.vm", "/login"):
            if path == "/" and user is not None:
                return Response(formats.home_page(user.name), content_type="text/html"), new_sid
            if path == "/":
                return self._redirect_login(), None
            return Response(formats.login_page(cp), content_type="text/html;charset=UTF-8"), None
        if path.rstrip("/") == "/data/services/auth":
            return self.login_service(request)

        if auth.bad_credentials or user is None:
            data_path = path.startswith(("/data", "/REST", "/xapi", "/fs"))
            if data_path and not is_browser(ua):
                msg = "Authentication failed." if auth.bad_credentials else "Authentication required."
                raise HttpError(401, msg, {"WWW-Authenticate": f'Basic realm="{self.config.site_id}"'})
            return self._redirect_login(), None

        if path.startswith("/xapi/"):
            return self.xapi(request, path[len("/xapi"):], user), new_sid
        for prefix in ("/data", "/REST"):
            if path == prefix or path.startswith(prefix + "/"):
                return self.data(request, path[len(prefix):], user), new_sid
        raise HttpError(404, "The requested resource was not found.")

    def _redirect_login(self) -> Response:
        r = Response(b"", status=302)
        r.headers["Location"] = f"{self.config.context_path}/app/template/Login.vm"
        return r

    # -------------------------------------------------------------------------------- auth
    def login_service(self, request: Request) -> tuple[Response, Optional[str]]:
        if request.method not in ("PUT", "POST"):
            raise HttpError(405, "Method Not Allowed")
        form = request.form
        username = form.get("username") or form.get("j_username") or ""
        password = form.get("password") or form.get("j_password") or ""
        user = check_credentials(self.store, username, password) if username else None
        if user is None:
            raise HttpError(401, "Authentication failed.")
        s = self.sessions.create(user.name)
        return text_response(s.id), s.id

    # -------------------------------------------------------------------------------- xapi
    def xapi(self, request: Request, path: str, user: UserRow) -> Response:
        p = path.rstrip("/")
        if p == "/siteConfig/buildInfo":
            return json_response({"version": VERSION, "buildNumber": "Emulator",
                                  "sha": "0000000", "branch": "emulator", "isDirty": "false",
                                  "timestamp": "2024-06-01T00:00:00Z", "commit": "emulator"})
        if p == "/siteConfig/buildInfo/version":
            return text_response(VERSION)
        if p == "/siteConfig/uptime":
            up = int(time.time() - self.started)
            return json_response({"seconds": up % 60, "minutes": up // 60 % 60,
                                  "hours": up // 3600 % 24, "days": up // 86400})
        if p == "/siteConfig/siteId":
            return text_response(self.config.site_id)
        if p == "/schemas":
            return json_response(sorted(SCHEMAS))
        if p.startswith("/schemas/"):
            name = p[len("/schemas/"):]
            if name.endswith(".xsd"):
                name = name[:-4]
            parts = name.split("/")
            if len(parts) == 2 and parts[0] == parts[1]:
                name = parts[0]
            if name in SCHEMAS:
                return Response(SCHEMAS[name].encode("utf-8"), content_type="text/xml")
            raise HttpError(404, f"Schema {name} not found")
        if p == "/users/username":
            return text_response(user.name)
        raise HttpError(404, "The requested resource was not found.")

    # -------------------------------------------------------------------------------- /data
    def data(self, request: Request, path: str, user: UserRow) -> Response:
        trailing = path.endswith("/") and len(path) > 1
        segments = [s for s in path.split("/") if s != ""]
        # Keep empty components inside files paths out; "." / ".." are refused later.
        if not segments:
            raise HttpError(404, "The requested resource was not found.")
        head = segments[0]
        if head == "archive":
            segments = segments[1:]
            if not segments:
                raise HttpError(404, "The requested resource was not found.")
            head = segments[0]
        if head == "JSESSION":
            return self.jsession(request, user, self._local.auth_session)
        if head == "auth":
            return text_response(f"User '{user.name}' is logged in")
        if head == "version":
            raise HttpError(404, "The requested resource was not found.")  # gone in 1.7+ (§0)
        if head == "prearchive":
            return self.extension("prearchive", request, path, user)
        if head == "services":
            return self.services(request, segments[1:], path, user)
        if head == "search":
            return self.search(request, segments[1:], user)
        if head == "user" and segments[1:2] == ["cache"]:
            raise HttpError(404, "The requested resource was not found.")
        if head in ("projects", "subjects", "experiments"):
            chain = parse_chain(segments, trailing)
            return self.archive(request, chain, user)
        raise HttpError(404, "The requested resource was not found.")

    def jsession(self, request: Request, user: UserRow, session: Any) -> Response:
        """GET/POST: the session id as text (the heartbeat); DELETE: log out (§5.1)."""
        if request.method == "DELETE":
            if session is not None:
                self.sessions.remove(session.id)
            return text_response("")
        if session is None:  # pragma: no cover - authenticate() always yields one
            session = self.sessions.create(user.name)
        return text_response(session.id)

    def extension(self, module: str, request: Request, path: str, user: UserRow) -> Response:
        """Hand the request to emulator-data's ``<module>.handle(request, ctx)`` (lazy import)."""
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ImportError as e:
            log.debug("extension module %s unavailable: %s", module, e)
            raise HttpError(404, "The requested resource was not found.") from None
        handle = getattr(mod, "handle", None)
        if handle is None:
            raise HttpError(404, "The requested resource was not found.")
        ctx = Ctx(self.store, user, path, self.config.data_dir, self.config.context_path, self)
        return handle(request, ctx)

    def services(self, request: Request, segs: list[str], path: str, user: UserRow) -> Response:
        if not segs:
            raise HttpError(404, "The requested resource was not found.")
        if segs[0] == "import":
            return self.extension("importer", request, path, user)
        if segs[0] in ("archive", "prearchive", "validate-archive"):
            return self.extension("prearchive", request, path, user)
        if segs[0] == "tokens":
            return self.tokens(segs[1:], user)
        if segs[0] == "refresh" and segs[1:2] == ["catalog"]:
            return text_response("")
        raise HttpError(404, "The requested resource was not found.")

    def tokens(self, segs: list[str], user: UserRow) -> Response:
        op = segs[0] if segs else ""
        if op == "issue":
            target = user.name
            if len(segs) >= 3 and segs[1] == "user":
                if not user.admin and segs[2] != user.name:
                    raise HttpError(403, "Only administrators can issue tokens for other users.")
                if self.store.get_user(segs[2]) is None:
                    raise HttpError(404, f"User {segs[2]} not found")
                target = segs[2]
            tok = self.store.issue_token(target)
            return json_response({
                "alias": tok.alias, "secret": tok.secret, "xdatUserId": target, "singleUse": False,
                "estimatedExpirationTime": int(tok.expires * 1000),
                "timestamp": int(tok.created * 1000), "enabled": True,
                "created": int(tok.created * 1000), "id": abs(hash(tok.alias)) % 100000,
                "disabled": 0, "validIPAddresses": []})
        if op in ("validate", "invalidate") and len(segs) >= 3:
            tok = self.store.get_token(segs[1])
            if tok is None or not tok.valid or tok.secret != segs[2]:
                raise HttpError(404, "Token not found or invalid.")
            if op == "validate":
                return json_response({"valid": tok.user})
            self.store.invalidate_token(tok.alias)
            return json_response({"result": "OK"})
        raise HttpError(404, "The requested resource was not found.")

    def search(self, request: Request, segs: list[str], user: UserRow) -> Response:
        if segs[:1] != ["elements"]:
            raise HttpError(404, "The requested resource was not found.")
        if len(segs) == 1:
            counts: dict[str, int] = {"xnat:projectData": 0, "xnat:subjectData": 0}
            for pid in self.store.accessible_projects(user):
                counts["xnat:projectData"] += 1
                counts["xnat:subjectData"] += len(self.store.list_subjects(pid))
                for e in self.store.list_experiments(pid):
                    counts[e.xsi_type] = counts.get(e.xsi_type, 0) + 1
            rows = []
            for name, n in counts.items():
                singular, plural = ELEMENT_NAMES.get(name, (name, name + "s"))
                rows.append({"ELEMENT_NAME": name, "SINGULAR": singular, "PLURAL": plural,
                             "SECURED": "true", "COUNT": str(n)})
            cols = ["ELEMENT_NAME", "SINGULAR", "PLURAL", "SECURED", "COUNT"]
            return self.table(request, rows, cols, {"totalRecords": str(len(rows))},
                              honour_columns=False)
        el = segs[1]
        fields = {"xnat:projectData": ["ID", "NAME", "DESCRIPTION"],
                  "xnat:subjectData": ["SUBJECT_ID", "LABEL", "PROJECT", "INSERT_DATE"]}
        if el not in fields and el not in ELEMENT_NAMES:
            raise HttpError(404, f"Unknown element {el}")
        rows = [{"FIELD_ID": f, "HEADER": f.title(), "SUMMARY": f, "TYPE": "string",
                 "REQUIRES_VALUE": "false", "DESC": "", "ELEMENT_NAME": el, "SRC": "0"}
                for f in fields.get(el, ["EXPT_ID", "LABEL", "DATE", "PROJECT"])]
        cols = ["FIELD_ID", "HEADER", "SUMMARY", "TYPE", "REQUIRES_VALUE", "DESC", "ELEMENT_NAME", "SRC"]
        return self.table(request, rows, cols, {"totalRecords": str(len(rows))}, honour_columns=False)

    # -------------------------------------------------------------------------------- tables
    def response_format(self, request: Request, default: str = "json") -> str:
        fmt = request.args.get("format")
        if fmt:
            return fmt.lower()
        accept = request.headers.get("Accept", "")
        if "text/html" in accept:
            return "html"
        return default

    def table(self, request: Request, rows: list[dict[str, Any]], columns: list[str],
              meta: dict[str, str], honour_columns: bool = True,
              always: Sequence[str] = ("ID", "URI"), column_props: Optional[list[dict[str, str]]] = None,
              extra_when_columns: Sequence[str] = ()) -> Response:
        """Apply columns=, filters, sortBy/sortOrder, limit/offset and write the table (§1.2)."""
        args = request.args
        available = set(columns)
        for r in rows:
            available.update(r.keys())
            break
        # filters: any query parameter naming a column (wildcards allowed)
        for key, value in args.items(multi=True):
            if key in RESERVED_PARAMS and key not in ("label", "project"):
                continue
            col = key if key in available else next((c for c in available if c.lower() == key.lower()), None)
            if col is None:
                continue
            pats = [v for v in value.split(",")]
            rows = [r for r in rows if any(fnmatch.fnmatchcase(formats.cell(r.get(col)), p)
                                           for p in pats)]
        if honour_columns and args.get("columns"):
            wanted = [c.strip() for c in args["columns"].split(",") if c.strip()]
            out: list[str] = []
            for c in wanted:
                col = c if c in available else next((a for a in available if a.lower() == c.lower()), None)
                if col and col not in out:
                    out.append(col)
            for c in list(extra_when_columns) + list(always):
                if c in available and c not in out:
                    out.append(c)
            columns = out
        sort_by = args.get("sortBy")
        if sort_by:
            desc = (args.get("sortOrder") or "ASC").upper() == "DESC"
            rows = sorted(rows, key=lambda r: formats.cell(r.get(sort_by)), reverse=desc)
        total = len(rows)
        offset = args.get("offset")
        limit = args.get("limit")
        try:
            if offset:
                rows = rows[int(offset):]
            if limit and limit != "*":
                rows = rows[:int(limit)]
        except ValueError:
            raise HttpError(400, "Invalid limit or offset") from None
        if "totalRecords" in meta:
            meta = dict(meta, totalRecords=str(total))
        fmt = self.response_format(request)
        if fmt == "csv":
            return Response(formats.resultset_csv(rows, columns), content_type="text/csv")
        if fmt == "html":
            return Response(formats.resultset_html(rows, columns, meta.get("title", "")),
                            content_type="text/html")
        if fmt == "xml":
            return Response(formats.resultset_xml(rows, columns, meta), content_type="text/xml")
        if fmt in ("json", "jsonp"):
            return Response(formats.resultset_json(rows, columns, meta, column_props),
                            content_type="application/json")
        raise HttpError(400, f"Unsupported format: {fmt}")

    # -------------------------------------------------------------------------------- archive
    def _check_project(self, p: ProjectRow, user: UserRow, write: bool) -> None:
        if not self.store.can_read(user, p.id):
            # Not visible: reads answer 404 (object not visible, §4.6), writes 403.
            if write:
                raise HttpError(403, f"User {user.name} does not have access to project {p.id}.")
            raise HttpError(404, f"Unable to find project {p.id}.")

    def resolve(self, links: list[tuple[str, str]], user: UserRow, write: bool) -> Resolved:
        st = self.store
        r = Resolved()
        for kind, key in links:
            if kind == "project":
                p = st.get_project(key)
                if p is None:
                    raise HttpError(404, f"Unable to find project {key}.")
                self._check_project(p, user, write)
                r.project, r.via_project = p, True
            elif kind == "subject":
                if r.experiment is not None:
                    raise HttpError(404, "The requested resource was not found.")
                s = st.find_subject(r.project.id, key) if r.project else st.get_subject(key)
                if s is None:
                    raise HttpError(404, f"Unable to find subject {key}.")
                if r.project is None:
                    p = st.get_project(s.project)
                    assert p is not None
                    self._check_project(p, user, write)
                    r.project = p
                r.subject, r.via_subject = s, True
            elif kind == "experiment":
                if r.project is not None:
                    e = st.find_experiment(r.project.id, key)
                    if e is not None and r.subject is not None and e.subject_id != r.subject.id:
                        e = None
                else:
                    e = st.get_experiment(key)
                if e is None or e.session_id:
                    raise HttpError(404, f"Unable to find experiment {key}.")
                if r.project is None:
                    p = st.get_project(e.project)
                    assert p is not None
                    self._check_project(p, user, write)
                    r.project = p
                r.experiment = e
            elif kind == "scan":
                if r.experiment is None:
                    raise HttpError(404, "The requested resource was not found.")
                keys = key.split(",")
                scans = [s for s in st.list_scans(r.experiment.id)
                         if any(_scan_selector_match(s, k) for k in keys)]
                if not scans and key not in ("ALL", "*"):
                    raise HttpError(404, f"Unable to find scan {key}.")
                r.scans = scans
            elif kind == "assessor":
                if r.experiment is None:
                    raise HttpError(404, "The requested resource was not found.")
                a = st.find_assessor(r.experiment.id, key)
                if a is None:
                    raise HttpError(404, f"Unable to find assessor {key}.")
                r.assessor = a
            elif kind == "reconstruction":
                raise HttpError(404, f"Unable to find reconstruction {key}.")
            elif kind == "resource":
                found: list[ResourceRow] = []
                for parent in r.parents():
                    for k in key.split(","):
                        res = st.find_resource(parent, k)
                        if res is not None and res not in found:
                            found.append(res)
                if not found:
                    raise HttpError(404, f"Unable to find resource {key}.")
                r.resources = found
            else:  # pragma: no cover - parse_chain only yields known kinds
                raise HttpError(404, "The requested resource was not found.")
        return r

    def archive(self, request: Request, chain: Chain, user: UserRow) -> Response:
        method = request.method
        write = method in ("PUT", "POST", "DELETE")
        if chain.files is not None:
            return self.files(request, chain, user)
        if chain.extra == "status":
            self.resolve(chain.links, user, False)
            return text_response("active")
        if chain.extra == "prearchive_code":
            return self.prearchive_code(request, chain, user)
        if chain.collection is not None:
            r = self.resolve(chain.links, user, write)
            if method in ("GET", "HEAD"):
                return self.listing(request, chain.collection, r, user)
            if method == "POST" and chain.collection == "resources":
                label = request.args.get("label") or f"resource_{int(time.time() * 1000)}"
                return self.create_resource(request, r, label, user, post_list=True)
            if method == "POST" and chain.collection == "projects":
                return self.post_project_xml(request, user)
            raise HttpError(405, "Method Not Allowed")
        # single object: resolve the parents, then the last link (may not exist yet for PUT)
        kind, key = chain.links[-1]
        if method in ("PUT", "POST"):
            parent = self._resolve_parent_for_create(chain.links[:-1], kind, user)
            return self.create(request, kind, key, parent, user)
        if method == "DELETE" and kind == "resource":
            # DELETE of a resource that does not exist is a silent 200 (§4.4, §10.19).
            parent = self.resolve(chain.links[:-1], user, True)
            for p in parent.parents():
                for k in key.split(","):
                    res = self.store.find_resource(p, k)
                    if res is not None:
                        self.store.delete_resource(res.id)
            return text_response("")
        r = self.resolve(chain.links, user, write)
        if method == "DELETE":
            return self.delete(request, kind, key, r, user)
        if method in ("GET", "HEAD"):
            return self.get_object(request, kind, r)
        raise HttpError(405, "Method Not Allowed")

    def _resolve_parent_for_create(self, links: list[tuple[str, str]], kind: str,
                                   user: UserRow) -> Resolved:
        if links and links[0][0] == "project":
            p = self.store.get_project(links[0][1])
            if p is None:
                # §4.2: creating below a project that does not exist gives 422.
                raise HttpError(422 if kind != "resource" else 404,
                                f"Unable to find project {links[0][1]}.")
            if kind == "experiment" and len(links) == 2 and links[1][0] == "subject":
                # Creating an experiment under an unknown subject creates the subject (§4.3).
                self._check_project(p, user, True)
                label = links[1][1]
                if self.store.find_subject(p.id, label) is None:
                    if not LABEL_RE.match(label):
                        raise HttpError(400, f"Invalid subject label '{label}': labels may contain "
                                             "only letters, digits, '_' and '-'.")
                    self.store.create_subject(p.id, label, user=user.name)
        return self.resolve(links, user, True)

    # -------------------------------------------------------------------------------- listings
    def subject_row(self, s: SubjectRow) -> dict[str, Any]:
        row: dict[str, Any] = {
            "ID": s.id, "project": s.project, "label": s.label,
            "insert_date": formats.java_timestamp(s.insert_date),
            "insert_user": s.insert_user, "URI": f"/data/subjects/{s.id}",
            "xsiType": "xnat:subjectData",
            "last_modified": formats.java_timestamp(s.last_modified, 6),
        }
        for k in ("gender", "handedness", "dob", "yob", "group", "src", "initials", "age"):
            row[k] = s.fields.get(k, "")
        return row

    def experiment_row(self, e: ExperimentRow) -> dict[str, Any]:
        subj = self.store.get_subject(e.subject_id)
        row: dict[str, Any] = {
            "ID": e.id, "label": e.label, "project": e.project, "date": e.date,
            "xsiType": e.xsi_type, "insert_date": formats.java_timestamp(e.insert_date),
            "insert_user": e.insert_user, "URI": f"/data/experiments/{e.id}",
            "last_modified": formats.java_timestamp(e.last_modified, 6),
            "subject_ID": e.subject_id, "subject_label": subj.label if subj else "",
            "subject_project": subj.project if subj else "",
            "time": e.fields.get("time", ""), "modality": e.fields.get("modality", ""),
            "UID": e.fields.get("UID", ""), "xnat:subjectassessordata/id": e.id,
        }
        if e.session_id:
            sess = self.store.get_experiment(e.session_id)
            row.update({"session_ID": e.session_id, "session_label": sess.label if sess else "",
                        "xnat:imageassessordata/id": e.id,
                        "URI": f"/data/experiments/{e.session_id}/assessors/{e.id}"})
        return row

    def scan_row(self, s: ScanRow) -> dict[str, Any]:
        row: dict[str, Any] = {
            "xnat_imagescandata_id": str(s.pk), "ID": s.id, "type": s.type, "quality": s.quality,
            "xsiType": s.xsi_type, "note": s.note, "series_description": s.series_description,
            "URI": f"/data/experiments/{s.experiment_id}/scans/{s.id}",
            "insert_date": formats.java_timestamp(s.insert_date),
            "last_modified": formats.java_timestamp(s.last_modified, 6),
            "frames": s.fields.get("frames", ""), "UID": s.fields.get("UID", ""),
            "modality": s.fields.get("modality", ""),
        }
        return row

    RESOURCE_COLUMNS = ["xnat_abstractresource_id", "label", "element_name", "category", "cat_id",
                        "cat_desc", "file_count", "file_size", "tags", "content", "format"]

    def resource_row(self, res: ResourceRow, all_flag: bool = False) -> dict[str, Any]:
        category, cat_id, cat_desc = "resources", "", ""
        if res.kind == "scan":
            scan = self.store.get_scan(res.experiment_id, res.scan_id)
            category, cat_id, cat_desc = "scans", res.scan_id, scan.type if scan else ""
        elif res.kind == "assessor":
            category, cat_id = "assessors", res.assessor_id
        elif res.kind == "experiment":
            # XNAT's SQL: expt.id AS cat_id, ' ' AS cat_desc; only ?all=true gives "" (§1.7)
            cat_id, cat_desc = res.experiment_id, ("" if all_flag else " ")
        elif res.kind == "subject":
            cat_id, cat_desc = res.subject_id, " "
        elif res.kind == "project":
            cat_id, cat_desc = res.project, " "
        return {"xnat_abstractresource_id": str(res.id), "label": res.label,
                "element_name": "xnat:resourceCatalog", "category": category, "cat_id": cat_id,
                "cat_desc": cat_desc, "file_count": str(res.file_count),
                "file_size": str(res.file_size), "tags": res.tags, "content": res.content,
                "format": res.format}

    def listing(self, request: Request, coll: str, r: Resolved, user: UserRow) -> Response:
        st = self.store
        meta = {"totalRecords": "0"}
        if coll == "project":
            if r.project is not None:
                raise HttpError(404, "The requested resource was not found.")
            rows = []
            for p in st.list_projects():
                if not st.can_read(user, p.id):
                    continue
                rows.append({"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
                             "description": p.description, "pi_firstname": p.pi_firstname,
                             "pi_lastname": p.pi_lastname, "URI": f"/data/projects/{p.id}",
                             "xsiType": "xnat:projectData",
                             "insert_date": formats.java_timestamp(p.insert_date),
                             "insert_user": p.insert_user,
                             "last_modified": formats.java_timestamp(p.last_modified, 6)})
            cols = ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"]
            return self.table(request, rows, cols, {"totalRecords": "0", "title": "Projects"})
        if coll == "subject":
            if r.subject is not None or r.experiment is not None:
                raise HttpError(404, "The requested resource was not found.")
            if r.project is not None:
                subjects = st.list_subjects(r.project.id)
            else:
                subjects = [s for pid in st.accessible_projects(user) for s in st.list_subjects(pid)]
            rows = [self.subject_row(s) for s in subjects]
            cols = ["ID", "project", "label", "insert_date", "insert_user", "URI"]
            return self.table(request, rows, cols, meta)
        if coll == "experiment":
            if r.experiment is not None:
                raise HttpError(404, "The requested resource was not found.")
            if r.project is not None:
                exps = st.list_experiments(r.project.id, r.subject.id if r.subject else None)
                title: dict[str, str] = {}
            else:
                wanted = request.args.get("project")
                pids = [p for p in st.accessible_projects(user)]
                exps = [e for pid in pids for e in st.list_experiments(pid)]
                title = {"title": "Matching experiments"}
                if wanted:
                    pats = wanted.split(",")
                    exps = [e for e in exps if any(fnmatch.fnmatchcase(e.project, p) for p in pats)]
            xsi = request.args.get("xsiType")
            rows = [self.experiment_row(e) for e in exps]
            id_col = "xnat:subjectassessordata/id"
            if xsi:
                rows = [x for x in rows if fnmatch.fnmatchcase(x["xsiType"].lower(), xsi.lower())]
                id_col = f"{xsi.lower()}/id"
                for x in rows:
                    x[id_col] = x["ID"]
            cols = [id_col, "ID", "project", "date", "xsiType", "label", "insert_date", "URI"]
            # XNAT adds these to experiment listings even when columns= omits them (§1.2).
            return self.table(request, rows, cols, dict(meta, **title),
                              extra_when_columns=("xsiType", id_col, "project"))
        if coll == "scan":
            if r.experiment is None or r.scans is not None:
                raise HttpError(404, "The requested resource was not found.")
            rows = [self.scan_row(s) for s in st.list_scans(r.experiment.id)]
            cols = ["xnat_imagescandata_id", "ID", "type", "quality", "xsiType", "note",
                    "series_description", "URI"]
            return self.table(request, rows, cols, meta)
        if coll == "assessor":
            if r.experiment is None or r.scans is not None or r.assessor is not None:
                raise HttpError(404, "The requested resource was not found.")
            rows = [self.experiment_row(a) for a in st.list_assessors(r.experiment.id)]
            cols = ["xnat:imageassessordata/id", "ID", "project", "date", "xsiType", "label",
                    "insert_date", "session_ID", "session_label", "URI"]
            return self.table(request, rows, cols, meta,
                              extra_when_columns=("xsiType", "xnat:imageassessordata/id", "project"))
        if coll == "reconstruction":
            cols = ["xnat_reconstructedimagedata_id", "ID", "type", "baseScanType", "URI"]
            return self.table(request, [], cols, meta)
        if coll == "resource":
            if r.resources is not None:
                raise HttpError(404, "The requested resource was not found.")
            all_flag = truthy(request.args.get("all")) and r.experiment is not None and \
                r.scans is None and r.assessor is None
            if all_flag:
                assert r.experiment is not None
                resources = st.list_resources_under_experiment(r.experiment.id)
            else:
                resources = [res for p in r.parents() for res in st.list_resources(p)]
            rows = [self.resource_row(res, all_flag) for res in resources]
            # Fixed table: columns= is not honoured (§1.7).
            return self.table(request, rows, self.RESOURCE_COLUMNS,
                              {"title": "Resources", "totalRecords": "0"}, honour_columns=False)
        raise HttpError(404, "The requested resource was not found.")

    # -------------------------------------------------------------------------------- objects
    def prearchive_code(self, request: Request, chain: Chain, user: UserRow) -> Response:
        """``GET`` the bare integer as text; ``PUT .../prearchive_code/CODE`` sets it (§6)."""
        method = request.method
        if method in ("GET", "HEAD") and chain.extra_arg is None:
            r = self.resolve(chain.links, user, False)
            assert r.project is not None
            return text_response(str(prearchive_codes.get(self.store, r.project.id)))
        if method in ("PUT", "POST") and chain.extra_arg is not None:
            r = self.resolve(chain.links, user, True)
            assert r.project is not None
            try:
                code = prearchive_codes.parse(chain.extra_arg)
            except ValueError:
                raise HttpError(400, f"Invalid prearchive code: {chain.extra_arg}") from None
            prearchive_codes.set_code(self.store, r.project.id, code)
            return text_response("")
        raise HttpError(405, "Method Not Allowed")

    def get_object(self, request: Request, kind: str, r: Resolved) -> Response:
        fmt = (request.args.get("format") or "xml").lower()
        if kind == "resource":
            assert r.resources is not None
            res = r.resources[0]
            if fmt == "json":
                item = self._resource_item(res)
                return json_response({"items": [item]})
            return Response(self.catalog_xml(res), content_type="text/xml")
        item = self.item(kind, r)
        if fmt == "json":
            return json_response({"items": [item]})
        if fmt == "xml":
            return Response(self.item_xml(item), content_type="text/xml")
        if fmt == "html":
            return Response(formats.resultset_html([item["data_fields"]],
                                                   list(item["data_fields"].keys())),
                            content_type="text/html")
        if fmt in ("zip", "tar", "tar.gz"):
            return self.archive_response(request, self._all_files(kind, r), fmt,
                                         self._archive_name(kind, r))
        raise HttpError(400, f"Unsupported format: {fmt}")

    def _meta(self, xsi: str, start: float) -> dict[str, Any]:
        return {"isHistory": False, "create_event_id": 1, "xsi:type": xsi,
                "start_date": formats.java_date(start)}

    def _fields_children(self, xsi: str, fields: dict[str, str], skip: Iterable[str] = ()) -> list[dict[str, Any]]:
        skip = set(skip)
        items = [{"meta": self._meta(f"{xsi}_field", time.time()),
                  "data_fields": {"name": k, "field": v}, "children": []}
                 for k, v in sorted(fields.items()) if k not in skip]
        return [{"field": "fields/field", "items": items}] if items else []

    def _resource_item(self, res: ResourceRow) -> dict[str, Any]:
        return {"meta": self._meta("xnat:resourceCatalog", res.insert_date),
                "data_fields": {"xnat_abstractresource_id": res.id, "xnat_abstractResource_id": res.id,
                                "label": res.label, "format": res.format, "content": res.content,
                                "file_count": res.file_count, "file_size": res.file_size,
                                "URI": self._catalog_path(res), "description": res.description},
                "children": []}

    def _catalog_path(self, res: ResourceRow) -> str:
        return str(self.config.data_dir / "archive" / str(res.id) / f"{res.label}_catalog.xml")

    def item(self, kind: str, r: Resolved) -> dict[str, Any]:
        st = self.store
        known = ("gender", "handedness", "dob", "yob", "group", "src", "initials", "time",
                 "modality", "UID", "frames", "note", "scanner", "operator")
        if kind == "project":
            p = r.project
            assert p is not None
            df: dict[str, Any] = {"ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
                                  "description": p.description, "active": "true"}
            ch = self._fields_children("xnat:projectData", p.fields)
            res = [self._resource_item(x) for x in st.list_resources(Parent(p.id))]
            if res:
                ch.append({"field": "resources/resource", "items": res})
            return {"meta": self._meta("xnat:projectData", p.insert_date), "data_fields": df,
                    "children": ch}
        if kind == "subject":
            s = r.subject
            assert s is not None
            df = {"ID": s.id, "id": s.id, "project": s.project, "label": s.label}
            df.update({k: v for k, v in s.fields.items() if k in known})
            ch = self._fields_children("xnat:subjectData", s.fields, known)
            res = [self._resource_item(x) for x in st.list_resources(Parent(s.project, s.id))]
            if res:
                ch.append({"field": "resources/resource", "items": res})
            return {"meta": self._meta("xnat:subjectData", s.insert_date), "data_fields": df,
                    "children": ch}
        if kind == "scan":
            assert r.scans
            return self._scan_item(r.scans[0])
        e = r.assessor if kind == "assessor" else r.experiment
        assert e is not None
        df = {"ID": e.id, "id": e.id, "project": e.project, "label": e.label}
        if e.date:
            df["date"] = e.date
        if e.session_id:
            df["imageSession_ID"] = e.session_id
        else:
            df["subject_ID"] = e.subject_id
        df.update({k: v for k, v in e.fields.items() if k in known})
        ch = self._fields_children(e.xsi_type, e.fields, known)
        if e.session_id:
            out = [self._resource_item(x) for x in
                   st.list_resources(Parent(e.project, None, e.session_id, None, e.id))]
            if out:
                ch.append({"field": "out/file", "items": out})
        else:
            scans = [self._scan_item(s) for s in st.list_scans(e.id)]
            if scans:
                ch.append({"field": "scans/scan", "items": scans})
            res = [self._resource_item(x) for x in st.list_resources(Parent(e.project, None, e.id))]
            if res:
                ch.append({"field": "resources/resource", "items": res})
            ass = [self.item("assessor", Resolved(assessor=a)) for a in st.list_assessors(e.id)]
            if ass:
                ch.append({"field": "assessors/assessor", "items": ass})
        return {"meta": self._meta(e.xsi_type, e.insert_date), "data_fields": df, "children": ch}

    def _scan_item(self, s: ScanRow) -> dict[str, Any]:
        df: dict[str, Any] = {"ID": s.id, "type": s.type, "quality": s.quality,
                              "xnat_imagescandata_id": s.pk, "xnat_imageScanData_id": s.pk,
                              "image_session_ID": s.experiment_id,
                              "series_description": s.series_description}
        # identity: xnat:imageScanData carries a ``project`` attribute (xnat.xsd), and XNAT's
        # ItemJSONBuilder emits it in data_fields (docs/FIDELITY.md "single-object documents")
        exp = self.store.get_experiment(s.experiment_id)
        if exp is not None:
            df["project"] = exp.project
        if s.note:
            df["note"] = s.note
        for k, v in s.fields.items():
            if k == "frames":
                try:
                    df[k] = int(v)
                except ValueError:
                    pass
            elif k in ("UID", "modality", "scanner", "condition", "documentation"):
                df[k] = v
        files = [self._resource_item(x) for x in
                 self.store.list_resources(Parent(None, None, s.experiment_id, s.id))]
        ch = [{"field": "file", "items": files}] if files else []
        return {"meta": self._meta(s.xsi_type, s.insert_date), "data_fields": df, "children": ch}

    def item_xml(self, item: dict[str, Any]) -> bytes:
        from xml.sax.saxutils import escape, quoteattr

        def render(it: dict[str, Any], tag: str, top: bool) -> str:
            xsi = it["meta"]["xsi:type"]
            df = it["data_fields"]
            attr_keys = [k for k in ("ID", "project", "label", "type", "name") if k in df]
            attrs = "".join(f" {k}={quoteattr(str(df[k]))}" for k in attr_keys)
            if top:
                attrs += (' xmlns:xnat="http://nrg.wustl.edu/xnat" '
                          'xmlns:xdat="http://nrg.wustl.edu/xdat" '
                          'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
            else:
                attrs += f' xsi:type="{xsi}"'
            body = []
            for k, v in df.items():
                if k in attr_keys or k in ("id",) or "_id" in k.lower() and k not in (
                        "subject_ID", "image_session_ID", "imageSession_ID"):
                    continue
                if k in ("URI", "format", "content", "file_count", "file_size", "description"):
                    continue
                body.append(f"<xnat:{k}>{escape(str(v))}</xnat:{k}>")
            for child in it.get("children", []):
                fieldname = child["field"]
                if fieldname == "fields/field":
                    body.append("<xnat:fields>" + "".join(
                        f'<xnat:field name={quoteattr(c["data_fields"]["name"])}>'
                        f'{escape(c["data_fields"]["field"])}</xnat:field>' for c in child["items"])
                        + "</xnat:fields>")
                    continue
                parts = fieldname.split("/")
                inner = "".join(render(c, f"xnat:{parts[-1]}", False) for c in child["items"])
                body.append(f"<xnat:{parts[0]}>{inner}</xnat:{parts[0]}>" if len(parts) == 2 else inner)
            if xsi == "xnat:resourceCatalog":
                for k in ("URI", "format", "content", "file_count", "file_size"):
                    if k in df:
                        attrs += f" {k}={quoteattr(str(df[k]))}"
            return f"<{tag}{attrs}>{''.join(body)}</{tag}>"

        xml = render(item, root_element(item["meta"]["xsi:type"]), True)
        return ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode("utf-8")

    def catalog_xml(self, res: ResourceRow) -> bytes:
        from xml.sax.saxutils import quoteattr

        # createdTime: XNAT's audit attribute of every entry since 1.6 (CatalogUtils.
        # configureEntry); the emulator stores one time per file (when its bytes were stored),
        # so a replaced file's new time shows here where XNAT adds a modifiedTime
        entries = "".join(
            f"<cat:entry URI={quoteattr(f.relpath)} ID={quoteattr(f.relpath)} "
            f"name={quoteattr(f.name)} digest={quoteattr(f.md5)} format={quoteattr(f.format)} "
            f"content={quoteattr(f.content)} createdTime={quoteattr(_catalog_time(f.mtime))} "
            f"xsi:type=\"cat:entry\"/>"
            for f in self.store.list_files(res.id))
        xml = ('<?xml version="1.0" encoding="UTF-8"?>\n'
               f'<cat:Catalog ID={quoteattr(res.label)} xmlns:arc="http://nrg.wustl.edu/arc" '
               'xmlns:cat="http://nrg.wustl.edu/catalog" xmlns:xdat="http://nrg.wustl.edu/xdat" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
               f"<cat:entries>{entries}</cat:entries></cat:Catalog>")
        return xml.encode("utf-8")

    # -------------------------------------------------------------------------------- creation
    def _fields_from_query(self, args: MultiDict[str, str], xsi: str) -> dict[str, str]:
        """``xnat:subjectData/gender=x``, ``gender=x`` and ``.../fields/field[name=foo]/field=bar``."""
        out: dict[str, str] = {}
        skip = {"xsiType", "req_format", "format", "event_reason", "event_type", "event_action",
                "triggerPipelines", "pullDataFromHeaders", "fixScanTypes", "allowDataDeletion",
                "removeFiles", "inbody", "overwrite", "_", "ID", "label", "project"}
        for k, v in args.items():
            key = k
            if "/" in key and ":" in key.split("/", 1)[0]:
                key = key.split("/", 1)[1]
            m = re.match(r"^fields/field\[name=([^\]]+)\]/field$", key)
            if m:
                out[m.group(1)] = v
                continue
            if key in skip or "/" in key:
                if key in ("label", "ID", "project") and k != key:
                    out["__" + key] = v
                continue
            out[key] = v
        return out

    def _xsi(self, request: Request) -> Optional[str]:
        return request.args.get("xsiType") or request.args.get("xsitype")

    def create(self, request: Request, kind: str, key: str, parent: Resolved, user: UserRow) -> Response:
        st = self.store
        args = request.args
        xsi = self._xsi(request)
        fields = self._fields_from_query(args, xsi or "")
        rename = args.get("label") or fields.pop("__label", None)
        fields.pop("__ID", None)
        fields.pop("__project", None)
        if kind == "project":
            if parent.project is not None:
                raise HttpError(404, "The requested resource was not found.")
            existing = st.get_project(key)
            if existing is not None:
                self._check_project(existing, user, True)
                if fields:
                    st.update_fields("project", existing.id, fields)
                return text_response(existing.id, 200)
            if not LABEL_RE.match(key):
                raise HttpError(400, f"Invalid project ID '{key}': IDs may contain only letters, "
                                     "digits, '_' and '-'.")
            st.create_project(key, name=fields.pop("name", key),
                              description=fields.pop("description", ""),
                              secondary_id=fields.pop("secondary_ID", key), fields=fields,
                              user=user.name)
            if not user.admin:
                st.add_member(user.name, key)
            return text_response(key, 201)
        if kind == "resource":
            return self.create_resource(request, parent, key, user)
        if kind == "subject":
            if parent.project is None or parent.experiment is not None:
                raise HttpError(404 if parent.project else 400,
                                "Subjects are created below /data/projects/{P}/subjects.")
            s = st.find_subject(parent.project.id, key)
            if s is not None:
                if rename and rename != s.label:
                    self._rename(st, "subject", s.id, parent.project.id, rename)
                if fields:
                    st.update_fields("subject", s.id, fields)
                return text_response(s.id, 200)
            if not LABEL_RE.match(key):
                raise HttpError(400, f"Invalid subject label '{key}': labels may contain only "
                                     "letters, digits, '_' and '-'.")
            sid, created = st.create_subject(parent.project.id, key, fields, user=user.name)
            return text_response(sid, 201 if created else 200)
        if kind == "experiment":
            if parent.project is None:
                # /data/experiments/{ID}: only an existing experiment can be modified
                e = st.get_experiment(key)
                if e is None:
                    raise HttpError(404, f"Unable to find experiment {key}.")
                p = st.get_project(e.project)
                assert p is not None
                self._check_project(p, user, True)
                if fields:
                    st.update_fields("experiment", e.id, fields)
                return text_response(e.id, 200)
            e = st.find_experiment(parent.project.id, key)
            if e is not None and not e.session_id:
                if rename and rename != e.label:
                    self._rename(st, "experiment", e.id, parent.project.id, rename)
                if fields:
                    st.update_fields("experiment", e.id, fields)
                return text_response(e.id, 200)
            if e is not None:
                raise HttpError(409, f"Label {key} is already used by an assessor in project "
                                     f"{parent.project.id}.")
            if not xsi:
                raise HttpError(417, "Need PUT Contents")
            if not LABEL_RE.match(key):
                raise HttpError(400, f"Invalid experiment label '{key}': labels may contain only "
                                     "letters, digits, '_' and '-'.")
            subject = parent.subject.id if parent.subject else fields.pop("subject_ID", None)
            if subject is None:
                raise HttpError(400, "An experiment needs a subject (subject_ID).")
            if parent.subject is None and st.find_subject(parent.project.id, subject) is None \
                    and not LABEL_RE.match(subject):
                raise HttpError(400, f"Invalid subject label '{subject}'.")
            try:
                eid, created = st.create_experiment(parent.project.id, subject, key, xsi, fields,
                                                    user=user.name)
            except Conflict as ex:
                raise HttpError(409, str(ex)) from None
            return text_response(eid, 201 if created else 200)
        if kind == "scan":
            if parent.experiment is None or parent.scans is not None:
                raise HttpError(404, "The requested resource was not found.")
            existing = st.get_scan(parent.experiment.id, key)
            if existing is not None:
                if request.method == "POST":
                    raise HttpError(409, "Specified scan already exists.")
                if fields or xsi:
                    st.create_scan(parent.experiment.id, key, xsi or "", fields)
                return text_response(key, 200)
            if not xsi:
                raise HttpError(417, "Need PUT Contents")
            if not SCAN_ID_RE.match(key):
                raise HttpError(400, f"Invalid scan ID '{key}'.")
            st.create_scan(parent.experiment.id, key, xsi, fields)
            return text_response(key, 201)
        if kind == "assessor":
            if parent.experiment is None or parent.scans is not None:
                raise HttpError(404, "The requested resource was not found.")
            a = st.find_assessor(parent.experiment.id, key)
            if a is not None:
                if fields:
                    st.update_fields("assessor", a.id, fields)
                return text_response(a.id, 200)
            if not xsi:
                raise HttpError(417, "Need PUT Contents")
            if not LABEL_RE.match(key):
                raise HttpError(400, f"Invalid assessor label '{key}': labels may contain only "
                                     "letters, digits, '_' and '-'.")
            try:
                aid, created = st.create_assessor(parent.experiment.id, key, xsi, fields,
                                                  user=user.name)
            except Conflict as ex:
                raise HttpError(409, str(ex)) from None
            return text_response(aid, 201 if created else 200)
        if kind == "reconstruction":
            raise HttpError(501, "Reconstructions are not supported by the emulator.")
        raise HttpError(405, "Method Not Allowed")

    def _rename(self, st: Store, kind: str, oid: str, project: str, new: str) -> None:
        if not LABEL_RE.match(new):
            raise HttpError(400, f"Invalid label '{new}'.")
        finder = st.find_subject if kind == "subject" else st.find_experiment
        if finder(project, new) is not None:
            raise HttpError(409, f"Label {new} is already used in project {project}.")
        table = "subjects" if kind == "subject" else "experiments"
        with st._tx() as c:  # noqa: SLF001 - renames are an app-level concern
            c.execute(f"UPDATE {table} SET label=?, last_modified=? WHERE id=?",
                      (new, time.time(), oid))

    def post_project_xml(self, request: Request, user: UserRow) -> Response:
        body = request.get_data(cache=False)[: 1024 * 1024]
        m = re.search(rb'\bID="([^"]+)"', body)
        if not m:
            raise HttpError(400, "Unable to parse project XML.")
        pid = m.group(1).decode("utf-8", "replace")
        if self.store.get_project(pid) is not None:
            raise HttpError(409, "Project already exists.")
        if not LABEL_RE.match(pid):
            raise HttpError(400, f"Invalid project ID '{pid}'.")
        name = re.search(rb"<xnat:name>([^<]*)</xnat:name>", body)
        self.store.create_project(pid, name=name.group(1).decode() if name else pid, user=user.name)
        if not user.admin:
            self.store.add_member(user.name, pid)
        return text_response(pid, 200)

    def create_resource(self, request: Request, parent: Resolved, label: str, user: UserRow,
                        post_list: bool = False) -> Response:
        parents = parent.parents()
        if parent.resources is not None or len(parents) != 1 or (parent.scans is not None and
                                                                len(parent.scans) != 1):
            raise HttpError(400, "A resource is created below exactly one object.")
        if not RESOURCE_LABEL_RE.match(label):
            raise HttpError(400, f"Invalid resource label '{label}'.")
        args = request.args
        # format= here is the resource's format attribute, not the response type (§4.4, §10.7)
        rid, created = self.store.create_resource(parents[0], label, args.get("format", ""),
                                                  args.get("content", ""), args.get("tags", ""),
                                                  args.get("description", ""))
        if not created:
            raise HttpError(409, "Specified resource already exists.")
        return text_response(str(rid) if post_list else "", 200)

    # -------------------------------------------------------------------------------- delete
    def delete(self, request: Request, kind: str, key: str, r: Resolved, user: UserRow) -> Response:
        st = self.store
        if kind == "project":
            assert r.project is not None
            st.delete_project(r.project.id)
        elif kind == "subject":
            assert r.subject is not None
            st.delete_subject(r.subject.id)
        elif kind == "experiment":
            assert r.experiment is not None
            st.delete_experiment(r.experiment.id)
        elif kind == "scan":
            assert r.scans is not None and r.experiment is not None
            for s in r.scans:
                st.delete_scan(r.experiment.id, s.id)
        elif kind == "assessor":
            assert r.assessor is not None
            st.delete_assessor(r.assessor.id)
        elif kind == "resource":
            for res in r.resources or []:
                st.delete_resource(res.id)
        return text_response("")

    # -------------------------------------------------------------------------------- files
    def files(self, request: Request, chain: Chain, user: UserRow) -> Response:
        method = request.method
        write = method in ("PUT", "POST", "DELETE")
        links = chain.links
        relpath = chain.files or ""
        if links and links[-1][0] == "resource" and method in ("PUT", "POST"):
            # Uploading to a missing resource label creates it (§4.5, §10.4).
            parent = self.resolve(links[:-1], user, True)
            label = links[-1][1]
            resources: list[ResourceRow] = []
            for p in parent.parents():
                for k in label.split(","):
                    res = self.store.find_resource(p, k)
                    if res is not None:
                        resources.append(res)
            if not resources:
                if not RESOURCE_LABEL_RE.match(label) or len(parent.parents()) != 1:
                    raise HttpError(400, f"Invalid resource label '{label}'.")
                rid, _ = self.store.create_resource(parent.parents()[0], label,
                                                    request.args.get("format", ""),
                                                    request.args.get("content", ""),
                                                    request.args.get("tags", ""))
                res = self.store.get_resource(rid)
                assert res is not None
                resources = [res]
            parent.resources = resources
            r = parent
        else:
            r = self.resolve(links, user, write)
        if r.resources is None:
            if write:
                raise HttpError(400, "Files are uploaded into a resource: "
                                     ".../resources/{label}/files/{path}.")
            resources = [res for p in r.parents() for res in self.store.list_resources(p)]
        else:
            resources = r.resources
        if method in ("GET", "HEAD"):
            if relpath and not chain.files_dir:
                return self.file_get(request, resources, relpath)
            return self.file_listing(request, r, resources, relpath if chain.files_dir else "")
        if method in ("PUT", "POST"):
            if len(resources) != 1:
                raise HttpError(400, "Uploads go to exactly one resource.")
            return self.upload(request, resources[0], relpath)
        if method == "DELETE":
            return self.file_delete(resources, relpath, chain.files_dir)
        raise HttpError(405, "Method Not Allowed")

    def _file_uri(self, r: Resolved, res: ResourceRow, relpath: str) -> str:
        """``<baseURI>/resources/<numeric id>/files/<relpath>`` built from IDs (§1.8)."""
        if res.kind == "scan":
            base = f"/data/experiments/{res.experiment_id}/scans/{res.scan_id}"
        elif res.kind == "assessor":
            base = f"/data/experiments/{res.experiment_id}/assessors/{res.assessor_id}/out"
        elif res.kind == "experiment":
            if r.via_project:
                subj = r.subject.id if r.subject else (self.store.get_experiment(res.experiment_id)
                                                        or r.experiment).subject_id  # type: ignore[union-attr]
                base = f"/data/projects/{res.project}/subjects/{subj}/experiments/{res.experiment_id}"
            else:
                base = f"/data/experiments/{res.experiment_id}"
        elif res.kind == "subject":
            base = f"/data/projects/{res.project}/subjects/{res.subject_id}"
        else:
            base = f"/data/projects/{res.project}"
        # The relative path is written as stored (not percent-encoded), like XNAT's FileList.
        return f"{base}/resources/{res.id}/files/{relpath}"

    FILE_COLUMNS = ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content",
                    "cat_ID", "digest"]

    def file_listing(self, request: Request, r: Resolved, resources: list[ResourceRow],
                     prefix: str) -> Response:
        fmt = self.response_format(request)
        items = [(res, f) for res in resources for f in self.store.list_files(res.id, prefix)]
        if prefix and not items:
            raise HttpError(404, "Unable to find file.")
        ff, fc = request.args.get("file_format"), request.args.get("file_content")
        if ff:
            items = [(res, f) for res, f in items if fnmatch.fnmatchcase(f.format, ff)]
        if fc:
            items = [(res, f) for res, f in items if fnmatch.fnmatchcase(f.content, fc)]
        if fmt in ("zip", "tar", "tar.gz", "tgz"):
            kind = self._deepest_kind(r)
            return self.archive_response(request, items, fmt, self._archive_name(kind, r))
        if fmt == "xcat":
            if len(resources) != 1:
                raise HttpError(400, "format=xcat needs one resource")
            return Response(self.catalog_xml(resources[0]), content_type="text/xml")
        rows = []
        for res, f in items:
            rows.append({"Name": f.name, "Size": str(f.size), "URI": self._file_uri(r, res, f.relpath),
                         "collection": res.label, "file_tags": f.tags, "file_format": f.format,
                         "file_content": f.content, "cat_ID": str(res.id), "digest": f.md5})
        props = [{"key": "URI", "serverRoot": self.config.context_path}]
        return self.table(request, rows, self.FILE_COLUMNS, {"title": "Files"}, honour_columns=False,
                          column_props=props)

    def file_get(self, request: Request, resources: list[ResourceRow], relpath: str) -> Response:
        try:
            relpath = validate_relpath(relpath)
        except InvalidInput:
            raise HttpError(404, "Unable to find file.") from None
        for res in resources:
            f = self.store.get_file(res.id, relpath)
            if f is not None:
                return self.file_response(request, self.store.file_path(res.id, relpath), f.name)
        if truthy(request.args.get("accept-not-found")):
            return Response(b"", status=204)
        raise HttpError(404, "Unable to find file.")

    TEXT_TYPES = {".bmp": "image/bmp", ".gif": "image/gif", ".html": "text/html",
                  ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".pdf": "application/pdf",
                  ".png": "image/png", ".svg": "image/svg+xml", ".tiff": "image/tiff",
                  ".tif": "image/tiff", ".txt": "text/plain", ".xml": "text/xml"}

    def file_response(self, request: Request, path: Path, name: str) -> Response:
        """GET/HEAD of one file (§3.1): streamed, Content-Length, no ETag, Range ignored."""
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise HttpError(404, "Unable to find file.") from None
        st = os.fstat(fh.fileno())
        ext = os.path.splitext(name)[1].lower()
        ctype = self.TEXT_TYPES.get(ext, "application/octet-stream")
        if request.method == "HEAD":
            fh.close()
            body: Iterable[bytes] = []
        else:
            body = _file_iter(fh)
        resp = Response(body, status=200, content_type=ctype, direct_passthrough=True)
        resp.headers["Content-Length"] = str(st.st_size)
        resp.headers["Last-Modified"] = formats.http_date(st.st_mtime)
        resp.headers["Cache-Control"] = "must-revalidate"
        resp.headers["Content-Disposition"] = f'attachment; filename="{_header_name(name)}";'
        return resp

    def file_delete(self, resources: list[ResourceRow], relpath: str, is_dir: bool) -> Response:
        n = 0
        for res in resources:
            if not relpath:
                continue
            if is_dir:
                n += self.store.delete_files_under(res.id, relpath)
            elif any(ch in relpath for ch in "*?["):
                for f in self.store.list_files(res.id):
                    if fnmatch.fnmatchcase(f.relpath, relpath):
                        n += self.store.delete_file(res.id, f.relpath)
            else:
                n += self.store.delete_file(res.id, relpath)
                if not n:
                    n += self.store.delete_files_under(res.id, relpath)
        if n == 0:
            raise HttpError(404, "File missing")
        return text_response("")

    # -------------------------------------------------------------------------------- uploads
    def body_chunks(self, request: Request) -> Iterator[bytes]:
        """Stream the raw request body; faults may cut it (DropConnection)."""
        stream = request.environ["wsgi.input"]
        length = request.content_length
        got = 0

        def gen() -> Iterator[bytes]:
            nonlocal got
            while length is None or got < length:
                want = CHUNK if length is None else min(CHUNK, length - got)
                try:
                    buf = stream.read(want)
                except (OSError, ValueError):
                    buf = b""
                if not buf:
                    break
                got += len(buf)
                yield buf
            if length is not None and got < length:
                raise HttpError(400, f"The request body was truncated ({got} of {length} bytes).")

        it = gen()
        if self.body_filter is not None:
            it = self.body_filter(request, it)
        return it

    def spool_body(self, request: Request) -> Path:
        fd, tmp = self.store.new_temp()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self.body_chunks(request):
                    out.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp)

    def upload(self, request: Request, res: ResourceRow, relpath: str) -> Response:
        args = request.args
        overwrite = truthy(args.get("overwrite"))
        extract = truthy(args.get("extract"))
        meta = {"format": args.get("format", ""), "content": args.get("content", ""),
                "tags": args.get("tags", "")}
        ctype = (request.mimetype or "").lower()
        inbody = truthy(args.get("inbody"))
        duplicates: list[str] = []
        if ctype == "multipart/form-data":
            if inbody:
                raise HttpError(406, "Cannot combine multipart/form-data with inbody=true.")
            try:
                files = request.files
            except ClientDisconnected:
                raise HttpError(400, "The request body was truncated.") from None
            parts = [fs for key in files for fs in files.getlist(key) if fs.filename or relpath]
            if not parts:
                raise HttpError(400, f"You tried to {request.method} to {request.path} but didn't "
                                     "provide any data.")
            for fs in parts:
                name = relpath if (relpath and len(parts) == 1) else \
                    (relpath.rstrip("/") + "/" if relpath else "") + os.path.basename(fs.filename or "upload")
                fd, tmp = self.store.new_temp()
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(fs.stream, out, CHUNK)
                fs.close()
                try:
                    self._store_upload(res, name, Path(tmp), overwrite, extract, meta, duplicates)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
        else:
            if ctype == "application/x-www-form-urlencoded" and not inbody:
                request.form  # noqa: B018 - parsed as a form: no file content (§4.5)
                raise HttpError(400, f"You tried to {request.method} to {request.path} but didn't "
                                     "provide any data.")
            if not relpath:
                raise HttpError(400, "A raw upload needs a file name in the URL.")
            if request.content_length == 0:
                raise HttpError(400, f"You tried to {request.method} to {request.path} but didn't "
                                     "provide any data.")
            if extract and _is_archive_name(relpath):
                tmp = self.spool_body(request)
                try:
                    if tmp.stat().st_size == 0:
                        raise HttpError(400, f"You tried to {request.method} to {request.path} "
                                             "but didn't provide any data.")
                    self._store_upload(res, relpath, tmp, overwrite, True, meta, duplicates)
                finally:
                    if tmp.exists():
                        tmp.unlink()
            else:
                try:
                    rel = validate_relpath(relpath)
                except InvalidInput as e:
                    raise HttpError(400, str(e)) from None
                if not overwrite and self.store.get_file(res.id, rel) is not None:
                    for _ in self.body_chunks(request):  # drain so the connection stays usable
                        pass
                    duplicates.append(rel)
                else:
                    chunks = self.body_chunks(request)
                    first = next(chunks, b"")
                    if not first:  # e.g. a chunked body with no data
                        raise HttpError(400, f"You tried to {request.method} to {request.path} "
                                             "but didn't provide any data.")
                    stream = _IterReader(itertools.chain([first], chunks))
                    try:
                        stored = self.store.put_file(res.id, rel, stream, overwrite,
                                                     expected_size=request.content_length, **meta)
                    except TruncatedUpload as e:
                        raise HttpError(400, str(e)) from None
                    if not stored:
                        duplicates.append(rel)
        if duplicates:
            # Not 409: 200 + a JSON-ish body with text/html content type (§4.5, §10.5).
            return Response(json.dumps({"duplicates": duplicates}).encode(), status=200,
                            content_type="text/html")
        return text_response("")

    def _store_upload(self, res: ResourceRow, relpath: str, tmp: Path, overwrite: bool,
                      extract: bool, meta: dict[str, str], duplicates: list[str]) -> None:
        if extract and _is_archive_name(relpath):
            # extract=true ignores the URL sub-path: content lands in the resource root (§10.6)
            stage = Path(tempfile.mkdtemp(dir=self.store.tmp_dir))
            try:
                names = _extract_archive(tmp, relpath, stage)
                for name in names:
                    if not overwrite and self.store.get_file(res.id, name) is not None:
                        duplicates.append(name)
                        continue
                    self.store.put_file_from_path(res.id, name, stage / name, overwrite, move=True,
                                                  **meta)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            return
        try:
            rel = validate_relpath(relpath)
        except InvalidInput as e:
            raise HttpError(400, str(e)) from None
        if tmp.stat().st_size == 0:
            raise HttpError(400, "You tried to upload an empty file.")
        if not self.store.put_file_from_path(res.id, rel, tmp, overwrite, move=True, **meta):
            duplicates.append(rel)

    # -------------------------------------------------------------------------------- archives
    def _deepest_kind(self, r: Resolved) -> str:
        if r.assessor is not None:
            return "assessor"
        if r.experiment is not None:
            return "experiment"
        if r.subject is not None:
            return "subject"
        return "project"

    def _archive_name(self, kind: str, r: Resolved) -> str:
        if kind in ("experiment", "scan", "resource") and r.experiment is not None:
            return r.experiment.label
        if kind == "assessor" and r.assessor is not None:
            return r.assessor.label
        if kind == "subject" and r.subject is not None:
            return r.subject.label
        return r.project.id if r.project else "download"

    def _all_files(self, kind: str, r: Resolved) -> list[tuple[ResourceRow, FileRow]]:
        st = self.store
        if kind == "experiment" and r.experiment is not None:
            resources = st.list_resources_under_experiment(r.experiment.id)
        else:
            resources = [res for p in r.parents() for res in st.list_resources(p)]
        return [(res, f) for res in resources for f in st.list_files(res.id)]

    def _archive_prefix(self, res: ResourceRow) -> str:
        """XNAT's default zip layout (§3.3): the folder of a resource's files in the archive."""
        st = self.store
        tail = f"resources/{res.label}/files/"
        if res.kind in ("scan", "experiment", "assessor"):
            e = st.get_experiment(res.experiment_id)
            sess = e.label if e else res.experiment_id
            if res.kind == "scan":
                scan = st.get_scan(res.experiment_id, res.scan_id)
                stype = re.sub(r"\W", "_", scan.type if scan else "")
                return f"{sess}/scans/{res.scan_id}-{stype}/{tail}"
            if res.kind == "assessor":
                a = st.get_experiment(res.assessor_id)
                return f"{sess}/assessors/{a.label if a else res.assessor_id}/out/{tail}"
            return f"{sess}/{tail}"
        if res.kind == "subject":
            s = st.get_subject(res.subject_id)
            return f"{s.label if s else res.subject_id}/{tail}"
        return f"{res.project}/{tail}"

    def archive_response(self, request: Request, items: list[tuple[ResourceRow, FileRow]],
                         fmt: str, name: str) -> Response:
        """Streamed zip/tar/tar.gz, chunked, no Content-Length (§3.3, §10.11)."""
        prefixes: dict = {}   # once per resource, not per file (two queries each)
        entries = []
        for res, f in items:
            if res.id not in prefixes:
                prefixes[res.id] = self._archive_prefix(res)
            entries.append((prefixes[res.id] + f.relpath, self.store.file_path(res.id, f.relpath),
                            f))
        if fmt == "zip":
            gen = _zip_stream(entries)
            ctype, ext = "application/zip", "zip"
        else:
            gz = fmt in ("tar.gz", "tgz")
            gen = _tar_stream(entries, gz)
            ctype, ext = ("application/x-gzip", "tar.gz") if gz else ("application/x-tar", "tar")
        resp = Response(gen if request.method != "HEAD" else [], status=200, content_type=ctype,
                        direct_passthrough=True)
        resp.headers["Content-Disposition"] = f'attachment; filename="{_header_name(name)}.{ext}";'
        return resp


# ------------------------------------------------------------------------------------ helpers
def _header_name(name: str) -> str:
    try:
        name.encode("latin-1")
        return name.replace('"', "")
    except UnicodeEncodeError:
        return name.encode("utf-8").decode("latin-1").replace('"', "")


def _file_iter(fh: Any, chunk: int = CHUNK) -> Iterator[bytes]:
    try:
        while True:
            buf = fh.read(chunk)
            if not buf:
                return
            yield buf
    finally:
        fh.close()


class _IterReader:
    """File-like ``read(n)`` over an iterator of chunks (so the store can stream a body)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._buf = b""
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buf) < n):
            try:
                chunk = next(self._it)
            except StopIteration:
                break
            self.total += len(chunk)
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _is_archive_name(name: str) -> bool:
    n = name.lower()
    return n.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".zar"))


def _extract_archive(src: Path, name: str, dest: Path) -> list[str]:
    """Unpack into ``dest``; refuse corrupt archives and unsafe member paths (400)."""
    out: list[str] = []
    try:
        if name.lower().endswith((".zip", ".zar")):
            with zipfile.ZipFile(src) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    rel = validate_relpath(info.filename)
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout, CHUNK)
                    out.append(rel)
        else:
            with tarfile.open(src, "r:*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    rel = validate_relpath(m.name)
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fin = tf.extractfile(m)
                    assert fin is not None
                    with fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout, CHUNK)
                    out.append(rel)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, InvalidInput) as e:
        raise HttpError(400, f"Unable to extract archive {name}: {e}") from None
    return out


class _Sink:
    """Non-seekable write target that hands its bytes to a generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b: bytes) -> int:
        if b:
            self.parts.append(bytes(b))
        return len(b)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def _zip_stream(entries: list[tuple[str, Path, FileRow]]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for arcname, path, f in entries:
            info = zipfile.ZipInfo(arcname, time.localtime(f.mtime)[:6])
            info.compress_type = zipfile.ZIP_STORED
            with open(path, "rb") as fin, zf.open(info, "w", force_zip64=f.size > 2**31) as out:
                while True:
                    buf = fin.read(CHUNK)
                    if not buf:
                        break
                    out.write(buf)
                    data = sink.take()
                    if data:
                        yield data
            data = sink.take()
            if data:
                yield data
    data = sink.take()
    if data:
        yield data


def _tar_stream(entries: list[tuple[str, Path, FileRow]], gz: bool) -> Iterator[bytes]:
    comp = zlib.compressobj(6, zlib.DEFLATED, 31) if gz else None

    def emit(b: bytes) -> bytes:
        return comp.compress(b) if comp is not None else b

    for arcname, path, f in entries:
        ti = tarfile.TarInfo(arcname)
        ti.size = f.size
        ti.mtime = int(f.mtime)
        ti.mode = 0o644
        yield emit(ti.tobuf(format=tarfile.PAX_FORMAT))
        sent = 0
        with open(path, "rb") as fin:
            while True:
                buf = fin.read(CHUNK)
                if not buf:
                    break
                sent += len(buf)
                out = emit(buf)
                if out:
                    yield out
        pad = (-sent) % tarfile.BLOCKSIZE
        if pad:
            yield emit(b"\0" * pad)
    tail = emit(b"\0" * (tarfile.BLOCKSIZE * 2))
    if comp is not None:
        tail += comp.flush()
    yield tail


__all__ = ["XnatApp", "AppConfig", "Ctx", "HttpError", "DropConnection", "error_response",
           "text_response", "json_response"]


def _catalog_time(t: float) -> str:
    """A catalog entry's time as XDAT writes ``xs:dateTime`` values: local wall-clock time with
    milliseconds and no zone (the emulator's zone is UTC)."""
    import datetime

    stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
