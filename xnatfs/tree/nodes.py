"""Moved: ``NodeInfo`` to ``xnatfs.view.node`` (the engine's), the kinds and the hierarchy's
tables to ``xnatfs.layouts.xnat.kinds`` (XNAT's layout); kept so that existing imports work."""

from xnatfs.layouts.xnat.kinds import (
    FIXED_CHILDREN,
    JSON_KINDS,
    JSON_NAME,
    WRITABLE_DIRS,
    ZIP_KINDS,
    ZIP_NAME,
    Kind,
)
from xnatfs.view.node import Generated, Local, NodeInfo, Record, Ref

__all__ = [
    "FIXED_CHILDREN",
    "JSON_KINDS",
    "JSON_NAME",
    "WRITABLE_DIRS",
    "ZIP_KINDS",
    "ZIP_NAME",
    "Generated",
    "Kind",
    "Local",
    "NodeInfo",
    "Record",
    "Ref",
]
