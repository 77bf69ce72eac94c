"""Persistent state of the XNAT emulator: SQLite metadata plus an archive directory of files.

Why a separate module: the HTTP layer (``app.py``), the demo seed (``seed.py``), the importer and
the prearchive (``importer.py``/``prearchive.py``) all write the same archive. They do it through
this one documented API, so the on-disk layout and the accession-ID rules live in one place.

Layout of ``data_dir``::

    data_dir/meta.sqlite3                 metadata (WAL mode)
    data_dir/archive/<resource_id>/<relpath>   file bytes of resource <resource_id>
    data_dir/tmp/                          upload staging (always on the same filesystem)
    data_dir/prearchive/                   free for prearchive.py (not used here)

Public API (stable; the handlers, the seed, the importer and the prearchive use only this).
All ids are ``str`` except resource ids (``int``, XNAT's ``xnat_abstractresource_id``) and scan
primary keys (``int``, ``xnat_imagescandata_id``). ``fields`` are plain ``dict[str, str]`` of
extra data fields (e.g. ``{"date": "2024-01-01", "gender": "female"}``); well-known keys are
copied into columns.

    st = Store(data_dir, site_id="XNAT")             # opens/creates; thread safe
    st.close()

    # users / membership
    st.add_user(name, password, projects=(), admin=False)     # idempotent (updates password)
    st.check_password(name, password) -> bool
    st.get_user(name) -> UserRow | None                        # .name .admin .projects
    st.add_member(name, project_id)
    st.remove_member(name, project_id)
    st.can_read(user, project_id) -> bool                      # admin or member
    st.accessible_projects(user) -> list[str]

    # creation (idempotent: an existing object is returned with created=False)
    st.create_project(pid, name="", description="", secondary_id="", fields=None,
                      user="admin") -> bool
    st.create_subject(project, label, fields=None, user="admin") -> (subject_id, created)
    st.create_experiment(project, subject, label, xsi_type, fields=None, user="admin")
        -> (experiment_id, created)            # subject = subject label or accession id in project
                                               # (created when missing)
    st.create_scan(experiment_id, scan_id, xsi_type, fields=None) -> created
        # fields may carry "type", "quality", "note", "series_description", "frames", "UID"
    st.create_assessor(experiment_id, label, xsi_type, fields=None, user="admin")
        -> (assessor_id, created)
    st.create_resource(parent, label, format="", content="", tags="", description="")
        -> (resource_id, created)
    st.put_file(resource_id, relpath, fileobj, overwrite=False, *, format="", content="",
                tags="", expected_size=None, mtime=None) -> bool   # False = duplicate, kept old
        # streams fileobj (anything with .read(n)) into a temp file, then renames into place;
        # a short read (expected_size not reached) raises TruncatedUpload and stores nothing.
    st.put_file_from_path(resource_id, relpath, path, overwrite=False, move=False, ...) -> bool
    st.new_temp() -> (fd, path)          # a staging file in data_dir/tmp (same filesystem)
    st.is_empty() -> bool                # no project and no user yet (fresh data dir)

    # parents of resources
    Parent(project="P1")                                   # project resource
    Parent(project="P1", subject="XNAT_S00001")            # subject resource
    Parent(project="P1", experiment="XNAT_E00001")         # experiment resource
    Parent(project="P1", experiment="XNAT_E00001", scan="1")          # scan resource
    Parent(project="P1", experiment="XNAT_E00001", assessor="XNAT_E00002")  # assessor resource
    (project may be None when experiment/subject is given; it is filled in from the object)

    # lookups (None when missing; rows are dataclasses below)
    st.get_project(pid_or_alias) -> ProjectRow | None
    st.list_projects() -> list[ProjectRow]
    st.get_subject(subject_id) -> SubjectRow | None
    st.find_subject(project, label_or_id) -> SubjectRow | None
    st.list_subjects(project=None) -> list[SubjectRow]
    st.get_experiment(experiment_id) -> ExperimentRow | None      # also finds assessors by id
    st.find_experiment(project, id_or_label) -> ExperimentRow | None
    st.list_experiments(project=None, subject_id=None) -> list[ExperimentRow]   # sessions only
    st.get_scan(experiment_id, scan_id) -> ScanRow | None
    st.list_scans(experiment_id) -> list[ScanRow]
    st.get_assessor(assessor_id) / st.find_assessor(experiment_id, id_or_label)
        -> AssessorRow | None
    st.list_assessors(experiment_id) -> list[AssessorRow]
    st.get_resource(resource_id) -> ResourceRow | None
    st.find_resource(parent, id_or_label) -> ResourceRow | None
    st.list_resources(parent) -> list[ResourceRow]
    st.list_resources_under_experiment(experiment_id) -> list[ResourceRow]   # own+scans+assessors
    st.list_files(resource_id, prefix="") -> list[FileRow]
    st.get_file(resource_id, relpath) -> FileRow | None
    st.file_path(resource_id, relpath) -> pathlib.Path         # where the bytes live

    # deletion (return True when something was removed)
    st.delete_project(pid) / delete_subject(sid, project=None) / delete_experiment(eid)
    st.delete_scan(eid, scan_id) / delete_assessor(aid) / delete_resource(rid)
    st.delete_file(rid, relpath) -> bool ; st.delete_files_under(rid, prefix) -> int

    # updates
    st.update_fields(kind, key, fields)   # kind in project|subject|experiment|scan|assessor
    st.touch_experiment(eid)              # bump last_modified
    st.relabel(kind, id, label)           # kind in subject|experiment (rename)

    # transactions: several writes that stand or fall together
    with st.transaction() as c: ...       # re-entrant; the store's own writes join it

    # alias tokens
    st.issue_token(user, lifetime_s) -> TokenRow ; st.get_token(alias) -> TokenRow | None
    st.invalidate_token(alias)

Thread safety: one SQLite connection per thread (``threading.local``), WAL mode, and one
``RLock`` serialising writes so that "check then insert" sequences (accession IDs, duplicate
labels) are atomic. Reads never take the lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

log = logging.getLogger(__name__)


def _db_evidence(path: Path) -> str:
    """The database file's first bytes and this process's open fds on it (a diagnosis aid)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
    except OSError as exc:
        head = f"unreadable: {exc}".encode()
    try:
        open_fds = os.listdir("/proc/self/fd")
    except OSError:
        open_fds = []  # no /proc: the first bytes are all the evidence there is
    fds = []
    for fd in open_fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(path)):
            fds.append(f"{fd}->{target}")
    return f"first bytes {head!r}; fds on it: {', '.join(fds) or 'none'}"


CHUNK = 1024 * 1024


class StoreError(Exception):
    """Base of store errors; the HTTP layer maps them to status codes."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class InvalidInput(StoreError):
    pass


class TruncatedUpload(StoreError):
    """The body ended before ``expected_size`` bytes: nothing was stored."""


@dataclass(frozen=True)
class Parent:
    """Names the owner of a resource; the deepest given level wins."""

    project: Optional[str] = None
    subject: Optional[str] = None
    experiment: Optional[str] = None
    scan: Optional[str] = None
    assessor: Optional[str] = None

    @property
    def kind(self) -> str:
        if self.assessor:
            return "assessor"
        if self.scan:
            return "scan"
        if self.experiment:
            return "experiment"
        if self.subject:
            return "subject"
        return "project"


@dataclass
class UserRow:
    name: str
    admin: bool
    projects: list[str]


@dataclass
class ProjectRow:
    id: str
    secondary_id: str
    name: str
    description: str
    pi_firstname: str
    pi_lastname: str
    insert_date: float
    insert_user: str
    last_modified: float
    fields: dict[str, str]


@dataclass
class SubjectRow:
    id: str
    project: str
    label: str
    insert_date: float
    insert_user: str
    last_modified: float
    fields: dict[str, str]


@dataclass
class ExperimentRow:
    id: str
    project: str
    subject_id: str
    label: str
    xsi_type: str
    date: str
    insert_date: float
    insert_user: str
    last_modified: float
    fields: dict[str, str]
    session_id: str = ""  # set for assessors: the image session they belong to


AssessorRow = ExperimentRow


@dataclass
class ScanRow:
    pk: int
    experiment_id: str
    id: str
    xsi_type: str
    type: str
    quality: str
    note: str
    series_description: str
    insert_date: float
    last_modified: float
    fields: dict[str, str]


@dataclass
class ResourceRow:
    id: int
    kind: str
    project: str
    subject_id: str
    experiment_id: str
    scan_id: str
    assessor_id: str
    label: str
    format: str
    content: str
    tags: str
    description: str
    insert_date: float
    file_count: int = 0
    file_size: int = 0

    @property
    def parent(self) -> Parent:
        return Parent(
            self.project or None,
            self.subject_id or None,
            self.experiment_id or None,
            self.scan_id or None,
            self.assessor_id or None,
        )


@dataclass
class FileRow:
    resource_id: int
    relpath: str
    size: int
    md5: str
    mtime: float
    format: str
    content: str
    tags: str

    @property
    def name(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]


@dataclass
class TokenRow:
    alias: str
    secret: str
    user: str
    created: float
    expires: float
    valid: bool


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, password TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS members (user TEXT NOT NULL, project TEXT NOT NULL,
    PRIMARY KEY (user, project));
CREATE TABLE IF NOT EXISTS tokens (alias TEXT PRIMARY KEY, secret TEXT NOT NULL, user TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, valid INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS projects (id TEXT PRIMARY KEY, secondary_id TEXT, name TEXT,
    description TEXT, pi_firstname TEXT, pi_lastname TEXT, insert_date REAL, insert_user TEXT,
    last_modified REAL, fields TEXT);
CREATE TABLE IF NOT EXISTS subjects (id TEXT PRIMARY KEY, project TEXT NOT NULL,
    label TEXT NOT NULL, insert_date REAL, insert_user TEXT, last_modified REAL, fields TEXT,
    UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS experiments (id TEXT PRIMARY KEY, project TEXT NOT NULL,
    subject_id TEXT NOT NULL, label TEXT NOT NULL, xsi_type TEXT NOT NULL, date TEXT,
    session_id TEXT NOT NULL DEFAULT '', insert_date REAL, insert_user TEXT, last_modified REAL,
    fields TEXT, UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS scans (pk INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL,
    scan_id TEXT NOT NULL, xsi_type TEXT, type TEXT, quality TEXT, note TEXT,
    series_description TEXT, insert_date REAL, last_modified REAL, fields TEXT,
    UNIQUE(experiment_id, scan_id));
CREATE TABLE IF NOT EXISTS resources (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
    project TEXT NOT NULL DEFAULT '', subject_id TEXT NOT NULL DEFAULT '',
    experiment_id TEXT NOT NULL DEFAULT '', scan_id TEXT NOT NULL DEFAULT '',
    assessor_id TEXT NOT NULL DEFAULT '', label TEXT NOT NULL, format TEXT, content TEXT, tags TEXT,
    description TEXT, insert_date REAL,
    UNIQUE(kind, project, subject_id, experiment_id, scan_id, assessor_id, label));
CREATE TABLE IF NOT EXISTS files (resource_id INTEGER NOT NULL, relpath TEXT NOT NULL,
    size INTEGER NOT NULL, md5 TEXT NOT NULL, mtime REAL NOT NULL, format TEXT, content TEXT,
    tags TEXT, PRIMARY KEY (resource_id, relpath));
"""

# First ids handed out, to look like a real site's (and to keep resource ids visibly numeric).
_RESOURCE_ID_START = 100
_SCAN_PK_START = 10


class Readable(Protocol):
    """What :meth:`Store.put_file` reads from: a file, or a request body behind ``read(n)``."""

    def read(self, n: int = -1, /) -> bytes: ...


def _fields(text: Optional[str]) -> dict[str, str]:
    return json.loads(text) if text else {}


def validate_relpath(relpath: str) -> str:
    """Normalise a resource-relative path; refuse traversal and empty components."""
    parts = [p for p in relpath.replace("\\", "/").split("/") if p not in ("",)]
    if not parts or any(p in (".", "..") or "\x00" in p for p in parts):
        raise InvalidInput(f"Invalid file path: {relpath!r}")
    return "/".join(parts)


class _Database:
    """The first layer of :class:`Store`: the SQLite connections, the schema, accession
    numbers, users and tokens (what every object table below relies on)."""

    def __init__(self, data_dir: str | os.PathLike[str], site_id: str = "XNAT") -> None:
        self.data_dir = Path(data_dir)
        self.site_id = site_id
        self.archive_dir = self.data_dir / "archive"
        self.tmp_dir = self.data_dir / "tmp"
        for d in (self.data_dir, self.archive_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads interrupted by a crash: never part of the catalog.
        for leftover in self.tmp_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        self.db_path = self.data_dir / "meta.sqlite3"
        #: serialises writes (check-then-insert must be atomic across threads)
        self.lock = threading.RLock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        with self.lock:
            c = self._conn()
            c.executescript(_SCHEMA)
            c.execute("INSERT OR IGNORE INTO counters VALUES ('S', 0), ('E', 0)")
            c.execute(
                "INSERT OR IGNORE INTO sqlite_sequence(name, seq) SELECT 'resources', ? "
                "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name='resources')",
                (_RESOURCE_ID_START,),
            )
            c.execute(
                "INSERT OR IGNORE INTO sqlite_sequence(name, seq) SELECT 'scans', ? "
                "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name='scans')",
                (_SCAN_PK_START,),
            )
            c.commit()

    # ----------------------------------------------------------------------------- plumbing
    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(
                self.db_path, timeout=30, check_same_thread=False, isolation_level=None
            )
            try:
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError:
                # seen once in a full test run ("file is not a database" on a new thread's
                # connection, after a dropped upload), never reproduced: keep what tells an
                # overwritten file from an fd mix-up, and do not leave the connection to SQLite
                # (it would hand its fd to the next connection on this file)
                log.error("store %s unreadable: %s", self.db_path, _db_evidence(self.db_path))
                c.close()
                raise
            c.row_factory = sqlite3.Row
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Optional[sqlite3.Row]:
        return self._conn().execute(sql, args).fetchone()

    def transaction(self) -> "Transaction":
        """A write transaction (``with st.transaction() as c:``) under the store lock: the
        store's own writes inside it join it, and an exception rolls all of them back (the
        prearchive's archive step writes a whole session this way)."""
        return Transaction(self)

    def close(self) -> None:
        with self._conns_lock:
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:  # pragma: no cover - closing from another thread
                    pass
            self._conns.clear()
        self._local = threading.local()

    def is_empty(self) -> bool:
        """True when no project and no user exists (a fresh data dir)."""
        return (
            self._one("SELECT 1 FROM projects LIMIT 1") is None
            and self._one("SELECT 1 FROM users LIMIT 1") is None
        )

    def _next_accession(self, c: sqlite3.Connection, kind: str) -> str:
        c.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (kind,))
        n = c.execute("SELECT value FROM counters WHERE name = ?", (kind,)).fetchone()[0]
        return f"{self.site_id}_{kind}{n:05d}"

    # ----------------------------------------------------------------------------- users
    def add_user(self, name: str, password: str, projects: Any = (), admin: bool = False) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO users(name, password, admin) VALUES (?,?,?) ON CONFLICT(name) "
                "DO UPDATE SET password=excluded.password, admin=excluded.admin",
                (name, password, int(admin)),
            )
            for p in projects or ():
                c.execute("INSERT OR IGNORE INTO members VALUES (?,?)", (name, p))

    def add_member(self, name: str, project_id: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO members VALUES (?,?)", (name, project_id))

    def remove_member(self, name: str, project_id: str) -> None:
        """Revoke access (tests: a user whose access ends while a proxy holds the bytes)."""
        with self.transaction() as c:
            c.execute("DELETE FROM members WHERE user=? AND project=?", (name, project_id))

    def check_password(self, name: str, password: str) -> bool:
        r = self._one("SELECT password FROM users WHERE name=?", (name,))
        return r is not None and secrets.compare_digest(r["password"].encode(), password.encode())

    def get_user(self, name: str) -> Optional[UserRow]:
        r = self._one("SELECT * FROM users WHERE name=?", (name,))
        if r is None:
            return None
        projects = [
            m["project"] for m in self._q("SELECT project FROM members WHERE user=?", (name,))
        ]
        return UserRow(r["name"], bool(r["admin"]), projects)

    def can_read(self, user: Optional[UserRow], project_id: str) -> bool:
        if user is None:
            return False
        return user.admin or project_id in user.projects

    # ----------------------------------------------------------------------------- tokens
    def issue_token(self, user: str, lifetime_s: float = 2 * 86400) -> TokenRow:
        now = time.time()
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        tok = TokenRow(
            str(uuid.uuid4()),
            "".join(secrets.choice(alphabet) for _ in range(64)),
            user,
            now,
            now + lifetime_s,
            True,
        )
        with self.transaction() as c:
            c.execute(
                "INSERT INTO tokens VALUES (?,?,?,?,?,1)",
                (tok.alias, tok.secret, tok.user, tok.created, tok.expires),
            )
        return tok

    def get_token(self, alias: str) -> Optional[TokenRow]:
        r = self._one("SELECT * FROM tokens WHERE alias=?", (alias,))
        if r is None:
            return None
        return TokenRow(
            r["alias"],
            r["secret"],
            r["user"],
            r["created"],
            r["expires"],
            bool(r["valid"]) and r["expires"] > time.time(),
        )

    def invalidate_token(self, alias: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE tokens SET valid=0 WHERE alias=?", (alias,))


class _Catalog(_Database):
    """The metadata half of :class:`Store`: projects, subjects, experiments, assessors, scans
    and resources, on top of :class:`_Database`."""

    # ----------------------------------------------------------------------------- projects
    @staticmethod
    def _project(r: sqlite3.Row) -> ProjectRow:
        return ProjectRow(
            r["id"],
            r["secondary_id"] or "",
            r["name"] or "",
            r["description"] or "",
            r["pi_firstname"] or "",
            r["pi_lastname"] or "",
            r["insert_date"],
            r["insert_user"] or "",
            r["last_modified"],
            _fields(r["fields"]),
        )

    def create_project(
        self,
        pid: str,
        name: str = "",
        description: str = "",
        secondary_id: str = "",
        fields: Optional[dict[str, str]] = None,
        user: str = "admin",
    ) -> bool:
        """Create project ``pid``; False (and a field update) when it already exists."""
        fields = dict(fields or {})
        now = time.time()
        with self.transaction() as c:
            r = c.execute("SELECT * FROM projects WHERE id=?", (pid,)).fetchone()
            if r is not None:
                upd = {
                    k: v
                    for k, v in (
                        ("name", name),
                        ("description", description),
                        ("secondary_id", secondary_id),
                    )
                    if v
                }
                if upd or fields:
                    self._update(c, "projects", "id", pid, upd, fields)
                return False
            c.execute(
                "INSERT INTO projects VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    pid,
                    secondary_id or pid,
                    name or pid,
                    description,
                    fields.pop("pi_firstname", ""),
                    fields.pop("pi_lastname", ""),
                    now,
                    user,
                    now,
                    json.dumps(fields),
                ),
            )
            return True

    def get_project(self, pid: str) -> Optional[ProjectRow]:
        r = self._one("SELECT * FROM projects WHERE id=?", (pid,))
        if r is None:
            r = self._one("SELECT * FROM projects WHERE secondary_id=? ORDER BY id LIMIT 1", (pid,))
        return self._project(r) if r else None

    def get_project_setting(self, pid: str, name: str) -> Optional[str]:
        """A per-project setting (e.g. ``prearchive_code``) kept in the ``meta`` table; None when
        never set (the caller knows XNAT's default)."""
        r = self._one("SELECT value FROM meta WHERE key=?", (f"project/{pid}/{name}",))
        return None if r is None else r["value"]

    def set_project_setting(self, pid: str, name: str, value: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)",
                (f"project/{pid}/{name}", value),
            )

    def get_site_setting(self, name: str) -> Optional[str]:
        """A site-wide setting (e.g. a config service entry), None when never set."""
        r = self._one("SELECT value FROM meta WHERE key=?", (f"site/{name}",))
        return None if r is None else r["value"]

    def set_site_setting(self, name: str, value: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", (f"site/{name}", value)
            )

    def list_projects(self) -> list[ProjectRow]:
        return [self._project(r) for r in self._q("SELECT * FROM projects ORDER BY id")]

    def accessible_projects(self, user: Optional[UserRow]) -> list[str]:
        return [p.id for p in self.list_projects() if self.can_read(user, p.id)]

    # ----------------------------------------------------------------------------- subjects
    @staticmethod
    def _subject(r: sqlite3.Row) -> SubjectRow:
        return SubjectRow(
            r["id"],
            r["project"],
            r["label"],
            r["insert_date"],
            r["insert_user"] or "",
            r["last_modified"],
            _fields(r["fields"]),
        )

    def create_subject(
        self, project: str, label: str, fields: Optional[dict[str, str]] = None, user: str = "admin"
    ) -> tuple[str, bool]:
        now = time.time()
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM projects WHERE id=?", (project,)).fetchone() is None:
                raise NotFound(f"Unable to find project {project}")
            r = c.execute(
                "SELECT id FROM subjects WHERE project=? AND label=?", (project, label)
            ).fetchone()
            if r is None:
                r = c.execute(
                    "SELECT id FROM subjects WHERE project=? AND id=?", (project, label)
                ).fetchone()
            if r is not None:
                if fields:
                    self._update(c, "subjects", "id", r["id"], {}, fields)
                return r["id"], False
            sid = self._next_accession(c, "S")
            c.execute(
                "INSERT INTO subjects VALUES (?,?,?,?,?,?,?)",
                (sid, project, label, now, user, now, json.dumps(dict(fields or {}))),
            )
            return sid, True

    def get_subject(self, subject_id: str) -> Optional[SubjectRow]:
        r = self._one("SELECT * FROM subjects WHERE id=?", (subject_id,))
        return self._subject(r) if r else None

    def find_subject(self, project: str, label_or_id: str) -> Optional[SubjectRow]:
        """Label first, then accession ID (§0.1)."""
        r = self._one("SELECT * FROM subjects WHERE project=? AND label=?", (project, label_or_id))
        if r is None:
            r = self._one("SELECT * FROM subjects WHERE project=? AND id=?", (project, label_or_id))
        return self._subject(r) if r else None

    def list_subjects(self, project: Optional[str] = None) -> list[SubjectRow]:
        if project is None:
            rows = self._q("SELECT * FROM subjects ORDER BY insert_date, id")
        else:
            rows = self._q(
                "SELECT * FROM subjects WHERE project=? ORDER BY insert_date, id", (project,)
            )
        return [self._subject(r) for r in rows]

    # ----------------------------------------------------------------------------- experiments
    @staticmethod
    def _experiment(r: sqlite3.Row) -> ExperimentRow:
        return ExperimentRow(
            r["id"],
            r["project"],
            r["subject_id"],
            r["label"],
            r["xsi_type"],
            r["date"] or "",
            r["insert_date"],
            r["insert_user"] or "",
            r["last_modified"],
            _fields(r["fields"]),
            r["session_id"] or "",
        )

    def create_experiment(
        self,
        project: str,
        subject: str,
        label: str,
        xsi_type: str,
        fields: Optional[dict[str, str]] = None,
        user: str = "admin",
    ) -> tuple[str, bool]:
        fields = dict(fields or {})
        now = time.time()
        with self.transaction() as c:
            existing = self.find_experiment(project, label)
            if existing is not None and not existing.session_id:
                if fields or (xsi_type and xsi_type != existing.xsi_type):
                    self._update(
                        c,
                        "experiments",
                        "id",
                        existing.id,
                        {"date": fields.pop("date")} if "date" in fields else {},
                        fields,
                    )
                return existing.id, False
            if existing is not None:
                raise Conflict(f"Label {label} is already used in project {project}")
            subject_id, _ = self.create_subject(project, subject, user=user)
            eid = self._next_accession(c, "E")
            c.execute(
                "INSERT INTO experiments VALUES (?,?,?,?,?,?,'',?,?,?,?)",
                (
                    eid,
                    project,
                    subject_id,
                    label,
                    xsi_type,
                    fields.pop("date", ""),
                    now,
                    user,
                    now,
                    json.dumps(fields),
                ),
            )
            return eid, True

    def get_experiment(self, experiment_id: str) -> Optional[ExperimentRow]:
        r = self._one("SELECT * FROM experiments WHERE id=?", (experiment_id,))
        return self._experiment(r) if r else None

    def find_experiment(self, project: str, id_or_label: str) -> Optional[ExperimentRow]:
        """Accession ID first (must belong to ``project``), then label (§0.1)."""
        r = self._one("SELECT * FROM experiments WHERE project=? AND id=?", (project, id_or_label))
        if r is None:
            r = self._one(
                "SELECT * FROM experiments WHERE project=? AND label=?", (project, id_or_label)
            )
        return self._experiment(r) if r else None

    def list_experiments(
        self, project: Optional[str] = None, subject_id: Optional[str] = None
    ) -> list[ExperimentRow]:
        sql, args = "SELECT * FROM experiments WHERE session_id=''", []
        if project is not None:
            sql += " AND project=?"
            args.append(project)
        if subject_id is not None:
            sql += " AND subject_id=?"
            args.append(subject_id)
        return [
            self._experiment(r) for r in self._q(sql + " ORDER BY insert_date, id", tuple(args))
        ]

    def touch_experiment(self, experiment_id: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE experiments SET last_modified=? WHERE id=?", (time.time(), experiment_id)
            )

    # ----------------------------------------------------------------------------- assessors
    def create_assessor(
        self,
        experiment_id: str,
        label: str,
        xsi_type: str,
        fields: Optional[dict[str, str]] = None,
        user: str = "admin",
    ) -> tuple[str, bool]:
        fields = dict(fields or {})
        now = time.time()
        with self.transaction() as c:
            sess = self.get_experiment(experiment_id)
            if sess is None or sess.session_id:
                raise NotFound(f"Unable to find experiment {experiment_id}")
            existing = self.find_experiment(sess.project, label)
            if existing is not None:
                if existing.session_id != experiment_id:
                    raise Conflict(f"Label {label} is already used in project {sess.project}")
                if fields:
                    self._update(c, "experiments", "id", existing.id, {}, fields)
                return existing.id, False
            aid = self._next_accession(c, "E")
            c.execute(
                "INSERT INTO experiments VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    aid,
                    sess.project,
                    sess.subject_id,
                    label,
                    xsi_type,
                    fields.pop("date", ""),
                    experiment_id,
                    now,
                    user,
                    now,
                    json.dumps(fields),
                ),
            )
            c.execute("UPDATE experiments SET last_modified=? WHERE id=?", (now, experiment_id))
            return aid, True

    def get_assessor(self, assessor_id: str) -> Optional[AssessorRow]:
        r = self._one("SELECT * FROM experiments WHERE id=? AND session_id!=''", (assessor_id,))
        return self._experiment(r) if r else None

    def find_assessor(self, experiment_id: str, id_or_label: str) -> Optional[AssessorRow]:
        r = self._one(
            "SELECT * FROM experiments WHERE session_id=? AND id=?", (experiment_id, id_or_label)
        )
        if r is None:
            r = self._one(
                "SELECT * FROM experiments WHERE session_id=? AND label=?",
                (experiment_id, id_or_label),
            )
        return self._experiment(r) if r else None

    def list_assessors(self, experiment_id: str) -> list[AssessorRow]:
        return [
            self._experiment(r)
            for r in self._q(
                "SELECT * FROM experiments WHERE session_id=? ORDER BY insert_date, id",
                (experiment_id,),
            )
        ]

    # ----------------------------------------------------------------------------- scans
    @staticmethod
    def _scan(r: sqlite3.Row) -> ScanRow:
        return ScanRow(
            r["pk"],
            r["experiment_id"],
            r["scan_id"],
            r["xsi_type"] or "",
            r["type"] or "",
            r["quality"] or "",
            r["note"] or "",
            r["series_description"] or "",
            r["insert_date"],
            r["last_modified"],
            _fields(r["fields"]),
        )

    _SCAN_COLS = ("type", "quality", "note", "series_description")

    def create_scan(
        self,
        experiment_id: str,
        scan_id: str,
        xsi_type: str,
        fields: Optional[dict[str, str]] = None,
    ) -> bool:
        fields = dict(fields or {})
        now = time.time()
        with self.transaction() as c:
            if (
                c.execute(
                    "SELECT 1 FROM experiments WHERE id=? AND session_id=''", (experiment_id,)
                ).fetchone()
                is None
            ):
                raise NotFound(f"Unable to find experiment {experiment_id}")
            r = c.execute(
                "SELECT pk FROM scans WHERE experiment_id=? AND scan_id=?", (experiment_id, scan_id)
            ).fetchone()
            cols = {k: fields.pop(k) for k in self._SCAN_COLS if k in fields}
            if r is not None:
                if cols or fields or xsi_type:
                    if xsi_type:
                        cols["xsi_type"] = xsi_type
                    self._update(c, "scans", "pk", r["pk"], cols, fields)
                return False
            c.execute(
                "INSERT INTO scans(experiment_id, scan_id, xsi_type, type, quality, note, "
                "series_description, insert_date, last_modified, fields) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    experiment_id,
                    scan_id,
                    xsi_type or "xnat:otherDicomScanData",
                    cols.get("type", ""),
                    cols.get("quality", "usable"),
                    cols.get("note", ""),
                    cols.get("series_description", ""),
                    now,
                    now,
                    json.dumps(fields),
                ),
            )
            c.execute("UPDATE experiments SET last_modified=? WHERE id=?", (now, experiment_id))
            return True

    def get_scan(self, experiment_id: str, scan_id: str) -> Optional[ScanRow]:
        r = self._one(
            "SELECT * FROM scans WHERE experiment_id=? AND scan_id=?", (experiment_id, scan_id)
        )
        return self._scan(r) if r else None

    def list_scans(self, experiment_id: str) -> list[ScanRow]:
        return [
            self._scan(r)
            for r in self._q(
                "SELECT * FROM scans WHERE experiment_id=? ORDER BY pk", (experiment_id,)
            )
        ]

    # ----------------------------------------------------------------------------- updates
    _TABLES = {
        "project": ("projects", "id"),
        "subject": ("subjects", "id"),
        "experiment": ("experiments", "id"),
        "assessor": ("experiments", "id"),
        "scan": ("scans", "pk"),
    }

    def _update(
        self,
        c: sqlite3.Connection,
        table: str,
        keycol: str,
        key: Any,
        cols: dict[str, Any],
        fields: dict[str, str],
    ) -> None:
        r = c.execute(f"SELECT fields FROM {table} WHERE {keycol}=?", (key,)).fetchone()
        merged = _fields(r["fields"]) if r else {}
        merged.update(fields)
        sets = ", ".join(f"{k}=?" for k in cols)
        c.execute(
            f"UPDATE {table} SET {sets + ', ' if sets else ''}fields=?, last_modified=? "
            f"WHERE {keycol}=?",
            (*cols.values(), json.dumps(merged), time.time(), key),
        )

    def update_fields(self, kind: str, key: Any, fields: dict[str, str]) -> None:
        """Merge ``fields`` into object ``key`` (scan key = ScanRow.pk)."""
        table, keycol = self._TABLES[kind]
        fields = dict(fields)
        cols: dict[str, Any] = {}
        if kind == "scan":
            cols = {k: fields.pop(k) for k in self._SCAN_COLS if k in fields}
        elif kind in ("experiment", "assessor") and "date" in fields:
            cols["date"] = fields.pop("date")
        elif kind == "project":
            for k in ("name", "description", "pi_firstname", "pi_lastname"):
                if k in fields:
                    cols[k] = fields.pop(k)
        with self.transaction() as c:
            self._update(c, table, keycol, key, cols, fields)

    def relabel(self, kind: str, object_id: str, label: str) -> None:
        """Give subject or experiment ``object_id`` a new label (the caller checked that the
        label is valid and free in its project)."""
        table = "subjects" if kind == "subject" else "experiments"
        with self.transaction() as c:
            c.execute(
                f"UPDATE {table} SET label=?, last_modified=? WHERE id=?",
                (label, time.time(), object_id),
            )

    # ----------------------------------------------------------------------------- resources
    def _resource(self, r: sqlite3.Row) -> ResourceRow:
        stats = (
            self._conn()
            .execute(
                "SELECT COUNT(*) n, COALESCE(SUM(size),0) s FROM files WHERE resource_id=?",
                (r["id"],),
            )
            .fetchone()
        )
        return ResourceRow(
            r["id"],
            *self._owner_key(r),
            r["label"],
            r["format"] or "",
            r["content"] or "",
            r["tags"] or "",
            r["description"] or "",
            r["insert_date"],
            stats["n"],
            stats["s"],
        )

    def _parent_key(self, parent: Parent) -> tuple[str, str, str, str, str, str]:
        """Validate ``parent`` and return the resources-table key columns."""
        project = parent.project or ""
        subject = experiment = scan = assessor = ""
        kind = parent.kind
        if kind == "project":
            if not project or self._one("SELECT 1 FROM projects WHERE id=?", (project,)) is None:
                raise NotFound(f"Unable to find project {project}")
        elif kind == "subject":
            s = self.get_subject(parent.subject or "")
            if s is None:
                raise NotFound(f"Unable to find subject {parent.subject}")
            project, subject = s.project, s.id
        else:
            e = self.get_experiment(parent.experiment or "")
            if e is None or e.session_id:
                raise NotFound(f"Unable to find experiment {parent.experiment}")
            project, experiment = e.project, e.id
            if kind == "scan":
                if self.get_scan(e.id, parent.scan or "") is None:
                    raise NotFound(f"Unable to find scan {parent.scan}")
                scan = parent.scan or ""
            elif kind == "assessor":
                a = self.find_assessor(e.id, parent.assessor or "")
                if a is None:
                    raise NotFound(f"Unable to find assessor {parent.assessor}")
                assessor = a.id
        return kind, project, subject, experiment, scan, assessor

    def create_resource(
        self,
        parent: Parent,
        label: str,
        format: str = "",
        content: str = "",
        tags: str = "",
        description: str = "",
    ) -> tuple[int, bool]:
        with self.transaction() as c:
            key = self._parent_key(parent)
            r = c.execute(
                "SELECT id FROM resources WHERE kind=? AND project=? AND subject_id=? AND "
                "experiment_id=? AND scan_id=? AND assessor_id=? AND label=?",
                (*key, label),
            ).fetchone()
            if r is not None:
                return int(r["id"]), False
            cur = c.execute(
                "INSERT INTO resources(kind, project, subject_id, experiment_id, scan_id, "
                "assessor_id, label, format, content, tags, description, insert_date) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*key, label, format, content, tags, description, time.time()),
            )
            self._touch_owner(c, key)
            return int(cur.lastrowid or 0), True

    @staticmethod
    def _owner_key(r: sqlite3.Row) -> tuple[str, str, str, str, str, str]:
        """A resource row's owner columns, in ``_parent_key``'s order."""
        return (
            r["kind"],
            r["project"],
            r["subject_id"],
            r["experiment_id"],
            r["scan_id"],
            r["assessor_id"],
        )

    def _touch_owner(self, c: sqlite3.Connection, key: tuple[str, ...]) -> None:
        now = time.time()
        kind, project, subject, experiment, scan, assessor = key
        if experiment:
            c.execute(
                "UPDATE experiments SET last_modified=? WHERE id IN (?,?)",
                (now, experiment, assessor),
            )
            if scan:
                c.execute(
                    "UPDATE scans SET last_modified=? WHERE experiment_id=? AND scan_id=?",
                    (now, experiment, scan),
                )
        elif subject:
            c.execute("UPDATE subjects SET last_modified=? WHERE id=?", (now, subject))
        elif project:
            c.execute("UPDATE projects SET last_modified=? WHERE id=?", (now, project))

    def get_resource(self, resource_id: int) -> Optional[ResourceRow]:
        r = self._one("SELECT * FROM resources WHERE id=?", (int(resource_id),))
        return self._resource(r) if r else None

    def list_resources(self, parent: Parent) -> list[ResourceRow]:
        try:
            key = self._parent_key(parent)
        except NotFound:
            return []
        rows = self._q(
            "SELECT * FROM resources WHERE kind=? AND project=? AND subject_id=? AND "
            "experiment_id=? AND scan_id=? AND assessor_id=? ORDER BY id",
            key,
        )
        return [self._resource(r) for r in rows]

    def find_resource(self, parent: Parent, id_or_label: str) -> Optional[ResourceRow]:
        """Label first, then numeric id, both within ``parent`` (§0.1)."""
        for r in self.list_resources(parent):
            if r.label == id_or_label:
                return r
        for r in self.list_resources(parent):
            if str(r.id) == id_or_label:
                return r
        return None

    def list_resources_under_experiment(self, experiment_id: str) -> list[ResourceRow]:
        rows = self._q(
            "SELECT * FROM resources WHERE experiment_id=? ORDER BY id", (experiment_id,)
        )
        return [self._resource(r) for r in rows]


class Store(_Catalog):
    """See the module docstring for the API; this part holds the files of resources (rows in
    ``files``, bytes in ``archive/<resource_id>/``) and the deletions that remove both."""

    # ----------------------------------------------------------------------------- files
    def _res_dir(self, resource_id: int) -> Path:
        return self.archive_dir / str(int(resource_id))

    def file_path(self, resource_id: int, relpath: str) -> Path:
        return self._res_dir(resource_id) / validate_relpath(relpath)

    @staticmethod
    def _file(r: sqlite3.Row) -> FileRow:
        return FileRow(
            r["resource_id"],
            r["relpath"],
            r["size"],
            r["md5"],
            r["mtime"],
            r["format"] or "",
            r["content"] or "",
            r["tags"] or "",
        )

    def get_file(self, resource_id: int, relpath: str) -> Optional[FileRow]:
        r = self._one(
            "SELECT * FROM files WHERE resource_id=? AND relpath=?", (int(resource_id), relpath)
        )
        return self._file(r) if r else None

    def list_files(self, resource_id: int, prefix: str = "") -> list[FileRow]:
        rows = self._q(
            "SELECT * FROM files WHERE resource_id=? ORDER BY relpath", (int(resource_id),)
        )
        files = [self._file(r) for r in rows]
        if prefix:
            p = prefix.rstrip("/") + "/"
            files = [f for f in files if f.relpath.startswith(p)]
        return files

    def new_temp(self) -> tuple[int, str]:
        """A staging file on the archive's filesystem (for callers that spool bodies)."""
        import tempfile

        return tempfile.mkstemp(dir=self.tmp_dir)

    def put_file(
        self,
        resource_id: int,
        relpath: str,
        fileobj: Readable,
        overwrite: bool = False,
        *,
        format: str = "",
        content: str = "",
        tags: str = "",
        expected_size: Optional[int] = None,
        mtime: Optional[float] = None,
    ) -> bool:
        """Stream ``fileobj`` into the resource. Returns False for a duplicate (not stored).

        The bytes go to a temp file first and are renamed into place only once complete, so a
        failing or short body never leaves a partial file in the catalog.
        """
        relpath = validate_relpath(relpath)
        if self.get_resource(resource_id) is None:
            raise NotFound(f"Unable to find resource {resource_id}")
        if not overwrite and self.get_file(resource_id, relpath) is not None:
            return False
        fd, tmp = self.new_temp()
        try:
            md5 = hashlib.md5()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    want = CHUNK if expected_size is None else min(CHUNK, expected_size - size)
                    if want <= 0:
                        break
                    buf = fileobj.read(want)
                    if not buf:
                        break
                    out.write(buf)
                    md5.update(buf)
                    size += len(buf)
            if expected_size is not None and size < expected_size:
                raise TruncatedUpload(f"Upload ended after {size} of {expected_size} bytes")
            return self._commit_file(
                resource_id,
                relpath,
                tmp,
                size,
                md5.hexdigest(),
                overwrite,
                format,
                content,
                tags,
                mtime,
            )
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_file_from_path(
        self,
        resource_id: int,
        relpath: str,
        path: str | os.PathLike[str],
        overwrite: bool = False,
        move: bool = False,
        *,
        format: str = "",
        content: str = "",
        tags: str = "",
        mtime: Optional[float] = None,
    ) -> bool:
        """Like put_file from a local file; ``move=True`` renames it instead of copying."""
        if not move:
            with open(path, "rb") as f:
                return self.put_file(
                    resource_id,
                    relpath,
                    f,
                    overwrite,
                    format=format,
                    content=content,
                    tags=tags,
                    mtime=mtime,
                )
        relpath = validate_relpath(relpath)
        md5 = hashlib.md5()
        with open(path, "rb") as f:
            for buf in iter(lambda: f.read(CHUNK), b""):
                md5.update(buf)
        if not overwrite and self.get_file(resource_id, relpath) is not None:
            return False
        return self._commit_file(
            resource_id,
            relpath,
            str(path),
            os.path.getsize(path),
            md5.hexdigest(),
            overwrite,
            format,
            content,
            tags,
            mtime,
        )

    def _commit_file(
        self,
        resource_id: int,
        relpath: str,
        tmp: str,
        size: int,
        md5: str,
        overwrite: bool,
        format: str,
        content: str,
        tags: str,
        mtime: Optional[float],
    ) -> bool:
        dest = self._res_dir(resource_id) / relpath
        with self.transaction() as c:
            if not overwrite and self.get_file(resource_id, relpath) is not None:
                return False
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            if mtime is not None:
                os.utime(dest, (mtime, mtime))
            st_mtime = dest.stat().st_mtime
            c.execute(
                "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?)",
                (int(resource_id), relpath, size, md5, st_mtime, format, content, tags),
            )
            r = c.execute("SELECT * FROM resources WHERE id=?", (int(resource_id),)).fetchone()
            self._touch_owner(c, self._owner_key(r))
            return True

    def delete_file(self, resource_id: int, relpath: str) -> bool:
        with self.transaction() as c:
            cur = c.execute(
                "DELETE FROM files WHERE resource_id=? AND relpath=?", (int(resource_id), relpath)
            )
            if cur.rowcount:
                try:
                    (self._res_dir(resource_id) / relpath).unlink()
                except FileNotFoundError:
                    pass
            return cur.rowcount > 0

    def delete_files_under(self, resource_id: int, prefix: str) -> int:
        """Delete a folder (``prefix`` without trailing slash) of a resource; returns count."""
        n = 0
        for f in self.list_files(resource_id, prefix):
            n += self.delete_file(resource_id, f.relpath)
        return n

    # ----------------------------------------------------------------------------- deletion
    def delete_resource(self, resource_id: int) -> bool:
        with self.transaction() as c:
            cur = c.execute("DELETE FROM resources WHERE id=?", (int(resource_id),))
            c.execute("DELETE FROM files WHERE resource_id=?", (int(resource_id),))
        shutil.rmtree(self._res_dir(resource_id), ignore_errors=True)
        return cur.rowcount > 0

    def _delete_resources(self, where: str, args: tuple[Any, ...]) -> None:
        for r in self._q(f"SELECT id FROM resources WHERE {where}", args):
            self.delete_resource(r["id"])

    def delete_scan(self, experiment_id: str, scan_id: str) -> bool:
        with self.transaction() as c:
            self._delete_resources(
                "kind='scan' AND experiment_id=? AND scan_id=?", (experiment_id, scan_id)
            )
            cur = c.execute(
                "DELETE FROM scans WHERE experiment_id=? AND scan_id=?", (experiment_id, scan_id)
            )
            return cur.rowcount > 0

    def delete_assessor(self, assessor_id: str) -> bool:
        with self.transaction() as c:
            self._delete_resources("kind='assessor' AND assessor_id=?", (assessor_id,))
            cur = c.execute("DELETE FROM experiments WHERE id=? AND session_id!=''", (assessor_id,))
            return cur.rowcount > 0

    def delete_experiment(self, experiment_id: str) -> bool:
        with self.transaction() as c:
            self._delete_resources("experiment_id=?", (experiment_id,))
            c.execute("DELETE FROM scans WHERE experiment_id=?", (experiment_id,))
            c.execute("DELETE FROM experiments WHERE session_id=?", (experiment_id,))
            cur = c.execute("DELETE FROM experiments WHERE id=?", (experiment_id,))
            return cur.rowcount > 0

    def delete_subject(self, subject_id: str, project: Optional[str] = None) -> bool:
        with self.transaction() as c:
            for e in self._q(
                "SELECT id FROM experiments WHERE subject_id=? AND session_id=''", (subject_id,)
            ):
                self.delete_experiment(e["id"])
            self._delete_resources("kind='subject' AND subject_id=?", (subject_id,))
            cur = c.execute("DELETE FROM subjects WHERE id=?", (subject_id,))
            return cur.rowcount > 0

    def delete_project(self, pid: str) -> bool:
        with self.transaction() as c:
            for s in self._q("SELECT id FROM subjects WHERE project=?", (pid,)):
                self.delete_subject(s["id"])
            for e in self._q("SELECT id FROM experiments WHERE project=?", (pid,)):
                self.delete_experiment(e["id"])
            self._delete_resources("project=?", (pid,))
            c.execute("DELETE FROM members WHERE project=?", (pid,))
            pre = f"project/{pid}/"
            c.execute("DELETE FROM meta WHERE substr(key, 1, ?) = ?", (len(pre), pre))
            cur = c.execute("DELETE FROM projects WHERE id=?", (pid,))
            return cur.rowcount > 0


class Transaction:
    """Write transaction under the store lock (re-entrant: nested uses join the outer one)."""

    def __init__(self, store: _Database) -> None:
        self.store = store
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        self.store.lock.acquire()
        c = self.store._conn()
        depth = getattr(self.store._local, "depth", 0)
        self.outer = depth == 0
        self.store._local.depth = depth + 1
        if self.outer:
            c.execute("BEGIN IMMEDIATE")
        return c

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        c = self.store._conn()
        self.store._local.depth -= 1
        try:
            if self.outer:
                c.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store.lock.release()
