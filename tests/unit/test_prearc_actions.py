"""``xnat/prearc.py``: each action waits for the state XNAT requires, then acts, then waits for
the result, and never past its deadline (issue 11 §2).  A scripted server stands in for XNAT's
status rows and an injected clock for time, so no test sleeps."""

from __future__ import annotations

import errno
from typing import Dict, List, Optional

import pytest

from tests.helpers.clock import FakeClock
from xnatfs.xnat.models import PrearchiveSession
from xnatfs.xnat.prearc import PrearcActions

URI = "/data/prearchive/projects/P/20240101_000000000/S1"
MOVED = "/data/prearchive/projects/Q/20240101_000000000/S1"


class FakeXnat:
    """Status rows per URI; ``script`` maps a URI to the statuses its next reads answer (the
    last one repeats); None is "gone" (404)."""

    def __init__(self, clock: FakeClock, script: Dict[str, List[Optional[str]]]) -> None:
        self.clock = clock
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: List[str] = []

    def get_prearchive(self, uri: str) -> Optional[PrearchiveSession]:
        self.calls.append(f"GET {uri}")
        seq = self.script.get(uri, [None])
        status = seq.pop(0) if len(seq) > 1 else seq[0]
        if status is None:
            return None
        project = uri.split("/")[4]
        return PrearchiveSession(
            project=project,
            timestamp="20240101_000000000",
            name="S1",
            folder_name="S1",
            status=status,
            uri=uri,
        )

    def move_prearchive(self, uri: str, project: str) -> None:
        self.calls.append(f"MOVE {uri} {project}")

    def rebuild_prearchive(self, uri: str) -> None:
        self.calls.append(f"REBUILD {uri}")

    def archive_prearchive(self, uri: str, project: str, subject: str, label: str) -> str:
        self.calls.append(f"ARCHIVE {uri}")
        return f"/data/archive/projects/{project}/subjects/{subject}/experiments/{label}"

    def delete_prearchive(self, uri: str) -> None:
        self.calls.append(f"DELETE {uri}")


def actions(script: Dict[str, List[Optional[str]]], timeout: float = 10.0):
    clock = FakeClock()
    fake = FakeXnat(clock, script)
    return PrearcActions(fake, timeout=timeout, clock=clock, sleep=clock.sleep), fake, clock


def test_move_waits_for_settled_then_for_the_new_project() -> None:
    a, fake, _ = actions(
        {
            URI: ["BUILDING", "BUILDING", "READY", "QUEUED_MOVING", None],
            MOVED: [None, None, "MOVING", "READY"],
        }
    )
    assert a.move(URI, "Q") == MOVED
    acts = [c for c in fake.calls if not c.startswith("GET")]
    assert acts == [f"MOVE {URI} Q"]
    # the move was sent only after READY was seen
    assert fake.calls.index(f"MOVE {URI} Q") == 3


def test_move_onto_its_own_project_is_a_no_op() -> None:
    a, fake, _ = actions({URI: ["READY"]})
    assert a.move(URI, "P") == URI
    assert [c for c in fake.calls if not c.startswith("GET")] == []


def test_never_settled_is_ebusy_at_the_deadline_without_acting() -> None:
    a, fake, clock = actions({URI: ["BUILDING"]}, timeout=10.0)
    with pytest.raises(OSError) as err:
        a.archive(URI, "P", "SUBJ", "S1")
    assert err.value.errno == errno.EBUSY
    assert URI in str(err.value) and "BUILDING" in str(err.value)
    assert clock.now - 1000.0 <= 10.0
    assert not [c for c in fake.calls if not c.startswith("GET")]
    assert len(fake.calls) < 20  # polling backs off


def test_move_never_finishing_is_etimedout_and_a_failed_move_eio() -> None:
    a, _, clock = actions({URI: ["READY", "QUEUED_MOVING"], MOVED: [None]}, timeout=10.0)
    with pytest.raises(OSError) as err:
        a.move(URI, "Q")
    assert err.value.errno == errno.ETIMEDOUT and "QUEUED_MOVING" in str(err.value)
    assert clock.now - 1000.0 <= 10.0
    a, _, _ = actions({URI: ["READY", "MOVING", "ERROR"], MOVED: [None]})
    with pytest.raises(OSError) as err:
        a.move(URI, "Q")
    assert err.value.errno == errno.EIO


def test_rebuild_accepts_receiving_and_waits_for_ready() -> None:
    a, fake, _ = actions({URI: ["RECEIVING", "QUEUED_BUILDING", "BUILDING", "READY"]})
    assert a.rebuild(URI).status == "READY"
    assert fake.calls[1] == f"REBUILD {URI}"
    a, _, _ = actions({URI: ["READY", "BUILDING", "ERROR"]})
    with pytest.raises(OSError) as err:
        a.rebuild(URI)
    assert err.value.errno == errno.EIO


def test_gone_session_is_enoent() -> None:
    a, fake, _ = actions({URI: [None]})
    with pytest.raises(OSError) as err:
        a.delete(URI)
    assert err.value.errno == errno.ENOENT
    assert fake.calls == [f"GET {URI}"]
