"""xnat.parse.catalog_times: per-file times from a resource catalog (issue 15 §1)."""

from __future__ import annotations

import calendar

import pytest

from xnatfs.xnat.parse import BadDocument, catalog_times

HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<cat:Catalog ID="R" '
    'xmlns:cat="http://nrg.wustl.edu/catalog" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><cat:entries>'
)
TAIL = "</cat:entries></cat:Catalog>"


def utc(*args) -> float:
    return float(calendar.timegm(args + (0, 0, 0)))


def test_created_modified_and_relative_paths():
    body = (
        HEAD
        + '<cat:entry URI="a.dcm" ID="a.dcm" createdTime="2021-04-08T19:28:45.250"/>'
        + '<cat:entry URI="sub/b.dcm" createdTime="2021-04-08T19:28:45" '
        'modifiedTime="2022-01-02T03:04:05"/>'
        # a URL or absolute path in URI: the relative path is cachePath, then ID
         + '<cat:entry URI="/archive/x/c.dcm" ID="deep/c.dcm" '
        'createdTime="2020-01-01 00:00:00"/>'
        + '<cat:entry URI="d.dcm" ID="d.dcm"/>'  # no times: left out
        + TAIL
    ).encode()
    got = catalog_times(body)
    assert got == {
        "a.dcm": utc(2021, 4, 8, 19, 28, 45) + 0.25,
        "sub/b.dcm": utc(2022, 1, 2, 3, 4, 5),
        "deep/c.dcm": utc(2020, 1, 1, 0, 0, 0),
    }


def test_entry_sets_are_read_too():
    body = (
        HEAD + '<cat:entrySet><cat:entries><cat:entry URI="s/e.nii" '
        'createdTime="2019-03-05T16:46:37"/></cat:entries></cat:entrySet>' + TAIL
    ).encode()
    assert catalog_times(body) == {"s/e.nii": utc(2019, 3, 5, 16, 46, 37)}


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
        b"<html><body>login</body>",
        b"not xml at all",
        b"",
    ],
)
def test_refused_bodies(body):
    with pytest.raises(BadDocument):
        catalog_times(body)
