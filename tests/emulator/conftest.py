"""Fixtures for the emulator HTTP tests: an emulator on port 0 and a small archive made over
HTTP."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import requests

from xnatfs.emulator import Emulator

TIMEOUT = 30


class Client(requests.Session):
    """requests.Session with a default timeout (every HTTP call has one) and a base URL."""

    def __init__(self, base: str, auth: Any = None) -> None:
        super().__init__()
        self.base = base
        self.auth = auth

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        if url.startswith("/"):
            url = self.base + url
        return super().request(method, url, *args, **kwargs)


@dataclass
class Archive:
    """IDs of the data ``populated`` created."""

    subject_id: str
    experiment_id: str
    scan_resource_id: str
    files: dict[str, bytes]


@pytest.fixture(scope="session")
def pyxnat() -> Any:
    """The pyxnat module. pyxnat 1.6.4 imports nibabel/numpy/pandas for its 'derivatives' helpers
    at ``Interface()`` time, though listing and download never use them; when they are not
    installed, empty stand-in modules let it import."""
    for name in ("nibabel", "numpy", "pandas"):
        try:
            __import__(name)
        except ImportError:
            sys.modules.setdefault(name, types.ModuleType(name))
    import pyxnat as mod

    return mod


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    e = Emulator(
        tmp_path_factory.mktemp("emu"),
        user="admin",
        password="admin",
        seed="empty",
        extra_users=[("bob", "bob-pw", ["P1"])],
    )
    e.start()
    yield e
    e.stop()


@pytest.fixture
def admin(emu: Emulator) -> Iterator[Client]:
    with Client(emu.url, ("admin", "admin")) as c:
        yield c


@pytest.fixture
def make_client(emu: Emulator) -> Iterator[Any]:
    """``make_client(auth=None, base=None)`` -> a Client closed at teardown."""
    made: list[Client] = []

    def make(auth: Any = None, base: Any = None) -> Client:
        c = Client(base or emu.url, auth)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def anon(emu: Emulator) -> Iterator[Client]:
    with Client(emu.url) as c:
        yield c


FILES = {
    "a.dcm": b"first dicom file" * 10,
    "sub/b.dcm": b"second, in a sub-folder",
}


@pytest.fixture(scope="module")
def populated(emu: Emulator) -> Archive:
    """P1/S1/E1 (MR) with scan 1 (T1w) resource DICOM {a.dcm, sub/b.dcm}; P2 admin-only."""
    with Client(emu.url, ("admin", "admin")) as c:
        for url in ("/data/projects/P1", "/data/projects/P2"):
            assert c.put(url).status_code in (200, 201)
        r = c.put("/data/projects/P1/subjects/S1")
        sid = r.text
        r = c.put(
            "/data/projects/P1/subjects/S1/experiments/E1",
            params={"xsiType": "xnat:mrSessionData", "date": "2024-01-01"},
        )
        eid = r.text
        c.put(
            f"/data/experiments/{eid}/scans/1", params={"xsiType": "xnat:mrScanData", "type": "T1w"}
        ).raise_for_status()
        c.put(
            f"/data/experiments/{eid}/scans/1/resources/DICOM",
            params={"format": "DICOM", "content": "RAW"},
        ).raise_for_status()
        for rel, data in FILES.items():
            c.put(
                f"/data/experiments/{eid}/scans/1/resources/DICOM/files/{rel}", data=data
            ).raise_for_status()
        rows = c.get(f"/data/experiments/{eid}/scans/1/resources?format=json").json()
        rid = rows["ResultSet"]["Result"][0]["xnat_abstractresource_id"]
        c.put("/data/projects/P2/subjects/OTHER").raise_for_status()
    return Archive(sid, eid, rid, dict(FILES))
