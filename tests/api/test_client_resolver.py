"""The client's name lookups (xnatfs/xnat/resolver.py) against the emulator, with an injected
lookup (the test's own DNS): a resolver that hangs fails the call within its connect timeout,
with one line naming the URL, and counts for the breaker; the connection goes to the address
found while TLS still checks the URL's host name."""

from __future__ import annotations

import errno
import logging
import shutil
import socket
import threading
import time

import pytest

from tests.api.helpers import ADMIN, options, reset_faults
from xnatfs.emulator import Emulator
from xnatfs.fs.errmap import errno_for
from xnatfs.xnat import errors
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.resolver import Resolver


class _Dns:
    """The test's DNS: ``names`` to 127.0.0.1; any other name hangs until ``release``."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.asked: "list[str]" = []
        self.release = threading.Event()

    def __call__(self, host, port, family=0, kind=0, proto=0, flags=0):
        self.asked.append(host)
        if host not in self.names:
            self.release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return socket.getaddrinfo("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_a_resolver_that_hangs_fails_the_call_within_its_connect_timeout(emu: Emulator, caplog):
    """Before, the call waited as long as the C library's resolver did (5 s per try, server and
    family), whatever the connect timeout and the deadline said."""
    dns = _Dns()
    url = f"http://xnat-hangs.test:{_port(emu.url)}"
    c = XnatClient(
        url,
        ADMIN,
        options(connect_timeout=0.5, retries=0, deadline=10.0),
        resolver=Resolver(dns),
    )
    try:
        caplog.set_level(logging.INFO, logger="xnatfs")
        t = time.monotonic()
        with pytest.raises(errors.Unreachable) as caught:
            c.list_projects()  # its login first: the connection that looks the name up
        took = time.monotonic() - t
        print(f"call failed after {took:.2f}s: {caught.value}")
        assert took < 2.0, took  # connect timeout 0.5 s; the lookup hangs for 60
        assert "xnat-hangs.test took longer than 0.5s" in str(caught.value)
        assert errno_for(caught.value) == errno.EIO
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert len(lines) == 1 and url + "/data/services/auth" in lines[0], lines
        # connection failures for the breaker: the third opens it, and the calls then fail at
        # once (EHOSTDOWN) without waiting for the resolver again
        for _ in range(2):
            with pytest.raises(errors.Unreachable):
                c.list_projects()
        assert c.server["state"] != "up", c.server
        t = time.monotonic()
        with pytest.raises(errors.ServerDown) as fast:
            c.list_projects()
        assert time.monotonic() - t < 0.1 and errno_for(fast.value) == errno.EHOSTDOWN
        assert dns.asked == ["xnat-hangs.test"]  # one lookup, however many callers waited
    finally:
        dns.release.set()
        c.close()


def test_a_name_is_looked_up_once_and_the_connection_goes_to_its_address(emu: Emulator):
    reset_faults(emu)
    dns = _Dns("xnat.test")
    c = XnatClient(f"http://xnat.test:{_port(emu.url)}", ADMIN, options(), resolver=Resolver(dns))
    try:
        c.start()
        assert c.list_projects()
        assert dns.asked == ["xnat.test"]  # the login's connection; pooled afterwards
    finally:
        c.close()


def test_an_ip_literal_server_never_asks_the_resolver(emu: Emulator):
    dns = _Dns()  # would hang for any name
    c = XnatClient(emu.url, ADMIN, options(), resolver=Resolver(dns))
    try:
        c.start()
        assert c.list_projects() and dns.asked == []
    finally:
        c.close()


@pytest.fixture(scope="module")
def tls_named(shared_emulator, tmp_path_factory):
    """The shared emulator behind TLS with a certificate for the name ``xnat.test`` only."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make test certificates")
    from tests.mount.tlsproxy import TLSProxy, make_ca, make_server_cert

    base = tmp_path_factory.mktemp("tls-named")
    ca = make_ca(base, "named")
    cert, key = make_server_cert(base, ca, alt_names="DNS:xnat.test")
    proxy = TLSProxy(_port(shared_emulator.url), cert, key).start()
    yield proxy.port, ca[0]
    proxy.stop()


def test_tls_checks_the_urls_host_name_not_the_address_connected_to(tls_named):
    port, ca = tls_named
    dns = _Dns("xnat.test", "other.test")
    good = XnatClient(
        f"https://xnat.test:{port}", ADMIN, options(verify=str(ca)), resolver=Resolver(dns)
    )
    try:
        good.start()  # SNI and the certificate's check use xnat.test, not 127.0.0.1
        assert good.list_projects()
    finally:
        good.close()
    # the same address under a name the certificate does not carry: refused
    other = XnatClient(
        f"https://other.test:{port}",
        ADMIN,
        options(verify=str(ca), retries=0),
        resolver=Resolver(dns),
    )
    try:
        with pytest.raises(errors.Unreachable, match="TLS error") as refused:
            other.start()
        assert "other.test" in str(refused.value) or "match" in str(refused.value)
    finally:
        other.close()
