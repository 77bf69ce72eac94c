"""The XNAT REST client: one pooled HTTP session, typed calls, typed errors.

It knows nothing of files or paths; it speaks ``/data/...`` (``docs/XNAT-API.md``) and returns
``models`` records.  Its modules are the only ones of xnatfs that import requests
(docs/ARCHITECTURE.md §8),
and ``transport.Transport._send`` is the one place where requests/urllib3/socket exceptions
become :mod:`errors`.

The client is assembled from one module per concern, each a class the next builds on:

* ``transport``  the session, login and heartbeat, and ``_call``: the policy every request
                 follows (deadlines, retries, the limiter, containment, login pages) is written
                 out there;
* ``listings``   one call per listing of the hierarchy and the prearchive, and config
                 service entries;
* ``transfer``   streamed downloads (files, archives) and file uploads;
* ``objects``    creating and deleting objects, imports, prearchive actions.

Thread-safety: one client is shared by all FUSE worker threads (``transport`` says which lock
guards what).  No background thread exists before ``start()``.

Never logged: passwords, the login form, ``Authorization``/``Cookie`` headers, session ids.
"""

from __future__ import annotations

from .listings import (  # noqa: F401 - the column lists have always been exported here
    ASSESSOR_COLUMNS,
    EXPERIMENT_COLUMNS,
    SCAN_COLUMNS,
    SUBJECT_COLUMNS,
    Listings,
)
from .objects import Objects
from .transport import (  # noqa: F401 - names callers and tests have always imported from here
    ClientOptions,
    ClientStats,
    Params,
    Sink,
    _parse_retry_after,
    _translate,
    check_contained,
)

__all__ = ["XnatClient", "ClientOptions", "ClientStats"]


class XnatClient(Listings, Objects):
    """A connection to one XNAT server (``url`` may include a context path, e.g.
    ``https://host/xnat``, §0).  The constructor does no I/O and starts no thread.

    Every public method raises only :class:`~xnatfs.xnat.errors.XnatError` subclasses (a
    download sink's own exceptions pass through untouched).
    """
