"""Read-ahead policies plugged into the view engine (``view.layout.Policy``).

- ``walk``      ``WalkAhead``: somebody walks the tree (find, cp -r, du, rsync): load the listings
                one level down in the background.
- ``bulkzip``   ``BulkZip``: the first open in a XNAT resource with many uncached small files
                fetches the whole resource as one zip (§3.3).
- ``prefetch``  ``Prefetch``: download the next files of the folder (by name) when one is opened.

Each is one class with its own state and its own lock, never held while calling the engine.
A new policy is one class with ``on_readdir``, ``on_open`` and ``close``, added with
``Engine.add_policy``.  Policies never import ``xnatfs.fs`` or the CLI.
"""
