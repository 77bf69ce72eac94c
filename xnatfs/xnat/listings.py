"""The client's listings: one typed call per level of the XNAT hierarchy (§1) and of the
prearchive (§7), each a JSON listing parsed into ``models`` records by ``parse``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from . import parse
from .errors import (
    NotFound,
    NotXnatResponse,
)
from .models import (
    Assessor,
    Experiment,
    FileEntry,
    PrearchiveSession,
    Project,
    Resource,
    Scan,
    Subject,
)
from .transport import Transport

__all__ = ["Listings"]

#: one logger for the whole client, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.xnat.client")

#: columns asked of the search-backed listings (§1.2: unknown names are ignored by XNAT)
SUBJECT_COLUMNS = "ID,label,project,insert_date,insert_user,last_modified,URI"
EXPERIMENT_COLUMNS = "ID,label,xsiType,date,project,subject_ID,insert_date,last_modified"
SCAN_COLUMNS = (
    "xnat_imagescandata_id,ID,type,quality,xsiType,note,series_description,"
    "insert_date,last_modified,URI"
)
ASSESSOR_COLUMNS = "ID,label,xsiType,project,date,insert_date,last_modified,URI"


class Listings(Transport):
    """Listing calls of :class:`~xnatfs.xnat.client.XnatClient`."""

    # ---------------------------------------------------------------- listings

    def list_projects(self) -> List[Project]:
        """Projects this user can read (§1.3)."""
        rows, _ = self._rows("/data/projects")
        return [parse.project_from_row(r) for r in rows if r.get("ID")]

    def list_subjects(self, project_id: str) -> List[Subject]:
        """Subjects listed in a project, shared ones included (§1.4, §10.1)."""
        uri = f"/data/projects/{parse.quote_segment(project_id)}/subjects"
        rows = self._rows_with_columns(uri, SUBJECT_COLUMNS)
        return [parse.subject_from_row(r, project_id) for r in rows if r.get("ID")]

    def list_experiments(self, project_id: str, subject_id: str) -> List[Experiment]:
        """Experiments of one subject within a project (§1.5); ``subject_id`` may be the
        accession ID or the label."""
        uri = (
            f"/data/projects/{parse.quote_segment(project_id)}/subjects/"
            f"{parse.quote_segment(subject_id)}/experiments"
        )
        rows = self._rows_with_columns(uri, EXPERIMENT_COLUMNS)
        return [parse.experiment_from_row(r) for r in rows if r.get("ID")]

    def list_scans(self, experiment_uri: str) -> List[Scan]:
        """Scans of an experiment (§1.6); ``Scan.uri`` = ``<experiment_uri>/scans/<ID>``."""
        rows = self._rows_with_columns(f"{experiment_uri.rstrip('/')}/scans", SCAN_COLUMNS)
        return [parse.scan_from_row(r, experiment_uri) for r in rows if r.get("ID")]

    def list_assessors(self, experiment_uri: str) -> List[Assessor]:
        """Assessors of an experiment (§1.5, §9)."""
        rows = self._rows_with_columns(f"{experiment_uri.rstrip('/')}/assessors", ASSESSOR_COLUMNS)
        return [parse.assessor_from_row(r, experiment_uri) for r in rows if r.get("ID")]

    def list_resources(self, parent_uri: str) -> List[Resource]:
        """Resources of any object (§1.7); ``Resource.uri`` = ``<parent>/resources/<id>``."""
        rows, _ = self._rows(f"{parent_uri.rstrip('/')}/resources")
        return [
            parse.resource_from_row(r, parent_uri)
            for r in rows
            if r.get("xnat_abstractresource_id") or r.get("label")
        ]

    def list_scan_resources(self, experiment_uri: str) -> Dict[str, List[Resource]]:
        """The resources of every scan of an experiment in one request (``resources?all=true``,
        §1.7): scan ID -> its resources, each ``Resource.uri`` =
        ``<experiment_uri>/scans/<ID>/resources/<id>`` as ``list_resources(scan.uri)`` gives.
        Rows of other categories (the experiment's own, assessors') are left out: the
        experiment's own rows differ from its plain listing in ``cat_desc`` (§1.7)."""
        rows, _ = self._rows(f"{experiment_uri.rstrip('/')}/resources", {"all": "true"})
        out: Dict[str, List[Resource]] = {}
        for r in rows:
            if (
                r.get("category") != "scans"
                or not r.get("cat_id")
                or not (r.get("xnat_abstractresource_id") or r.get("label"))
            ):
                continue
            scan_uri = f"{experiment_uri.rstrip('/')}/scans/{parse.quote_segment(r['cat_id'])}"
            out.setdefault(r["cat_id"], []).append(parse.resource_from_row(r, scan_uri))
        return out

    def list_files(self, resource_uri: str) -> List[FileEntry]:
        """Files of a resource (§1.8), sub-folders included; ``FileEntry.uri`` is the server's
        ``URI`` verbatim and ``path`` the part after ``/files/``."""
        rows, _ = self._rows(f"{resource_uri.rstrip('/')}/files")
        return [parse.file_from_row(r, resource_uri) for r in rows if r.get("URI") or r.get("Name")]

    def catalog_times(self, resource_uri: str) -> Dict[str, float]:
        """Per-file times of a resource from its catalog (``files?format=xcat``, §1.8): one
        request per resource, ``relpath -> mtime``; {} when the catalog keeps none."""
        resp = self._call("GET", f"{resource_uri.rstrip('/')}/files", params={"format": "xcat"})
        try:
            return parse.catalog_times(resp.content)
        except parse.BadDocument as exc:
            raise NotXnatResponse("GET", resp.url, resp.status_code, str(exc)) from None

    def get_object(self, uri: str) -> Dict[str, Any]:
        """``GET <uri>?format=json``: the raw ``{"items":[...]}`` document (§2.1)."""
        doc = self._get_json(uri)
        if not isinstance(doc, dict):
            raise NotXnatResponse("GET", self._url(uri), 200, "answer is not a JSON object")
        return doc

    def config_json(self, tool: str, path: str, project: Optional[str] = None) -> Any:
        """The JSON document kept in XNAT's config service under ``tool``/``path`` (the
        project's entry with ``project``, else the site's); None when there is none.

        ``?contents=true`` answers the stored text as it is, not a ResultSet, whatever
        ``format=`` says; an absent or disabled entry is 404 (docs/XNAT-API.md §12)."""
        base = (
            f"/data/projects/{parse.quote_segment(project)}/config" if project else "/data/config"
        )
        uri = "/".join(
            [base, parse.quote_segment(tool)]
            + [parse.quote_segment(p) for p in path.split("/") if p]
        )
        try:
            return self._get_json(uri, {"contents": "true"})
        except NotFound:
            return None

    # ---------------------------------------------------------------- prearchive (§7)

    def list_prearchive(self, project: Optional[str] = None) -> List[PrearchiveSession]:
        uri = "/data/prearchive/projects"
        if project:
            uri += "/" + parse.quote_segment(project)
        rows, _ = self._rows(uri)
        return [parse.prearchive_from_row(r) for r in rows if r.get("url")]

    def list_prearchive_scans(self, session_uri: str) -> List[Scan]:
        rows, _ = self._rows(f"{session_uri.rstrip('/')}/scans")
        return [parse.scan_from_row(r, session_uri) for r in rows if r.get("ID")]

    def list_prearchive_resources(self, scan_uri: str) -> List[Resource]:
        """A prearchive scan's resources: the same listing as an archived object's."""
        return self.list_resources(scan_uri)

    def list_prearchive_files(self, resource_uri: str) -> List[FileEntry]:
        rows, _ = self._rows(f"{resource_uri.rstrip('/')}/files")
        return [parse.file_from_row(r, resource_uri) for r in rows if r.get("URI") or r.get("Name")]
