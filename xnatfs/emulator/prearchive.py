"""The emulator's prearchive (``docs/XNAT-API.md`` §7): sessions that arrived through the import
service (or the demo seed) and wait to be archived, moved or deleted.

Why its own storage: the prearchive is not part of the archive catalog (``store.py``); a session
there is only a folder of DICOM plus one row of status columns.  It lives in
``data_dir/prearchive/`` (the folder ``store.py`` leaves to this module)::

    data_dir/prearchive/prearchive.sqlite3                        status rows (WAL)
    data_dir/prearchive/<project>/<timestamp>/<folder>/SCANS/<scan>/<resource>/<file>

A :class:`Prearchive` is cheap (one SQLite connection), so every request opens its own; all
state is on disk and status changes are single conditional UPDATEs, which keeps concurrent
requests (and the emulator restarted on the same data dir) consistent.

Status lifecycle (§7.1): ``RECEIVING`` (gradual-DICOM still arriving) -> ``BUILDING`` -> ``READY``
-> ``ARCHIVING`` -> row removed once the archive holds it.  Archiving onto an existing label
without ``overwrite`` leaves the session in ``CONFLICT``; a failure leaves ``ERROR``.  The batch
services ``/data/services/prearchive/{move,rebuild,delete}`` are queued as in XNAT
(``PrearchiveBatch*`` + JMS handlers, xnat-web): ``QUEUED_MOVING`` -> ``MOVING`` -> ``READY`` in
the new project (same timestamp and folder, ``PrearcDatabase._moveToProject``),
``QUEUED_BUILDING`` -> ``BUILDING`` -> ``READY``, ``QUEUED_DELETING`` -> ``DELETING`` -> gone;
each over :data:`QUEUE_DELAY_S`, advanced lazily by the next request (``_run_queue``).

HTTP: ``prearchive_http.py`` serves ``/data/prearchive...``, ``/data/services/archive`` and
``/data/services/prearchive/{move,delete,rebuild}`` on top of this module.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from .dicom import ParsedStudy
from .store import Conflict, Parent, Store

log = logging.getLogger(__name__)

#: the 19 listing columns, in DatabaseSession order (§7.1)
PREARC_COLUMNS = (
    "project",
    "timestamp",
    "lastmod",
    "uploaded",
    "scan_date",
    "scan_time",
    "subject",
    "folderName",
    "name",
    "tag",
    "status",
    "url",
    "autoarchive",
    "prevent_anon",
    "prevent_auto_commit",
    "SOURCE",
    "VISIT",
    "PROTOCOL",
    "TIMEZONE",
)

RECEIVING = "RECEIVING"
BUILDING = "BUILDING"
READY = "READY"
ARCHIVING = "ARCHIVING"
CONFLICT = "CONFLICT"
ERROR = "ERROR"
DELETING = "DELETING"
MOVING = "MOVING"
KNOWN_STATUSES = (
    RECEIVING,
    "RECEIVING_INTERRUPT",
    BUILDING,
    READY,
    ARCHIVING,
    CONFLICT,
    ERROR,
    DELETING,
    MOVING,
    "SEPARATING",
    "QUEUED_BUILDING",
    "QUEUED_ARCHIVING",
    "QUEUED_DELETING",
    "QUEUED_MOVING",
    "_BUILDING",
    "_ARCHIVING",
    "_DELETING",
    "_MOVING",
)

#: a gradual-DICOM session with no new file for this long counts as complete and is built
#: (XNAT's session idle timer; short here so tests need no long waits, `action=build` forces it)
RECEIVING_IDLE_S = 5.0

#: statuses from which a session may be archived, moved, rebuilt or deleted
_SETTLED = (READY, CONFLICT, ERROR)

#: how long a queued batch operation (move, rebuild, delete) takes in the emulator.  XNAT's
#: ``PrearchiveBatch{Move,Rebuild,Delete}`` only mark the session ``QUEUED_*`` and send a JMS
#: request; a handler later sets ``BUILDING``/``MOVING``/``DELETING`` and finishes (§7.3).  The
#: emulator keeps that shape: ``QUEUED_*`` for the first half of the delay, the in-progress
#: status for the second, then the result.  ``XNATFS_EMULATOR_PREARC_DELAY`` (seconds) overrides.
QUEUE_DELAY_S = 0.4

#: queued op -> (status while queued, status while running)
_QUEUED_STATUS = {
    "move": ("QUEUED_MOVING", MOVING),
    "rebuild": ("QUEUED_BUILDING", BUILDING),
    "delete": ("QUEUED_DELETING", DELETING),
}

UNASSIGNED = "Unassigned"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    project TEXT NOT NULL, timestamp TEXT NOT NULL, folder TEXT NOT NULL,
    name TEXT NOT NULL, subject TEXT NOT NULL DEFAULT '', tag TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL, uploaded REAL NOT NULL, lastmod REAL NOT NULL,
    scan_date TEXT NOT NULL DEFAULT '', scan_time TEXT NOT NULL DEFAULT '',
    autoarchive TEXT NOT NULL DEFAULT 'Manual', prevent_anon TEXT NOT NULL DEFAULT 'false',
    prevent_auto_commit TEXT NOT NULL DEFAULT 'false', source TEXT NOT NULL DEFAULT '',
    visit TEXT NOT NULL DEFAULT '', protocol TEXT NOT NULL DEFAULT '',
    timezone TEXT NOT NULL DEFAULT '', modality TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (project, timestamp, folder));
CREATE TABLE IF NOT EXISTS scans (
    project TEXT NOT NULL, timestamp TEXT NOT NULL, folder TEXT NOT NULL, scan_id TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT '', series_description TEXT NOT NULL DEFAULT '',
    modality TEXT NOT NULL DEFAULT '', uid TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (project, timestamp, folder, scan_id));
CREATE TABLE IF NOT EXISTS queued (
    project TEXT NOT NULL, timestamp TEXT NOT NULL, folder TEXT NOT NULL, op TEXT NOT NULL,
    arg TEXT NOT NULL DEFAULT '', started REAL NOT NULL, due REAL NOT NULL,
    PRIMARY KEY (project, timestamp, folder));
"""


class PrearchiveError(Exception):
    """Base: carries the HTTP status the handler answers with."""

    status = 400

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class SessionNotFound(PrearchiveError):
    status = 404


class StatusConflict(PrearchiveError):
    """The session is not in a state that allows the operation (XNAT answers 409 / 403)."""

    status = 409


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def java_timestamp(t: float) -> str:
    """``java.sql.Timestamp.toString()``: local time, millis, trailing zeros dropped (``.0``
    kept)."""
    d = _dt.datetime.fromtimestamp(t)
    frac = f"{d.microsecond // 1000:03d}".rstrip("0") or "0"
    return d.strftime("%Y-%m-%d %H:%M:%S.") + frac


def prearc_timestamp(t: float) -> str:
    """The prearchive folder timestamp ``yyyyMMdd_HHmmssSSS`` (§7.1)."""
    d = _dt.datetime.fromtimestamp(t)
    return d.strftime("%Y%m%d_%H%M%S") + f"{d.microsecond // 1000:03d}"


@dataclass
class PrearcSession:
    project: str
    timestamp: str
    folder: str
    name: str
    subject: str
    tag: str
    status: str
    uploaded: float
    lastmod: float
    scan_date: str = ""
    scan_time: str = ""
    autoarchive: str = "Manual"
    prevent_anon: str = "false"
    prevent_auto_commit: str = "false"
    source: str = ""
    visit: str = ""
    protocol: str = ""
    timezone: str = ""
    modality: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project, self.timestamp, self.folder)

    @property
    def url(self) -> str:
        """Without ``/data`` (§7.1, §10.20)."""
        return f"/prearchive/projects/{self.project}/{self.timestamp}/{self.folder}"

    def row(self) -> dict[str, str]:
        """One listing row: the 19 columns, every value a string."""
        return {
            "project": self.project,
            "timestamp": self.timestamp,
            "lastmod": java_timestamp(self.lastmod),
            "uploaded": java_timestamp(self.uploaded),
            "scan_date": self.scan_date,
            "scan_time": self.scan_time,
            "subject": self.subject,
            "folderName": self.folder,
            "name": self.name,
            "tag": self.tag,
            "status": self.status,
            "url": self.url,
            "autoarchive": self.autoarchive,
            "prevent_anon": self.prevent_anon,
            "prevent_auto_commit": self.prevent_auto_commit,
            "SOURCE": self.source,
            "VISIT": self.visit,
            "PROTOCOL": self.protocol,
            "TIMEZONE": self.timezone,
        }


@dataclass
class PrearcScan:
    scan_id: str
    type: str
    series_description: str
    modality: str
    uid: str


@dataclass
class PrearcFile:
    relpath: str  # relative to the resource folder
    size: int
    path: Path


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def prearchive_root(store: Store) -> Path:
    return Path(store.data_dir) / "prearchive"


class Prearchive:
    """Prearchive rows and folders under ``root``.  Use as a context manager (closes the DB)."""

    def __init__(
        self,
        root: os.PathLike[str] | str,
        clock: Callable[[], float] = time.time,
        receiving_idle_s: float = RECEIVING_IDLE_S,
        queue_delay_s: Optional[float] = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.receiving_idle_s = receiving_idle_s
        if queue_delay_s is None:
            queue_delay_s = float(os.environ.get("XNATFS_EMULATOR_PREARC_DELAY", QUEUE_DELAY_S))
        self.queue_delay_s = max(0.0, queue_delay_s)
        self._in_queue = False
        self._db = sqlite3.connect(
            self.root / "prearchive.sqlite3",
            timeout=30,
            isolation_level=None,
            check_same_thread=False,
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def for_store(cls, store: Store, **kw: Any) -> "Prearchive":
        return cls(prearchive_root(store), **kw)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Prearchive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ paths
    def session_dir(self, s: PrearcSession) -> Path:
        return self.root / s.project / s.timestamp / s.folder

    def resource_dir(self, s: PrearcSession, scan_id: str, resource: str) -> Path:
        return self.session_dir(s) / "SCANS" / scan_id / resource

    # ------------------------------------------------------------------ rows
    @staticmethod
    def _session(r: sqlite3.Row) -> PrearcSession:
        return PrearcSession(
            project=r["project"],
            timestamp=r["timestamp"],
            folder=r["folder"],
            name=r["name"],
            subject=r["subject"],
            tag=r["tag"],
            status=r["status"],
            uploaded=r["uploaded"],
            lastmod=r["lastmod"],
            scan_date=r["scan_date"],
            scan_time=r["scan_time"],
            autoarchive=r["autoarchive"],
            prevent_anon=r["prevent_anon"],
            prevent_auto_commit=r["prevent_auto_commit"],
            source=r["source"],
            visit=r["visit"],
            protocol=r["protocol"],
            timezone=r["timezone"],
            modality=r["modality"],
        )

    def _settle_receiving(self) -> None:
        """RECEIVING sessions idle for ``receiving_idle_s`` are built (XNAT's idle timer), and
        queued operations whose time has come run (XNAT's JMS handlers; lazily, on the next
        request, so the emulator needs no worker thread)."""
        cutoff = self.clock() - self.receiving_idle_s
        self._db.execute(
            "UPDATE sessions SET status=? WHERE status=? AND lastmod<?", (READY, RECEIVING, cutoff)
        )
        self._run_queue()

    # ------------------------------------------------------------------ queued operations
    def enqueue(self, s: PrearcSession, op: str, arg: str = "") -> PrearcSession:
        """Mark ``s`` ``QUEUED_<OP>`` and queue ``op`` (``PrearchiveBatch*``, §7.3); answers the
        session as the service's status table shows it (still in its old project)."""
        queued_status, _running = _QUEUED_STATUS[op]
        allowed = _SETTLED if op == "move" else (RECEIVING, "RECEIVING_INTERRUPT", *_SETTLED)
        try:
            self.set_status(s, queued_status, allowed)
        except StatusConflict:
            # PrearchiveBatchMove & co.: SessionException InvalidStatus -> 403
            raise StatusConflict(
                f"Can't {op} session {s.folder} and timestamp {s.timestamp} in "
                f"project {s.project} as it has an invalid status",
                403,
            ) from None
        now = self.clock()
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO queued VALUES (?,?,?,?,?,?,?)",
                (*s.key, op, arg, now, now + self.queue_delay_s),
            )
        if self.queue_delay_s <= 0:
            self._run_queue()
        return s

    def _run_queue(self) -> None:
        if self._in_queue:
            return
        self._in_queue = True
        try:
            now = self.clock()
            for r in self._db.execute("SELECT * FROM queued").fetchall():
                key = (r["project"], r["timestamp"], r["folder"])
                queued_status, running = _QUEUED_STATUS.get(r["op"], ("", ""))
                if now < r["due"]:
                    if now >= (r["started"] + r["due"]) / 2:  # the handler has picked it up
                        self._db.execute(
                            "UPDATE sessions SET status=? WHERE project=? AND "
                            "timestamp=? AND folder=? AND status=?",
                            (running, *key, queued_status),
                        )
                    continue
                with self._tx() as c:  # claim it: one request runs each queued op
                    if (
                        c.execute(
                            "DELETE FROM queued WHERE project=? AND timestamp=? AND folder=?", key
                        ).rowcount
                        == 0
                    ):
                        continue
                row = self._db.execute(
                    "SELECT * FROM sessions WHERE project=? AND timestamp=? AND folder=?", key
                ).fetchone()
                if row is None:
                    continue
                s = self._session(row)
                try:
                    if r["op"] == "move":
                        self.move(s, r["arg"], (queued_status, running))
                    elif r["op"] == "rebuild":
                        self.set_status(s, READY, (queued_status, running))
                    elif r["op"] == "delete":
                        self.remove(s)
                except Exception as exc:  # noqa: BLE001 - like a JMS handler: the session
                    # shows the failure (move() leaves ERROR); the request that ran it is not hurt
                    log.warning("queued %s of %s failed: %s", r["op"], s.url, exc)
        finally:
            self._in_queue = False

    def get(self, project: str, timestamp: str, folder: str) -> Optional[PrearcSession]:
        self._settle_receiving()
        r = self._db.execute(
            "SELECT * FROM sessions WHERE project=? AND timestamp=? AND folder=?",
            (project, timestamp, folder),
        ).fetchone()
        return self._session(r) if r else None

    def require(self, project: str, timestamp: str, folder: str) -> PrearcSession:
        s = self.get(project, timestamp, folder)
        if s is None:
            raise SessionNotFound(
                f"Unable to find prearchive session {project}/{timestamp}/{folder}"
            )
        return s

    def from_url(self, url: str) -> PrearcSession:
        """A session from ``[/data]/prearchive/projects/P/TS/FOLDER`` (the ``src`` parameter)."""
        parts = [p for p in url.split("?")[0].split("/") if p]
        if parts and parts[0] in ("data", "REST"):
            parts = parts[1:]
        if len(parts) < 5 or parts[0] != "prearchive" or parts[1] != "projects":
            raise PrearchiveError(f"Invalid prearchive session URI: {url}")
        return self.require(parts[2], parts[3], parts[4])

    def list(self, projects: Optional[Iterable[str]] = None) -> builtins.list[PrearcSession]:
        self._settle_receiving()
        rows = self._db.execute("SELECT * FROM sessions ORDER BY project, timestamp, folder")
        wanted = None if projects is None else set(projects)
        return [self._session(r) for r in rows if wanted is None or r["project"] in wanted]

    def scans(self, s: PrearcSession) -> builtins.list[PrearcScan]:
        rows = self._db.execute(
            "SELECT * FROM scans WHERE project=? AND timestamp=? AND folder=?", s.key
        ).fetchall()
        out = [
            PrearcScan(r["scan_id"], r["type"], r["series_description"], r["modality"], r["uid"])
            for r in rows
        ]
        return sorted(out, key=lambda x: _natural_key(x.scan_id))

    def resources(self, s: PrearcSession, scan_id: str) -> builtins.list[str]:
        d = self.session_dir(s) / "SCANS" / scan_id
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def files(self, s: PrearcSession, scan_id: str, resource: str) -> builtins.list[PrearcFile]:
        base = self.resource_dir(s, scan_id, resource)
        if not base.is_dir():
            return []
        out: builtins.list[PrearcFile] = []
        for dirpath, _dirs, names in os.walk(base):
            for n in names:
                p = Path(dirpath) / n
                out.append(PrearcFile(p.relative_to(base).as_posix(), p.stat().st_size, p))
        return sorted(out, key=lambda f: f.relpath)

    # ------------------------------------------------------------------ creation
    def _unique_timestamp(self, project: str, folder: str, when: float) -> str:
        ts = prearc_timestamp(when)
        while (
            self._db.execute(
                "SELECT 1 FROM sessions WHERE project=? AND timestamp=? AND folder=?",
                (project, ts, folder),
            ).fetchone()
            is not None
        ):
            when += 0.001
            ts = prearc_timestamp(when)
        return ts

    def create_session(
        self,
        project: str,
        name: str,
        *,
        subject: str = "",
        tag: str = "",
        status: str = RECEIVING,
        scan_date: str = "",
        scan_time: str = "",
        source: str = "",
        modality: str = "",
        when: Optional[float] = None,
    ) -> PrearcSession:
        """A new empty session row (and folder) in ``status``."""
        now = self.clock() if when is None else when
        folder = safe_segment(name) or "session"
        with self._tx() as c:
            ts = self._unique_timestamp(project, folder, now)
            s = PrearcSession(
                project=project,
                timestamp=ts,
                folder=folder,
                name=name,
                subject=subject,
                tag=tag,
                status=status,
                uploaded=now,
                lastmod=now,
                scan_date=scan_date,
                scan_time=scan_time,
                source=source,
                modality=modality,
            )
            c.execute(
                "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    s.project,
                    s.timestamp,
                    s.folder,
                    s.name,
                    s.subject,
                    s.tag,
                    s.status,
                    s.uploaded,
                    s.lastmod,
                    s.scan_date,
                    s.scan_time,
                    s.autoarchive,
                    s.prevent_anon,
                    s.prevent_auto_commit,
                    s.source,
                    s.visit,
                    s.protocol,
                    s.timezone,
                    s.modality,
                ),
            )
        self.session_dir(s).mkdir(parents=True, exist_ok=True)
        return s

    def find_receiving(self, project: str, tag: str) -> Optional[PrearcSession]:
        """The gradual-DICOM session still receiving study ``tag`` in ``project``."""
        self._settle_receiving()
        r = self._db.execute(
            "SELECT * FROM sessions WHERE project=? AND tag=? AND status=? "
            "ORDER BY timestamp DESC LIMIT 1",
            (project, tag, RECEIVING),
        ).fetchone()
        return self._session(r) if r else None

    def add_study(self, s: PrearcSession, study: ParsedStudy, *, move: bool = True) -> None:
        """File the staged DICOM of ``study`` into ``s`` (``SCANS/<SeriesNumber>/DICOM``) and
        record its scans; bumps ``lastmod``."""
        for series in study.sorted_series():
            dest = self.resource_dir(s, series.scan_id, "DICOM")
            dest.mkdir(parents=True, exist_ok=True)
            for f in series.files:
                if move:
                    os.replace(f.path, dest / f.name)
                else:
                    shutil.copyfile(f.path, dest / f.name)
        self.record_scans(
            s,
            [
                (x.scan_id, x.type, x.type, x.modality, x.series_instance_uid)
                for x in study.sorted_series()
            ],
        )

    def record_scans(
        self, s: PrearcSession, scans: Sequence[tuple[str, str, str, str, str]]
    ) -> None:
        """Upsert (scan_id, type, series_description, modality, uid) rows and bump lastmod."""
        with self._tx() as c:
            for scan_id, type_, desc, modality, uid in scans:
                c.execute(
                    "INSERT OR REPLACE INTO scans VALUES (?,?,?,?,?,?,?,?)",
                    (*s.key, scan_id, type_, desc, modality, uid),
                )
            c.execute(
                "UPDATE sessions SET lastmod=? WHERE project=? AND timestamp=? AND folder=?",
                (self.clock(), *s.key),
            )

    def put_scan_file(
        self,
        s: PrearcSession,
        scan_id: str,
        resource: str,
        name: str,
        data: bytes,
        mtime: Optional[float] = None,
    ) -> None:
        """Write one file directly (the demo seed builds its waiting session this way)."""
        dest = self.resource_dir(s, scan_id, resource)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
        if mtime is not None:
            os.utime(dest / name, (mtime, mtime))

    # ------------------------------------------------------------------ status
    def set_status(
        self, s: PrearcSession, status: str, allowed_from: Optional[Sequence[str]] = None
    ) -> PrearcSession:
        """Atomically move ``s`` to ``status``; with ``allowed_from``, only from those states
        (else :class:`StatusConflict`)."""
        with self._tx() as c:
            if allowed_from is None:
                cur = c.execute(
                    "UPDATE sessions SET status=?, lastmod=? WHERE project=? AND "
                    "timestamp=? AND folder=?",
                    (status, self.clock(), *s.key),
                )
            else:
                marks = ",".join("?" * len(allowed_from))
                cur = c.execute(
                    f"UPDATE sessions SET status=?, lastmod=? WHERE project=? AND "
                    f"timestamp=? AND folder=? AND status IN ({marks})",
                    (status, self.clock(), *s.key, *allowed_from),
                )
            if cur.rowcount == 0:
                cur_row = c.execute(
                    "SELECT status FROM sessions WHERE project=? AND timestamp=? AND folder=?",
                    s.key,
                ).fetchone()
                if cur_row is None:
                    raise SessionNotFound(f"Unable to find prearchive session {s.url}")
                raise StatusConflict(
                    "Operation already in progress on this prearchive entry.",
                    403 if cur_row["status"] in (ARCHIVING, DELETING, MOVING) else 409,
                )
        s.status = status
        return s

    def build(self, s: PrearcSession) -> PrearcSession:
        """RECEIVING/READY/CONFLICT/ERROR -> BUILDING -> READY (the folder is the truth)."""
        self.set_status(s, BUILDING, (RECEIVING, "RECEIVING_INTERRUPT", *_SETTLED))
        return self.set_status(s, READY)

    def delete(self, s: PrearcSession) -> None:
        self.set_status(s, DELETING, (RECEIVING, "RECEIVING_INTERRUPT", *_SETTLED))
        self.remove(s)

    def remove(self, s: PrearcSession) -> None:
        """Drop the row and folder unconditionally (after a successful archive or delete)."""
        with self._tx() as c:
            c.execute("DELETE FROM sessions WHERE project=? AND timestamp=? AND folder=?", s.key)
            c.execute("DELETE FROM scans WHERE project=? AND timestamp=? AND folder=?", s.key)
        shutil.rmtree(self.session_dir(s), ignore_errors=True)
        ts_dir = self.session_dir(s).parent
        with contextlib.suppress(OSError):
            ts_dir.rmdir()  # only when empty

    def move(
        self, s: PrearcSession, new_project: str, allowed_from: Sequence[str] = _SETTLED
    ) -> PrearcSession:
        """Move to another project's prearchive (same timestamp/folder when free), READY there
        (``PrearcDatabase._moveToProject``); onto its own project it just becomes READY again."""
        if new_project == s.project:
            return self.set_status(s, READY, allowed_from)
        self.set_status(s, MOVING, allowed_from)
        try:
            with self._tx() as c:
                ts = self._unique_timestamp(
                    new_project, s.folder, _parse_prearc_timestamp(s.timestamp)
                )
                old_dir = self.session_dir(s)
                new = PrearcSession(
                    **{
                        **s.__dict__,
                        "project": new_project,
                        "timestamp": ts,
                        "status": READY,
                        "lastmod": self.clock(),
                    }
                )
                c.execute(
                    "UPDATE sessions SET project=?, timestamp=?, status=?, lastmod=? WHERE "
                    "project=? AND timestamp=? AND folder=?",
                    (new.project, new.timestamp, new.status, new.lastmod, *s.key),
                )
                c.execute(
                    "UPDATE scans SET project=?, timestamp=? WHERE project=? AND "
                    "timestamp=? AND folder=?",
                    (new.project, new.timestamp, *s.key),
                )
                new_dir = self.session_dir(new)
                new_dir.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old_dir, new_dir)
            with contextlib.suppress(OSError):
                old_dir.parent.rmdir()
            return new
        except Exception:
            with contextlib.suppress(PrearchiveError):
                self.set_status(s, ERROR)
            raise

    # ------------------------------------------------------------------ archives
    def iter_archive_entries(
        self, s: PrearcSession, scan_ids: Optional[Iterable[str]] = None
    ) -> Iterator[tuple[str, Path]]:
        """(name inside a zip, local path) for the session folder, ``{folder}/SCANS/...``."""
        base = self.session_dir(s)
        wanted = None if scan_ids is None else set(scan_ids)
        scans_dir = base / "SCANS"
        if not scans_dir.is_dir():
            return
        for scan_dir in sorted(scans_dir.iterdir(), key=lambda p: _natural_key(p.name)):
            if wanted is not None and scan_dir.name not in wanted:
                continue
            for dirpath, _dirs, names in sorted(os.walk(scan_dir)):
                for n in sorted(names):
                    p = Path(dirpath) / n
                    yield f"{s.folder}/{p.relative_to(base).as_posix()}", p


def _natural_key(text: str) -> tuple:
    try:
        return (0, int(text), text)
    except ValueError:
        return (1, 0, text)


def safe_segment(text: str) -> str:
    """A label usable as one URL/path segment (XNAT allows ``[A-Za-z0-9_-]``, §10.17)."""
    out = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in text.strip())
    return out.strip("_") or ""


def _parse_prearc_timestamp(ts: str) -> float:
    try:
        d = _dt.datetime.strptime(ts, "%Y%m%d_%H%M%S%f")
        return d.timestamp()
    except ValueError:
        return time.time()


# --------------------------------------------------------------------------------------------
# Writing a session into the archive (shared with the importer's Direct-Archive path)
# --------------------------------------------------------------------------------------------

#: modality -> (session xsiType, scan xsiType)
_XSI_BY_MODALITY: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "MR": ("xnat:mrSessionData", "xnat:mrScanData"),
        "CT": ("xnat:ctSessionData", "xnat:ctScanData"),
        "PT": ("xnat:petSessionData", "xnat:petScanData"),
    }
)
_XSI_OTHER = ("xnat:otherDicomSessionData", "xnat:otherDicomScanData")

OVERWRITE_MODES = ("none", "append", "delete")


def xsi_types_for(modality: str) -> tuple[str, str]:
    return _XSI_BY_MODALITY.get((modality or "").upper(), _XSI_OTHER)


def normalise_overwrite(value: Optional[str]) -> str:
    """``none|append|delete``; legacy booleans: true -> append, false/empty -> none (§6)."""
    v = (value or "").strip().lower()
    if v in OVERWRITE_MODES:
        return v
    if v in ("true", "yes", "1"):
        return "append"
    if v in ("", "false", "no", "0"):
        return "none"
    raise PrearchiveError(f"Invalid overwrite value: {value}")


@dataclass
class ScanContent:
    """What one scan brings into the archive: metadata and files per resource label."""

    scan_id: str
    type: str
    series_description: str
    modality: str
    uid: str
    resources: dict[str, list[tuple[str, Path]]] = field(
        default_factory=dict
    )  # label -> (relpath, path)


@dataclass
class SessionContent:
    modality: str
    date: str = ""  # YYYY-MM-DD
    time: str = ""  # HH:MM:SS
    uid: str = ""  # StudyInstanceUID
    scans: list[ScanContent] = field(default_factory=list)


class ArchiveConflict(PrearchiveError):
    status = 409


def write_session(
    store: Store,
    content: SessionContent,
    *,
    project: str,
    subject: str,
    label: str,
    overwrite: str = "none",
    user: str = "admin",
    move_files: bool = False,
) -> str:
    """Create (or, per ``overwrite``, extend or replace) experiment ``label`` of ``subject`` in
    ``project`` from ``content``; returns the experiment accession ID.

    Raises :class:`ArchiveConflict` when the label exists and ``overwrite`` is ``none``.  Runs in
    one store transaction: a failure part way leaves no rows (files already renamed into the
    archive folder stay orphaned but invisible)."""
    overwrite = normalise_overwrite(overwrite)
    session_xsi, scan_xsi = xsi_types_for(content.modality)
    with store.transaction():
        existing = store.find_experiment(project, label)
        if existing is not None and not existing.session_id:
            if overwrite == "none":
                raise ArchiveConflict(
                    f"Session {label} already exists in project {project}, retry with overwrite "
                    f"enabled"
                )
            if overwrite == "delete":
                for old in store.list_scans(existing.id):
                    store.delete_scan(existing.id, old.id)
        fields = {
            k: v
            for k, v in (
                ("date", content.date),
                ("time", content.time),
                ("modality", content.modality),
                ("UID", content.uid),
            )
            if v
        }
        try:
            eid, _created = store.create_experiment(
                project, subject, label, session_xsi, fields=fields, user=user
            )
        except Conflict as exc:
            raise ArchiveConflict(str(exc)) from exc
        for scan in content.scans:
            _write_scan(store, project, eid, scan, content.modality, move_files)
        return eid


def _write_scan(
    store: Store, project: str, eid: str, scan: ScanContent, modality: str, move_files: bool
) -> None:
    """One scan of :func:`write_session` with its resources and files (inside its
    transaction); ``modality`` is the session's, for a scan that has none."""
    n_files = sum(len(v) for v in scan.resources.values())
    scan_fields = {
        "type": scan.type,
        "series_description": scan.series_description,
        "quality": "usable",
    }
    if scan.uid:
        scan_fields["UID"] = scan.uid
    if n_files:
        scan_fields["frames"] = str(n_files)
    store.create_scan(
        eid,
        scan.scan_id,
        xsi_types_for(scan.modality or modality)[1],
        fields=scan_fields,
    )
    for res_label, files in scan.resources.items():
        fmt = "DICOM" if res_label.upper() == "DICOM" else ""
        rid, _ = store.create_resource(
            Parent(project=project, experiment=eid, scan=scan.scan_id),
            res_label,
            format=fmt,
            content="RAW" if fmt else "",
        )
        for relpath, path in files:
            store.put_file_from_path(
                rid,
                relpath,
                path,
                overwrite=True,
                move=move_files,
                format=fmt,
                content="RAW" if fmt else "",
            )


def session_content_from_prearchive(pa: Prearchive, s: PrearcSession) -> SessionContent:
    scans = []
    for sc in pa.scans(s):
        resources = {}
        for res in pa.resources(s, sc.scan_id):
            resources[res] = [(f.relpath, f.path) for f in pa.files(s, sc.scan_id, res)]
        scans.append(
            ScanContent(sc.scan_id, sc.type, sc.series_description, sc.modality, sc.uid, resources)
        )
    date = s.scan_date.split(" ")[0] if s.scan_date else ""
    return SessionContent(
        modality=s.modality or "MR", date=date, time=s.scan_time, uid=s.tag, scans=scans
    )


def archive_uri(store: Store, experiment_id: str) -> str:
    """``/data/archive/projects/P/subjects/<subject label>/experiments/<label>`` (§7.3)."""
    e = store.get_experiment(experiment_id)
    assert e is not None, experiment_id  # just written by the caller
    subj = store.get_subject(e.subject_id)
    assert subj is not None, e.subject_id
    return f"/data/archive/projects/{e.project}/subjects/{subj.label}/experiments/{e.label}"


def archive_session(
    store: Store,
    pa: Prearchive,
    s: PrearcSession,
    *,
    project: Optional[str] = None,
    subject: Optional[str] = None,
    label: Optional[str] = None,
    overwrite: Optional[str] = None,
    user: str = "admin",
) -> str:
    """The archive step (§7.3): READY/CONFLICT/ERROR -> ARCHIVING -> written to the archive ->
    prearchive row removed.  Returns the archive URI (with ``/data``).  A label clash without
    overwrite leaves the session in CONFLICT (and raises :class:`ArchiveConflict`)."""
    project = project or s.project
    row = store.get_project(project) if project != UNASSIGNED else None
    if row is None:
        raise PrearchiveError(
            f"Invalid project {project}: a session must be archived into an existing project",
            400 if project == UNASSIGNED else 404,
        )
    project = row.id
    subject = subject or s.subject or s.name
    label = label or s.name
    pa.set_status(s, ARCHIVING, _SETTLED)
    try:
        content = session_content_from_prearchive(pa, s)
        eid = write_session(
            store,
            content,
            project=project,
            subject=subject,
            label=label,
            overwrite=overwrite or "none",
            user=user,
        )
    except ArchiveConflict:
        pa.set_status(s, CONFLICT)
        raise
    except Exception:
        log.exception("archiving %s failed", s.url)
        pa.set_status(s, ERROR)
        raise
    pa.remove(s)
    return archive_uri(store, eid)
