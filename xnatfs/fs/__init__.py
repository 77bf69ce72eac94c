"""The FUSE side: a thin mfusepy adapter over ``xnatfs.tree``.

- ``fuselib``  loads libfuse3 (libfuse2 as fallback) before mfusepy is imported.
- ``errmap``   the one table from exceptions to errno values.
- ``ops``      ``XnatOperations``: each op resolves the path, makes one Tree call, converts.
- ``mounting`` mount-table checks, stale-mount cleanup, unmount.
- ``control``  asking a running mount to do something through a path (``xnatfs refresh``).
"""
