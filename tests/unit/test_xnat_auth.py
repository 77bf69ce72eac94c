"""Credentials: netrc lookup and refusal, prompt, environment, masked repr (no sockets)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from xnatfs.xnat.auth import Credentials, resolve_credentials
from xnatfs.xnat.errors import CredentialsError, XnatError


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def write_netrc(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def no_prompt(_msg: str) -> str:
    raise AssertionError("must not prompt")


def test_repr_masks_password() -> None:
    c = Credentials("alice", "s3cret-pw", source="env")
    assert "s3cret-pw" not in repr(c) and "s3cret-pw" not in str(c)
    assert "alice" in repr(c) and "***" in repr(c)
    assert "s3cret-pw" not in repr([c])


def test_netrc_host_port_wins_over_host(tmp_path: Path) -> None:
    rc = write_netrc(
        tmp_path / "netrc",
        "machine xnat.example.org login hostonly password pw1\n"
        "machine xnat.example.org:8443 login withport password pw2\n",
    )
    c = resolve_credentials(
        "https://xnat.example.org:8443/xnat", netrc_path=str(rc), interactive=False, env={}
    )
    assert (c.username, c.password) == ("withport", "pw2")
    assert c.source == f"netrc:{rc}"
    c = resolve_credentials(
        "https://xnat.example.org/", netrc_path=str(rc), interactive=False, env={}
    )
    assert (c.username, c.password) == ("hostonly", "pw1")
    c = resolve_credentials(
        "https://xnat.example.org:9999", netrc_path=str(rc), interactive=False, env={}
    )
    assert c.username == "hostonly"


def test_netrc_default_entry_is_last(tmp_path: Path) -> None:
    rc = write_netrc(
        tmp_path / "netrc", "default login d password dp\nmachine h login m password mp\n"
    )
    assert resolve_credentials("http://h", str(rc), False, {}).username == "m"
    assert resolve_credentials("http://other", str(rc), False, {}).username == "d"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_netrc_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    rc = write_netrc(tmp_path / "netrc", "machine h login u password p\n", mode)
    with pytest.raises(CredentialsError) as info:
        resolve_credentials("http://h", netrc_path=str(rc), interactive=False, env={})
    msg = str(info.value)
    assert str(rc) in msg and "chmod 600" in msg and "\n" not in msg
    assert "password p" not in msg
    assert isinstance(info.value, XnatError)


def test_netrc_from_env_var_and_home(tmp_path: Path) -> None:
    rc = write_netrc(tmp_path / "custom", "machine h login envrc password p\n")
    assert (
        resolve_credentials("http://h", interactive=False, env={"NETRC": str(rc)}).username
        == "envrc"
    )
    home = tmp_path / "home"
    home.mkdir()
    write_netrc(home / ".netrc", "machine h login homerc password p\n")
    assert (
        resolve_credentials("http://h", interactive=False, env={"HOME": str(home)}).username
        == "homerc"
    )
    write_netrc(home / ".netrc", "machine h login homerc password p\n", 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        resolve_credentials("http://h", interactive=False, env={"HOME": str(home)})


def test_explicit_missing_netrc_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="does not exist"):
        resolve_credentials(
            "http://h", netrc_path=str(tmp_path / "nope"), interactive=False, env={}
        )


def test_broken_netrc_names_file_not_contents(tmp_path: Path) -> None:
    rc = write_netrc(tmp_path / "netrc", "machine h login u password secretpw macdef\nmachine\n")
    try:
        resolve_credentials("http://h", netrc_path=str(rc), interactive=False, env={})
    except CredentialsError as err:
        assert "secretpw" not in str(err)
    # (some Python versions accept this file; either way nothing leaks)


def test_no_entry_falls_through_to_env(tmp_path: Path) -> None:
    rc = write_netrc(tmp_path / "netrc", "machine other login u password p\n")
    env = {"XNATFS_USER": "eu", "XNATFS_PASSWORD": "ep", "HOME": str(tmp_path)}
    c = resolve_credentials("http://h", netrc_path=str(rc), interactive=False, env=env)
    assert (c.username, c.password, c.source) == ("eu", "ep", "env")


def test_prompt_when_tty_and_interactive(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    asked = []
    c = resolve_credentials(
        "https://x:8443",
        env=env,
        stdin=Tty(),
        prompt_user=lambda m: asked.append(m) or "pu",
        prompt_password=lambda m: asked.append(m) or "pp",
    )
    assert (c.username, c.password, c.source) == ("pu", "pp", "prompt")
    assert "x:8443" in asked[0] and "pu@x:8443" in asked[1]


def test_no_prompt_without_tty_or_when_not_interactive(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XNATFS_USER": "eu", "XNATFS_PASSWORD": "ep"}
    c = resolve_credentials(
        "http://h", env=env, stdin=io.StringIO(), prompt_user=no_prompt, prompt_password=no_prompt
    )
    assert c.source == "env"
    c = resolve_credentials(
        "http://h",
        interactive=False,
        env=env,
        stdin=Tty(),
        prompt_user=no_prompt,
        prompt_password=no_prompt,
    )
    assert c.source == "env"


def test_nothing_found_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as info:
        resolve_credentials("http://h:81", interactive=False, env={"HOME": str(tmp_path)})
    msg = str(info.value)
    assert "h:81" in msg and "XNATFS_USER" in msg and "\n" not in msg


def test_interrupted_prompt(tmp_path: Path) -> None:
    def eof(_m: str) -> str:
        raise EOFError

    with pytest.raises(CredentialsError, match="interrupted"):
        resolve_credentials(
            "http://h",
            env={"HOME": str(tmp_path)},
            stdin=Tty(),
            prompt_user=eof,
            prompt_password=eof,
        )


def test_the_netrc_read_is_the_netrc_checked(tmp_path: Path, monkeypatch) -> None:
    """The permission check and the read are of one open file.  Before, the file was checked
    by name (``os.stat``) and then opened again by name (``netrc.netrc(path)``): whoever could
    replace the name in between had a file read that was never checked.  Here the name is
    replaced at the worst moment for each way of reading: right before the first open when the
    name was checked before it, else right after the first open."""
    import builtins

    rc = write_netrc(tmp_path / "netrc", "machine h login mine password checked\n")
    other = write_netrc(tmp_path / "other", "machine h login swapped password unchecked\n", 0o644)
    state = {"checked_by_name": False, "swapped": False}

    def swap() -> None:
        if not state["swapped"]:
            state["swapped"] = True
            os.replace(other, rc)

    def ours(name: object) -> bool:
        return isinstance(name, (str, os.PathLike)) and os.fspath(name) == str(rc)

    def watch_stat(real):
        def stat(name, *args, **kwargs):
            if ours(name):
                state["checked_by_name"] = True
            return real(name, *args, **kwargs)

        return stat

    def watch_open(real):
        def opener(name, *args, **kwargs):
            if ours(name) and state["checked_by_name"]:
                swap()  # between a check by name and the open
            result = real(name, *args, **kwargs)
            if ours(name):
                swap()  # after the open: the descriptor must keep the file checked
            return result

        return opener

    monkeypatch.setattr(os, "stat", watch_stat(os.stat))
    monkeypatch.setattr(os, "lstat", watch_stat(os.lstat))
    monkeypatch.setattr(os, "open", watch_open(os.open))
    monkeypatch.setattr(builtins, "open", watch_open(builtins.open))
    c = resolve_credentials("http://h", netrc_path=str(rc), interactive=False, env={})
    assert state["swapped"]
    assert (c.username, c.password) == ("mine", "checked")


def test_a_netrc_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO (mode 0600, ours) at the netrc's name: before, its open waited for a writer for
    ever (the mount never started); now refused at once, with one line."""
    import threading

    fifo = tmp_path / "netrc"
    os.mkfifo(fifo, 0o600)
    outcome: dict = {}

    def resolve() -> None:
        try:
            resolve_credentials("http://h", netrc_path=str(fifo), interactive=False, env={})
        except CredentialsError as exc:
            outcome["error"] = str(exc)

    t = threading.Thread(target=resolve, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # let the blocked open go, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        raise AssertionError("the netrc's open waited for a FIFO's writer")
    assert "not a regular file" in outcome["error"] and "\n" not in outcome["error"]


def test_a_netrc_symlink_to_a_private_file_of_ours_is_followed(tmp_path: Path) -> None:
    """Dotfile managers link ``~/.netrc``: the file checked is the one the link reaches."""
    target = write_netrc(tmp_path / "real", "machine h login linked password p\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").symlink_to(target)
    c = resolve_credentials("http://h", interactive=False, env={"HOME": str(home)})
    assert c.username == "linked"
    target.chmod(0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        resolve_credentials("http://h", interactive=False, env={"HOME": str(home)})


def test_a_missing_default_netrc_falls_through(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XNATFS_USER": "eu", "XNATFS_PASSWORD": "ep"}
    assert resolve_credentials("http://h", interactive=False, env=env).source == "env"
