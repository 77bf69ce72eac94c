"""Collection listings of the archive (``.../projects``, ``/subjects``, ``/experiments``,
``/scans``, ``/assessors``, ``/resources``) and the search-element tables, as XNAT ResultSets
(§1.2, §1.7): one row builder and one listing function per collection."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from werkzeug.wrappers import Response

from . import formats
from .resolve import NOT_FOUND, Resolved
from .serving import Ctx, HttpError, truthy
from .store import ExperimentRow, ResourceRow, ScanRow, Store, SubjectRow
from .xsd import ELEMENT_NAMES

RESOURCE_COLUMNS = [
    "xnat_abstractresource_id",
    "label",
    "element_name",
    "category",
    "cat_id",
    "cat_desc",
    "file_count",
    "file_size",
    "tags",
    "content",
    "format",
]


# ------------------------------------------------------------------------------------ rows
def subject_row(s: SubjectRow) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ID": s.id,
        "project": s.project,
        "label": s.label,
        "insert_date": formats.java_timestamp(s.insert_date),
        "insert_user": s.insert_user,
        "URI": f"/data/subjects/{s.id}",
        "xsiType": "xnat:subjectData",
        "last_modified": formats.java_timestamp(s.last_modified, 6),
    }
    for k in ("gender", "handedness", "dob", "yob", "group", "src", "initials", "age"):
        row[k] = s.fields.get(k, "")
    return row


def experiment_row(store: Store, e: ExperimentRow) -> dict[str, Any]:
    subj = store.get_subject(e.subject_id)
    row: dict[str, Any] = {
        "ID": e.id,
        "label": e.label,
        "project": e.project,
        "date": e.date,
        "xsiType": e.xsi_type,
        "insert_date": formats.java_timestamp(e.insert_date),
        "insert_user": e.insert_user,
        "URI": f"/data/experiments/{e.id}",
        "last_modified": formats.java_timestamp(e.last_modified, 6),
        "subject_ID": e.subject_id,
        "subject_label": subj.label if subj else "",
        "subject_project": subj.project if subj else "",
        "time": e.fields.get("time", ""),
        "modality": e.fields.get("modality", ""),
        "UID": e.fields.get("UID", ""),
        "xnat:subjectassessordata/id": e.id,
    }
    if e.session_id:
        sess = store.get_experiment(e.session_id)
        row.update(
            {
                "session_ID": e.session_id,
                "session_label": sess.label if sess else "",
                "xnat:imageassessordata/id": e.id,
                "URI": f"/data/experiments/{e.session_id}/assessors/{e.id}",
            }
        )
    return row


def scan_row(s: ScanRow) -> dict[str, Any]:
    return {
        "xnat_imagescandata_id": str(s.pk),
        "ID": s.id,
        "type": s.type,
        "quality": s.quality,
        "xsiType": s.xsi_type,
        "note": s.note,
        "series_description": s.series_description,
        "URI": f"/data/experiments/{s.experiment_id}/scans/{s.id}",
        "insert_date": formats.java_timestamp(s.insert_date),
        "last_modified": formats.java_timestamp(s.last_modified, 6),
        "frames": s.fields.get("frames", ""),
        "UID": s.fields.get("UID", ""),
        "modality": s.fields.get("modality", ""),
    }


def resource_row(store: Store, res: ResourceRow, all_flag: bool = False) -> dict[str, Any]:
    category, cat_id, cat_desc = "resources", "", ""
    if res.kind == "scan":
        scan = store.get_scan(res.experiment_id, res.scan_id)
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
    return {
        "xnat_abstractresource_id": str(res.id),
        "label": res.label,
        "element_name": "xnat:resourceCatalog",
        "category": category,
        "cat_id": cat_id,
        "cat_desc": cat_desc,
        "file_count": str(res.file_count),
        "file_size": str(res.file_size),
        "tags": res.tags,
        "content": res.content,
        "format": res.format,
    }


# ------------------------------------------------------------------------------------ listings
def _projects(ctx: Ctx, r: Resolved) -> Response:
    if r.project is not None:
        raise HttpError(404, NOT_FOUND)
    st = ctx.store
    rows = []
    for p in st.list_projects():
        if not st.can_read(ctx.user, p.id):
            continue
        rows.append(
            {
                "ID": p.id,
                "secondary_ID": p.secondary_id,
                "name": p.name,
                "description": p.description,
                "pi_firstname": p.pi_firstname,
                "pi_lastname": p.pi_lastname,
                "URI": f"/data/projects/{p.id}",
                "xsiType": "xnat:projectData",
                "insert_date": formats.java_timestamp(p.insert_date),
                "insert_user": p.insert_user,
                "last_modified": formats.java_timestamp(p.last_modified, 6),
            }
        )
    cols = ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"]
    return ctx.resultset(rows, cols, {"totalRecords": "0", "title": "Projects"})


def _subjects(ctx: Ctx, r: Resolved) -> Response:
    if r.subject is not None or r.experiment is not None:
        raise HttpError(404, NOT_FOUND)
    st = ctx.store
    if r.project is not None:
        subjects = st.list_subjects(r.project.id)
    else:
        subjects = [s for pid in st.accessible_projects(ctx.user) for s in st.list_subjects(pid)]
    rows = [subject_row(s) for s in subjects]
    cols = ["ID", "project", "label", "insert_date", "insert_user", "URI"]
    return ctx.resultset(rows, cols, {"totalRecords": "0"})


def _experiments(ctx: Ctx, r: Resolved) -> Response:
    if r.experiment is not None:
        raise HttpError(404, NOT_FOUND)
    st, args = ctx.store, ctx.request.args
    if r.project is not None:
        exps = st.list_experiments(r.project.id, r.subject.id if r.subject else None)
        title: dict[str, str] = {}
    else:
        wanted = args.get("project")
        pids = [p for p in st.accessible_projects(ctx.user)]
        exps = [e for pid in pids for e in st.list_experiments(pid)]
        title = {"title": "Matching experiments"}
        if wanted:
            pats = wanted.split(",")
            exps = [e for e in exps if any(fnmatch.fnmatchcase(e.project, p) for p in pats)]
    xsi = args.get("xsiType")
    rows = [experiment_row(st, e) for e in exps]
    id_col = "xnat:subjectassessordata/id"
    if xsi:
        rows = [x for x in rows if fnmatch.fnmatchcase(x["xsiType"].lower(), xsi.lower())]
        id_col = f"{xsi.lower()}/id"
        for x in rows:
            x[id_col] = x["ID"]
    cols = [id_col, "ID", "project", "date", "xsiType", "label", "insert_date", "URI"]
    # XNAT adds these to experiment listings even when columns= omits them (§1.2).
    return ctx.resultset(
        rows,
        cols,
        dict({"totalRecords": "0"}, **title),
        extra_when_columns=("xsiType", id_col, "project"),
    )


def _scans(ctx: Ctx, r: Resolved) -> Response:
    if r.experiment is None or r.scans is not None:
        raise HttpError(404, NOT_FOUND)
    rows = [scan_row(s) for s in ctx.store.list_scans(r.experiment.id)]
    cols = [
        "xnat_imagescandata_id",
        "ID",
        "type",
        "quality",
        "xsiType",
        "note",
        "series_description",
        "URI",
    ]
    return ctx.resultset(rows, cols, {"totalRecords": "0"})


def _assessors(ctx: Ctx, r: Resolved) -> Response:
    if r.experiment is None or r.scans is not None or r.assessor is not None:
        raise HttpError(404, NOT_FOUND)
    rows = [experiment_row(ctx.store, a) for a in ctx.store.list_assessors(r.experiment.id)]
    cols = [
        "xnat:imageassessordata/id",
        "ID",
        "project",
        "date",
        "xsiType",
        "label",
        "insert_date",
        "session_ID",
        "session_label",
        "URI",
    ]
    return ctx.resultset(
        rows,
        cols,
        {"totalRecords": "0"},
        extra_when_columns=("xsiType", "xnat:imageassessordata/id", "project"),
    )


def _reconstructions(ctx: Ctx, r: Resolved) -> Response:
    cols = ["xnat_reconstructedimagedata_id", "ID", "type", "baseScanType", "URI"]
    return ctx.resultset([], cols, {"totalRecords": "0"})


def _resources(ctx: Ctx, r: Resolved) -> Response:
    if r.resources is not None:
        raise HttpError(404, NOT_FOUND)
    st = ctx.store
    all_flag = (
        truthy(ctx.request.args.get("all"))
        and r.experiment is not None
        and r.scans is None
        and r.assessor is None
    )
    if all_flag:
        assert r.experiment is not None
        resources = st.list_resources_under_experiment(r.experiment.id)
    else:
        resources = [res for p in r.parents() for res in st.list_resources(p)]
    rows = [resource_row(st, res, all_flag) for res in resources]
    # Fixed table: columns= is not honoured (§1.7).
    return ctx.resultset(
        rows, RESOURCE_COLUMNS, {"title": "Resources", "totalRecords": "0"}, honour_columns=False
    )


LISTINGS: dict[str, Callable[[Ctx, Resolved], Response]] = {
    "project": _projects,
    "subject": _subjects,
    "experiment": _experiments,
    "scan": _scans,
    "assessor": _assessors,
    "reconstruction": _reconstructions,
    "resource": _resources,
}


def listing(ctx: Ctx, coll: str, r: Resolved) -> Response:
    handler = LISTINGS.get(coll)
    if handler is None:
        raise HttpError(404, NOT_FOUND)
    return handler(ctx, r)


# ------------------------------------------------------------------------------------ search
def search(ctx: Ctx, segs: list[str]) -> Response:
    """``/data/search/elements[/{element}]``: the element counts and their fields."""
    if segs[:1] != ["elements"]:
        raise HttpError(404, NOT_FOUND)
    st = ctx.store
    if len(segs) == 1:
        counts: dict[str, int] = {"xnat:projectData": 0, "xnat:subjectData": 0}
        for pid in st.accessible_projects(ctx.user):
            counts["xnat:projectData"] += 1
            counts["xnat:subjectData"] += len(st.list_subjects(pid))
            for e in st.list_experiments(pid):
                counts[e.xsi_type] = counts.get(e.xsi_type, 0) + 1
        rows = []
        for name, n in counts.items():
            singular, plural = ELEMENT_NAMES.get(name, (name, name + "s"))
            rows.append(
                {
                    "ELEMENT_NAME": name,
                    "SINGULAR": singular,
                    "PLURAL": plural,
                    "SECURED": "true",
                    "COUNT": str(n),
                }
            )
        cols = ["ELEMENT_NAME", "SINGULAR", "PLURAL", "SECURED", "COUNT"]
        return ctx.resultset(rows, cols, {"totalRecords": str(len(rows))}, honour_columns=False)
    el = segs[1]
    fields = {
        "xnat:projectData": ["ID", "NAME", "DESCRIPTION"],
        "xnat:subjectData": ["SUBJECT_ID", "LABEL", "PROJECT", "INSERT_DATE"],
    }
    if el not in fields and el not in ELEMENT_NAMES:
        raise HttpError(404, f"Unknown element {el}")
    rows = [
        {
            "FIELD_ID": f,
            "HEADER": f.title(),
            "SUMMARY": f,
            "TYPE": "string",
            "REQUIRES_VALUE": "false",
            "DESC": "",
            "ELEMENT_NAME": el,
            "SRC": "0",
        }
        for f in fields.get(el, ["EXPT_ID", "LABEL", "DATE", "PROJECT"])
    ]
    cols = [
        "FIELD_ID",
        "HEADER",
        "SUMMARY",
        "TYPE",
        "REQUIRES_VALUE",
        "DESC",
        "ELEMENT_NAME",
        "SRC",
    ]
    return ctx.resultset(rows, cols, {"totalRecords": str(len(rows))}, honour_columns=False)
