"""Single-object documents: the ``items`` JSON of ``?format=json``, its XML rendering and a
resource's catalog XML (§1.3, docs/FIDELITY.md "single-object documents").

Why separate from the handlers: the item tree is built once (nested scans, resources, assessors)
and rendered either as JSON or as XML, so both renderings agree by construction.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any, Iterable
from xml.sax.saxutils import escape, quoteattr

from . import formats
from .resolve import Resolved
from .store import Parent, ResourceRow, ScanRow, Store
from .xsd import root_element

#: data fields copied from ``fields`` into ``data_fields`` (the rest become fields/field)
KNOWN_FIELDS = (
    "gender",
    "handedness",
    "dob",
    "yob",
    "group",
    "src",
    "initials",
    "time",
    "modality",
    "UID",
    "frames",
    "note",
    "scanner",
    "operator",
)


def _meta(xsi: str, start: float) -> dict[str, Any]:
    return {
        "isHistory": False,
        "create_event_id": 1,
        "xsi:type": xsi,
        "start_date": formats.java_date(start),
    }


def _fields_children(
    xsi: str, fields: dict[str, str], skip: Iterable[str] = ()
) -> list[dict[str, Any]]:
    skip = set(skip)
    items = [
        {
            "meta": _meta(f"{xsi}_field", time.time()),
            "data_fields": {"name": k, "field": v},
            "children": [],
        }
        for k, v in sorted(fields.items())
        if k not in skip
    ]
    return [{"field": "fields/field", "items": items}] if items else []


def catalog_path(data_dir: Path, res: ResourceRow) -> str:
    return str(data_dir / "archive" / str(res.id) / f"{res.label}_catalog.xml")


def resource_item(data_dir: Path, res: ResourceRow) -> dict[str, Any]:
    return {
        "meta": _meta("xnat:resourceCatalog", res.insert_date),
        "data_fields": {
            "xnat_abstractresource_id": res.id,
            "xnat_abstractResource_id": res.id,
            "label": res.label,
            "format": res.format,
            "content": res.content,
            "file_count": res.file_count,
            "file_size": res.file_size,
            "URI": catalog_path(data_dir, res),
            "description": res.description,
        },
        "children": [],
    }


class ItemBuilder:
    """Builds the ``items`` tree of one object (project, subject, experiment, scan, assessor)."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir

    def _resources(self, parent: Parent) -> list[dict[str, Any]]:
        return [resource_item(self.data_dir, x) for x in self.store.list_resources(parent)]

    def item(self, kind: str, r: Resolved) -> dict[str, Any]:
        if kind == "project":
            return self._project(r)
        if kind == "subject":
            return self._subject(r)
        if kind == "scan":
            assert r.scans
            return self.scan(r.scans[0])
        return self._experiment(kind, r)

    def _project(self, r: Resolved) -> dict[str, Any]:
        p = r.project
        assert p is not None
        df: dict[str, Any] = {
            "ID": p.id,
            "secondary_ID": p.secondary_id,
            "name": p.name,
            "description": p.description,
            "active": "true",
        }
        ch = _fields_children("xnat:projectData", p.fields)
        res = self._resources(Parent(p.id))
        if res:
            ch.append({"field": "resources/resource", "items": res})
        return {"meta": _meta("xnat:projectData", p.insert_date), "data_fields": df, "children": ch}

    def _subject(self, r: Resolved) -> dict[str, Any]:
        s = r.subject
        assert s is not None
        df = {"ID": s.id, "id": s.id, "project": s.project, "label": s.label}
        df.update({k: v for k, v in s.fields.items() if k in KNOWN_FIELDS})
        ch = _fields_children("xnat:subjectData", s.fields, KNOWN_FIELDS)
        res = self._resources(Parent(s.project, s.id))
        if res:
            ch.append({"field": "resources/resource", "items": res})
        return {"meta": _meta("xnat:subjectData", s.insert_date), "data_fields": df, "children": ch}

    def _experiment(self, kind: str, r: Resolved) -> dict[str, Any]:
        """An experiment (with its scans, resources and assessors) or an assessor."""
        st = self.store
        e = r.assessor if kind == "assessor" else r.experiment
        assert e is not None
        df = {"ID": e.id, "id": e.id, "project": e.project, "label": e.label}
        if e.date:
            df["date"] = e.date
        if e.session_id:
            df["imageSession_ID"] = e.session_id
        else:
            df["subject_ID"] = e.subject_id
        df.update({k: v for k, v in e.fields.items() if k in KNOWN_FIELDS})
        ch = _fields_children(e.xsi_type, e.fields, KNOWN_FIELDS)
        if e.session_id:
            out = self._resources(Parent(e.project, None, e.session_id, None, e.id))
            if out:
                ch.append({"field": "out/file", "items": out})
        else:
            scans = [self.scan(s) for s in st.list_scans(e.id)]
            if scans:
                ch.append({"field": "scans/scan", "items": scans})
            res = self._resources(Parent(e.project, None, e.id))
            if res:
                ch.append({"field": "resources/resource", "items": res})
            ass = [self.item("assessor", Resolved(assessor=a)) for a in st.list_assessors(e.id)]
            if ass:
                ch.append({"field": "assessors/assessor", "items": ass})
        return {"meta": _meta(e.xsi_type, e.insert_date), "data_fields": df, "children": ch}

    def scan(self, s: ScanRow) -> dict[str, Any]:
        df: dict[str, Any] = {
            "ID": s.id,
            "type": s.type,
            "quality": s.quality,
            "xnat_imagescandata_id": s.pk,
            "xnat_imageScanData_id": s.pk,
            "image_session_ID": s.experiment_id,
            "series_description": s.series_description,
        }
        # identity: xnat:imageScanData carries a ``project`` attribute (xnat.xsd), and XNAT's
        # ItemJSONBuilder emits it in data_fields (docs/FIDELITY.md "single-object documents")
        exp = self.store.get_experiment(s.experiment_id)
        if exp is not None:
            df["project"] = exp.project
        if s.note:
            df["note"] = s.note
        for k, v in s.fields.items():
            if k == "frames":
                try:
                    df[k] = int(v)
                except ValueError:
                    pass
            elif k in ("UID", "modality", "scanner", "condition", "documentation"):
                df[k] = v
        files = self._resources(Parent(None, None, s.experiment_id, s.id))
        ch = [{"field": "file", "items": files}] if files else []
        return {"meta": _meta(s.xsi_type, s.insert_date), "data_fields": df, "children": ch}


def _render(it: dict[str, Any], tag: str, top: bool) -> str:
    """One item as an XML element (attributes for identity fields, children nested)."""
    xsi = it["meta"]["xsi:type"]
    df = it["data_fields"]
    attr_keys = [k for k in ("ID", "project", "label", "type", "name") if k in df]
    attrs = "".join(f" {k}={quoteattr(str(df[k]))}" for k in attr_keys)
    if top:
        attrs += (
            ' xmlns:xnat="http://nrg.wustl.edu/xnat" '
            'xmlns:xdat="http://nrg.wustl.edu/xdat" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        )
    else:
        attrs += f' xsi:type="{xsi}"'
    body = []
    for k, v in df.items():
        if (
            k in attr_keys
            or k in ("id",)
            or "_id" in k.lower()
            and k not in ("subject_ID", "image_session_ID", "imageSession_ID")
        ):
            continue
        if k in ("URI", "format", "content", "file_count", "file_size", "description"):
            continue
        body.append(f"<xnat:{k}>{escape(str(v))}</xnat:{k}>")
    for child in it.get("children", []):
        fieldname = child["field"]
        if fieldname == "fields/field":
            body.append(
                "<xnat:fields>"
                + "".join(
                    f"<xnat:field name={quoteattr(c['data_fields']['name'])}>"
                    f"{escape(c['data_fields']['field'])}</xnat:field>"
                    for c in child["items"]
                )
                + "</xnat:fields>"
            )
            continue
        parts = fieldname.split("/")
        inner = "".join(_render(c, f"xnat:{parts[-1]}", False) for c in child["items"])
        body.append(f"<xnat:{parts[0]}>{inner}</xnat:{parts[0]}>" if len(parts) == 2 else inner)
    if xsi == "xnat:resourceCatalog":
        for k in ("URI", "format", "content", "file_count", "file_size"):
            if k in df:
                attrs += f" {k}={quoteattr(str(df[k]))}"
    return f"<{tag}{attrs}>{''.join(body)}</{tag}>"


def item_xml(item: dict[str, Any]) -> bytes:
    xml = _render(item, root_element(item["meta"]["xsi:type"]), True)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode("utf-8")


def _catalog_time(t: float) -> str:
    """A catalog entry's time as XDAT writes ``xs:dateTime`` values: local wall-clock time with
    milliseconds and no zone (the emulator's zone is UTC)."""
    stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def catalog_xml(store: Store, res: ResourceRow, checksums: bool = True) -> bytes:
    """The resource's catalog; ``checksums`` off: its entries carry no ``digest`` (a site
    with checksums off)."""
    # createdTime: XNAT's audit attribute of every entry since 1.6 (CatalogUtils.
    # configureEntry); the emulator stores one time per file (when its bytes were stored),
    # so a replaced file's new time shows here where XNAT adds a modifiedTime
    entries = "".join(
        f"<cat:entry URI={quoteattr(f.relpath)} ID={quoteattr(f.relpath)} "
        f"name={quoteattr(f.name)} {f'digest={quoteattr(f.md5)} ' if checksums else ''}"
        f"format={quoteattr(f.format)} "
        f"content={quoteattr(f.content)} createdTime={quoteattr(_catalog_time(f.mtime))} "
        f'xsi:type="cat:entry"/>'
        for f in store.list_files(res.id)
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<cat:Catalog ID={quoteattr(res.label)} xmlns:arc="http://nrg.wustl.edu/arc" '
        'xmlns:cat="http://nrg.wustl.edu/catalog" xmlns:xdat="http://nrg.wustl.edu/xdat" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<cat:entries>{entries}</cat:entries></cat:Catalog>"
    )
    return xml.encode("utf-8")
