"""``python -m xnatfs.emulator``: see :func:`xnatfs.emulator.cli.main`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
