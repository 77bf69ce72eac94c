"""Local trust (docs/SECURITY.md, "Files on this machine"): every private folder the mount makes
under its cache folder, the files it opens there by name, the upload journal's sidecars and the
config file are refused when another local user could have planted or may change them.

Found in review: ``<cache>/content`` (and ``bids/tmp``, ``content/owners``,
``uploads/journal``) were made with ``makedirs(exist_ok=True)`` + ``chmod`` by name, so a
symbolic link there was followed and another user's folder adopted: a root mount cached
XNAT's bytes in a folder of uid 65534.  ``<cache>/lock`` and ``<cache>/times.db`` were opened
by name, following a link: root made the link's target in another user's folder.  A sidecar
without a data file had its ``source`` *moved* into the journal and queued for upload, whatever
file it named.  The config file was refused only when it held a password and had group/other
bits: a 0666 file chose the CA bundle TLS was checked against.
"""

from __future__ import annotations

import argparse
import json
import os
import re

import pytest

from tests.conftest import ADMIN
from xnatfs.cache.content import ContentCache
from xnatfs.config import ConfigError, load_config
from xnatfs.options import Options
from xnatfs.runtime import Runtime
from xnatfs.uploads.journal import Journal
from xnatfs.uploads.spool import Spool
from xnatfs.uploads.target import UploadTarget
from xnatfs.xnat.auth import Credentials

NOBODY = 65534
URL = "https://xnat.example.org"

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (another user's folder)")


def _theirs(tmp_path):
    """A folder of another user that anyone may write (where a planted link points)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    os.chmod(theirs, 0o777)
    return theirs


def _plant(at, theirs, how: str) -> None:
    """A symbolic link to ``theirs`` (or to a name not made yet in it) at ``at``, or a folder
    of another user there."""
    at.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if how == "symlink":
        os.symlink(theirs, at)
    elif how == "dangling":
        os.symlink(theirs / "not-yet", at)
    else:
        at.mkdir()
        os.chown(at, NOBODY, NOBODY)


def _no_fetch(uri, sink):
    raise AssertionError("no fetch expected")


# ------------------------------------------------------------------ private folders
@root_only
@pytest.mark.parametrize("how", ["symlink", "dangling", "foreign"])
@pytest.mark.parametrize("sub", ["content", "content/index", "content/partial", "content/owners"])
def test_a_planted_content_folder_is_refused(tmp_path, how, sub):
    theirs = _theirs(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    _plant(cache / sub, theirs, how)
    with pytest.raises(PermissionError, match=re.escape(str(cache / sub))):
        cc = ContentCache(str(cache / "content"), size_limit=1 << 20, fetch=_no_fetch)
        cc.start()
        cc.close()
    assert os.listdir(theirs) == []
    assert os.lstat(theirs).st_mode & 0o777 == 0o777  # their folder's mode is not changed


@root_only
@pytest.mark.parametrize("how", ["symlink", "foreign"])
@pytest.mark.parametrize("sub", ["bids", "bids/tmp", "bids/content"])
def test_a_planted_bids_folder_is_refused(tmp_path, how, sub):
    from types import SimpleNamespace

    from xnatfs.bids.layout import BidsLayout

    theirs = _theirs(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    _plant(cache / sub, theirs, how)
    client = SimpleNamespace(base_url=URL)
    with pytest.raises(PermissionError, match=re.escape(str(cache / sub))):
        layout = BidsLayout(client, None, str(cache / "bids"), cache_size=1 << 20)
        layout.bundles.close()
    assert os.listdir(theirs) == []


@root_only
@pytest.mark.parametrize("how", ["symlink", "foreign"])
@pytest.mark.parametrize("sub", ["journal", "spool"])
def test_a_planted_upload_folder_is_refused(tmp_path, how, sub):
    theirs = _theirs(tmp_path)
    uploads = tmp_path / "cache" / "uploads"
    uploads.mkdir(parents=True, mode=0o700)
    _plant(uploads / sub, theirs, how)
    make = Journal if sub == "journal" else Spool
    with pytest.raises(PermissionError, match=re.escape(str(uploads / sub))):
        make(uploads / sub)
    assert os.listdir(theirs) == []


def test_a_private_folder_of_ours_that_is_too_open_is_made_private(tmp_path):
    """Our own folder with a wide mode (an older version, a umask) is fixed, not refused."""
    uploads = tmp_path / "uploads"
    (uploads / "journal").mkdir(parents=True, mode=0o777)
    os.chmod(uploads / "journal", 0o777)
    Journal(uploads / "journal")
    assert os.stat(uploads / "journal").st_mode & 0o777 == 0o700


# ------------------------------------------------------------------ the journal's sidecars
TARGET = UploadTarget(kind="file", resource_uri="/data/projects/THEIRS/resources/R", relpath="k")


def _planted_sidecar(jdir, source) -> str:
    entry_id = "0000000000000001-aaaaaaaaaaaa"
    doc = {
        "id": entry_id,
        "target": TARGET.to_json(),
        "path": "/THEIRS/resources/R/files/k",
        "size": 10,
        "md5": "",
        "state": "pending",
        "source": str(source),
        "v": 1,
    }
    (jdir / f"{entry_id}.json").write_text(json.dumps(doc))
    return entry_id


@pytest.mark.parametrize("where", ["outside", "link_in_spool", "dot_dot_out_of_spool"])
def test_a_sidecar_cannot_take_a_file_from_outside_the_spool(tmp_path, where):
    """A sidecar with no data file is an interrupted add only when its ``source`` is a file of
    the spool beside the journal; any other file it names stays where it is, is not queued,
    and the sidecar is kept aside (``.bad``), not deleted."""
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    victim = private / "secret.key"
    victim.write_bytes(b"root's key")
    uploads = tmp_path / "cache" / "uploads"
    spool = Spool(uploads / "spool")
    jdir = uploads / "journal"
    Journal(jdir)
    source = {
        "outside": victim,
        "link_in_spool": uploads / "spool" / "x.spool",
        "dot_dot_out_of_spool": f"{uploads}/spool/../../../root-only/secret.key",
    }[where]
    if where == "link_in_spool":
        os.symlink(victim, source)
    entry_id = _planted_sidecar(jdir, source)
    entries = Journal(jdir).reload()
    assert entries == []
    assert victim.read_bytes() == b"root's key"
    assert sorted(os.listdir(jdir)) == [f"{entry_id}.json.bad"]
    assert os.path.isdir(spool.directory)


def test_an_interrupted_add_from_the_spool_is_still_completed(tmp_path):
    """The genuine case: the Writer's layout (``uploads/spool``, ``uploads/journal``), an add
    cut after its sidecar was written and before its rename: ``reload`` completes it."""
    uploads = tmp_path / "cache" / "uploads"
    spool = Spool(uploads / "spool")
    j = Journal(uploads / "journal")
    f = spool.create()
    f.write(0, b"half added")
    entry = j.add(f, TARGET, "/P/resources/R/files/k")
    os.rename(entry.data_path, f.path)  # as if the crash came before the rename
    assert Journal(uploads / "journal").reload() == [entry]
    assert not os.path.exists(f.path)
    with open(entry.data_path, "rb") as fh:
        assert fh.read() == b"half added"


# ------------------------------------------------------------------ files opened by name
@pytest.mark.parametrize("name", ["lock", "times.db", "times.db-wal", "uploads/lock"])
def test_a_planted_link_in_the_cache_folder_is_not_followed(make_emulator, tmp_path, name):
    emu = make_emulator()
    cache = tmp_path / "cache"
    (cache / "uploads").mkdir(parents=True, mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / f"made-by-the-mount-{name.replace('/', '-')}"
    os.symlink(target, cache / name)
    rt = Runtime(Options(url=emu.url, cache_dir=cache, prefetch=0), Credentials(*ADMIN))
    try:
        with pytest.raises(PermissionError, match="symbolic link"):
            rt.start()
    finally:
        rt.close()
    assert not target.exists()


@root_only
@pytest.mark.parametrize("name", ["lock", "times.db"])
def test_a_file_of_another_user_in_the_cache_folder_is_refused(make_emulator, tmp_path, name):
    emu = make_emulator()
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / name).write_bytes(b"")
    os.chown(cache / name, NOBODY, NOBODY)
    rt = Runtime(
        Options(url=emu.url, cache_dir=cache, prefetch=0, read_only=True), Credentials(*ADMIN)
    )
    try:
        with pytest.raises(PermissionError, match=f"owned by uid {NOBODY}"):
            rt.start()
    finally:
        rt.close()


def test_the_cache_command_does_not_follow_a_planted_lock(tmp_path):
    from xnatfs.commands.cache import cmd_cache
    from xnatfs.commands.common import UsageError

    cache = tmp_path / "cache"
    (cache / "content").mkdir(parents=True, mode=0o700)
    os.chmod(cache, 0o700)
    target = tmp_path / "made-by-cache-usage"
    os.symlink(target, cache / "lock")
    with pytest.raises(UsageError, match=f"{re.escape(str(cache / 'lock'))} is a symbolic link"):
        cmd_cache(argparse.Namespace(cache_command="usage", cache_dir=str(cache)))
    assert not target.exists()


# ------------------------------------------------------------------ the config file
@root_only
def test_a_config_owned_by_another_user_is_refused(tmp_path):
    f = tmp_path / "config.toml"
    f.write_text('[defaults]\nuser = "me"\npassword = "s3cret"\n')
    os.chmod(f, 0o600)
    os.chown(f, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"{re.escape(str(f))}.*owned by uid {NOBODY}.*chown"):
        load_config(f, env={})


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o602])
def test_a_config_others_may_write_is_refused(tmp_path, mode):
    f = tmp_path / "config.toml"
    f.write_text(f'[servers."{URL}"]\nca_bundle = "/tmp/evil-ca.pem"\nallow_delete = true\n')
    os.chmod(f, mode)
    with pytest.raises(ConfigError, match=f"{re.escape(str(f))}.*chmod go-w"):
        load_config(f, env={})


@root_only
def test_a_config_writable_by_a_group_of_others_is_refused(tmp_path):
    f = tmp_path / "config.toml"
    f.write_text(f'[servers."{URL}"]\nallow_delete = true\n')
    os.chown(f, 0, NOBODY)  # nogroup: not root's own group
    os.chmod(f, 0o664)
    with pytest.raises(ConfigError, match="chmod go-w"):
        load_config(f, env={})


def test_a_config_writable_by_the_owners_own_group_is_accepted(tmp_path, monkeypatch):
    """``umask 002`` (user-private groups): group-writable by a group that is the owner's
    primary group with no other member is writable by the owner alone.  The group's members
    are the lookup's answer here, so the test does not depend on this machine's groups."""
    import grp
    import pwd
    from types import SimpleNamespace

    me = pwd.getpwuid(os.geteuid())
    monkeypatch.setattr(grp, "getgrgid", lambda gid: SimpleNamespace(gr_mem=[me.pw_name]))
    f = tmp_path / "config.toml"
    f.write_text(f'[servers."{URL}"]\nallow_delete = true\n')
    os.chown(f, me.pw_uid, me.pw_gid)
    os.chmod(f, 0o664)
    assert load_config(f, env={}).servers


def test_a_readable_config_without_a_password_is_still_accepted(tmp_path):
    f = tmp_path / "config.toml"
    f.write_text(f'[servers."{URL}"]\nallow_delete = true\n')
    os.chmod(f, 0o644)
    assert load_config(f, env={}).servers


def test_a_system_config_owned_by_root_is_accepted(tmp_path, monkeypatch):
    """``/etc``-style: a root-owned file nobody else may write is trusted by every user (the
    file's status says root owns it, whoever runs the test)."""
    from xnatfs.config import _check_trusted

    f = tmp_path / "config.toml"
    f.write_text(f'[servers."{URL}"]\nallow_delete = true\n')
    os.chmod(f, 0o644)
    st = os.stat(f)
    owned_by_root = os.stat_result(st[:4] + (0,) + st[5:])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _check_trusted(f, owned_by_root, holds_password=False)  # no ConfigError
    someone = os.stat_result(st[:4] + (1001,) + st[5:])
    with pytest.raises(ConfigError):
        _check_trusted(f, someone, holds_password=False)
