"""Loading libfuse: libfuse3 first, libfuse2 as fallback (docs/FUSE.md "Recommendation").

mfusepy binds libfuse when it is imported and prefers libfuse2, so ``FUSE_LIBRARY_NAME`` must be
set before the first import.  Nothing else in xnatfs may import mfusepy directly.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType


class FuseMissing(RuntimeError):
    """No usable libfuse on this machine."""


def load() -> ModuleType:
    """Import mfusepy on libfuse3 (or libfuse2); raise FuseMissing with what to install."""
    if "mfusepy" in sys.modules:
        return sys.modules["mfusepy"]
    explicit = os.environ.get("FUSE_LIBRARY_NAME") or os.environ.get("FUSE_LIBRARY_PATH")
    names = [None] if explicit else ["fuse3", "fuse"]
    last: Exception = FuseMissing("no libfuse")
    for name in names:
        if name is not None:
            os.environ["FUSE_LIBRARY_NAME"] = name
        try:
            import mfusepy  # deliberately late: after FUSE_LIBRARY_NAME is set

            return mfusepy
        except (OSError, ImportError) as exc:  # mfusepy raises OSError('Unable to find libfuse')
            last = exc
            sys.modules.pop("mfusepy", None)
    raise FuseMissing(
        "libfuse is not installed (%s): install the fuse3 package, e.g. "
        "'sudo apt-get install fuse3'" % last
    )


def version(mfusepy: ModuleType) -> str:
    major = getattr(mfusepy, "fuse_version_major", "?")
    return f"{major}.{getattr(mfusepy, 'fuse_version_minor', '?')}"
