"""``python -m xnatfs`` runs the command line."""

from xnatfs.cli import main

raise SystemExit(main())
