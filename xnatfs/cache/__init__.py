"""Caches: layers with one job each (STYLE.md §7).

Modules:

- ``meta``      ``MetaCache``: listings and records in memory, a ``cachetools.TTLCache`` with an
                injected timer, single-flight loading and prefix invalidation.
- ``content``   ``ContentCache``/``ContentKey``/``ContentHandle``: whole files on disk in a
                diskcache index (LRU by size), adopted by rename, pinned while open, persistent
                across restarts.
- ``download``  ``Download``: one whole-file fetch streaming into a partial file that readers
                follow as it grows; size and MD5 verification with one refetch.

This package imports neither ``xnatfs.tree`` nor ``xnatfs.xnat``: the content cache is given a
``fetch(uri, sink)`` callable and re-raises whatever it raises.
"""
