"""Single archive objects: GET as a document or download, PUT/POST create or modify, DELETE;
plus the project's ``prearchive_code`` (§1.3, §4.1-§4.4, §6).  One create function per kind."""

from __future__ import annotations

import re
from typing import Callable, Optional

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from . import formats
from . import prearchive_code as prearchive_codes
from .documents import ItemBuilder, catalog_xml, item_xml, resource_item
from .files import all_files, archive_name, archive_of
from .resolve import (
    LABEL_RE,
    NOT_FOUND,
    RESOURCE_LABEL_RE,
    SCAN_ID_RE,
    Chain,
    Resolved,
    check_project,
    resolve,
)
from .serving import Ctx, HttpError, json_response, text_response
from .store import Conflict, UserRow

#: query parameters of a PUT that are never data fields
_NOT_FIELDS = {
    "xsiType",
    "req_format",
    "format",
    "event_reason",
    "event_type",
    "event_action",
    "triggerPipelines",
    "pullDataFromHeaders",
    "fixScanTypes",
    "allowDataDeletion",
    "removeFiles",
    "inbody",
    "overwrite",
    "_",
    "ID",
    "label",
    "project",
}


# ------------------------------------------------------------------------------------ GET
def get_object(ctx: Ctx, kind: str, r: Resolved) -> Response:
    request, st = ctx.request, ctx.store
    fmt = (request.args.get("format") or "xml").lower()
    if kind == "resource":
        assert r.resources is not None
        res = r.resources[0]
        if fmt == "json":
            return json_response({"items": [resource_item(ctx.config.data_dir, res)]})
        return Response(catalog_xml(st, res, ctx.config.checksums), content_type="text/xml")
    item = ItemBuilder(st, ctx.config.data_dir).item(kind, r)
    if fmt == "json":
        return json_response({"items": [item]})
    if fmt == "xml":
        return Response(item_xml(item), content_type="text/xml")
    if fmt == "html":
        return Response(
            formats.resultset_html([item["data_fields"]], list(item["data_fields"].keys())),
            content_type="text/html",
        )
    if fmt in ("zip", "tar", "tar.gz"):
        return archive_of(ctx, all_files(st, kind, r), fmt, archive_name(kind, r))
    raise HttpError(400, f"Unsupported format: {fmt}")


def status(ctx: Ctx, chain: Chain) -> Response:
    resolve(ctx.store, chain.links, ctx.user, False)
    return text_response("active")


def prearchive_code(ctx: Ctx, chain: Chain) -> Response:
    """``GET`` the bare integer as text; ``PUT .../prearchive_code/CODE`` sets it (§6)."""
    method = ctx.request.method
    if method in ("GET", "HEAD") and chain.extra_arg is None:
        r = resolve(ctx.store, chain.links, ctx.user, False)
        assert r.project is not None
        return text_response(str(prearchive_codes.get(ctx.store, r.project.id)))
    if method in ("PUT", "POST") and chain.extra_arg is not None:
        r = resolve(ctx.store, chain.links, ctx.user, True)
        assert r.project is not None
        try:
            code = prearchive_codes.parse(chain.extra_arg)
        except ValueError:
            raise HttpError(400, f"Invalid prearchive code: {chain.extra_arg}") from None
        prearchive_codes.set_code(ctx.store, r.project.id, code)
        return text_response("")
    raise HttpError(405, "Method Not Allowed")


# ------------------------------------------------------------------------------------ create
def _fields_from_query(args: MultiDict[str, str]) -> dict[str, str]:
    """``xnat:subjectData/gender=x``, ``gender=x`` and ``.../fields/field[name=foo]/field=bar``."""
    out: dict[str, str] = {}
    for k, v in args.items():
        key = k
        if "/" in key and ":" in key.split("/", 1)[0]:
            key = key.split("/", 1)[1]
        m = re.match(r"^fields/field\[name=([^\]]+)\]/field$", key)
        if m:
            out[m.group(1)] = v
            continue
        if key in _NOT_FIELDS or "/" in key:
            if key in ("label", "ID", "project") and k != key:
                out["__" + key] = v
            continue
        out[key] = v
    return out


class _Create:
    """One PUT/POST of a single object: the parsed query, then one method per kind."""

    def __init__(self, ctx: Ctx, key: str, parent: Resolved) -> None:
        self.ctx = ctx
        self.st = ctx.store
        self.user: UserRow = ctx.user
        self.key = key
        self.parent = parent
        args = ctx.request.args
        self.xsi: Optional[str] = args.get("xsiType") or args.get("xsitype")
        self.fields = _fields_from_query(args)
        self.rename = args.get("label") or self.fields.pop("__label", None)
        self.fields.pop("__ID", None)
        self.fields.pop("__project", None)

    def _keep(
        self, kind: str, oid: str, project: Optional[str] = None, label: str = ""
    ) -> Response:
        """An object that exists: relabelled (``label=`` with ``project``), fields merged; 200."""
        if project is not None and self.rename and self.rename != label:
            _rename(self.ctx, kind, oid, project, self.rename)
        if self.fields:
            self.st.update_fields(kind, oid, self.fields)
        return text_response(oid, 200)

    def project(self) -> Response:
        st, key, fields, user = self.st, self.key, self.fields, self.user
        if self.parent.project is not None:
            raise HttpError(404, NOT_FOUND)
        existing = st.get_project(key)
        if existing is not None:
            check_project(st, existing, user, True)
            return self._keep("project", existing.id)
        if not LABEL_RE.match(key):
            raise HttpError(
                400,
                f"Invalid project ID '{key}': IDs may contain only letters, digits, '_' and '-'.",
            )
        st.create_project(
            key,
            name=fields.pop("name", key),
            description=fields.pop("description", ""),
            secondary_id=fields.pop("secondary_ID", key),
            fields=fields,
            user=user.name,
        )
        if not user.admin:
            st.add_member(user.name, key)
        return text_response(key, 201)

    def resource(self) -> Response:
        return create_resource(self.ctx, self.parent, self.key)

    def subject(self) -> Response:
        st, key, fields, parent = self.st, self.key, self.fields, self.parent
        if parent.project is None or parent.experiment is not None:
            raise HttpError(
                404 if parent.project else 400,
                "Subjects are created below /data/projects/{P}/subjects.",
            )
        s = st.find_subject(parent.project.id, key)
        if s is not None:
            return self._keep("subject", s.id, parent.project.id, s.label)
        if not LABEL_RE.match(key):
            raise HttpError(
                400,
                f"Invalid subject label '{key}': labels may contain only "
                "letters, digits, '_' and '-'.",
            )
        sid, created = st.create_subject(parent.project.id, key, fields, user=self.user.name)
        return text_response(sid, 201 if created else 200)

    def _modify_experiment_by_id(self) -> Response:
        """/data/experiments/{ID}: only an existing experiment can be modified."""
        e = self.st.get_experiment(self.key)
        if e is None:
            raise HttpError(404, f"Unable to find experiment {self.key}.")
        p = self.st.get_project(e.project)
        assert p is not None
        check_project(self.st, p, self.user, True)
        return self._keep("experiment", e.id)

    def experiment(self) -> Response:
        st, key, fields, parent, xsi = self.st, self.key, self.fields, self.parent, self.xsi
        if parent.project is None:
            return self._modify_experiment_by_id()
        e = st.find_experiment(parent.project.id, key)
        if e is not None and not e.session_id:
            return self._keep("experiment", e.id, parent.project.id, e.label)
        if e is not None:
            raise HttpError(
                409, f"Label {key} is already used by an assessor in project {parent.project.id}."
            )
        if not xsi:
            raise HttpError(417, "Need PUT Contents")
        if not LABEL_RE.match(key):
            raise HttpError(
                400,
                f"Invalid experiment label '{key}': labels may contain only "
                "letters, digits, '_' and '-'.",
            )
        subject = parent.subject.id if parent.subject else fields.pop("subject_ID", None)
        if subject is None:
            raise HttpError(400, "An experiment needs a subject (subject_ID).")
        if (
            parent.subject is None
            and st.find_subject(parent.project.id, subject) is None
            and not LABEL_RE.match(subject)
        ):
            raise HttpError(400, f"Invalid subject label '{subject}'.")
        try:
            eid, created = st.create_experiment(
                parent.project.id, subject, key, xsi, fields, user=self.user.name
            )
        except Conflict as ex:
            raise HttpError(409, str(ex)) from None
        return text_response(eid, 201 if created else 200)

    def scan(self) -> Response:
        st, key, fields, parent, xsi = self.st, self.key, self.fields, self.parent, self.xsi
        if parent.experiment is None or parent.scans is not None:
            raise HttpError(404, NOT_FOUND)
        existing = st.get_scan(parent.experiment.id, key)
        if existing is not None:
            if self.ctx.request.method == "POST":
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

    def assessor(self) -> Response:
        st, key, fields, parent, xsi = self.st, self.key, self.fields, self.parent, self.xsi
        if parent.experiment is None or parent.scans is not None:
            raise HttpError(404, NOT_FOUND)
        a = st.find_assessor(parent.experiment.id, key)
        if a is not None:
            return self._keep("assessor", a.id)
        if not xsi:
            raise HttpError(417, "Need PUT Contents")
        if not LABEL_RE.match(key):
            raise HttpError(
                400,
                f"Invalid assessor label '{key}': labels may contain only "
                "letters, digits, '_' and '-'.",
            )
        try:
            aid, created = st.create_assessor(
                parent.experiment.id, key, xsi, fields, user=self.user.name
            )
        except Conflict as ex:
            raise HttpError(409, str(ex)) from None
        return text_response(aid, 201 if created else 200)

    def reconstruction(self) -> Response:
        raise HttpError(501, "Reconstructions are not supported by the emulator.")


def create(ctx: Ctx, kind: str, key: str, parent: Resolved) -> Response:
    job = _Create(ctx, key, parent)
    steps: dict[str, Callable[[], Response]] = {
        "project": job.project,
        "resource": job.resource,
        "subject": job.subject,
        "experiment": job.experiment,
        "scan": job.scan,
        "assessor": job.assessor,
        "reconstruction": job.reconstruction,
    }
    step = steps.get(kind)
    if step is None:
        raise HttpError(405, "Method Not Allowed")
    return step()


def _rename(ctx: Ctx, kind: str, oid: str, project: str, new: str) -> None:
    st = ctx.store
    if not LABEL_RE.match(new):
        raise HttpError(400, f"Invalid label '{new}'.")
    finder = st.find_subject if kind == "subject" else st.find_experiment
    if finder(project, new) is not None:
        raise HttpError(409, f"Label {new} is already used in project {project}.")
    st.relabel(kind, oid, new)


def create_resource(ctx: Ctx, parent: Resolved, label: str) -> Response:
    parents = parent.parents()
    if (
        parent.resources is not None
        or len(parents) != 1
        or (parent.scans is not None and len(parent.scans) != 1)
    ):
        raise HttpError(400, "A resource is created below exactly one object.")
    if not RESOURCE_LABEL_RE.match(label):
        raise HttpError(400, f"Invalid resource label '{label}'.")
    args = ctx.request.args
    # format= here is the resource's format attribute, not the response type (§4.4, §10.7)
    _rid, created = ctx.store.create_resource(
        parents[0],
        label,
        args.get("format", ""),
        args.get("content", ""),
        args.get("tags", ""),
        args.get("description", ""),
    )
    if not created:
        raise HttpError(409, "Specified resource already exists.")
    return text_response("", 200)


# ------------------------------------------------------------------------------------ delete
def delete(ctx: Ctx, kind: str, r: Resolved) -> Response:
    st = ctx.store
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


def delete_resources(ctx: Ctx, links: list[tuple[str, str]], key: str) -> Response:
    """DELETE of a resource that does not exist is a silent 200 (§4.4, §10.19)."""
    parent = resolve(ctx.store, links, ctx.user, True)
    for p in parent.parents():
        for k in key.split(","):
            res = ctx.store.find_resource(p, k)
            if res is not None:
                ctx.store.delete_resource(res.id)
    return text_response("")
