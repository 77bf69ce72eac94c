"""The archive URL grammar: a ``/data/projects/...`` path parsed into a :class:`Chain` of
``(kind, key)`` links and resolved against the store into a :class:`Resolved`.

Why by hand rather than with a werkzeug ``Map``: XNAT's archive URLs are a recursive grammar
(``<obj>/resources/<R>/files/<path...>`` at five levels, comma lists, ``ALL``, ``/archive`` and
``/REST`` aliases, prefix matching with trailing slashes, §0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from .serving import HttpError
from .store import (
    ExperimentRow,
    Parent,
    ProjectRow,
    ResourceRow,
    ScanRow,
    Store,
    SubjectRow,
    UserRow,
)

LABEL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SCAN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
RESOURCE_LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

COLLECTIONS = {
    "projects": "project",
    "subjects": "subject",
    "experiments": "experiment",
    "scans": "scan",
    "assessors": "assessor",
    "reconstructions": "reconstruction",
    "resources": "resource",
}

NOT_FOUND = "The requested resource was not found."


@dataclass
class Chain:
    """A parsed archive path: ``links`` of (kind, key); then either a collection listing
    (``collection``), the files tail (``files`` not None) or the last link as object."""

    links: list[tuple[str, str]]
    collection: Optional[str] = None
    files: Optional[str] = None  # relative path after /files ("" = listing)
    files_dir: bool = False  # the path ended in "/"
    extra: Optional[str] = None  # e.g. "status", "prearchive_code", "config"
    extra_arg: Optional[str] = None  # the CODE of PUT .../prearchive_code/CODE, config's TOOL/PATH


@dataclass
class Resolved:
    project: Optional[ProjectRow] = None
    subject: Optional[SubjectRow] = None
    experiment: Optional[ExperimentRow] = None
    scans: Optional[list[ScanRow]] = None
    assessor: Optional[ExperimentRow] = None
    resources: Optional[list[ResourceRow]] = None
    via_project: bool = False  # URL went through /projects/{P}
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

    def deepest_kind(self) -> str:
        if self.assessor is not None:
            return "assessor"
        if self.experiment is not None:
            return "experiment"
        if self.subject is not None:
            return "subject"
        return "project"


def parse_chain(segments: list[str], trailing_slash: bool) -> Chain:
    links: list[tuple[str, str]] = []
    i = 0
    while i < len(segments):
        seg = segments[i]
        if seg == "files":
            rest = "/".join(segments[i + 1 :])
            return Chain(links, files=rest, files_dir=trailing_slash and bool(rest))
        if seg in ("in", "out") and links and links[-1][0] in ("assessor", "reconstruction"):
            i += 1
            continue
        if seg == "status" and links and i == len(segments) - 1:
            return Chain(links, extra="status")
        if (
            seg == "prearchive_code"
            and len(links) == 1
            and links[0][0] == "project"
            and i >= len(segments) - 2
        ):
            return Chain(
                links,
                extra="prearchive_code",
                extra_arg=segments[i + 1] if i + 1 < len(segments) else None,
            )
        if seg == "config" and len(links) == 1 and links[0][0] == "project":
            # the project's config service entries, config.py (§12)
            return Chain(links, extra="config", extra_arg="/".join(segments[i + 1 :]))
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


def check_project(store: Store, p: ProjectRow, user: UserRow, write: bool) -> None:
    if not store.can_read(user, p.id):
        # Not visible: reads answer 404 (object not visible, §4.6), writes 403.
        if write:
            raise HttpError(403, f"User {user.name} does not have access to project {p.id}.")
        raise HttpError(404, f"Unable to find project {p.id}.")


class _Resolver:
    """One link at a time, each kind its own step (the table in :func:`resolve`)."""

    def __init__(self, store: Store, user: UserRow, write: bool) -> None:
        self.st = store
        self.user = user
        self.write = write
        self.r = Resolved()

    def _own_project(self, project_id: str) -> None:
        """Reached without /projects/{P}: the object's own project, checked for access."""
        p = self.st.get_project(project_id)
        assert p is not None
        check_project(self.st, p, self.user, self.write)
        self.r.project = p

    def project(self, key: str) -> None:
        p = self.st.get_project(key)
        if p is None:
            raise HttpError(404, f"Unable to find project {key}.")
        check_project(self.st, p, self.user, self.write)
        self.r.project, self.r.via_project = p, True

    def subject(self, key: str) -> None:
        r, st = self.r, self.st
        if r.experiment is not None:
            raise HttpError(404, NOT_FOUND)
        s = st.find_subject(r.project.id, key) if r.project else st.get_subject(key)
        if s is None:
            raise HttpError(404, f"Unable to find subject {key}.")
        if r.project is None:
            self._own_project(s.project)
        r.subject, r.via_subject = s, True

    def experiment(self, key: str) -> None:
        r, st = self.r, self.st
        if r.project is not None:
            e = st.find_experiment(r.project.id, key)
            if e is not None and r.subject is not None and e.subject_id != r.subject.id:
                e = None
        else:
            e = st.get_experiment(key)
        if e is None or e.session_id:
            raise HttpError(404, f"Unable to find experiment {key}.")
        if r.project is None:
            self._own_project(e.project)
        r.experiment = e

    def scan(self, key: str) -> None:
        r = self.r
        if r.experiment is None:
            raise HttpError(404, NOT_FOUND)
        keys = key.split(",")
        scans = [
            s
            for s in self.st.list_scans(r.experiment.id)
            if any(_scan_selector_match(s, k) for k in keys)
        ]
        if not scans and key not in ("ALL", "*"):
            raise HttpError(404, f"Unable to find scan {key}.")
        r.scans = scans

    def assessor(self, key: str) -> None:
        r = self.r
        if r.experiment is None:
            raise HttpError(404, NOT_FOUND)
        a = self.st.find_assessor(r.experiment.id, key)
        if a is None:
            raise HttpError(404, f"Unable to find assessor {key}.")
        r.assessor = a

    def reconstruction(self, key: str) -> None:
        raise HttpError(404, f"Unable to find reconstruction {key}.")

    def resource(self, key: str) -> None:
        found: list[ResourceRow] = []
        for parent in self.r.parents():
            for k in key.split(","):
                res = self.st.find_resource(parent, k)
                if res is not None and res not in found:
                    found.append(res)
        if not found:
            raise HttpError(404, f"Unable to find resource {key}.")
        self.r.resources = found


def resolve(store: Store, links: list[tuple[str, str]], user: UserRow, write: bool) -> Resolved:
    resolver = _Resolver(store, user, write)
    steps: dict[str, Callable[[str], None]] = {
        "project": resolver.project,
        "subject": resolver.subject,
        "experiment": resolver.experiment,
        "scan": resolver.scan,
        "assessor": resolver.assessor,
        "reconstruction": resolver.reconstruction,
        "resource": resolver.resource,
    }
    for kind, key in links:
        step = steps.get(kind)
        if step is None:  # pragma: no cover - parse_chain only yields known kinds
            raise HttpError(404, NOT_FOUND)
        step(key)
    return resolver.r


def resolve_parent_for_create(
    store: Store, links: list[tuple[str, str]], kind: str, user: UserRow
) -> Resolved:
    if links and links[0][0] == "project":
        p = store.get_project(links[0][1])
        if p is None:
            # §4.2: creating below a project that does not exist gives 422.
            raise HttpError(
                422 if kind != "resource" else 404, f"Unable to find project {links[0][1]}."
            )
        if kind == "experiment" and len(links) == 2 and links[1][0] == "subject":
            # Creating an experiment under an unknown subject creates the subject (§4.3).
            check_project(store, p, user, True)
            label = links[1][1]
            if store.find_subject(p.id, label) is None:
                if not LABEL_RE.match(label):
                    raise HttpError(
                        400,
                        f"Invalid subject label '{label}': labels may contain "
                        "only letters, digits, '_' and '-'.",
                    )
                store.create_subject(p.id, label, user=user.name)
    return resolve(store, links, user, True)
