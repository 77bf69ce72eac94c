"""Layouts: hierarchies the view engine (``xnatfs.view``) shows as directories and files.

- ``xnat``  XNAT's own hierarchy (docs/LAYOUT.md §1.1): projects, subjects, experiments, scans,
            assessors, resources, files, the prearchive and the ``.xnatfs`` control folder.

A new layout is one class (``xnatfs.view.layout.BaseLayout``) plus one line of wiring in
``runtime.py`` (``engine.mount(".name", Layout(...))``).  Layouts never import ``xnatfs.fs``,
the CLI or ``xnatfs.tree`` (``tests/unit/test_layers.py``).
"""
