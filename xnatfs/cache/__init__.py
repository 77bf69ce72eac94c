"""Caches: layers with one job each (docs/ARCHITECTURE.md §6).

Modules:

- ``meta``      ``MetaCache``: listings and records in memory, a ``cachetools.TTLCache`` with an
                injected timer, single-flight loading and prefix invalidation.
- ``content``   ``ContentCache``: whole files on disk in a diskcache index (LRU by size),
                adopted by rename, pinned while open, persistent across restarts; its life
                cycle and ``open``.  It builds on:
  - ``store``   ``ContentStore``: the cache's fields and download machinery (single flight,
                room in the index, adoption);
  - ``bulk``    ``BulkFetches``: ``prefetch`` and ``bulk`` (many files in one zip);
  - ``index``   ``_Index`` (diskcache with adoption) and ``verify_entries`` (``cache verify``);
  - ``handle``  ``ContentHandle``: an open cached file or followed download;
  - ``key``     ``ContentKey``: (uri, size, digest, mtime) and its kind, file or archive.
- ``download``  ``Download``: one whole-file fetch streaming into a partial file that readers
                follow as it grows; size and MD5 verification with one refetch.

This package imports neither ``xnatfs.tree`` nor ``xnatfs.xnat``: the content cache is given a
``fetch(uri, sink)`` callable (and ``fetch_archive`` for archive keys) and re-raises whatever
they raise.
"""
