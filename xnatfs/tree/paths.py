"""Moved to ``xnatfs.view.paths`` (the engine splits paths; layouts escape names); kept so that
existing imports keep working."""

from xnatfs.view.paths import (
    PathParts,
    check_write_name,
    escape_name,
    join_path,
    split_path,
    unescape_name,
)

__all__ = [
    "PathParts",
    "check_write_name",
    "escape_name",
    "join_path",
    "split_path",
    "unescape_name",
]
