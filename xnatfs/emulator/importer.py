"""The import service ``POST /data/services/import`` (``docs/XNAT-API.md`` §6).

A zip (or tar/tar.gz) of DICOM becomes one session per StudyInstanceUID; each series becomes a
scan (ID = SeriesNumber, type = SeriesDescription) with a ``DICOM`` resource.  Where it lands is
chosen by ``dest``:

* ``/prearchive`` or ``/prearchive/projects/P``: a READY prearchive session; the answer is its
  ``/data/prearchive/projects/P/TS/FOLDER`` URI.
* no ``dest``: the project's prearchive setting (``prearchive_code.py``): a fresh project
  auto-archives (code 4), code 0 keeps the session in the prearchive; an unknown or missing
  project lands in the Unassigned prearchive.
* ``/archive`` or ``/archive/projects/P[/subjects/S[/experiments/E]]``: an archived experiment,
  written directly with ``Direct-Archive=true``, otherwise staged in the prearchive and archived
  at once (so a label clash leaves a CONFLICT entry there, as on XNAT).

Why parse before writing: the whole upload is parsed into a staging folder first; only a fully
parsed upload touches the prearchive or the archive, so a corrupt zip (400) leaves nothing behind.

``import-handler=gradual-DICOM`` takes one DICOM file per request and appends it to the
prearchive session of its study, which stays RECEIVING until it has been idle for a while (or
``POST ...?action=build``), like XNAT's DICOM receiver.

Labels follow XNAT's default DICOM identifier: project from ``project``/``PROJECT_ID`` (else
Unassigned), subject from ``subject``/``SUBJECT_ID`` else PatientName, session from
``session``/``EXPT_LABEL`` else PatientID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from werkzeug.wrappers import Request, Response

from . import prearchive_code
from .dicom import ParsedStudy, ParsedUpload, UploadError, extract_dicom_archive, sniff_format
from .prearchive import (
    UNASSIGNED,
    ArchiveConflict,
    Prearchive,
    PrearchiveError,
    ScanContent,
    SessionContent,
    archive_session,
    archive_uri,
    normalise_overwrite,
    safe_segment,
    write_session,
)
from .serving import Ctx, error_response, uri_list_response
from .store import Store

log = logging.getLogger(__name__)

HANDLERS = ("DICOM-zip", "gradual-DICOM")
#: handlers XNAT has but the emulator does not implement (answered 400 with a clear message)
UNSUPPORTED_HANDLERS = ("SI", "XAR", "inbox", "blank")


class ImportFailed(Exception):
    """Answered with ``status`` and ``message`` as the error page's ``<h3>``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _truthy(value: Optional[str]) -> bool:
    """XNAT's isQueryVariableTrue: anything but false/0 (and absent) is true (§1.2)."""
    return value is not None and value.strip().lower() not in ("false", "0", "")


@dataclass
class ImportParams:
    handler: str = "DICOM-zip"
    project: Optional[str] = None
    subject: Optional[str] = None
    session: Optional[str] = None
    dest: str = ""
    overwrite: str = "none"
    direct_archive: bool = False
    ignore_unparsable: bool = False
    src: Optional[str] = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> "ImportParams":
        """From the merged query and form parameters (the names XNAT accepts, §6)."""

        def first(*names: str) -> Optional[str]:
            for n in names:
                v = values.get(n)
                if v not in (None, ""):
                    return v
            return None

        handler = first("import-handler", "import_handler", "handler") or "DICOM-zip"
        try:
            overwrite = normalise_overwrite(first("overwrite"))
        except PrearchiveError as exc:
            raise ImportFailed(400, str(exc)) from exc
        return cls(
            handler=handler,
            project=first("project", "PROJECT_ID"),
            subject=first("subject", "SUBJECT_ID"),
            session=first("session", "EXPT_LABEL", "experiment"),
            dest=first("dest") or "",
            overwrite=overwrite,
            direct_archive=_truthy(first("Direct-Archive", "direct-archive", "Direct_Archive")),
            ignore_unparsable=_truthy(first("Ignore-Unparsable", "ignore-unparsable")),
            src=first("src"),
        )


@dataclass
class Destination:
    kind: str  # "prearchive" | "archive"
    project: Optional[str] = None
    subject: Optional[str] = None
    session: Optional[str] = None


def parse_dest(dest: str, params: ImportParams) -> Destination:
    """``dest`` plus the project/subject/session parameters (path components win)."""
    parts = [p for p in (dest or "").split("/") if p]
    if parts and parts[0] in ("data", "REST"):
        parts = parts[1:]
    if not parts:
        return Destination("prearchive", params.project, params.subject, params.session)
    kind = parts[0]
    if kind not in ("prearchive", "archive"):
        raise ImportFailed(400, f"Invalid destination: {dest}")
    found: dict[str, str] = {}
    rest = parts[1:]
    names = {"projects": "project", "subjects": "subject", "experiments": "session"}
    for i in range(0, len(rest) - 1, 2):
        if rest[i] not in names:
            raise ImportFailed(400, f"Invalid destination: {dest}")
        found[names[rest[i]]] = rest[i + 1]
    if len(rest) % 2:
        raise ImportFailed(400, f"Invalid destination: {dest}")
    return Destination(
        kind,
        found.get("project") or params.project,
        found.get("subject") or params.subject,
        found.get("session") or params.session,
    )


def _user_name(user: Any) -> str:
    return getattr(user, "name", None) or (user if isinstance(user, str) else "admin")


def _user_row(store: Any, user: Any) -> Any:
    return store.get_user(user) if isinstance(user, str) else user


def _resolve_project(store: Any, user: Any, project: Optional[str], *, required: bool) -> str:
    """The canonical project ID the user may write to; Unassigned for an unknown prearchive
    project (as XNAT does with an unidentifiable session)."""
    if not project:
        if required:
            raise ImportFailed(400, "The archive destination needs a project.")
        return UNASSIGNED
    row = store.get_project(project)
    if row is None:
        if required:
            raise ImportFailed(404, f"Unable to find project {project}")
        return UNASSIGNED
    if not store.can_read(_user_row(store, user), row.id):
        raise ImportFailed(403, f"Access denied to project {row.id}")
    return row.id


def _labels(study: ParsedStudy, dest: Destination) -> tuple[str, str]:
    subject = (
        dest.subject
        or safe_segment(study.patient_name)
        or safe_segment(study.patient_id)
        or "Unknown"
    )
    session = (
        dest.session
        or safe_segment(study.patient_id)
        or f"{subject}_{(study.modality or 'XX').upper()}_{study.study_instance_uid[-6:]}"
    )
    return subject, session


def _content(study: ParsedStudy) -> SessionContent:
    scans = [
        ScanContent(
            s.scan_id,
            s.type,
            s.type,
            s.modality or study.modality,
            s.series_instance_uid,
            {"DICOM": [(f.name, f.path) for f in s.files]},
        )
        for s in study.sorted_series()
    ]
    return SessionContent(
        modality=study.modality or "MR",
        date=study.study_date,
        time=study.study_time,
        uid=study.study_instance_uid,
        scans=scans,
    )


def _staging(store: Any) -> str:
    base = getattr(store, "tmp_dir", None)
    if base is not None:
        Path(base).mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="import-", dir=base)


def _new_session(
    pa: Prearchive, study: ParsedStudy, project: str, subject: str, label: str, source: str
) -> Any:
    """A prearchive session tagged with the study's UID, date, time and modality."""
    return pa.create_session(
        project,
        label,
        subject=subject,
        tag=study.study_instance_uid,
        scan_date=study.study_date,
        scan_time=study.study_time,
        modality=study.modality or "MR",
        source=source,
    )


def _to_prearchive(
    pa: Prearchive, study: ParsedStudy, project: str, subject: str, label: str, source: str
) -> Any:
    s = _new_session(pa, study, project, subject, label, source)
    pa.add_study(s, study)
    return pa.build(s)


def import_upload(
    store: Any, user: Any, params: ImportParams, body_path: str | os.PathLike[str]
) -> list[str]:
    """Run one import; returns the created URIs (with ``/data``).  Raises :class:`ImportFailed`."""
    if params.src:
        raise ImportFailed(400, "Import from src= (user cache) is not supported by the emulator.")
    if params.handler in UNSUPPORTED_HANDLERS:
        raise ImportFailed(
            400, f"Import handler {params.handler} is not supported by the emulator."
        )
    if params.handler not in HANDLERS:
        raise ImportFailed(400, f"Unknown import handler: {params.handler}")
    if os.path.getsize(body_path) == 0:
        raise ImportFailed(400, "Unable to identify upload format.")
    dest = parse_dest(params.dest, params)
    if params.handler == "gradual-DICOM":
        return [_gradual(store, user, params, dest, body_path)]

    project = _resolve_project(store, user, dest.project, required=dest.kind == "archive")
    if not params.dest and project != UNASSIGNED:
        # No dest: the project's prearchive setting decides, and a fresh project auto-archives
        # (prearchive_code.py, docs/XNAT-API.md §6).
        kind, code_overwrite = prearchive_code.destination(prearchive_code.get(store, project))
        dest = dataclasses.replace(dest, kind=kind)
        if params.overwrite == "none":
            params = dataclasses.replace(params, overwrite=code_overwrite)
    staging = _staging(store)
    try:
        try:
            parsed: ParsedUpload = extract_dicom_archive(
                body_path, staging, ignore_unparsable=params.ignore_unparsable
            )
        except UploadError as exc:
            raise ImportFailed(400, str(exc)) from exc
        plan = _plan(parsed.studies, dest)
        if dest.kind == "archive" and params.overwrite == "none":
            for _study, _subject, label in plan:
                if store.find_experiment(project, label) is not None:
                    if not params.direct_archive:
                        break  # staged first, then CONFLICT in the prearchive (_place)
                    raise ImportFailed(
                        409,
                        f"Session {label} already exists in project "
                        f"{project}, retry with overwrite enabled",
                    )
        with Prearchive.for_store(store) as pa:
            return [_place(store, pa, user, params, dest, project, *step) for step in plan]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _plan(studies: list[ParsedStudy], dest: Destination) -> list[tuple[ParsedStudy, str, str]]:
    """(study, subject label, session label) per session to create; labels made unique."""
    if dest.session and len(studies) > 1:
        # An explicit label names one session: merge the studies into it.
        merged = studies[0]
        for other in studies[1:]:
            for sid, series in other.series.items():
                if sid in merged.series:
                    merged.series[sid].files.extend(series.files)
                else:
                    merged.series[sid] = series
        studies = [merged]
    plan = []
    seen: set[str] = set()
    for study in studies:
        subject, label = _labels(study, dest)
        base, n = label, 1
        while label in seen:
            n += 1
            label = f"{base}_{n}"
        seen.add(label)
        plan.append((study, subject, label))
    return plan


def _place(
    store: Any,
    pa: Prearchive,
    user: Any,
    params: ImportParams,
    dest: Destination,
    project: str,
    study: ParsedStudy,
    subject: str,
    label: str,
) -> str:
    """One planned session into the prearchive, straight into the archive (Direct-Archive), or
    staged in the prearchive and archived at once; returns its URI."""
    if dest.kind == "prearchive":
        s = _to_prearchive(pa, study, project, subject, label, "import")
        return f"/data{s.url}"
    if params.direct_archive:
        try:
            eid = write_session(
                store,
                _content(study),
                project=project,
                subject=subject,
                label=label,
                overwrite=params.overwrite,
                user=_user_name(user),
                move_files=True,
            )
        except ArchiveConflict as exc:
            raise ImportFailed(409, str(exc)) from exc
        return archive_uri(store, eid)
    s = _to_prearchive(pa, study, project, subject, label, "import")
    try:
        return archive_session(store, pa, s, overwrite=params.overwrite, user=_user_name(user))
    except PrearchiveError as exc:
        raise ImportFailed(exc.status, str(exc)) from exc


def _gradual(
    store: Any,
    user: Any,
    params: ImportParams,
    dest: Destination,
    body_path: str | os.PathLike[str],
) -> str:
    """One DICOM file joins the RECEIVING session of its study (created on first file)."""
    if sniff_format(body_path) == "unknown":
        raise ImportFailed(400, "Unable to identify upload format.")
    project = _resolve_project(store, user, dest.project, required=False)
    staging = _staging(store)
    try:
        try:
            parsed = extract_dicom_archive(
                body_path,
                staging,
                ignore_unparsable=params.ignore_unparsable,
                allow_single_file=True,
            )
        except UploadError as exc:
            raise ImportFailed(400, str(exc)) from exc
        with Prearchive.for_store(store) as pa:
            url = ""
            for study in parsed.studies:
                s = pa.find_receiving(project, study.study_instance_uid)
                if s is None:
                    subject, label = _labels(study, dest)
                    s = _new_session(pa, study, project, subject, label, "gradual-DICOM")
                pa.add_study(s, study)
                url = f"/data{s.url}"
            return url
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def _spool_multipart(request: Request, store: Store) -> tuple[str, dict[str, str]]:
    """A multipart upload: the first file part into a temp file, the other parts as parameters;
    returns (path, form fields)."""
    fd, path = tempfile.mkstemp(prefix="import-body-", dir=store.tmp_dir)
    form: dict[str, str] = {}
    try:
        with os.fdopen(fd, "wb") as out:
            for k in request.form:
                form[k] = request.form[k]
            first = True
            for _name, storage in request.files.items(multi=True):
                if first:
                    shutil.copyfileobj(storage.stream, out, 1 << 20)
                    first = False
                storage.close()  # werkzeug spools parts to temp files
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path, form


def handle(ctx: Ctx) -> Response:
    """``POST /data/services/import`` -> 200 ``text/uri-list`` (§6); errors are Restlet status
    pages (400 "Unable to identify upload format.", 403, 404, 409)."""
    request = ctx.request
    if request.method != "POST":
        return error_response(405, "Method Not Allowed")
    store = ctx.store
    if (request.mimetype or "").startswith("multipart/"):
        body_path, form = _spool_multipart(request, store)
    else:
        # any other Content-Type is the raw body (§6); the spooler applies the server's faults
        # (a truncated body is a 400)
        body_path, form = str(ctx.spool_body()), {}
    try:
        values = {k: request.args[k] for k in request.args}
        for k, v in form.items():
            values.setdefault(k, v)
        try:
            params = ImportParams.from_mapping(values)
            uris = import_upload(store, ctx.user, params, body_path)
        except ImportFailed as exc:
            log.info("import refused (%d): %s", exc.status, exc.message)
            return error_response(exc.status, exc.message)
        return uri_list_response(request, uris)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(body_path)
