"""Authentication for the emulator: HTTP Basic, JSESSION cookies, alias tokens (§5.1).

Why it is separate from the routing: the session table is shared state with its own lock and its
own clock (idle expiry), and the fault injector needs ``expire_all()`` without knowing HTTP.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .store import Store, UserRow

log = logging.getLogger(__name__)

#: XnatAuthenticationEntryPoint: these user agents get a 302 to the login page instead of a 401.
BROWSER_UA = re.compile(r".*MSIE.*|.*Mozilla.*|.*AppleWebKit.*|.*Opera.*")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def is_browser(user_agent: str) -> bool:
    return bool(BROWSER_UA.match(user_agent or "")) and "XNATDesktopClient" not in user_agent


@dataclass
class Session:
    id: str
    user: str
    last_access: float
    #: when the session was made (for ``SessionTable.lifetime``)
    created: float = 0.0


class SessionTable:
    """JSESSION ids -> user, expired after ``timeout`` seconds without a request, or (fault
    injection) ``lifetime`` seconds after login however busy (0 = no limit): a real XNAT's
    sessions also end under load (restarts, a cluster node change, an admin), and a client
    must log in again without the user noticing."""

    def __init__(
        self,
        timeout: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        lifetime: float = 0.0,
    ) -> None:
        self.timeout = timeout
        self.lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()  # protects _sessions
        self._sessions: dict[str, Session] = {}

    def create(self, user: str) -> Session:
        sid = secrets.token_hex(16).upper()
        now = self._clock()
        s = Session(sid, user, now, now)
        with self._lock:
            self._prune_locked()
            self._sessions[sid] = s
        return s

    def touch(self, sid: str) -> Optional[Session]:
        """The session ``sid`` if still alive (and extend it), else None."""
        now = self._clock()
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                return None
            if now - s.last_access > self.timeout or (
                self.lifetime > 0 and now - s.created > self.lifetime
            ):
                del self._sessions[sid]
                return None
            s.last_access = now
            return s

    def remove(self, sid: str) -> bool:
        with self._lock:
            return self._sessions.pop(sid, None) is not None

    def expire_all(self) -> None:
        with self._lock:
            self._sessions.clear()

    def _prune_locked(self) -> None:
        now = self._clock()
        dead = [k for k, s in self._sessions.items() if now - s.last_access > self.timeout]
        for k in dead:
            del self._sessions[k]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def parse_basic(header: str) -> Optional[tuple[str, str]]:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else None


def check_credentials(store: Store, username: str, password: str) -> Optional[UserRow]:
    """Password login, or alias-token login (alias as user name, secret as password)."""
    if _UUID.match(username):
        tok = store.get_token(username)
        if tok is not None and tok.valid and secrets.compare_digest(tok.secret, password):
            return store.get_user(tok.user)
        return None
    if store.check_password(username, password):
        return store.get_user(username)
    return None


@dataclass
class AuthResult:
    user: Optional[UserRow]
    session: Optional[Session]
    new_session: bool = False
    bad_credentials: bool = False


def authenticate(
    store: Store, sessions: SessionTable, cookie_sid: Optional[str], authorization: str
) -> AuthResult:
    """A valid JSESSIONID cookie wins; otherwise Basic credentials (a new session is opened,
    as Tomcat does for a basic-auth request without a session)."""
    if cookie_sid:
        s = sessions.touch(cookie_sid)
        if s is not None:
            user = store.get_user(s.user)
            if user is not None:
                return AuthResult(user, s)
    creds = parse_basic(authorization)
    if creds is not None:
        user = check_credentials(store, *creds)
        if user is None:
            return AuthResult(None, None, bad_credentials=True)
        return AuthResult(user, sessions.create(user.name), new_session=True)
    return AuthResult(None, None)
