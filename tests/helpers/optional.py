"""Optional tools a test needs and xnatfs does not depend on."""

from __future__ import annotations

import os
import sys


def sdcflows_python() -> str:
    """An interpreter that has SDCFlows (``XNATFS_SDCFLOWS_PYTHON``, else this one if it
    imports it), or ""."""
    candidate = os.environ.get("XNATFS_SDCFLOWS_PYTHON", "")
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    try:
        import sdcflows  # noqa: F401
    except ImportError:
        return ""
    return sys.executable
