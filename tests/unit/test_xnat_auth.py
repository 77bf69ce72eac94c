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
