"""XNAT's hierarchy as a layout of the view engine (docs/LAYOUT.md §1.1, §1.2).

- ``kinds``    the node kinds, which have fixed children, the unlisted names, ``Gen`` recipes.
- ``loaders``  one loader per listed kind (a table), the archive/prearchive endpoints (a table),
               the resource files tree (one request per resource, §1.8).
- ``layout``   ``XnatLayout``: children, unlisted names, generated files, attributes, times.
"""

from xnatfs.layouts.xnat.kinds import Gen, Kind
from xnatfs.layouts.xnat.layout import XnatLayout

__all__ = ["Gen", "Kind", "XnatLayout"]
