"""The kernel's caches (entries, attributes, pages kept across opens) follow the listing TTL
(issue 12, B3): a file changed on XNAT shows its new size and its new bytes once the TTL has
passed, never a mix of the two versions, and while it is fresh a re-read costs no request."""

from __future__ import annotations

from tests.conftest import needs_fuse
from tests.mount.helpers import api, downloads, put_file, sh, wait_for

pytestmark = [needs_fuse]

URI = "/data/projects/DEMO2/resources/KC/files/changing.bin"


def _read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_a_file_changed_on_xnat_shows_up_after_the_listing_ttl(make_emulator, make_mount):
    emu = make_emulator()
    first = bytes(range(256)) * 64  # 16 KiB
    put_file(emu.url, URI, first)
    m = make_mount(emu.url, "--listing-ttl", "1")
    path = m.path / "DEMO2" / "resources" / "KC" / "files" / "changing.bin"
    assert _read(path) == first
    # fresh: a second open and read is answered by the kernel's pages and the daemon's cache
    mark = emu.mark()
    assert _read(path) == first
    assert downloads(emu.since(mark)) == []
    # same size, other bytes (the size alone cannot tell the kernel), then another size
    second = bytes(reversed(first))
    put_file(emu.url, URI, second)
    seen = []

    def new_bytes() -> bool:
        got = _read(path)
        seen.append(got)
        return got == second

    wait_for(new_bytes, 20, interval=0.2, what="the changed bytes through the mount")
    assert all(got in (first, second) for got in seen), "a read mixed two versions"
    third = b"shorter now\n"
    put_file(emu.url, URI, third)
    wait_for(lambda: _read(path) == third, 20, interval=0.2, what="the shorter file")
    st = sh(["stat", "-c", "%s", str(path)]).stdout.strip()
    assert st == str(len(third))
    assert api(emu.since(mark))  # it was XNAT that said so
