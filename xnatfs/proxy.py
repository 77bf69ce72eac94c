"""``xnatfs cache-proxy``: a shared cache of file bytes for many mounts, on the system's nginx.

Why nginx and not a cache of our own: the issue (13 §1) asks for an existing engine, and nginx has
everything the job needs built in (Debian's ``nginx`` package: ``proxy_cache``,
``proxy_cache_lock``, ``auth_request``); docs/SCALING.md says why not Varnish or Squid.

What the generated configuration does, and why each part is safe:

* **XNAT still authorizes every request.**  A cacheable request (GET/HEAD, a path below
  ``/files/``, an ``xnatfs_md5=<32 hex>`` parameter) first sends ``HEAD`` of the same URI to XNAT
  with the requester's own ``Cookie``/``Authorization`` (``auth_request``).  XNAT answers HEAD of a
  file through the same code as GET, without the body (docs/XNAT-API.md §3.1), so this is the
  cheapest question that XNAT answers with the same permission check as the download.  Only on
  2xx are cached bytes served.  On any other answer the request goes to XNAT unchanged and
  uncached, so the user gets XNAT's own status (403, 404, 401 for an expired session ...), which
  the mount maps to EACCES/ENOENT as it does without a proxy.
* **Stale bytes are never served.**  The cache key is the raw request URI, which carries the MD5
  of the file as the mount listed it (``tree._content_key`` adds it; XNAT ignores unknown
  parameters, §1.2).  A file that changes on XNAT has a new digest, hence a new key.  Requests
  without a well-formed digest (checksums off on the server) are passed through uncached.  If a
  file changes between a mount's listing and its download, the new bytes can be stored under the
  old digest's key (and anyone can store such an entry on purpose, by asking with a digest the
  file does not have).  Such bytes never reach a reader: every answer of the cache says where it
  came from (``X-Xnatfs-Cache``: HIT from the disk, MISS/EXPIRED/BYPASS from XNAT), a mount
  serves bytes from the disk only after its MD5 check of the whole file, and refetches a file
  that failed it with ``X-Xnatfs-Refresh: 1``, which makes nginx ask XNAT again and replace the
  entry (``proxy_cache_bypass``; after XNAT's authorization, and nothing else bypasses).
* **Nothing per-user is cached.**  Listings, login (``/data/JSESSION``, ``/data/services/auth``),
  uploads, deletes and zips pass through (``proxy_buffering off``, so they stream).  Cached
  answers are stored and served without ``Set-Cookie``, and the key holds no cookie: one user's
  session never reaches another.  nginx writes an answer's headers into the cache file as the
  upstream sent them (``proxy_hide_header`` hides them from the client only), so the cache
  fetches through a second hop, a server on a Unix socket in the run directory that drops
  ``Set-Cookie`` first: no session id is ever written to the cache's disk.
* **One download per file.**  ``proxy_cache_lock`` makes concurrent misses for the same key wait
  for the first one, so N nodes reading the same new file cost XNAT one download (plus N HEADs).

The process runs in the foreground with everything in its own run directory (config, pid file,
error and access logs, temp files); no system nginx file is read or written (``-p RUN -c CONF``,
``-e`` for the early error log) and no root is needed for a port above 1023.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional
from urllib.parse import urlsplit

#: the download parameter that carries the listed MD5 (kept equal to tree.DIGEST_PARAM)
DIGEST_PARAM = "xnatfs_md5"

#: what nginx adds to every answer of the caching location: its cache status; HIT (and any
#: status but the ones in ``_LIVE``) means the bytes come from its disk
CACHE_HEADER = "X-Xnatfs-Cache"
#: a mount's refetch of a file whose answer from the cache failed its size or MD5 check:
#: ``X-Xnatfs-Refresh: 1`` makes nginx ask XNAT (after XNAT's authorization, as always) and
#: store XNAT's answer in place of the entry; nothing else (Cache-Control, Pragma) does
REFRESH_HEADER = "X-Xnatfs-Refresh"
#: cache statuses of an answer fetched from XNAT for this request, not read from the disk
_LIVE = frozenset({"MISS", "EXPIRED", "BYPASS"})


def stored_answer(headers: Mapping[str, str]) -> Optional[bool]:
    """Did this answer come from a cache proxy's disk (True), through its cache from XNAT
    (False), or not through its cache at all (None)?  ``headers``: the answer's, looked up
    case-insensitively (requests' headers are)."""
    status = headers.get(CACHE_HEADER)
    if status is None:
        return None
    return status.strip().upper() not in _LIVE


#: Debian's package that has nginx with the auth_request module (``nginx -V``)
NGINX_PACKAGE = "nginx"


class ProxyError(Exception):
    """A problem the user can fix (bad URL, nginx missing); one line, exit status 1."""


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the generated nginx configuration depends on."""

    upstream: str  # XNAT's URL, e.g. https://xnat.example.org/xnat
    port: int
    cache_dir: str
    run_dir: str
    cache_size: int  # bytes
    bind: str = "127.0.0.1"
    tls_cert: str = ""  # serve https with this certificate chain ...
    tls_key: str = ""  # ... and key (both or neither)
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"  # to verify an https upstream
    # Longest wait behind another node's download of the same file; then the request goes to
    # XNAT itself, uncached.  A waiter gets no byte meanwhile, so this stays below the mounts'
    # 30 s read timeout (options.read_timeout) rather than making them time out.
    lock_timeout_s: int = 25
    workers: int = 2
    worker_user: str = ""  # only as root: the user nginx's workers run as

    @property
    def scheme_host_port(self) -> tuple[str, str, int]:
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProxyError(
                f"--upstream must look like https://host[:port][/path], not {self.upstream!r}"
            )
        if not _HOST.fullmatch(parts.hostname):
            raise ProxyError(
                f"--upstream host {parts.hostname!r} is not a plain host name or address"
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.scheme, parts.hostname, port

    @property
    def context_path(self) -> str:
        return urlsplit(self.upstream).path.rstrip("/")

    def mount_url(self, host: str = "") -> str:
        """The URL mounts use: this proxy + XNAT's context path (requests pass unchanged)."""
        scheme = "https" if self.tls_cert else "http"
        host = host or (self.bind if self.bind not in ("0.0.0.0", "::", "") else "PROXY-HOST")
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}{self.context_path}"


#: a host name, IPv4 or IPv6 address: nothing that could end an nginx directive
_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")


def _q(value: str) -> str:
    """An nginx string literal (paths may contain spaces)."""
    if any(c in value for c in '"\\\n\r;{}$'):
        raise ProxyError(f"refusing a value nginx cannot quote safely: {value!r}")
    return f'"{value}"'


def render(cfg: ProxyConfig) -> str:
    """The nginx configuration (``--print-config`` prints it for a site's own nginx).

    Long because: the configuration is one template, kept whole so that it reads as nginx
    reads it (the Python before it only computes the values it needs)."""
    scheme, host, port = cfg.scheme_host_port
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ProxyError("--tls-cert and --tls-key go together")
    run, cache = cfg.run_dir, cfg.cache_dir
    hostport = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    # the Host header XNAT would get directly (no port when it is the scheme's default)
    host_header = (
        hostport
        if port != (443 if scheme == "https" else 80)
        else (host if ":" not in host else f"[{host}]")
    )
    if not _HOST.fullmatch(cfg.bind):
        raise ProxyError(f"--bind wants an address or host name, not {cfg.bind!r}")
    listen_host = f"[{cfg.bind}]" if ":" in cfg.bind else cfg.bind
    hop_socket = _q(hop_socket_path(cfg))[1:-1]  # checked like a quoted value, used bare
    ssl = ""
    if cfg.tls_cert:
        ssl = (
            f"        ssl_certificate {_q(cfg.tls_cert)};\n"
            f"        ssl_certificate_key {_q(cfg.tls_key)};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    upstream_tls = ""
    if scheme == "https":
        upstream_tls = (
            f"    proxy_ssl_server_name on;\n    proxy_ssl_name {host};\n"
            f"    proxy_ssl_verify on;\n    proxy_ssl_verify_depth 4;\n"
            f"    proxy_ssl_trusted_certificate {_q(cfg.ca_file)};\n"
            "    proxy_ssl_session_reuse on;\n"
        )
    return f"""# generated by `xnatfs cache-proxy` (xnatfs/proxy.py); see docs/SCALING.md
daemon off;
master_process on;
{f"user {cfg.worker_user};" if cfg.worker_user else "# not root: workers run as this user"}
worker_processes {cfg.workers};
pid {_q(os.path.join(run, "nginx.pid"))};
error_log {_q(os.path.join(run, "error.log"))} warn;
events {{ worker_connections 4096; }}

http {{
    # the request, its status, the cache's verdict and timings; never a cookie or a header
    log_format xnatfs '$remote_addr [$time_iso8601] "$request_method $uri" $status '
                      '$body_bytes_sent cache=$upstream_cache_status rt=$request_time '
                      'upstream=$upstream_status';
    access_log {_q(os.path.join(run, "access.log"))} xnatfs;
    client_body_temp_path {_q(os.path.join(run, "tmp", "body"))};
    proxy_temp_path {_q(os.path.join(run, "tmp", "proxy"))};
    fastcgi_temp_path {_q(os.path.join(run, "tmp", "fastcgi"))};
    uwsgi_temp_path {_q(os.path.join(run, "tmp", "uwsgi"))};
    scgi_temp_path {_q(os.path.join(run, "tmp", "scgi"))};
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;         # uploads of any size pass through
    types {{ }}
    default_type application/octet-stream;

    proxy_cache_path {_q(cache)} levels=1:2 keys_zone=xnatfs:32m
                     max_size={cfg.cache_size} inactive=30d use_temp_path=off;

    # cacheable = a GET/HEAD of a file (a path below /files/) carrying its listed MD5
    map "$request_method:$arg_{DIGEST_PARAM}:$uri" $xnatfs_cacheable {{
        "~^(GET|HEAD):[0-9a-f]{{32}}:/.*/files/." 1;
        default 0;
    }}

    # a mount's refetch after an answer from the cache failed its size or MD5 check (exactly
    # "X-Xnatfs-Refresh: 1"; nothing else skips the cache): ask XNAT, store its answer anew
    map $http_x_xnatfs_refresh $xnatfs_refresh {{
        "1" 1;
        default 0;
    }}

    upstream xnat {{
        server {hostport};
        keepalive 64;
    }}

    # the cache's way to XNAT: the second hop below, which drops Set-Cookie before the answer
    # reaches the cache (proxy_hide_header only hides a header from the client: nginx writes
    # the upstream's header block into the cache file as it came, session id included)
    upstream xnat_no_cookie {{
        server unix:{hop_socket};
        keepalive 64;
    }}

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host {host_header};
    proxy_connect_timeout 10s;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
{upstream_tls}
    server {{
        listen {listen_host}:{cfg.port}{" ssl" if cfg.tls_cert else ""};
{ssl}        recursive_error_pages on;   # / -> @cached -> @direct takes two error_page hops

        # everything not cacheable: straight through, streamed, nothing stored
        location / {{
            error_page 418 = @cached;
            if ($xnatfs_cacheable) {{ return 418; }}
            proxy_pass {scheme}://xnat;
            proxy_buffering off;
            proxy_request_buffering off;
        }}

        # a file with its digest: XNAT says yes to this user first, then bytes from the cache
        location @cached {{
            auth_request /_xnatfs_auth;
            # XNAT said no (401/403, or 404/5xx which auth_request reports as 500): ask XNAT
            # itself, uncached, so the user gets XNAT's own answer
            error_page 401 403 500 = @direct;
            proxy_pass http://xnat_no_cookie;
            proxy_cache xnatfs;
            proxy_cache_key $request_uri;
            # entries are refreshed daily: a bound on how long an entry stored under a digest
            # the file did not have (the listing/download race) can cost its readers an EIO
            proxy_cache_valid 200 1d;
            # ... or at once by a mount whose check failed: XNAT's answer replaces the entry
            proxy_cache_bypass $xnatfs_refresh;
            proxy_set_header X-Xnatfs-Refresh "";
            # the key has no Accept-Encoding: store and serve XNAT's identity bytes only
            proxy_set_header Accept-Encoding "";
            proxy_set_header Host {host_header};   # (a location's own proxy_set_header
            proxy_set_header Connection "";     # replaces all inherited ones)
            proxy_cache_methods GET HEAD;
            proxy_cache_lock on;
            proxy_cache_lock_timeout {cfg.lock_timeout_s}s;
            proxy_cache_lock_age {cfg.lock_timeout_s}s;
            proxy_cache_use_stale off;
            proxy_ignore_headers Set-Cookie Cache-Control Expires Vary X-Accel-Expires;
            proxy_hide_header Set-Cookie;
            add_header X-Xnatfs-Cache $upstream_cache_status always;
        }}

        location @direct {{
            proxy_pass {scheme}://xnat;
            proxy_buffering off;
        }}

        location = /_xnatfs_auth {{
            internal;
            proxy_method HEAD;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Accept-Encoding identity;
            proxy_set_header Host {host_header};
            proxy_set_header Connection "";
            proxy_pass {scheme}://xnat$request_uri;
        }}
    }}

    # the second hop of cached answers (from @cached only; a socket in the run directory, in
    # a folder of the workers' own): XNAT's answer without Set-Cookie, so that no session id
    # is ever written into a cache file
    server {{
        listen unix:{hop_socket};
        access_log off;
        location / {{
            proxy_pass {scheme}://xnat;
            proxy_hide_header Set-Cookie;
            proxy_buffering off;
        }}
    }}
}}
"""


#: the folder of the second hop's socket in the run directory (its workers' own)
HOP_DIR = "hop"
#: longest path of a Unix socket (sun_path holds 108 bytes with the final NUL)
_SUN_PATH_MAX = 107


def hop_socket_path(cfg: ProxyConfig) -> str:
    """The second hop's socket (``render``): ``<run-dir>/hop/xnat.sock``."""
    path = os.path.join(cfg.run_dir, HOP_DIR, "xnat.sock")
    if len(path.encode()) > _SUN_PATH_MAX:
        raise ProxyError(
            f"--run-dir {cfg.run_dir!r} is too long for the socket {path!r} (at most "
            f"{_SUN_PATH_MAX} bytes): choose a shorter one"
        )
    return path


def _prepare_hop(cfg: ProxyConfig) -> None:
    """The second hop's folder: 0700, its workers' (nginx's master makes the socket in it and
    the workers connect to it), without a socket of an earlier proxy (``_stale_socket``)."""
    sock = hop_socket_path(cfg)
    folder = os.path.dirname(sock)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise ProxyError(f"{folder} is not a folder")
    user = cfg.worker_user.split()[0] if cfg.worker_user else ""
    if user and user != "root":
        import pwd

        try:
            pw = pwd.getpwnam(user)
        except KeyError as exc:
            raise ProxyError(f"--worker-user {user!r}: no such user") from exc
        os.chown(folder, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    os.chmod(folder, 0o700)  # a folder (lstat above), in the private run directory
    _remove_stale_socket(sock)


def _remove_stale_socket(sock: str) -> None:
    """Remove a socket left by a proxy killed before it could (nginx would not start: address
    in use); refuse one a running proxy listens on (this run directory is in use)."""
    try:
        if not stat.S_ISSOCK(os.lstat(sock).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(sock)
    except OSError:  # nobody listens
        os.unlink(sock)
        return
    finally:
        probe.close()
    raise ProxyError(f"another cache proxy runs with this --run-dir: {sock} answers")


def find_nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), ""
    )
    if not found:
        raise ProxyError(
            f"nginx is not installed (Debian/Ubuntu: apt-get install "
            f"{NGINX_PACKAGE}; it must have the auth_request module, see nginx -V)"
        )
    return found


def prepare(cfg: ProxyConfig) -> Path:
    """Write the configuration and the private directories; return the config path."""
    text = render(cfg)
    os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
    for sub in ("", "tmp"):
        os.makedirs(os.path.join(cfg.run_dir, sub), mode=0o700, exist_ok=True)
    if cfg.worker_user and cfg.worker_user.split()[0] != "root":
        # started as root, the workers run unprivileged: nginx chowns the cache and temp
        # directories to them, but they must be able to pass through the run directory
        os.chmod(cfg.run_dir, 0o711)
    _prepare_hop(cfg)
    for log_name in LOGS:
        _private_file(os.path.join(cfg.run_dir, log_name))
    conf = Path(cfg.run_dir) / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


#: nginx's logs in the run directory: the access log names every file every user read
LOGS = ("access.log", "error.log")

#: the umask nginx runs with: what it creates (pid file, a log it makes anew) is its own user's
#: only; the workers' cache and temp files are 0600 in 0700 folders whatever the umask
NGINX_UMASK = 0o077


def _private_file(path: str) -> None:
    """Create ``path`` mode 0600 (or make an existing one so), never through a link: started as
    root, nginx creates its logs 0644 and the run directory is 0711 for the workers, so any
    local user could read them.  The workers write the logs through descriptors the master
    opened, so they need no access to the files themselves."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:  # ELOOP: a symbolic link there
        raise ProxyError(f"cannot make the log {path} private: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def command(nginx: str, cfg: ProxyConfig, conf: Path) -> List[str]:
    # -p: prefix (relative paths, and where nginx would look by default); -e: the error log
    # used before the configuration is read (else /var/log/nginx/error.log)
    return [nginx, "-p", cfg.run_dir, "-e", os.path.join(cfg.run_dir, "error.log"), "-c", str(conf)]


def run(cfg: ProxyConfig, out=sys.stderr) -> int:
    """Check the configuration with ``nginx -t``, then run nginx in the foreground until it
    exits or we get SIGINT/SIGTERM (passed on as SIGQUIT: finish answers, then stop)."""
    nginx = find_nginx()
    conf = prepare(cfg)
    cmd = command(nginx, cfg, conf)
    check = subprocess.run(
        cmd + ["-t", "-q"], capture_output=True, text=True, timeout=60, umask=NGINX_UMASK
    )
    if check.returncode != 0:
        raise ProxyError(
            "nginx refused the generated configuration: "
            + (check.stderr.strip() or check.stdout.strip())[-800:]
        )
    print(
        f"xnatfs cache-proxy: {cfg.upstream} cached in {cfg.cache_dir}; mounts use "
        f"{cfg.mount_url()} (run dir {cfg.run_dir})",
        file=out,
        flush=True,
    )
    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent, umask=NGINX_UMASK)

    def stop(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _die_with_parent() -> None:
    """In the child before exec: nginx gets SIGTERM if this process dies (even by SIGKILL), so
    no orphaned proxy keeps the port and the cache (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def default_run_dir() -> str:
    return tempfile.mkdtemp(prefix="xnatfs-cache-proxy-")


def _unprivileged_user() -> str:
    """``user`` for nginx when started as root: www-data (Debian), else nobody."""
    import grp
    import pwd

    for name in ("www-data", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        try:
            return f"{name} {grp.getgrgid(pw.pw_gid).gr_name}"
        except KeyError:
            return name
    raise ProxyError("started as root and no www-data/nobody user: give --worker-user")


def make_config(
    upstream: str,
    port: int,
    cache_dir: str,
    cache_size: int,
    run_dir: Optional[str] = None,
    bind: str = "127.0.0.1",
    tls_cert: str = "",
    tls_key: str = "",
    ca_file: str = "",
    workers: int = 2,
    worker_user: str = "",
    lock_timeout_s: int = 25,
) -> ProxyConfig:
    if os.geteuid() == 0 and not worker_user:
        worker_user = _unprivileged_user()
    cfg = ProxyConfig(
        upstream=upstream.rstrip("/"),
        port=port,
        cache_dir=os.path.abspath(cache_dir),
        run_dir=os.path.abspath(run_dir) if run_dir else "",
        cache_size=cache_size,
        bind=bind,
        tls_cert=tls_cert and os.path.abspath(tls_cert),
        tls_key=tls_key and os.path.abspath(tls_key),
        workers=workers,
        lock_timeout_s=lock_timeout_s,
        worker_user=worker_user if os.geteuid() == 0 else "",
        **({"ca_file": os.path.abspath(ca_file)} if ca_file else {}),
    )
    _ = cfg.scheme_host_port  # validate early: raises ProxyError on a bad upstream
    if not 0 < port < 65536:
        raise ProxyError(f"--port must be 1..65535, not {port}")
    return cfg


def _parser() -> argparse.ArgumentParser:
    """The ``xnatfs cache-proxy`` command line."""
    p = argparse.ArgumentParser(
        prog="xnatfs cache-proxy",
        description="Run nginx in the foreground as a shared cache of XNAT file bytes for many "
        "mounts; XNAT still authorizes every request (docs/SCALING.md).",
    )
    p.add_argument("--upstream", required=True, help="XNAT's URL, e.g. https://xnat.example.org")
    p.add_argument("--port", type=int, required=True, help="port to listen on")
    p.add_argument("--cache-dir", required=True, help="where cached files are kept (mode 0700)")
    p.add_argument("--cache-size", default="100G", help="cache limit (default 100G)")
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for a cluster)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="config, pid file, logs, temp files (default: a fresh temp dir)",
    )
    p.add_argument("--tls-cert", default="", help="serve https with this certificate chain")
    p.add_argument("--tls-key", default="", help="... and this private key")
    p.add_argument(
        "--upstream-ca",
        default="",
        help="CA bundle to verify an https upstream (default: the system's)",
    )
    p.add_argument("--workers", type=int, default=2, help="nginx worker processes (default 2)")
    p.add_argument(
        "--lock-timeout",
        type=int,
        default=25,
        help="seconds a request waits for another node's download of the same file "
        "before it fetches uncached (default 25; keep it below the mounts' 30 s "
        "read timeout)",
    )
    p.add_argument(
        "--worker-user",
        default="",
        help="started as root: run nginx's workers as this user (default www-data, "
        "else nobody); it must be able to reach --cache-dir",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the nginx configuration (for a site's own nginx) and exit",
    )
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``xnatfs cache-proxy --upstream URL --port P --cache-dir D [--cache-size SIZE]``."""
    from xnatfs.options import parse_size

    args = _parser().parse_args(argv)
    try:
        cfg = make_config(
            args.upstream,
            args.port,
            args.cache_dir,
            parse_size(args.cache_size),
            run_dir=args.run_dir
            or ("/run/xnatfs-cache-proxy" if args.print_config else default_run_dir()),
            bind=args.bind,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            ca_file=args.upstream_ca,
            workers=args.workers,
            worker_user=args.worker_user,
            lock_timeout_s=args.lock_timeout,
        )
        if args.print_config:
            print(render(cfg), end="")
            return 0
        return run(cfg)
    except (ProxyError, ValueError) as exc:
        print(f"xnatfs cache-proxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
