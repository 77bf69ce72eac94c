"""Prearchive actions that wait for the state XNAT requires (issue 11 §2): archive, move,
rebuild, delete of one session, shared by the mount (``mv``/``rmdir`` in ``tree/writes.py``) and
``xnatfs prearchive`` (``prearchive_cli.py``).

Why waiting: XNAT only acts on a *settled* session (READY, CONFLICT, ERROR; §7.1), and its
move/rebuild/delete services only queue the work (``PrearchiveBatch*`` answer ``QUEUED_*`` and a
JMS handler finishes later, §7.3).  A ``mv`` that returned before the session appeared in the
other project would leave the user looking at a tree that does not show what they did; an
archive sent while the session is still BUILDING is refused.  So every action first polls the
session's status row until it is settled, then acts, then polls until the result is visible,
never past ``deadline`` (``--timeout``): a state that never comes is ``EBUSY`` (the session is
busy on the server) and a result that never shows is ``ETIMEDOUT``, each one ``OSError`` whose
text names the URL and the last status seen (the one log line of ``fs/errmap.py``).

The clock and the sleep are injected, like ``cache/meta.py``, so the unit tests need no waits.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Optional

from .. import deadline as _call_deadline
from .models import PrearchiveSession

__all__ = ["SETTLED", "PrearcActions", "session_uri_in"]

#: statuses from which XNAT archives, moves, rebuilds or deletes a session (§7.1)
SETTLED = frozenset({"READY", "CONFLICT", "ERROR"})
#: a session still receiving files may be rebuilt or deleted (XNAT's "stuck upload" remedy)
RECEIVING = frozenset({"RECEIVING", "RECEIVING_INTERRUPT"})

#: polling between status reads: starts short (the emulator and a quiet XNAT finish queued work
#: within a second), grows to at most MAX so a long build costs few requests
POLL_FIRST_S = 0.05
POLL_MAX_S = 2.0


def session_uri_in(project: str, old: PrearchiveSession) -> str:
    """Where a moved session lives: same timestamp and folder in the new project
    (``PrearcDatabase._moveToProject``, §7.3)."""
    return f"/data/prearchive/projects/{project}/{old.timestamp}/{old.folder_name or old.name}"


@dataclass
class PrearcActions:
    """The four actions over an :class:`~xnatfs.xnat.client.XnatClient`-like ``client``
    (``get_prearchive``, ``move_prearchive``, ``rebuild_prearchive``, ``archive_prearchive``,
    ``delete_prearchive``)."""

    client: Any
    timeout: float = 60.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    polls: int = field(default=0, init=False)

    # ------------------------------------------------------------------ waiting
    def _deadline(self, deadline: Optional[float]) -> float:
        """When polling stops: a little before ``timeout``, so the last status read still has
        time to answer and the caller gets EBUSY/ETIMEDOUT, not a request cut short."""
        if deadline is not None:
            return deadline
        return self.clock() + self.timeout - min(2.0, self.timeout * 0.2)

    def _bounded(self) -> Any:
        """Every request of one action ends within ``timeout`` (``xnatfs.deadline``)."""
        return _call_deadline.scope(self.timeout)

    def wait(
        self,
        uri: str,
        want: Collection[str],
        deadline: Optional[float] = None,
        *,
        what: str = "settle",
    ) -> PrearchiveSession:
        """Poll ``uri`` until its status is in ``want``; ENOENT when it is gone, EBUSY naming
        the last status when ``deadline`` passes first."""
        end = self._deadline(deadline)
        delay = POLL_FIRST_S
        while True:
            self.polls += 1
            s = self.client.get_prearchive(uri)
            if s is None:
                raise OSError(errno.ENOENT, f"prearchive session {uri} is gone")
            if s.status in want:
                return s
            delay, late = self._pause(end, delay)
            if late:
                raise OSError(
                    errno.EBUSY,
                    f"prearchive session {uri} did not {what} in time: status still {s.status}",
                )

    def _pause(self, end: float, delay: float) -> tuple[float, bool]:
        """Sleep until the next poll (never past ``end``, the delay doubling up to
        POLL_MAX_S); returns the next delay and whether ``end`` has passed."""
        left = end - self.clock()
        if left > 0:
            self.sleep(min(delay, left))
            delay = min(delay * 2, POLL_MAX_S)
        return delay, end - self.clock() <= 0

    def settled(
        self, uri: str, deadline: Optional[float] = None, extra: Collection[str] = ()
    ) -> PrearchiveSession:
        """The session once XNAT would act on it (READY, CONFLICT, ERROR [+ ``extra``])."""
        return self.wait(uri, SETTLED | frozenset(extra), deadline)

    # ------------------------------------------------------------------ actions
    def archive(
        self, uri: str, project: str, subject: str, label: str, deadline: Optional[float] = None
    ) -> str:
        """Archive once settled (§7.3); returns the experiment URI."""
        with self._bounded():
            self.settled(uri, deadline)
            return self.client.archive_prearchive(uri, project, subject, label)

    def move(self, uri: str, project: str, deadline: Optional[float] = None) -> str:
        """Move to ``project``'s prearchive and wait until it is READY there; returns its new
        URI.  A failed move (the session back in its project as ERROR/CONFLICT) is EIO."""
        with self._bounded():
            return self._move(uri, project, self._deadline(deadline))

    def _move(self, uri: str, project: str, end: float) -> str:
        s = self.settled(uri, end)
        if s.project == project:
            return uri
        self.client.move_prearchive(uri, project)
        new_uri = session_uri_in(project, s)
        delay = POLL_FIRST_S
        last = "QUEUED_MOVING"
        while True:
            self.polls += 1
            moved = self.client.get_prearchive(new_uri)
            if moved is not None:
                last = moved.status
                if moved.status in SETTLED:
                    return new_uri
            else:
                old = self.client.get_prearchive(uri)
                if old is not None:
                    last = old.status
                    if old.status in SETTLED:
                        raise OSError(
                            errno.EIO, f"XNAT did not move {uri} to {project}: status {old.status}"
                        )
            delay, late = self._pause(end, delay)
            if late:
                raise OSError(
                    errno.ETIMEDOUT,
                    f"move of {uri} to {project} not finished in "
                    f"time: status {last} (it may still finish)",
                )

    def rebuild(self, uri: str, deadline: Optional[float] = None) -> PrearchiveSession:
        """Rebuild (also a session stuck RECEIVING) and wait for READY; ERROR is EIO."""
        end = self._deadline(deadline)
        with self._bounded():
            self.settled(uri, end, RECEIVING)
            self.client.rebuild_prearchive(uri)
            s = self.wait(uri, SETTLED, end, what="finish building")
        if s.status != "READY":
            raise OSError(errno.EIO, f"XNAT rebuilt {uri} as {s.status}")
        return s

    def delete(self, uri: str, deadline: Optional[float] = None) -> None:
        """Delete once no other operation runs on it (a RECEIVING session may go too)."""
        with self._bounded():
            self.settled(uri, deadline, RECEIVING)
            self.client.delete_prearchive(uri)
