"""Prearchive moves by ``mv``: a session archived into ``experiments/`` (§7.2), or moved to
another project's prearchive (§7.3).  Actions that wait (within ``--timeout``) for the state
XNAT needs come from ``xnat/prearc.py``."""

from __future__ import annotations

import errno
import logging
from typing import Any

from xnatfs.tree.nodes import NodeInfo
from xnatfs.tree.paths import PathParts, join_path, split_path, unescape_name

log = logging.getLogger(__name__)


def prearc_actions(client: Any, timeout: float) -> Any:
    """Prearchive actions that wait (within ``timeout``) for the state XNAT needs."""
    from xnatfs.xnat.prearc import PrearcActions

    return PrearcActions(client, timeout=timeout)


def archive_session(
    actions: Any, tree: Any, node: NodeInfo, new_parent: NodeInfo, old: str, new: str, label: str
) -> None:
    """``mv .prearchive/P/TS/SESSION P/subjects/S/experiments/LABEL``: archive the session."""
    old_parts, new_parts = split_path(old), split_path(new)
    uri = actions.archive(node.uri, new_parent.project, _subject_label(tree, new_parts), label)
    log.info("mv %s: archived as %s", old, uri)
    tree.invalidate(join_path(new_parts[:-1]))
    tree.invalidate(join_path(old_parts[:-1]))


def move_session(
    actions: Any,
    tree: Any,
    node: NodeInfo,
    new_parent: NodeInfo,
    old_parts: PathParts,
    new_parts: PathParts,
    new: str,
) -> None:
    """``mv .prearchive/P/TS/SESSION .prearchive/Q/``: XNAT's prearchive move (§7.3); the
    session then shows as ``.prearchive/Q/TS/SESSION`` (same timestamp and folder)."""
    if new_parts[-1] != old_parts[-1]:
        raise OSError(
            errno.EINVAL,
            "a prearchive session keeps its name when moved: mv it into the other project's folder",
            new,
        )
    uri = actions.move(node.uri, new_parent.project)
    log.info("mv %s: moved to %s", join_path(old_parts), uri)
    tree.invalidate(join_path(old_parts[:-1]))
    tree.invalidate(join_path(old_parts[:-2]))
    tree.invalidate(join_path(new_parts[:-1]))


def _subject_label(tree: Any, parts: PathParts) -> str:
    """The label of the subject in ``P/subjects/S/experiments/...``."""
    subject = tree.lookup(join_path(parts[:3]))
    return subject.attrs.get("label") or unescape_name(parts[2])
