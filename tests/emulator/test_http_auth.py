"""Authentication and sessions (docs/XNAT-API.md §5.1, §8.1, §11 "Transport and auth")."""

from __future__ import annotations

import re
import time
from typing import Any, Iterator

import pytest

from xnatfs.emulator import Emulator

Client = Any
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"


def test_unauthenticated_non_browser_gets_401(anon: Client) -> None:
    r = anon.get("/data/projects?format=json")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="XNAT"'
    assert r.text.startswith("<html>") and "<h3>" in r.text


def test_browser_gets_login_page(anon: Client) -> None:
    r = anon.get("/data/projects", headers={"User-Agent": BROWSER})
    assert r.status_code == 200 and r.history and r.history[0].status_code == 302
    assert r.url.endswith("/app/template/Login.vm")
    assert r.headers["Content-Type"].startswith("text/html") and "<html" in r.text
    r = anon.get("/", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/app/template/Login.vm")


def test_wrong_password_is_401(make_client: Any) -> None:
    c = make_client(("admin", "wrong"))
    assert c.get("/data/projects").status_code == 401


def test_auth_service_and_cookie_session(anon: Client) -> None:
    r = anon.put("/data/services/auth", data={"username": "admin", "password": "wrong"})
    assert r.status_code == 401 and "<h3>Authentication failed.</h3>" in r.text
    r = anon.put("/data/services/auth", data={"username": "admin", "password": "admin"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    sid = r.text
    assert anon.cookies.get("JSESSIONID") == sid
    assert anon.get("/data/auth").text == "User 'admin' is logged in"
    assert anon.get("/data/JSESSION").text == sid  # heartbeat returns the same id
    assert anon.get("/data/projects?format=json").status_code == 200
    assert anon.delete("/data/JSESSION").status_code == 200
    assert anon.get("/data/projects?format=json").status_code == 401


def test_session_expiration_cookie_on_every_response(anon: Client) -> None:
    for r in (anon.get("/data/projects"), anon.get("/app/template/Login.vm")):
        raw = r.headers["Set-Cookie"]
        assert re.search(r'SESSION_EXPIRATION_TIME="\d+,900000"', raw), raw


def test_basic_auth_opens_a_session(make_client: Any) -> None:
    c = make_client(("admin", "admin"))
    sid = c.get("/data/JSESSION").text
    assert c.cookies.get("JSESSIONID") == sid
    c.auth = None
    assert c.get("/data/auth").status_code == 200


def test_expire_sessions(emu: Emulator, anon: Client) -> None:
    anon.put("/data/services/auth", data={"username": "admin", "password": "admin"})
    assert anon.get("/data/auth").status_code == 200
    emu.expire_sessions()
    assert anon.get("/data/auth").status_code == 401


def test_alias_tokens(admin: Client, make_client: Any) -> None:
    tok = admin.get("/data/services/tokens/issue").json()
    assert re.match(r"^[0-9a-f-]{36}$", tok["alias"]) and len(tok["secret"]) == 64
    assert admin.get(f"/data/services/tokens/validate/{tok['alias']}/{tok['secret']}").json() == {
        "valid": "admin"
    }
    c = make_client((tok["alias"], tok["secret"]))
    assert c.get("/data/auth").text == "User 'admin' is logged in"
    assert admin.get(f"/data/services/tokens/invalidate/{tok['alias']}/{tok['secret']}").json() == {
        "result": "OK"
    }
    c2 = make_client((tok["alias"], tok["secret"]))
    assert c2.get("/data/auth").status_code == 401


@pytest.fixture
def short_emu(tmp_path: Any) -> Iterator[Emulator]:
    e = Emulator(tmp_path / "emu", seed="empty", session_timeout=0.3).start()
    yield e
    e.stop()


def test_idle_session_expires(short_emu: Emulator, make_client: Any) -> None:
    c = make_client(base=short_emu.url)
    r = c.post("/data/services/auth", data={"username": "admin", "password": "admin"})
    assert re.search(r'SESSION_EXPIRATION_TIME="\d+,300"', r.headers["Set-Cookie"])
    assert c.get("/data/auth").status_code == 200
    # Idle expiry is a matter of elapsed time itself; wait just past the 0.3 s timeout.
    time.sleep(0.5)
    assert c.get("/data/auth").status_code == 401


def test_context_path(tmp_path: Any, make_client: Any) -> None:
    with Emulator(tmp_path / "ctx", seed="empty", context_path="/xnat") as e:
        assert e.url.endswith("/xnat")
        c = make_client(("admin", "admin"), base=e.url)
        assert c.put("/data/projects/CP").status_code == 201
        assert c.put("/data/projects/CP/resources/R/files/f.txt", data=b"x").status_code == 200
        doc = c.get("/data/projects/CP/resources/R/files?format=json").json()
        assert doc["ResultSet"]["Columns"] == [{"key": "URI", "serverRoot": "/xnat"}]
        r = make_client(base=e.url).get(e.url, allow_redirects=False)
        assert r.headers["Location"] == "/xnat/app/template/Login.vm"
        root = e.url.rsplit("/xnat", 1)[0]
        assert make_client(("admin", "admin"), base=root).get("/data/projects").status_code == 404
