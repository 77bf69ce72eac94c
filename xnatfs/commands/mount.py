"""``xnatfs mount`` and ``xnatfs config``: settings -> ``Options``, credentials, the server
check, the mount point; then the daemon (``commands/daemon.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Sequence

from xnatfs import settings as table
from xnatfs.commands.common import (
    UsageError,
    check_url,
    load_fuse,
    plaintext_warning,
    setup_logging,
)
from xnatfs.commands.daemon import drop_credentials_from_environment, run_foreground, spawn_daemon
from xnatfs.options import Options

log = logging.getLogger("xnatfs")


def settings_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Every setting -> (value, source), by the precedence of ``xnatfs.config``."""
    from xnatfs import config as xc

    url = check_url(args.url)
    given = {key: getattr(args, key) for key in xc.KEYS if getattr(args, key, None) is not None}
    return xc.effective_settings(url, given, os.environ, xc.load_config(args.config))


def _take_owner_options(fuse: Dict[str, object]) -> Dict[str, int]:
    """``uid=``, ``gid=`` and ``umask=`` are applied by xnatfs, not passed to libfuse.

    libfuse3's own ``umask=`` *replaces* every mode with ``0777 & ~umask``, so ``umask=0`` would
    give other users write bits; ours only takes bits away (issue 17 §2).
    """
    out: Dict[str, int] = {}
    for key, base in (("uid", 10), ("gid", 10), ("umask", 8)):
        if key not in fuse:
            continue
        value = fuse.pop(key)
        try:
            out[key] = int(str(value), base)
        except ValueError:
            raise UsageError(f"-o {key}={value}: not a number") from None
        if out[key] < 0 or (key == "umask" and out[key] > 0o777):
            raise UsageError(f"-o {key}={value}: out of range")
    return out


def options_from_settings(
    url: str, settings: Dict[str, Any], fuse_options: Sequence[str]
) -> Options:
    """Effective settings (``settings_from_args``) and the ``-o`` options -> ``Options``: the
    table's fields by ``settings.option_values``, the owner options and ``nonempty`` taken out
    of what goes to libfuse."""
    values = {key: value for key, (value, _source) in settings.items()}
    fuse = table.parse_fuse_opts(fuse_options)
    if "password" in fuse:
        # it would go on to the daemon's command line (readable by every local user in ps and
        # /proc/PID/cmdline for the mount's life) and then to libfuse, which refuses it
        raise UsageError(
            "-o password=... refused: credentials do not belong in mount options (they would "
            "be visible in the process list); use a netrc (-o netrc=FILE) or "
            "XNATFS_USER/XNATFS_PASSWORD"
        )
    owner = _take_owner_options(fuse)
    fields = table.option_values(values)
    # libfuse3 has no "nonempty" (it always allows it): xnatfs checks the mount point itself
    fields["nonempty"] = fuse.pop("nonempty", None) is not None or bool(fields["nonempty"])
    return Options(
        url=check_url(url),
        fuse_options=fuse,
        uid=owner.get("uid"),
        gid=owner.get("gid"),
        umask=owner.get("umask", 0),
        **fields,
    )


def _credentials(args: argparse.Namespace, url: str, settings: Dict[str, Any]) -> Any:
    """From the parent on stdin, the config file, netrc, a prompt or the environment."""
    from xnatfs.config import SOURCE_FILE
    from xnatfs.xnat.auth import Credentials, resolve_credentials

    if args.credentials_stdin:
        data = json.loads(sys.stdin.readline() or "{}")
        return Credentials(data["username"], data["password"], source=data.get("source", "parent"))
    user, user_src = settings["user"]
    password, password_src = settings["password"]
    if user and password and SOURCE_FILE in (user_src, password_src):
        return Credentials(user, password, source="config file")
    return resolve_credentials(url, netrc_path=settings["netrc"][0])


def _check_server(options: Options, creds: Any) -> None:
    """Log in once with a short-lived client so that a wrong password or an unreachable server
    is one clear line before anything is mounted (docs/ARCHITECTURE.md §9)."""
    from xnatfs.xnat import errors as xe
    from xnatfs.xnat.client import ClientOptions, XnatClient

    client = XnatClient(
        options.url,
        creds,
        ClientOptions(
            pool_size=1,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            retries=1,
            verify=options.verify,
            heartbeat=False,
            deadline=options.fs_timeout,
        ),
    )  # the check is bounded like every call (issue 17 §1)
    # the outcome is the one line below: the client's own log line of the same refusal would
    # print first, timestamped (issue 16 §5); at --log-level debug it stays
    client_log = logging.getLogger("xnatfs.xnat")
    old_level = client_log.level
    if not client_log.isEnabledFor(logging.DEBUG):
        client_log.setLevel(logging.CRITICAL)
    try:
        client.start()
    except xe.Unauthorized:
        raise UsageError(
            f"{options.url}: login refused for user '{creds.username}' "
            f"(credentials from {creds.source}): check the user name and password"
        ) from None
    except (xe.Unreachable, xe.XnatTimeout) as exc:
        raise UsageError(f"cannot reach {options.url}: {exc.message or exc}") from exc
    except xe.XnatError as exc:
        raise UsageError(f"{options.url} does not answer like an XNAT server: {exc}") from exc
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - best-effort logout of the check session
            pass
        client_log.setLevel(old_level)


def _prepare_mountpoint(mountpoint: str, nonempty: bool = False) -> str:
    """The absolute mount point, after clearing a stale mount there; one clear line (a
    ``UsageError``) when it cannot or should not be mounted on (issue 16 §6)."""
    from xnatfs.fs import mounting

    path = os.path.abspath(mountpoint)
    if mounting.clear_stale(path):
        log.info("cleared a stale mount at %s", path)
    if mounting.is_mounted(path):
        raise UsageError(f"{path} is already mounted (xnatfs umount {path})")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(
            f"mount point {path} is a file, not a directory: mount on a directory (an empty one)"
        )
    if not os.path.isdir(path):
        raise UsageError(f"mount point {path} does not exist (mkdir -p {path})")
    if not nonempty:
        try:
            with os.scandir(path) as entries:
                busy = any(True for _ in entries)
        except OSError:
            busy = False  # unreadable to us: libfuse decides
        if busy:
            # its files would be hidden while mounted; sshfs and rclone refuse it too
            raise UsageError(
                f"mount point {path} is not empty: its files would be hidden "
                "while mounted; use an empty directory, or --nonempty "
                "(-o nonempty) to mount over them"
            )
    return path


def cmd_mount(args: argparse.Namespace) -> int:
    """Check, then serve in the foreground or start the daemon and wait for its mount."""
    settings = settings_from_args(args)
    setup_logging(settings["log_level"][0])
    options = options_from_settings(args.url, settings, args.fuse_options)
    insecure = plaintext_warning(options.url)
    if insecure and not args.credentials_stdin:  # once, by the command the user ran
        log.warning("%s", insecure)
    if options.zero_message_opens and not options.read_only:
        # a write needs its open (the upload at close, the journal): fs/noopen.py
        raise UsageError("--zero-message-opens needs --read-only (config key read_only)")
    mountpoint = _prepare_mountpoint(args.mountpoint, options.nonempty)
    load_fuse()
    creds = _credentials(args, options.url, settings)
    if args.foreground:
        if not args.credentials_stdin:
            _check_server(options, creds)
            drop_credentials_from_environment(
                args, options, creds, mountpoint, settings["log_level"][0]
            )
        from xnatfs import notify

        def ready() -> None:
            notify.notify_ready(f"serving {options.url} at {mountpoint}")

        def first_request() -> None:
            # INIT has been answered once any other request arrives (docs/FUSE.md §2.2)
            from xnatfs.fs.mounting import set_read_ahead

            if options.read_ahead_kb:
                set_read_ahead(mountpoint, options.read_ahead_kb)

        return run_foreground(
            options, creds, mountpoint, on_ready=ready, on_first_request=first_request
        )
    _check_server(options, creds)
    return spawn_daemon(args, options, creds, mountpoint, settings["log_level"][0])


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings and where each comes from (secrets masked)."""
    from xnatfs import config as xc

    settings = settings_from_args(args)
    if settings["netrc"][0] is None:
        # show the file the credentials really come from (xnat/auth.py: $NETRC, else ~/.netrc)
        from xnatfs.xnat.auth import _default_netrc

        path, explicit = _default_netrc(os.environ)
        exists = "" if os.path.exists(path) else ", missing"
        settings["netrc"] = (path, ("environment ($NETRC)" if explicit else "default") + exists)
    print(xc.render(settings, xc.load_config(args.config)), end="")
    return 0
