"""xnatfs: mount an XNAT archive as a directory tree.

Package map (imports point down; ``tests/unit/test_layers.py`` enforces it):

- ``cli``      command line (mount, umount, status, demo, emulator, ...); the only place that
               configures logging.
- ``fs``       the thin mfusepy adapter and the one errno table.
- ``tree``     path rule (path <-> XNAT object), listings, what each node may do.
- ``cache``    metadata cache (memory, TTL) and content cache (disk, whole files).
- ``uploads``  write journal and uploader.
- ``xnat``     REST client; knows nothing of files or paths.
- ``emulator`` a separate XNAT server; imports nothing from the rest of xnatfs.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
