"""``Tree``: the view engine over XNAT's layout, wired as the mount uses it.

The engine (``xnatfs.view.engine.Engine``) knows no XNAT; the hierarchy is
``xnatfs.layouts.xnat.XnatLayout``; read-ahead is ``xnatfs.policies``.  ``Tree`` builds the three
from the mount's settings and keeps the names callers used before the split (``times``,
``catalog_times``, ``client``, ``DIGEST_PARAM``, ``_content_key``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Mapping, Optional

from xnatfs.cache.meta import MetaCache
from xnatfs.layouts.xnat.bundle import ExperimentBundles
from xnatfs.layouts.xnat.layout import DIGEST_PARAM, XnatLayout, _content_key
from xnatfs.policies.bulkzip import BulkZip
from xnatfs.policies.prefetch import Prefetch
from xnatfs.policies.walk import WalkAhead
from xnatfs.view.engine import Engine, ReadHandle
from xnatfs.view.layout import Listing, Policy
from xnatfs.view.paths import escape_name, join_path, split_path

__all__ = ["DIGEST_PARAM", "Listing", "ReadHandle", "Tree", "_content_key"]


class Tree(Engine):
    """The engine over ``XnatLayout(client)``, with the read-ahead policies the options ask
    for: ``walk_ahead`` threads (0: off), ``bulk_min`` files for a bulk zip (0: off), and a
    ``prefetch`` window (0: off), asked in that order."""

    def __init__(
        self,
        client: Any,
        meta: MetaCache,
        content: Any,
        *,
        fs_timeout: float = 60.0,
        stats_fn: Optional[Callable[[], Mapping[str, Any]]] = None,
        clock: Callable[[], float] = time.time,
        prefetch: int = 0,
        walk_ahead: int = 0,
        bulk_min: int = 0,
        experiment_listings: bool = True,
    ) -> None:
        epoch = clock()
        self.xnat = XnatLayout(client, content, epoch=epoch, stats_fn=stats_fn)
        if experiment_listings:
            self.xnat.bundles = ExperimentBundles(client, ttl=meta.ttl or 60.0)
        policies: List[Policy] = []
        if walk_ahead:
            policies.append(WalkAhead(walk_ahead))
        if bulk_min:
            policies.append(BulkZip(bulk_min, ttl=meta.ttl or 60.0))
        if prefetch:
            policies.append(Prefetch(prefetch))
        super().__init__(
            self.xnat, meta, content, fs_timeout=fs_timeout, clock=lambda: epoch, policies=policies
        )
        if self.xnat.bundles is not None:
            # the experiment tables load ahead of a walker on the engine's background pool
            self.xnat.bundles.submit = self._refresh_submit
        # a folder's .zip is keyed on the listings below it, as this engine keeps them
        self.xnat.listed = self.cached
        self.client = client

    @property
    def times(self) -> Any:
        """File times set on the mount (``cache.times.TimesIndex``, issue 15 §2), or None."""
        return self.xnat.times

    @times.setter
    def times(self, value: Any) -> None:
        self.xnat.times = value

    @property
    def catalog_times(self) -> bool:
        """Read per-file times from each resource's catalog (one request per resource)."""
        return self.xnat.catalog_times

    @catalog_times.setter
    def catalog_times(self, value: bool) -> None:
        self.xnat.catalog_times = value

    def following(self, path: str) -> List[str]:
        """In each mounted view that ``follows_projects`` (``view.layout.BaseLayout``), the
        folder of ``path``'s project: ``MNT/P/S/E`` -> ``MNT/.bids/P``.  ``xnatfs refresh`` of
        an XNAT path refreshes them too; before, only a refresh of the ``.bids`` path reached
        the BIDS view, which showed the series as they were for a listing TTL.  The whole
        project's folder, not a mapped sub-folder: a view gathers one XNAT object into several
        of its folders (a session's scans into ``anat``, ``func``, ``fmap``) and makes
        documents from all of them (``participants.tsv``).  None for a folder that is no
        project (``.prearchive``, ``.xnatfs``, a folder made by ``mkdir``).  At most one
        request (the projects' listing, when the project's node has expired before the
        path's), and a refresh never fails for it: the path's own refresh stands."""
        parts = split_path(path)
        views = [n for n, lay in self._mounts.items() if getattr(lay, "follows_projects", False)]
        if not parts or not views or self.layout_of(parts)[1]:
            return []
        try:
            project = self.node(parts[:1]).project
        except OSError:
            return []
        return [join_path((name, escape_name(project))) for name in views] if project else []
