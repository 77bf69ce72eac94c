"""The client's object calls: create subjects, experiments, scans and resources (§4), delete,
import archives (§6) and act on prearchive sessions (§7.3).  Writes are never retried here.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional

from . import parse
from .errors import (
    NotFound,
    NotXnatResponse,
)
from .models import (
    PrearchiveSession,
)
from .transfer import Transfer
from .transport import Params, check_contained

__all__ = ["Objects"]

#: one logger for the whole client, whichever part of it logs (what log filters name)
log = logging.getLogger("xnatfs.xnat.client")


class Objects(Transfer):
    """Create/delete/import and prearchive actions of :class:`~xnatfs.xnat.client.XnatClient`."""

    def _put_id(self, uri: str, params: Params) -> str:
        """A create-by-PUT (§4.2-4.3): 201 new / 200 existing, body = accession ID."""
        resp = self._write("PUT", uri, params)
        return resp.content.decode("utf-8", "replace").strip()

    def create_subject(self, project: str, label: str) -> str:
        """Create (or find) a subject by label; returns its accession ID (§4.2)."""
        uri = f"/data/projects/{parse.quote_segment(project)}/subjects/{parse.quote_segment(label)}"
        check_contained("PUT", uri, f"/data/projects/{parse.quote_segment(project)}/subjects")
        return self._put_id(uri, {"xsiType": "xnat:subjectData"})

    def create_experiment(self, project: str, subject: str, label: str, xsi_type: str) -> str:
        """Create an experiment of ``xsi_type`` under a subject (ID or label); returns the
        experiment accession ID (§4.3)."""
        uri = (
            f"/data/projects/{parse.quote_segment(project)}/subjects/"
            f"{parse.quote_segment(subject)}/experiments/{parse.quote_segment(label)}"
        )
        check_contained("PUT", uri, uri.rsplit("/", 1)[0])
        return self._put_id(uri, {"xsiType": xsi_type})

    def create_scan(
        self, experiment_uri: str, scan_id: str, xsi_type: str, type: Optional[str] = None
    ) -> str:
        """Create a scan (§4.3); returns its uri."""
        uri = f"{experiment_uri.rstrip('/')}/scans/{parse.quote_segment(scan_id)}"
        check_contained("PUT", uri, f"{experiment_uri.rstrip('/')}/scans")
        params = {"xsiType": xsi_type}
        if type:
            params["type"] = type
        self._write("PUT", uri, params)
        return uri

    def create_resource(
        self,
        parent_uri: str,
        label: str,
        format: Optional[str] = None,
        content: Optional[str] = None,
    ) -> str:
        """Create an empty resource (§4.4); returns ``<parent>/resources/<label>``.
        Conflict if it exists."""
        uri = f"{parent_uri.rstrip('/')}/resources/{parse.quote_segment(label)}"
        check_contained("PUT", uri, f"{parent_uri.rstrip('/')}/resources")
        params: Params = {}
        if format:
            params["format"] = format
        if content:
            params["content"] = content
        self._write("PUT", uri, params)
        return uri

    def delete(self, uri: str) -> None:
        """``DELETE <uri>?removeFiles=true`` (§4.2-4.5).  A missing resource is a silent
        success on XNAT (§10.19); a missing file or object is NotFound."""
        check_contained("DELETE", uri, "/data")  # the uri came from a listing
        self._write("DELETE", uri, {"removeFiles": "true"}).close()

    def import_archive(
        self,
        fileobj: Any,
        size: int,
        project: str,
        subject: Optional[str] = None,
        dest: Optional[str] = None,
        session: Optional[str] = None,
        import_handler: str = "DICOM-zip",
        content_type: str = "application/zip",
        overwrite: Optional[str] = None,
    ) -> List[str]:
        """``POST /data/services/import`` with the archive as the raw body (§6); returns the
        created URIs (``/data/prearchive/...`` or ``/data/archive/...``).  ``dest=None`` lets
        the server choose (the project's prearchive settings)."""
        params: Params = {"import-handler": import_handler, "project": project}
        if subject:
            params["subject"] = subject
        if session:
            params["session"] = session
        if dest:
            params["dest"] = dest
        if overwrite:
            params["overwrite"] = overwrite
        resp = self._write(
            "POST",
            "/data/services/import",
            params,
            body_factory=self._rewindable(fileobj, size),
            headers={"Content-Type": content_type, "Content-Length": str(size)},
        )
        return self._uri_list(resp)

    @staticmethod
    def _uri_list(resp: Any) -> List[str]:
        """The URIs of a ``text/uri-list`` answer; one past the line cap is not XNAT's."""
        try:
            return parse.parse_uri_list(resp.content.decode("utf-8", "replace"))
        except parse.BadDocument as exc:
            raise NotXnatResponse(
                resp.request.method, resp.url, resp.status_code, str(exc)
            ) from None

    @staticmethod
    def _src(session_uri: str) -> str:
        """The ``src=`` form of a prearchive session: ``/prearchive/projects/...`` (§7.3)."""
        return session_uri[len("/data") :] if session_uri.startswith("/data/") else session_uri

    def archive_prearchive(self, session_uri: str, project: str, subject: str, label: str) -> str:
        """Archive a prearchive session as ``project/subject/label`` (§7.3); returns the
        archived experiment's URI (``/data/archive/projects/P/subjects/S/experiments/E``)."""
        params = {
            "src": self._src(session_uri),
            "project": project,
            "subject": subject,
            "session": label,
            "auto-archive": "false",
        }
        resp = self._write("POST", "/data/services/archive", params)
        uris = self._uri_list(resp)
        if not uris:
            raise NotXnatResponse(
                "POST", resp.url, resp.status_code, "archive answered with no URI"
            )
        return uris[0]

    def get_prearchive(self, session_uri: str) -> Optional[PrearchiveSession]:
        """One session's status row (``GET <session>?format=json``, §7.2); None once it is gone
        (archived, moved, deleted)."""
        check_contained("GET", session_uri, "/data/prearchive")
        try:
            rows, _ = self._rows(session_uri)
        except NotFound:
            return None
        found = [parse.prearchive_from_row(r) for r in rows if r.get("url")]
        return found[0] if found else None

    def move_prearchive(self, session_uri: str, project: str) -> None:
        """Queue a move to ``project``'s prearchive (``POST /data/services/prearchive/move``,
        §7.3); XNAT answers at once with the session ``QUEUED_MOVING`` and moves it later."""
        self._write(
            "POST",
            "/data/services/prearchive/move",
            {"src": self._src(session_uri), "newProject": project},
        ).close()

    def rebuild_prearchive(self, session_uri: str) -> None:
        """Queue a rebuild (``POST /data/services/prearchive/rebuild``, §7.3): the session goes
        ``QUEUED_BUILDING`` -> ``BUILDING`` -> ``READY``."""
        self._write(
            "POST", "/data/services/prearchive/rebuild", {"src": self._src(session_uri)}
        ).close()

    def delete_prearchive(self, session_uri: str) -> None:
        """Delete a prearchive session (``DELETE <session>``, §7.2)."""
        check_contained("DELETE", session_uri, "/data/prearchive")
        self._write("DELETE", session_uri).close()
