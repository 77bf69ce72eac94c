"""``.../files[/path]`` below any archive object: file listings, single files, deletes and the
zip/tar downloads of whole objects (§1.8, §3.1, §3.3, §4.5).  Uploads are in ``uploads.py``."""

from __future__ import annotations

import fnmatch
import re

from werkzeug.wrappers import Response

from . import uploads
from .documents import catalog_xml
from .resolve import RESOURCE_LABEL_RE, Chain, Resolved, resolve
from .serving import (
    Ctx,
    HttpError,
    archive_response,
    file_response,
    response_format,
    text_response,
    truthy,
)
from .store import FileRow, InvalidInput, ResourceRow, Store, validate_relpath

FILE_COLUMNS = [
    "Name",
    "Size",
    "URI",
    "collection",
    "file_tags",
    "file_format",
    "file_content",
    "cat_ID",
    "digest",
]

ARCHIVE_FORMATS = ("zip", "tar", "tar.gz", "tgz")


def files(ctx: Ctx, chain: Chain) -> Response:
    """Route a files path by method (GET/HEAD listing or file, PUT/POST upload, DELETE)."""
    method = ctx.request.method
    write = method in ("PUT", "POST", "DELETE")
    links = chain.links
    relpath = chain.files or ""
    if links and links[-1][0] == "resource" and method in ("PUT", "POST"):
        r = _upload_target(ctx, links)
    else:
        r = resolve(ctx.store, links, ctx.user, write)
    if r.resources is None:
        if write:
            raise HttpError(
                400, "Files are uploaded into a resource: .../resources/{label}/files/{path}."
            )
        resources = [res for p in r.parents() for res in ctx.store.list_resources(p)]
    else:
        resources = r.resources
    if method in ("GET", "HEAD"):
        if relpath and not chain.files_dir:
            return file_get(ctx, resources, relpath)
        return file_listing(ctx, r, resources, relpath if chain.files_dir else "")
    if method in ("PUT", "POST"):
        if len(resources) != 1:
            raise HttpError(400, "Uploads go to exactly one resource.")
        return uploads.upload(ctx, resources[0], relpath)
    if method == "DELETE":
        return file_delete(ctx.store, resources, relpath, chain.files_dir)
    raise HttpError(405, "Method Not Allowed")


def _upload_target(ctx: Ctx, links: list[tuple[str, str]]) -> Resolved:
    """The resource(s) an upload names; uploading to a missing label creates it (§4.5, §10.4)."""
    st, args = ctx.store, ctx.request.args
    parent = resolve(st, links[:-1], ctx.user, True)
    label = links[-1][1]
    resources: list[ResourceRow] = []
    for p in parent.parents():
        for k in label.split(","):
            res = st.find_resource(p, k)
            if res is not None:
                resources.append(res)
    if not resources:
        if not RESOURCE_LABEL_RE.match(label) or len(parent.parents()) != 1:
            raise HttpError(400, f"Invalid resource label '{label}'.")
        rid, _ = st.create_resource(
            parent.parents()[0],
            label,
            args.get("format", ""),
            args.get("content", ""),
            args.get("tags", ""),
        )
        created = st.get_resource(rid)
        assert created is not None
        resources = [created]
    parent.resources = resources
    return parent


def _file_uri(store: Store, r: Resolved, res: ResourceRow, relpath: str) -> str:
    """``<baseURI>/resources/<numeric id>/files/<relpath>`` built from IDs (§1.8)."""
    if res.kind == "scan":
        base = f"/data/experiments/{res.experiment_id}/scans/{res.scan_id}"
    elif res.kind == "assessor":
        base = f"/data/experiments/{res.experiment_id}/assessors/{res.assessor_id}/out"
    elif res.kind == "experiment":
        if r.via_project:
            if r.subject:
                subj = r.subject.id
            else:
                experiment = store.get_experiment(res.experiment_id) or r.experiment
                assert experiment is not None  # the resource's experiment exists
                subj = experiment.subject_id
            base = f"/data/projects/{res.project}/subjects/{subj}/experiments/{res.experiment_id}"
        else:
            base = f"/data/experiments/{res.experiment_id}"
    elif res.kind == "subject":
        base = f"/data/projects/{res.project}/subjects/{res.subject_id}"
    else:
        base = f"/data/projects/{res.project}"
    # The relative path is written as stored (not percent-encoded), like XNAT's FileList.
    return f"{base}/resources/{res.id}/files/{relpath}"


def file_listing(ctx: Ctx, r: Resolved, resources: list[ResourceRow], prefix: str) -> Response:
    request, st = ctx.request, ctx.store
    fmt = response_format(request)
    items = [(res, f) for res in resources for f in st.list_files(res.id, prefix)]
    if prefix and not items:
        raise HttpError(404, "Unable to find file.")
    ff, fc = request.args.get("file_format"), request.args.get("file_content")
    if ff:
        items = [(res, f) for res, f in items if fnmatch.fnmatchcase(f.format, ff)]
    if fc:
        items = [(res, f) for res, f in items if fnmatch.fnmatchcase(f.content, fc)]
    if fmt in ARCHIVE_FORMATS:
        return archive_of(ctx, items, fmt, archive_name(r.deepest_kind(), r))
    if fmt == "xcat":
        if len(resources) != 1:
            raise HttpError(400, "format=xcat needs one resource")
        catalog = catalog_xml(st, resources[0], ctx.config.checksums)
        return Response(catalog, content_type="text/xml")
    rows = []
    for res, f in items:
        rows.append(
            {
                "Name": f.name,
                "Size": str(f.size),
                "URI": _file_uri(st, r, res, f.relpath),
                "collection": res.label,
                "file_tags": f.tags,
                "file_format": f.format,
                "file_content": f.content,
                "cat_ID": str(res.id),
                "digest": f.md5 if ctx.config.checksums else "",
            }
        )
    props = [{"key": "URI", "serverRoot": ctx.config.context_path}]
    return ctx.resultset(
        rows, FILE_COLUMNS, {"title": "Files"}, honour_columns=False, column_props=props
    )


def file_get(ctx: Ctx, resources: list[ResourceRow], relpath: str) -> Response:
    try:
        relpath = validate_relpath(relpath)
    except InvalidInput:
        raise HttpError(404, "Unable to find file.") from None
    for res in resources:
        f = ctx.store.get_file(res.id, relpath)
        if f is not None:
            return file_response(ctx.request, ctx.store.file_path(res.id, relpath), f.name)
    if truthy(ctx.request.args.get("accept-not-found")):
        return Response(b"", status=204)
    raise HttpError(404, "Unable to find file.")


def file_delete(store: Store, resources: list[ResourceRow], relpath: str, is_dir: bool) -> Response:
    n = 0
    for res in resources:
        if not relpath:
            continue
        if is_dir:
            n += store.delete_files_under(res.id, relpath)
        elif any(ch in relpath for ch in "*?["):
            for f in store.list_files(res.id):
                if fnmatch.fnmatchcase(f.relpath, relpath):
                    n += store.delete_file(res.id, f.relpath)
        else:
            n += store.delete_file(res.id, relpath)
            if not n:
                n += store.delete_files_under(res.id, relpath)
    if n == 0:
        raise HttpError(404, "File missing")
    return text_response("")


# ------------------------------------------------------------------------------------ downloads
def archive_name(kind: str, r: Resolved) -> str:
    if kind in ("experiment", "scan", "resource") and r.experiment is not None:
        return r.experiment.label
    if kind == "assessor" and r.assessor is not None:
        return r.assessor.label
    if kind == "subject" and r.subject is not None:
        return r.subject.label
    return r.project.id if r.project else "download"


def all_files(store: Store, kind: str, r: Resolved) -> list[tuple[ResourceRow, FileRow]]:
    if kind == "experiment" and r.experiment is not None:
        resources = store.list_resources_under_experiment(r.experiment.id)
    else:
        resources = [res for p in r.parents() for res in store.list_resources(p)]
    return [(res, f) for res in resources for f in store.list_files(res.id)]


def _archive_prefix(st: Store, res: ResourceRow) -> str:
    """XNAT's default zip layout (§3.3): the folder of a resource's files in the archive."""
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


def archive_of(ctx: Ctx, items: list[tuple[ResourceRow, FileRow]], fmt: str, name: str) -> Response:
    """The files ``items`` as one streamed archive in XNAT's folder layout."""
    st = ctx.store
    prefixes: dict = {}  # once per resource, not per file (two queries each)
    entries = []
    for res, f in items:
        if res.id not in prefixes:
            prefixes[res.id] = _archive_prefix(st, res)
        entries.append((prefixes[res.id] + f.relpath, st.file_path(res.id, f.relpath), f))
    return archive_response(ctx.request, entries, fmt, name)
