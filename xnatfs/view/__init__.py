"""The view engine: a mount path -> a node of some *layout*, without FUSE and without XNAT.

- ``node``    ``NodeInfo`` (what ``lookup`` returns and ``open`` takes) and the typed node
              references (``Ref``: ``Record``, ``Generated``, ``Local``).
- ``layout``  the interfaces: ``Layout`` (a hierarchy: XNAT's, BIDS, a toy one in the tests),
              ``Listing`` and the children descriptors ``Fixed`` / ``Loaded``, ``Opened``,
              ``Overlay`` (local files not yet on the server) and ``Policy`` (read-ahead).
- ``engine``  ``Engine``: path resolution, the node cache, listings through ``MetaCache`` with the
              last-good / stale-while-slow fallback, the overlay, generated-file sizes, mounts of
              further layouts under hidden top-level names, and the read-ahead policies.

Imports ``xnatfs.cache`` and ``xnatfs.deadline`` only: never ``xnatfs.xnat``, ``xnatfs.tree``,
``xnatfs.layouts``, ``xnatfs.fs`` or the CLI (``tests/unit/test_layers.py``).
"""
