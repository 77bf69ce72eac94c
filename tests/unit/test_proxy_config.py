"""The generated nginx configuration of ``xnatfs cache-proxy`` (xnatfs/proxy.py) and the digest
parameter on download URLs (tree._content_key).  The behaviour through a live nginx is tested in
tests/mount/test_cache_proxy.py; here: nginx accepts every variant we generate, and the safety
parts are in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from xnatfs import proxy
from xnatfs.tree.tree import DIGEST_PARAM, _content_key

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="NGINX MISSING: apt-get install nginx")
MD5 = "0123456789abcdef0123456789abcdef"


def _cfg(tmp_path, upstream="http://127.0.0.1:8080/xnat", **kw):
    return proxy.make_config(
        upstream, 18080, str(tmp_path / "cache"), 1 << 30, run_dir=str(tmp_path / "run"), **kw
    )


def test_digest_rides_on_the_download_url_only_when_well_formed():
    assert proxy.DIGEST_PARAM == DIGEST_PARAM
    uri = "/data/projects/P/resources/1/files/a b.dcm"
    assert _content_key(uri, 3, MD5.upper(), None, "").uri == f"{uri}?{DIGEST_PARAM}={MD5}"
    assert _content_key(uri + "?x=1", 3, MD5, None, "").uri == f"{uri}?x=1&{DIGEST_PARAM}={MD5}"
    # no digest (checksums off) or a strange one: the URL is XNAT's, the proxy passes it through
    assert _content_key(uri, 3, "", 12.0, "").uri == uri
    assert _content_key(uri, 3, "abc&x=1", None, "").uri == uri


def test_config_has_the_safety_parts(tmp_path):
    text = proxy.render(_cfg(tmp_path))
    for needle in (
        "auth_request /_xnatfs_auth;",
        "proxy_method HEAD;",
        "proxy_cache_key $request_uri;",
        "proxy_hide_header Set-Cookie;",
        "proxy_ignore_headers Set-Cookie",
        "proxy_cache_lock on;",
        f"$arg_{DIGEST_PARAM}",
        "error_page 401 403 500 = @direct;",
        "recursive_error_pages on;",
        "listen 127.0.0.1:18080;",
    ):
        assert needle in text, needle
    # what the cache stores comes through a second hop that drops Set-Cookie (nginx keeps the
    # upstream's headers in the cache file as they came: hiding them is for the client only)
    cached = text[text.index("location @cached") : text.index("location @direct")]
    assert "proxy_pass http://xnat_no_cookie;" in cached
    hop = text[text.index(f"listen unix:{tmp_path}/run/hop/xnat.sock;") :]
    assert "proxy_hide_header Set-Cookie;" in hop and "proxy_cache " not in hop
    # a mount's refetch after a failed check replaces the entry: exactly "X-Xnatfs-Refresh: 1"
    # makes nginx ask XNAT again, nothing else does, and the header does not reach XNAT
    assert "map $http_x_xnatfs_refresh $xnatfs_refresh {" in text and '"1" 1;' in text
    assert "proxy_cache_bypass $xnatfs_refresh;" in cached
    assert text.count("proxy_cache_bypass") == 1 and "proxy_no_cache" not in text
    assert 'proxy_set_header X-Xnatfs-Refresh "";' in cached
    assert proxy.REFRESH_HEADER.lower().replace("-", "_") in text
    assert "add_header X-Xnatfs-Cache $upstream_cache_status always;" in cached
    assert proxy.CACHE_HEADER == "X-Xnatfs-Cache"
    # nothing per user in the key, and the pass-through locations store nothing
    assert "$http_cookie" not in text and "$http_authorization" not in text
    assert text.count("proxy_cache xnatfs;") == 1
    # a location with its own proxy_set_header inherits none: each one sets XNAT's Host again
    assert text.count("proxy_set_header Host 127.0.0.1:8080;") == 1 + text.count(
        "proxy_set_header Accept-Encoding"
    )
    assert "proxy_set_header Host xnat.example.org;" in proxy.render(
        _cfg(tmp_path, upstream="https://xnat.example.org/xnat")
    )


def test_refuses_bad_input(tmp_path):
    with pytest.raises(proxy.ProxyError):
        _cfg(tmp_path, upstream="ftp://x")
    with pytest.raises(proxy.ProxyError):  # would end the `server` directive
        _cfg(tmp_path, upstream="http://a;b/")
    with pytest.raises(proxy.ProxyError):
        proxy.render(_cfg(tmp_path, bind="0.0.0.0:1;x"))
    with pytest.raises(proxy.ProxyError):
        proxy.render(proxy.make_config("http://x", 1, str(tmp_path / 'a";b'), 1, run_dir="/r"))
    with pytest.raises(proxy.ProxyError):
        proxy.render(_cfg(tmp_path, tls_cert="/c.pem"))
    with pytest.raises(proxy.ProxyError, match="too long for the socket"):
        proxy.render(proxy.make_config("http://x", 1, "/c", 1, run_dir="/r" + "/run" * 30))


@needs_nginx
@pytest.mark.parametrize("variant", ["http", "https-upstream", "tls"])
def test_nginx_accepts_the_generated_config(tmp_path, variant):
    kw = {}
    upstream = "http://127.0.0.1:8080/xnat"
    if variant == "https-upstream":
        upstream = "https://localhost:8443"  # resolved when nginx loads the config
    if variant == "tls":
        if not shutil.which("openssl"):
            pytest.skip("openssl missing: cannot make a test certificate")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(tmp_path / "k.pem"),
                "-out",
                str(tmp_path / "c.pem"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        kw = {"tls_cert": str(tmp_path / "c.pem"), "tls_key": str(tmp_path / "k.pem")}
    cfg = _cfg(tmp_path, upstream=upstream, worker_user="root" if os.geteuid() == 0 else "", **kw)
    conf = proxy.prepare(cfg)
    res = subprocess.run(
        proxy.command(NGINX, cfg, conf) + ["-t"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert (
        cfg.mount_url()
        == {
            "http": "http://127.0.0.1:18080/xnat",
            "https-upstream": "http://127.0.0.1:18080",  # no context path
            "tls": "https://127.0.0.1:18080/xnat",
        }[variant]
    )


def test_prepare_makes_the_logs_private(tmp_path):
    """The access log names every file every user read: 0600 from the start, an old one made
    so, a link there refused (the run directory is 0711 when started as root)."""
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "error.log").write_text("old\n")
    os.chmod(run / "error.log", 0o644)
    proxy.prepare(cfg)
    for name in proxy.LOGS:
        assert os.stat(run / name).st_mode & 0o777 == 0o600, name
    assert (run / "error.log").read_text() == "old\n"  # kept, only its mode changed
    os.unlink(run / "access.log")
    os.symlink(tmp_path / "elsewhere", run / "access.log")
    with pytest.raises(proxy.ProxyError, match="private"):
        proxy.prepare(cfg)
    assert not (tmp_path / "elsewhere").exists()


def test_prepare_removes_a_dead_proxys_socket_and_refuses_a_live_ones(tmp_path):
    import socket

    cfg = _cfg(tmp_path)
    proxy.prepare(cfg)
    sock = proxy.hop_socket_path(cfg)
    assert os.stat(os.path.dirname(sock)).st_mode & 0o777 == 0o700
    left = socket.socket(socket.AF_UNIX)
    left.bind(sock)  # a proxy killed before it removed its socket: nobody listens
    left.close()
    proxy.prepare(cfg)
    assert not os.path.exists(sock)
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(sock)
        live.listen(1)
        with pytest.raises(proxy.ProxyError, match="another cache proxy"):
            proxy.prepare(cfg)
        assert os.path.exists(sock)


def test_print_config_needs_no_nginx_and_touches_nothing(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "xnatfs",
            "cache-proxy",
            "--upstream",
            "https://xnat.example.org",
            "--port",
            "3128",
            "--cache-dir",
            str(tmp_path / "c"),
            "--print-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "auth_request" in res.stdout and not (tmp_path / "c").exists()
