"""The tree: XNAT objects as a directory tree, without FUSE (the view engine, wired for XNAT).

- ``tree``    ``Tree``: the view engine (``xnatfs.view.engine.Engine``) over XNAT's layout
              (``xnatfs.layouts.xnat.XnatLayout``) with the read-ahead policies the options ask for
              (``xnatfs.policies``); lookup, listdir, open/read, xattrs.
- ``writes``  ``Writer``: the write side (files in resources, objects by mkdir, imports, archive),
              built in layers: ``local``, ``overlay``, ``uploading``, ``handles``, ``opening``,
              ``objects``, ``namespace`` (+ ``prearchive_moves``); see ``writes.py``,
              registered with the engine as its overlay (``Engine.attach_overlay``).
- ``nodes``   ``NodeInfo`` and the node kinds (re-exported from ``view.node`` and
              ``layouts.xnat.kinds``, where they live).
- ``paths``   splitting mount paths; reversible escaping of XNAT names into file names
              (re-exported from ``view.paths``).

Imports ``xnatfs.view``, ``xnatfs.layouts``, ``xnatfs.policies``, ``xnatfs.cache``,
``xnatfs.uploads`` and ``xnatfs.xnat``; never ``xnatfs.fs`` or ``cli``.
"""
