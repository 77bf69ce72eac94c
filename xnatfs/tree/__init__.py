"""The tree: XNAT objects as a directory tree, without FUSE.

- ``paths``  splitting mount paths; reversible escaping of XNAT names into file names.
- ``nodes``  ``NodeInfo`` (what ``lookup`` returns and ``open`` takes) and the node kinds.
- ``tree``   ``Tree``: lookup, listdir, open/read, xattrs over the caches and the client.

Imports ``xnatfs.cache`` and (for types only) ``xnatfs.xnat``; never ``xnatfs.fs`` or ``cli``.
"""
