"""Helpers of the client tests (``tests/api``): the client's options with tiny backoffs, the
emulator's admin, and resetting the emulator's fault switches between tests."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, List

import requests

from tests.conftest import ADMIN as ADMIN_AUTH
from xnatfs.emulator import Emulator
from xnatfs.fs.errmap import errno_for
from xnatfs.xnat.auth import Credentials
from xnatfs.xnat.client import ClientOptions
from xnatfs.xnat.errors import XnatError

ADMIN = Credentials("admin", "admin-pw")  # the conftest emulators' admin
ALICE = Credentials("alice", "alice-pw")


def options(**kw) -> ClientOptions:
    """Options for a test client: retries with tiny backoffs (fast tests), no heartbeat."""
    base = dict(
        pool_size=8,
        connect_timeout=2.0,
        read_timeout=10.0,
        retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        deadline=30.0,
        heartbeat=False,
    )
    base.update(kw)
    return ClientOptions(**base)


def reset_faults(emu: Emulator) -> None:
    """Every fault of the emulator off (``emu.faults`` is shared by the tests of a module)."""
    f = emu.faults
    f.latency_ms = 0
    f.error_rate = 0.0
    f.error_status = 503
    f.drop_rate = 0.0
    f.html_login_rate = 0.0


@contextmanager
def faults(emu: Emulator, **switches: object) -> Iterator[None]:
    """The emulator's fault ``switches`` (``error_status=503, error_rate=1.0``, ...) on for the
    ``with`` block; every fault off after it, also when the block fails."""
    for name, value in switches.items():
        assert hasattr(emu.faults, name), name
        setattr(emu.faults, name, value)
    try:
        yield
    finally:
        reset_faults(emu)


#: the demo project's protocols resource: its files through the runtime, and on the server
PROTOCOLS = "/DEMO1/resources/protocols/files"
PROTOCOLS_URI = "/data/projects/DEMO1/resources/protocols/files"


def on_server(rt: Any, name: str = "README.txt") -> "bytes | int":
    """The bytes the emulator holds for protocols file ``name``, or the status it answered."""
    r = requests.get(f"{rt.emu.url}{PROTOCOLS_URI}/{name}", auth=ADMIN_AUTH, timeout=30)
    return r.content if r.status_code == 200 else r.status_code


def answer(call: Callable[[], object]) -> int:
    """The errno ``call()`` answers through the FUSE adapter (0: none)."""
    try:
        call()
    except (OSError, XnatError) as exc:
        return errno_for(exc)
    return 0


#: what another XNAT client stores in the write tests
THEIRS = b"the other client's version\n"


def another_client_stores(rt: Any, name: str = "README.txt", data: bytes = THEIRS) -> None:
    """Another XNAT client (not this mount) replaces protocols file ``name`` with ``data``."""
    r = requests.put(
        f"{rt.emu.url}{PROTOCOLS_URI}/{name}?inbody=true&overwrite=true",
        data=data,
        auth=ADMIN_AUTH,
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text


def lost_answer(rt: Any, name: str) -> List[str]:
    """The first PUT of ``name`` lands and its answer is lost (the client raises a timeout, as
    if XNAT had not answered); returns the list of the PUTs of ``name`` that reached XNAT."""
    from xnatfs.xnat.errors import XnatTimeout

    real, puts = rt.writer.client.upload_file, []

    def put(resource_uri: str, relpath: str, fh: Any, size: int, **k: Any) -> Any:
        result = real(resource_uri, relpath, fh, size, **k)
        if relpath == name:
            puts.append(relpath)
            if len(puts) == 1:
                raise XnatTimeout("PUT", f"{resource_uri}/files/{relpath}", None, "timed out")
        return result

    rt.writer.client.upload_file = put
    return puts
