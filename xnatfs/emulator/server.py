"""Serving the emulator: cheroot WSGI server thread, fault injection, access log.

Why cheroot: a maintained, multi-threaded HTTP/1.1 server with keep-alive and chunked bodies,
so the emulator behaves like a real server under concurrent FUSE reads. Faults are a WSGI
middleware so they see exactly what a client sees (status, partial bodies, closed sockets).
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from cheroot import wsgi
from werkzeug.wrappers import Request, Response

from . import formats
from .app import XnatApp
from .auth import SessionTable
from .seed import seed_demo
from .serving import AppConfig, DropConnection, error_response, json_response
from .store import Store, UserRow

log = logging.getLogger(__name__)


@dataclass
class Faults:
    """Live-settable fault knobs (read on every request; plain attribute writes are atomic)."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    drop_rate: float = 0.0
    html_login_rate: float = 0.0
    #: the next ``cut_next`` GET answers with more than ``cut_after`` body bytes send that many,
    #: then the connection closes (a reset mid-body: a proxy's timeout, a restart), one each
    cut_next: int = 0
    cut_after: int = 65536
    #: the next ``trickle_next`` GETs of a file (``.../files/NAME``) send their body at
    #: ``trickle_bps`` bytes a second, a little every 0.1 s: always some progress, never done
    #: in time (a crawling server or link), one each
    trickle_next: int = 0
    trickle_bps: int = 1000
    #: the methods ``latency_ms``, ``error_rate`` and ``drop_rate`` apply to (comma-separated,
    #: e.g. ``DELETE``: a move whose copy lands and whose delete fails); "" for all
    fault_methods: str = ""

    def hits(self, method: str) -> bool:
        """Do the latency, error and drop faults apply to a request of ``method``?"""
        methods = {m.strip().upper() for m in self.fault_methods.split(",") if m.strip()}
        return not methods or method.upper() in methods

    def drops(self, method: str) -> bool:
        """May a request of ``method`` be dropped after it is served?  Never an upload or an
        import: their bodies are cut instead (``Emulator._body_filter``)."""
        return self.drop_rate > 0 and method not in ("PUT", "POST") and self.hits(method)

    def update(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if k not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault field {k!r}")
            cur = getattr(self, k)
            setattr(self, k, type(cur)(v))
        if self.error_status not in (500, 502, 503, 504):
            raise ValueError("error_status must be 500, 502, 503 or 504")


@dataclass(frozen=True)
class AccessRecord:
    method: str
    path_qs: str
    status: int
    bytes_sent: int


class _QuietServer(wsgi.Server):
    """cheroot logs every dropped connection as an error; ours are on purpose."""

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        if traceback:
            log.log(level, "cheroot: %s", msg, exc_info=True)
        else:
            log.log(logging.DEBUG if level < logging.WARNING else level, "cheroot: %s", msg)


class Emulator:
    """A faithful XNAT server for tests, the demo and benchmarks (see docs/ARCHITECTURE.md §11)."""

    def __init__(
        self,
        data_dir: str | Path,
        user: str = "admin",
        password: str = "admin",
        seed: str = "empty",
        latency_ms: float = 0,
        access_log: Optional[str | Path] = None,
        session_timeout: float = 900.0,
        host: str = "127.0.0.1",
        port: int = 0,
        context_path: str = "",
        extra_users: Sequence[tuple[str, str, Sequence[str]]] = (),
        threads: int = 32,
        site_id: str = "XNAT",
        session_lifetime: float = 0.0,
        buffering_proxy: bool = False,
        checksums: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.user = user
        self.password = password
        self.seed = seed
        self.host = host
        self.port = port
        self.context_path = "/" + context_path.strip("/") if context_path.strip("/") else ""
        self.access_log_path = Path(access_log) if access_log else None
        self.extra_users = list(extra_users)
        self.threads = threads
        self.site_id = site_id
        #: live fault knobs
        self.faults = Faults(latency_ms=float(latency_ms))
        #: session_lifetime > 0: every session ends that many seconds after login (faults)
        self.sessions = SessionTable(session_timeout, lifetime=session_lifetime)
        #: answer as an XNAT behind nginx's request buffering (chunked uploads stored)
        self.buffering_proxy = buffering_proxy
        #: off: answer as a site with checksums off (no MD5 in listings and catalogs)
        self.checksums = checksums
        self.store: Optional[Store] = None
        self._server: Optional[wsgi.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._records: list[AccessRecord] = []
        self._records_lock = threading.Lock()  # protects _records, _in_flight and the log file
        self._idle = threading.Condition(self._records_lock)
        #: requests that arrived and are not recorded yet
        self._in_flight = 0
        #: requests being served, counted from arrival until *before* their last chunk is
        #: written (so never above what a client has in flight), and the most seen at once
        #: since ``reset_peak`` (politeness tests, issue 13 §2); under _records_lock
        self._active = 0
        self.peak_active = 0
        self._log_fh: Any = None
        self._rng = random.Random()
        self.url = ""

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> "Emulator":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(self.data_dir, site_id=self.site_id)
        fresh = store.is_empty()
        store.add_user(self.user, self.password, admin=True)
        for name, pw, projects in self.extra_users:
            store.add_user(name, pw, projects)
        if self.seed == "demo" and fresh:
            seed_demo(store)
            # the users given to the emulator win over the seed's own (``--user alice`` with
            # the demo seed: the seed's alice must not replace the admin asked for, issue 16 §8)
            store.add_user(self.user, self.password, admin=True)
            for name, pw, projects in self.extra_users:
                store.add_user(name, pw, projects)
        elif self.seed not in ("demo", "empty"):
            raise ValueError(f"unknown seed {self.seed!r} (demo|empty)")
        self.store = store
        if self.access_log_path is not None:
            # open for the server's life, closed by stop()
            log_fh = open(self.access_log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._log_fh = log_fh
        config = AppConfig(self.context_path, self.site_id, self.data_dir, self.buffering_proxy)
        app = XnatApp(
            store,
            self.sessions,
            replace(config, checksums=self.checksums),
            control=self._control,
            body_filter=self._body_filter,
        )
        if self.port == 0:
            # pick the port ourselves: cheroot sets SO_REUSEADDR only for an explicit port, and
            # without it a restart on the same port fails while old connections sit in
            # TIME_WAIT (tests stop and restart the server to play "XNAT went away")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self.host, 0))
                self.port = probe.getsockname()[1]
        self._server = _QuietServer(
            (self.host, self.port),
            self._middleware(app),
            numthreads=self.threads,
            server_name="XNAT",
            request_queue_size=64,
            timeout=60,
        )
        try:
            self._server.prepare()  # binds (SO_REUSEADDR is set by cheroot) and listens
        except BaseException:
            self._server = None
            self.stop()
            raise
        bound = self._server.bind_addr
        self.port = bound[1]
        self.url = f"http://{self.host}:{self.port}{self.context_path}"
        self._thread = threading.Thread(
            target=self._server.serve, name="xnat-emulator", daemon=True
        )
        self._thread.start()
        self._wait_ready()
        log.info("XNAT emulator listening on %s (data %s)", self.url, self.data_dir)
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"emulator did not start listening on {self.host}:{self.port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until stop() (used by the CLI, which calls stop() from a signal handler)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    # ------------------------------------------------------------------------- API
    def expire_sessions(self) -> None:
        """Forget every JSESSION now (clients must log in again)."""
        self.sessions.expire_all()

    def access_records(self) -> list[AccessRecord]:
        """Every request so far.  Waits (briefly) for requests still being answered, since a
        client may hold its answer a moment before the line is recorded."""
        self.wait_idle(2.0)
        with self._records_lock:
            return list(self._records)

    def reset_peak(self) -> int:
        """Start a new high-water mark of concurrent requests; returns the previous one."""
        with self._records_lock:
            old, self.peak_active = self.peak_active, self._active
            return old

    def _activity(self, delta: int) -> None:
        with self._records_lock:
            self._active = max(0, self._active + delta)
            self.peak_active = max(self.peak_active, self._active)

    # ------------------------------------------------------------------------- faults
    def _control(self, request: Request, user: Optional[UserRow]) -> Response:
        path = request.path[len(self.context_path) :].rstrip("/")
        if path == "/emulator/faults":
            if request.method == "POST":
                try:
                    values = json.loads(request.get_data(cache=False) or b"{}")
                    if not isinstance(values, dict):
                        raise ValueError("expected a JSON object")
                    if values.pop("expire_sessions", False):
                        self.expire_sessions()
                    self.faults.update(values)
                except (ValueError, TypeError) as e:
                    return error_response(400, f"Bad fault settings: {e}")
            return json_response(asdict(self.faults))
        if path == "/emulator/expire-sessions" and request.method == "POST":
            self.expire_sessions()
            return json_response({"result": "OK"})
        return error_response(404, "Unknown emulator control path")

    def _body_filter(self, request: Request, it: Iterator[bytes]) -> Iterator[bytes]:
        """Request bodies: with probability drop_rate, cut the connection half-way."""
        if request.environ.get("xnatfs.emulator.control"):
            return it
        f = self.faults
        if f.drop_rate <= 0 or not f.hits(request.method) or self._rng.random() >= f.drop_rate:
            return it
        limit = max(1, (request.content_length or 2) // 2)

        def cut() -> Iterator[bytes]:
            got = 0
            for chunk in it:
                if got + len(chunk) >= limit:
                    if limit - got > 0:
                        yield chunk[: limit - got]
                    raise DropConnection()
                got += len(chunk)
                yield chunk
            raise DropConnection()

        return cut()

    def _middleware(self, app: XnatApp) -> Callable[..., Iterable[bytes]]:
        control_prefix = self.context_path + "/emulator/"

        def wsgi_app(
            environ: dict[str, Any], start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            method = environ.get("REQUEST_METHOD", "GET")
            raw_path = environ.get("REQUEST_URI") or (
                environ.get("PATH_INFO", "")
                + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
            )
            is_control = environ.get("PATH_INFO", "").startswith(control_prefix)
            environ["xnatfs.emulator.control"] = is_control
            state: dict[str, Any] = {"status": 0, "sent": 0, "t0": time.time()}

            def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                state["status"] = int(status.split(" ", 1)[0])
                return start_response(status, headers, exc_info)

            with self._records_lock:
                self._in_flight += 1
            self._activity(+1)
            f = self.faults
            drop = False
            try:
                if not is_control:
                    if f.latency_ms > 0 and f.hits(method):
                        time.sleep(f.latency_ms / 1000.0)
                    if f.hits(method) and f.error_rate > 0 and self._rng.random() < f.error_rate:
                        body = error_response(
                            f.error_status, formats.HTTP_REASONS.get(f.error_status, "Error")
                        )
                        app.add_cookies(body, None)
                        return self._count(body(environ, sr), state, method, raw_path, False)
                    if f.html_login_rate > 0 and self._rng.random() < f.html_login_rate:
                        body = Response(
                            formats.login_page(self.context_path),
                            content_type="text/html;charset=UTF-8",
                        )
                        app.add_cookies(body, None)
                        return self._count(body(environ, sr), state, method, raw_path, False)
                    drop = f.drops(method) and self._rng.random() < f.drop_rate
                result = app(environ, sr)
            except DropConnection:
                self._activity(-1)
                self._record(method, raw_path, 0, 0, state["t0"])
                raise
            except BaseException:
                self._activity(-1)
                raise
            cut = None if is_control or method != "GET" or f.cut_next <= 0 else f.cut_after
            if not is_control and method == "GET" and self._take_trickle(raw_path):
                result = self._trickled(result, max(1, f.trickle_bps // 10))
            return self._count(result, state, method, raw_path, drop, cut)

        return wsgi_app

    def _take_trickle(self, raw_path: str) -> bool:
        """One of the ``trickle_next`` trickled bodies for a GET of a file, if any is left."""
        if "/files/" not in raw_path.partition("?")[0]:
            return False
        with self._records_lock:
            if self.faults.trickle_next <= 0:
                return False
            self.faults.trickle_next -= 1
            return True

    @staticmethod
    def _trickled(result: Iterable[bytes], piece: int) -> Iterator[bytes]:
        """``result``'s bytes, ``piece`` of them every 0.1 s."""
        try:
            for chunk in result:
                for at in range(0, len(chunk), piece):
                    time.sleep(0.1)
                    yield chunk[at : at + piece]
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _take_cut(self) -> bool:
        """One of the ``cut_next`` cuts, if any is left."""
        with self._records_lock:
            if self.faults.cut_next <= 0:
                return False
            self.faults.cut_next -= 1
            return True

    def _count(
        self,
        result: Iterable[bytes],
        state: dict[str, Any],
        method: str,
        raw_path: str,
        drop: bool,
        cut: Optional[int] = None,
    ) -> Iterator[bytes]:
        """Pass the body through, counting bytes; record on close; cut it for a drop fault, or
        after ``cut`` bytes (``Faults.cut_next``).  The last chunk is held back until the
        request stops counting as active (see ``_active``)."""
        active = [True]

        def inactive() -> None:
            if active[0]:
                active[0] = False
                self._activity(-1)

        try:
            if drop:
                # Send roughly half of the first chunk(s), then close the socket.
                for chunk in result:
                    half = len(chunk) // 2
                    if half:
                        state["sent"] += half
                        yield chunk[:half]
                    raise DropConnection()
                raise DropConnection()
            pending: Optional[bytes] = None
            for chunk in result:
                if pending is not None:
                    state["sent"] += len(pending)
                    yield pending
                pending = chunk
                if cut is not None and state["sent"] + len(pending) > cut and self._take_cut():
                    head = pending[: max(0, cut - state["sent"])]
                    if head:
                        state["sent"] += len(head)
                        yield head
                    raise DropConnection()
            inactive()
            if pending is not None:
                state["sent"] += len(pending)
                yield pending
        finally:
            inactive()
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self._record(method, raw_path, state["status"], state["sent"], state["t0"])

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every request that arrived has been recorded in the access log (a client
        may have its answer a moment before the line is written); True if idle in time."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _record(
        self, method: str, path_qs: str, status: int, sent: int, t0: Optional[float] = None
    ) -> None:
        rec = AccessRecord(method, path_qs, status, sent)
        # fields 5 and 6 (start as Unix time, duration in ms) feed benchmarks/scale.py's
        # latency and concurrency figures; readers of the first four fields are unaffected
        t0 = time.time() if t0 is None else t0
        timing = f" {t0:.6f} {(time.time() - t0) * 1000:.3f}"
        with self._records_lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._idle.notify_all()
            self._records.append(rec)
            if self._log_fh is not None:
                self._log_fh.write(f"{method} {path_qs} {status} {sent}{timing}\n")
