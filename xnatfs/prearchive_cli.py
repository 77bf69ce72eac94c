"""``xnatfs prearchive rebuild|archive|move|delete PATH``: the prearchive actions that have no
file operation of their own (rebuild), and the others for symmetry (issue 11 §2).

PATH is a session folder of a mount (``MNT/.prearchive/P/TS/SESSION``): its ``user.xnat.uri``
attribute names the session and the mount's ``.xnatfs/stats`` the server, so the user never
types a URI.  A bare ``/data/prearchive/projects/P/TS/SESSION`` works too with ``--url``.  The
credentials follow the rules of ``xnatfs mount`` (config file, ``XNATFS_USER``/``_PASSWORD``,
netrc, prompt; never argv), and each action waits, within ``--timeout``, for the state XNAT
requires (``xnat/prearc.py``).  Given a mount folder, it then asks that mount to refresh its
prearchive (and, for an archive, the project's subjects), so the result shows at once there;
other mounts show it after their listing TTL.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
from pathlib import Path
from typing import Any, Optional, Tuple

from xnatfs.cli import UsageError
from xnatfs.logfmt import for_terminal

ACTIONS = ("rebuild", "archive", "move", "delete")
PREARC_PREFIX = "/data/prearchive/projects/"


class PrearchiveUsage(UsageError):
    """A problem the user can fix (printed as one line by ``cli.main``)."""


def add_parser(sub: Any) -> None:
    """The ``prearchive`` sub-command (called from ``cli.build_parser``)."""
    p = sub.add_parser(
        "prearchive",
        help="rebuild, archive, move or delete a prearchive "
        "session (given as its folder in a mount)",
    )
    p.add_argument("action", choices=ACTIONS)
    p.add_argument(
        "path",
        help="MNT/.prearchive/PROJECT/TIMESTAMP/SESSION (or its "
        "/data/prearchive/... URI with --url)",
    )
    p.add_argument(
        "project",
        nargs="?",
        default=None,
        help="move: the destination project; archive: the project (default: the session's)",
    )
    p.add_argument(
        "--subject", default=None, help="archive: subject label (default: the session's subject)"
    )
    p.add_argument(
        "--label", default=None, help="archive: experiment label (default: the session's name)"
    )
    p.add_argument("--url", default=None, help="XNAT base URL when PATH is not in a mount")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="longest wait for XNAT to finish, in seconds (default: the mount's "
        "--timeout setting, 60)",
    )
    p.add_argument("--config", default=None)
    p.add_argument("--netrc", default=None)
    p.add_argument("--ca-bundle", default=None)


def resolve(path: str, url: Optional[str]) -> Tuple[str, str]:
    """(server URL, session URI) for a mount path or a ``/data/prearchive/...`` URI."""
    if path.startswith(PREARC_PREFIX):
        if not url:
            raise PrearchiveUsage(f"{path} is a URI: give the server with --url")
        return url, path.rstrip("/")
    try:
        uri = os.getxattr(path, "user.xnat.uri").decode("utf-8")
    except OSError as exc:
        raise PrearchiveUsage(
            f"{path}: not a session folder of an xnatfs mount "
            f"({os.strerror(exc.errno or errno.EIO)})"
        ) from None
    if not uri.startswith(PREARC_PREFIX):
        raise PrearchiveUsage(f"{path} is not a prearchive session ({uri})")
    if url is None:
        url = _mount_url(Path(path))
    return url, uri


def _mount_url(path: Path) -> str:
    """The server of the mount holding ``path`` (its ``.xnatfs/stats``), when it is a mount of
    the caller's own."""
    found = _mount_of(path)
    if found is None:
        raise PrearchiveUsage(f"{path}: cannot find the mount's server; give it with --url")
    root, url, owner = found
    if url is None:
        # the mount's server was chosen by its owner; the credentials used here are the
        # caller's (a netrc default entry, XNATFS_USER/_PASSWORD are not bound to a host)
        raise PrearchiveUsage(
            f"{path} is in {root}, a mount of uid {owner}: the server is taken only from a "
            f"mount of yours (your credentials would go to a server another user chose); "
            f"give it with --url URL (findmnt -no SOURCE {root} shows what that mount reads)"
        )
    return url


def _mount_of(path: Path) -> Optional[Tuple[Path, Optional[str], int]]:
    """(mount root, server URL, owner uid) of the xnatfs mount holding ``path``, or None.

    The URL is None for another user's mount: its ``.xnatfs/`` is its owner's alone
    (``PermissionError``; docs/SECURITY.md), or readable (root on a user's mount) but shown
    as another uid's.  The root is found either way, so that mount can still be refreshed."""
    for folder in [path.absolute(), *path.absolute().parents]:
        stats = folder / ".xnatfs" / "stats"
        try:
            with open(stats, encoding="utf-8") as fh:
                owner = os.fstat(fh.fileno()).st_uid
                url = json.load(fh).get("url")
        except PermissionError:
            if os.path.ismount(folder):
                try:
                    return folder, None, os.stat(folder / ".xnatfs").st_uid
                except OSError:
                    pass
            continue
        except (OSError, ValueError, AttributeError):
            continue
        if url:
            return folder, (str(url) if owner == os.getuid() else None), owner
    return None


def _refresh_mount(path: str, project: Optional[str]) -> None:
    """After an action on a session given as a mount folder, that mount shows the result now
    (``fs/control.py``), not after its listing TTL: its prearchive, and for an archive the
    project's subjects.  Best effort: the action is done whatever this answers."""
    from xnatfs.fs import control

    found = _mount_of(Path(path))
    if found is None:
        return
    root = found[0]  # another user's mount too: a refresh is a read (fs/control.py)
    folders = [root / ".prearchive"]
    if project:
        folders.append(root / project / "subjects")
    for folder in folders:
        try:
            control.refresh(str(folder))
        except OSError:
            pass  # an older daemon, or a project this user cannot list


def run(args: argparse.Namespace) -> int:
    """Entry point from ``cli.main``."""
    url, uri = resolve(args.path, args.url)  # before the client's imports: stdlib only

    from xnatfs import cli
    from xnatfs.xnat.client import ClientOptions, XnatClient
    from xnatfs.xnat.prearc import PrearcActions

    args.url = url
    args.credentials_stdin = False
    settings = cli.settings_from_args(args)
    cli.setup_logging(settings["log_level"][0])
    timeout = args.timeout if args.timeout is not None else float(settings["timeout"][0])
    creds = cli._credentials(args, cli.check_url(url), settings)
    client = XnatClient(
        cli.check_url(url),
        creds,
        ClientOptions(
            pool_size=1,
            connect_timeout=float(settings["connect_timeout"][0]),
            read_timeout=float(settings["read_timeout"][0]),
            deadline=timeout,
            verify=settings["ca_bundle"][0] or True,
            heartbeat=False,
        ),
    )
    client.start()
    try:
        actions = PrearcActions(client, timeout=timeout)
        try:
            result, project = _act(actions, client, args, uri)
        except OSError as exc:
            raise PrearchiveUsage(
                f"{args.action} {uri}: {exc.strerror or exc} "
                f"[{errno.errorcode.get(exc.errno or 0, exc.errno)}]"
            ) from None
        if not args.path.startswith(PREARC_PREFIX):
            _refresh_mount(args.path, project)
        print(for_terminal(result))  # XNAT's status text: no raw terminal escape
        return 0
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - best-effort logout
            pass


def _act(
    actions: Any, client: Any, args: argparse.Namespace, uri: str
) -> Tuple[str, Optional[str]]:
    """(what to print, the project an archive went to)."""
    if args.action == "rebuild":
        s = actions.rebuild(uri)
        return f"{uri}: {s.status}", None
    if args.action == "delete":
        actions.delete(uri)
        return f"{uri}: deleted", None
    if args.action == "move":
        if not args.project:
            raise PrearchiveUsage(
                "move needs the destination project: xnatfs prearchive move PATH PROJECT"
            )
        return actions.move(uri, args.project), None
    s = client.get_prearchive(uri)
    if s is None:
        raise PrearchiveUsage(f"{uri}: no such prearchive session")
    project = args.project or s.project
    done = actions.archive(uri, project, args.subject or s.subject or s.name, args.label or s.name)
    return done, project
