"""``xnatfs prearchive``: where the server comes from (docs/SECURITY.md, other local users).

The server of a session folder is read from the mount's ``.xnatfs/stats`` only when that mount
is the caller's own: the action sends the *caller's* credentials (a netrc ``default`` entry and
``XNATFS_USER``/``_PASSWORD`` are not bound to a host), so a server another user chose must be
named by the caller.  Another user's mount is tested through FUSE in
``tests/mount/test_security_mount.py::test_allow_other_commands_of_another_user``; here, root
(who can read every mount's stats) on a mount shown as another user's, without FUSE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from xnatfs import prearchive_cli


def fake_mount(root: Path, url: str) -> Path:
    (root / ".xnatfs").mkdir(parents=True)
    (root / ".xnatfs" / "stats").write_text(json.dumps({"url": url}))
    session = root / ".prearchive" / "P" / "TS" / "S"
    session.mkdir(parents=True)
    return session


def test_the_server_of_a_mount_of_ours_is_taken(tmp_path: Path) -> None:
    session = fake_mount(tmp_path / "mnt", "https://xnat.example.org")
    assert prearchive_cli._mount_url(session) == "https://xnat.example.org"


def test_the_server_of_another_users_mount_is_not_taken(tmp_path: Path, monkeypatch) -> None:
    """Root reads the stats of a user's mount (``allow_root``); that user chose its server."""
    session = fake_mount(tmp_path / "mnt", "https://evil.example.org")
    owner = os.stat(tmp_path / "mnt" / ".xnatfs" / "stats").st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(prearchive_cli.PrearchiveUsage) as info:
        prearchive_cli._mount_url(session)
    msg = str(info.value)
    assert f"a mount of uid {owner}" in msg and "--url" in msg and "\n" not in msg
    assert "evil.example.org" not in msg
    # the mount is still found, for the refresh after an action given --url
    found = prearchive_cli._mount_of(session)
    assert found is not None and found[0] == tmp_path / "mnt" and found[1] is None
