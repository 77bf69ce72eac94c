"""HTTP for the prearchive (§7): ``/data/prearchive[/projects[/P[/TS/FOLDER[/...]]]]``,
``POST /data/services/archive`` and ``POST /data/services/prearchive/{move,delete,rebuild}``.

The storage and the archive step live in ``prearchive.py``; this module only maps URLs and
parameters onto them and answers through ``serving.py`` like every other handler.
"""

from __future__ import annotations

from html import escape

from werkzeug.wrappers import Response

from .prearchive import (
    KNOWN_STATUSES,
    PREARC_COLUMNS,
    READY,
    RECEIVING,
    UNASSIGNED,
    Prearchive,
    PrearchiveError,
    PrearcSession,
    SessionNotFound,
    StatusConflict,
    archive_session,
    xsi_types_for,
)
from .serving import (
    PREARCHIVE_FILE_TYPES,
    Ctx,
    error_response,
    file_response,
    form_params,
    spooled_archive,
    text_response,
    uri_list_response,
)
from .store import Store, UserRow

_SCAN_COLUMNS = ("ID", "series_description", "type")
_RESOURCE_COLUMNS = ("label", "file_count", "file_size")
_SESSION_RESOURCE_COLUMNS = ("category", "cat_id", "label", "file_count", "file_size")
_FILE_COLUMNS = ("Name", "Size", "URI")
_ARCHIVE_FORMATS = ("zip", "tar", "tar.gz", "tgz")


def handle(ctx: Ctx) -> Response:
    """Entry point from the router for ``/data/prearchive...``, ``/data/services/archive`` and
    ``/data/services/prearchive/*`` (``ctx.path`` is below ``/data``)."""
    segs = [p for p in ctx.path.split("/") if p]
    if segs[:1] == ["archive"]:
        segs = segs[1:]
    try:
        if segs[:1] == ["services"]:
            if ctx.request.method != "POST":
                return error_response(405, "Method Not Allowed")
            if segs[1:2] == ["archive"]:
                return _service_archive(ctx)
            if segs[1:2] == ["prearchive"] and len(segs) >= 3:
                return _service_batch(ctx, segs[2])
            return error_response(404, "Unknown service")
        if segs[:1] == ["prearchive"]:
            return _prearchive(ctx, segs[1:])
        return error_response(404, "Not Found")
    except PrearchiveError as exc:
        return error_response(exc.status, str(exc))


def _table(
    ctx: Ctx,
    rows: list[dict[str, str]],
    columns: tuple[str, ...],
    meta: dict[str, str] | None = None,
) -> Response:
    """A prearchive ResultSet: every column listed, filters/sortBy/limit like any listing."""
    meta = {"totalRecords": str(len(rows))} if meta is None else meta
    return ctx.resultset(rows, columns, meta, honour_columns=False)


def _can_access(store: Store, user: UserRow, project: str) -> bool:
    """Prearchive visibility: project members; Unassigned is for admins only."""
    if project == UNASSIGNED:
        return bool(user.admin)
    return bool(store.can_read(user, project))


def _srcs(ctx: Ctx) -> list[str]:
    request = ctx.request
    vals = list(request.args.getlist("src"))
    if (request.mimetype or "") in ("application/x-www-form-urlencoded", "multipart/form-data"):
        vals += request.form.getlist("src")
    out: list[str] = []
    for v in vals:
        out.extend(x for x in v.split(",") if x)
    return out


def _open_session(ctx: Ctx, pa: Prearchive, url: str) -> PrearcSession:
    s = pa.from_url(url)
    if not _can_access(ctx.store, ctx.user, s.project):
        raise SessionNotFound(f"Unable to find prearchive session {url}")
    return s


# ------------------------------------------------------------------------------------ services
def _service_archive(ctx: Ctx) -> Response:
    """``POST /data/services/archive?src=...`` (§7.3)."""
    store = ctx.store
    params = form_params(ctx.request)
    srcs = _srcs(ctx)
    if not srcs:
        return error_response(400, "Missing src parameter")
    dest = params.get("dest") or ""
    dparts = [p for p in dest.split("/") if p]
    dvals: dict[str, str] = {}
    names = {"projects": "project", "subjects": "subject", "experiments": "session"}
    for i in range(1 if dparts[:1] == ["archive"] else 0, len(dparts) - 1, 2):
        if dparts[i] in names:
            dvals[names[dparts[i]]] = dparts[i + 1]
    project = dvals.get("project") or params.get("project") or None
    subject = dvals.get("subject") or params.get("subject") or None
    label = dvals.get("session") or params.get("session") or params.get("label") or None
    uris = []
    with Prearchive.for_store(store) as pa:
        for src in srcs:
            s = _open_session(ctx, pa, src)
            target = project or s.project
            row = store.get_project(target) if target != UNASSIGNED else None
            if row is not None and not store.can_read(ctx.user, row.id):
                return error_response(403, f"Access denied to project {target}")
            uris.append(
                archive_session(
                    store,
                    pa,
                    s,
                    project=project,
                    subject=subject,
                    label=label,
                    overwrite=params.get("overwrite"),
                    user=ctx.user.name,
                )
            )
    return uri_list_response(ctx.request, uris)


def _service_batch(ctx: Ctx, op: str) -> Response:
    """``POST /data/services/prearchive/{move,delete,rebuild}?src=..[&newProject=]`` (§7.3);
    answers the affected rows."""
    if op not in ("move", "delete", "rebuild"):
        return error_response(404, f"Unknown prearchive operation {op}")
    params = form_params(ctx.request)
    srcs = _srcs(ctx)
    if not srcs:
        return error_response(400, "Missing src parameter")
    rows = []
    with Prearchive.for_store(ctx.store) as pa:
        sessions = [_open_session(ctx, pa, src) for src in srcs]
        new_project = ""
        if op == "move":
            new_project = _move_target(ctx, params.get("newProject") or "")
        for s in sessions:
            # queued like XNAT's PrearchiveBatch* (``async=false`` is ignored there too): the
            # answer shows QUEUED_*, the session changes a moment later
            rows.append(pa.enqueue(s, op, new_project).row())
    return _table(ctx, rows, PREARC_COLUMNS)


def _move_target(ctx: Ctx, new_project: str) -> str:
    """The destination project's ID; 400/404/403 like ``PrearchiveBatchMove``."""
    if not new_project:
        raise PrearchiveError("Missing newProject parameter")
    if new_project != UNASSIGNED:
        row = ctx.store.get_project(new_project)
        if row is None:
            raise PrearchiveError(f"Unable to find project {new_project}", 404)
        new_project = row.id
    if not _can_access(ctx.store, ctx.user, new_project):
        raise PrearchiveError(f"Access denied to project {new_project}", 403)
    return new_project


# ------------------------------------------------------------------------------------ sessions
def _session_xml(pa: Prearchive, s: PrearcSession) -> bytes:
    """A minimal session document (XNAT serves the prearchive session XML by default)."""
    e = escape
    session_xsi, scan_xsi = xsi_types_for(s.modality)
    elem = {
        "xnat:mrSessionData": "MRSession",
        "xnat:ctSessionData": "CTSession",
        "xnat:petSessionData": "PETSession",
    }.get(session_xsi, "OtherDicomSession")
    scans = []
    for sc in pa.scans(s):
        res = "".join(
            f'<xnat:file xsi:type="xnat:resourceCatalog" label="{e(r)}" format="DICOM" '
            f'content="RAW" file_count="{len(pa.files(s, sc.scan_id, r))}"/>'
            for r in pa.resources(s, sc.scan_id)
        )
        scans.append(
            f'<xnat:scan ID="{e(sc.scan_id)}" type="{e(sc.type)}" UID="{e(sc.uid)}" '
            f'xsi:type="{scan_xsi}"><xnat:series_description>{e(sc.series_description)}'
            f"</xnat:series_description>{res}</xnat:scan>"
        )
    doc = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<xnat:{elem} label="{e(s.name)}" '
        f'project="{e(s.project)}" UID="{e(s.tag)}" xmlns:xnat="http://nrg.wustl.edu/xnat" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<xnat:date>{e(s.scan_date)}</xnat:date><xnat:time>{e(s.scan_time)}</xnat:time>"
        f"<xnat:dcmPatientName>{e(s.subject)}</xnat:dcmPatientName>"
        f"<xnat:subject_ID>{e(s.subject)}</xnat:subject_ID>"
        f"<xnat:scans>{''.join(scans)}</xnat:scans></xnat:{elem}>\n"
    )
    return doc.encode("utf-8")


def _prearchive(ctx: Ctx, segs: list[str]) -> Response:
    """``/data/prearchive[/projects[/P[/TS/FOLDER[/...]]]]`` (§7.1, §7.2)."""
    store, user = ctx.store, ctx.user
    method = ctx.request.method
    if not segs or segs == ["projects"]:
        if method not in ("GET", "HEAD"):
            return error_response(405, "Method Not Allowed")
        with Prearchive.for_store(store) as pa:
            rows = [s.row() for s in pa.list() if _can_access(store, user, s.project)]
        return _table(ctx, rows, PREARC_COLUMNS)
    if segs[0] != "projects":
        return error_response(404, "Not Found")
    project = segs[1]
    if project != UNASSIGNED:
        prow = store.get_project(project)
        if prow is not None:
            project = prow.id
    if not _can_access(store, user, project):
        if project != UNASSIGNED and store.get_project(project) is None:
            return error_response(404, f"Unable to find project {project}")
        return error_response(403, f"Access denied to project {project}")
    if len(segs) == 2:
        if method not in ("GET", "HEAD"):
            return error_response(405, "Method Not Allowed")
        with Prearchive.for_store(store) as pa:
            rows = [s.row() for s in pa.list([project])]
        return _table(ctx, rows, PREARC_COLUMNS)
    if len(segs) == 3:
        return error_response(404, "Unable to find prearchive session")
    with Prearchive.for_store(store) as pa:
        s = pa.require(project, segs[2], segs[3])
        rest = segs[4:]
        if not rest:
            return _session_endpoint(ctx, pa, s)
        if method not in ("GET", "HEAD"):
            return error_response(405, "Method Not Allowed")
        if s.status == RECEIVING:
            # XNAT cannot serve a session still receiving (xnatpy hides them, §7.1)
            return error_response(404, "Session still receiving")
        return _session_subresource(ctx, pa, s, rest)


def _session_action(ctx: Ctx, pa: Prearchive, s: PrearcSession) -> Response:
    """POST/PUT ``?action=``: PrearcSessionResource.handlePost (xnat-web).  build/reset-status
    answer the session's URI as text/uri-list, move the new URI with 301, set-status nothing;
    build and move run synchronously here (only the /services/prearchive/* forms are queued)."""
    params = form_params(ctx.request)
    action = (params.get("action") or "").lower()
    if action in ("build", "rebuild"):
        try:
            pa.build(s)
        except StatusConflict:
            return error_response(409, "session document locked")
        return uri_list_response(ctx.request, [f"/data{s.url}"])
    if action == "reset-status":
        pa.set_status(s, READY)
        return uri_list_response(ctx.request, [f"/data{s.url}"])
    if action == "set-status":
        status = params.get("status") or ""
        if status not in KNOWN_STATUSES:
            return error_response(400, f"Invalid status {status}")
        pa.set_status(s, status)
        return text_response("")
    if action == "move":
        s = pa.move(s, _move_target(ctx, params.get("newProject") or ""))
        resp = uri_list_response(ctx.request, [f"/data{s.url}"])
        resp.status_code = 301
        return resp
    if action in ("commit", "archive"):
        uri = archive_session(
            ctx.store,
            pa,
            s,
            project=params.get("project") or None,
            subject=params.get("subject") or None,
            label=params.get("session") or params.get("label") or None,
            overwrite=params.get("overwrite"),
            user=ctx.user.name,
        )
        return uri_list_response(ctx.request, [uri])
    return error_response(400, f"Unknown action {action or '(none)'}")


def _session_endpoint(ctx: Ctx, pa: Prearchive, s: PrearcSession) -> Response:
    method = ctx.request.method
    if method == "DELETE":
        pa.delete(s)
        return text_response("")
    if method in ("POST", "PUT"):
        return _session_action(ctx, pa, s)
    if method not in ("GET", "HEAD"):
        return error_response(405, "Method Not Allowed")
    f = (ctx.request.args.get("format") or "").lower()
    if f in ("json", "csv", "html"):
        return _table(ctx, [s.row()], PREARC_COLUMNS)
    if f in _ARCHIVE_FORMATS:
        return spooled_archive(list(pa.iter_archive_entries(s)), s.folder, f)
    if s.status == RECEIVING:
        return error_response(404, "Session document not built yet")
    return Response(_session_xml(pa, s), 200, content_type="text/xml; charset=utf-8")


def _resource_rows(
    pa: Prearchive, s: PrearcSession, scan_id: str, labels: list[str], **extra: str
) -> list[dict[str, str]]:
    rows = []
    for r in labels:
        files = pa.files(s, scan_id, r)
        rows.append(
            {
                **extra,
                "label": r,
                "file_count": str(len(files)),
                "file_size": str(sum(f.size for f in files)),
            }
        )
    return rows


def _session_subresource(ctx: Ctx, pa: Prearchive, s: PrearcSession, rest: list[str]) -> Response:
    """``/scans``, ``/scans/S[/resources[/R[/files[/path]]]]``, ``/resources``, ``/logs``."""
    if rest[0] == "logs":
        return text_response("")
    if rest[0] == "resources" and len(rest) == 1:
        rows = [
            row
            for sc in pa.scans(s)
            for row in _resource_rows(
                pa, s, sc.scan_id, pa.resources(s, sc.scan_id), category="scans", cat_id=sc.scan_id
            )
        ]
        return _table(
            ctx,
            rows,
            _SESSION_RESOURCE_COLUMNS,
            {"title": "Resources", "totalRecords": str(len(rows))},
        )
    if rest[0] != "scans":
        return error_response(404, "Not Found")
    scans = pa.scans(s)
    if len(rest) == 1:
        rows = [
            {"ID": sc.scan_id, "series_description": sc.series_description, "type": sc.type}
            for sc in scans
        ]
        return _table(ctx, rows, _SCAN_COLUMNS)
    scan = next((sc for sc in scans if sc.scan_id == rest[1]), None)
    if scan is None:
        return error_response(404, f"Unable to find scan {rest[1]}")
    if len(rest) == 2:
        f = (ctx.request.args.get("format") or "").lower()
        if f in _ARCHIVE_FORMATS:
            return spooled_archive(
                list(pa.iter_archive_entries(s, [scan.scan_id])),
                f"{s.folder}_scan{scan.scan_id}",
                f,
            )
        return _table(
            ctx,
            [
                {
                    "ID": scan.scan_id,
                    "series_description": scan.series_description,
                    "type": scan.type,
                }
            ],
            _SCAN_COLUMNS,
        )
    if rest[2] != "resources":
        return error_response(404, "Not Found")
    resources = pa.resources(s, scan.scan_id)
    if len(rest) == 3:
        return _table(ctx, _resource_rows(pa, s, scan.scan_id, resources), _RESOURCE_COLUMNS)
    if rest[3] not in resources:
        return error_response(404, f"Unable to find resource {rest[3]}")
    return _resource_files(ctx, pa, s, scan.scan_id, rest[3], rest[4:])


def _resource_files(
    ctx: Ctx, pa: Prearchive, s: PrearcSession, scan_id: str, res: str, rest: list[str]
) -> Response:
    """``.../scans/S/resources/R[/files[/path]]``: the resource row, its files, one file."""
    files = pa.files(s, scan_id, res)
    if not rest or rest == ["files"]:
        f = (ctx.request.args.get("format") or "").lower()
        if f in _ARCHIVE_FORMATS:
            entries = [(f"{scan_id}/{res}/{x.relpath}", x.path) for x in files]
            return spooled_archive(entries, f"{s.folder}_scan{scan_id}_{res}", f)
        if not rest:
            return _table(ctx, _resource_rows(pa, s, scan_id, [res]), _RESOURCE_COLUMNS)
        base = f"/data{s.url}"
        rows = [
            {
                "Name": x.relpath.rsplit("/", 1)[-1],
                "Size": str(x.size),
                "URI": f"{base}/scans/{scan_id}/resources/{res}/files/{x.relpath}",
            }
            for x in files
        ]
        return _table(ctx, rows, _FILE_COLUMNS, {"title": "Files"})
    if rest[0] != "files":
        return error_response(404, "Not Found")
    relpath = "/".join(rest[1:])
    hit = next((x for x in files if x.relpath == relpath), None)
    if hit is None:
        return error_response(404, "Unable to find file.")
    return file_response(ctx.request, hit.path, hit.path.name, PREARCHIVE_FILE_TYPES)


__all__ = ["handle"]
