"""The commands of ``xnatfs`` (``xnatfs/cli.py`` parses and dispatches): ``mount``/``config``
(``mount.py``), the daemon they start (``daemon.py``), ``cache`` (``cache.py``),
``umount``/``status`` (``status.py``).  ``demo`` and ``emulator`` stay in ``cli.py``: it is the
only module that may import the emulator (``tests/unit/test_layers.py``).
"""
