"""Pure parsing: XNAT rows and dates → models (no sockets)."""

from __future__ import annotations

import calendar

import pytest

from xnatfs.xnat import parse
from xnatfs.xnat.models import FileEntry


def utc(*args: int) -> float:
    return float(calendar.timegm(args + (0,) * (6 - len(args)) + (0, 0, 0)))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2019-03-05", utc(2019, 3, 5)),
        ("2019-03-05 16:46:37.103", utc(2019, 3, 5, 16, 46, 37) + 0.103),
        ("2026-02-02 14:54:42.62", utc(2026, 2, 2, 14, 54, 42) + 0.62),
        ("2026-02-02 14:54:25.0", utc(2026, 2, 2, 14, 54, 25)),
        ("2026-02-02 14:54:44.225298", utc(2026, 2, 2, 14, 54, 44) + 0.225298),
        ("2019-03-05 16:46:37", utc(2019, 3, 5, 16, 46, 37)),
        ("Thu Apr 08 19:28:45 UTC 2021", utc(2021, 4, 8, 19, 28, 45)),
        ("Thu Apr 08 19:28:45 GMT 2021", utc(2021, 4, 8, 19, 28, 45)),
        ("Thu Apr 08 19:28:45 CEST 2021", utc(2021, 4, 8, 17, 28, 45)),
        ("Thu Apr 08 19:28:45 2021", utc(2021, 4, 8, 19, 28, 45)),
        ("2021-04-08T19:28:45Z", utc(2021, 4, 8, 19, 28, 45)),
        ("2021-04-08T19:28:45+02:00", utc(2021, 4, 8, 17, 28, 45)),
        ("20211229_101128996", utc(2021, 12, 29, 10, 11, 28) + 0.996),
        ("Thu, 08 Apr 2021 19:28:45 GMT", utc(2021, 4, 8, 19, 28, 45)),
        ("  2019-03-05  ", utc(2019, 3, 5)),
    ],
)
def test_parse_time_formats(text: str, expected: float) -> None:
    assert parse.parse_time(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [None, "", "   ", "garbage", "2021-13-01", "2021-02-30x", "Foo Bar 08 19:28:45 UTC 2021"],
)
def test_parse_time_rejects(text) -> None:
    assert parse.parse_time(text) is None


def test_parse_time_unknown_zone_is_read_as_utc() -> None:
    assert parse.parse_time("Thu Apr 08 19:28:45 XYZ 2021") == utc(2021, 4, 8, 19, 28, 45)


@pytest.mark.parametrize(
    "value, expected",
    [("12", 12), ("", None), (None, None), (7, 7), ("1.0", 1), ("x", None), (" 3 ", 3)],
)
def test_parse_int(value, expected) -> None:
    assert parse.parse_int(value) == expected


def test_rows_from_json_stringifies_cells() -> None:
    doc = {
        "ResultSet": {"Result": [{"ID": "P1", "n": 3, "x": None, "b": True}], "totalRecords": "1"}
    }
    assert parse.rows_from_json(doc) == [{"ID": "P1", "n": "3", "x": "", "b": "true"}]
    text = '{"ResultSet":{"Result":[{"ID":"P1"}], "totalRecords": "1"}}'
    assert parse.rows_from_json(text) == [{"ID": "P1"}]
    assert parse.rows_from_json(text.encode()) == [{"ID": "P1"}]


@pytest.mark.parametrize(
    "bad",
    [
        "<html>login</html>",
        "{}",
        '{"ResultSet": {}}',
        '{"ResultSet": {"Result": {}}}',
        '{"ResultSet": {"Result": [1]}}',
        '{"ResultSet": {"Result": [{"a":"b"}',
    ],
)
def test_rows_from_json_rejects_other_documents(bad: str) -> None:
    with pytest.raises(parse.BadDocument):
        parse.rows_from_json(bad)


def test_rows_from_csv() -> None:
    text = 'ID,label,note\nS1,"a,b",\nS2,x,"q ""y"""\n'
    assert parse.rows_from_csv(text) == [
        {"ID": "S1", "label": "a,b", "note": ""},
        {"ID": "S2", "label": "x", "note": 'q "y"'},
    ]


def test_html_detection() -> None:
    assert parse.looks_like_html(b"<html><body>x</body></html>")
    assert parse.looks_like_html(b"\n  <!DOCTYPE html><html>")
    assert parse.looks_like_html(b"\xef\xbb\xbf<HTML>")
    assert not parse.looks_like_html(b'{"ResultSet": {}}')
    assert not parse.looks_like_html(b"")
    login = b'<!DOCTYPE html><html><head><title>XNAT Login</title></head><form action="/login">'
    assert parse.looks_like_login_page(login)
    status = (
        b"<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        b"<h3>Unable to find file.</h3><p>You can get technical details</p></body></html>"
    )
    assert not parse.looks_like_login_page(status)
    assert not parse.looks_like_login_page(b"login: plain text")


def test_error_text() -> None:
    page = (
        b"<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        b"<h3>Authentication failed.</h3><p>You can get technical details "
        b'<a href="x">here</a>.<br></p></body></html>'
    )
    assert parse.error_text(page) == "Authentication failed."
    assert parse.error_text(b"<h3>a &amp; <b>b</b></h3>") == "a & b"
    assert parse.error_text(b"plain\nmessage  here") == "plain message here"
    assert parse.error_text(b"<html><body>no heading</body></html>") == ""
    assert parse.error_text(b"\xff\xfe\x00binary") == ""
    assert parse.error_text(b"x" * 500).endswith("...")


def test_uri_list() -> None:
    body = "/data/prearchive/projects/P1/20240101_101010123/S1\r\n\r\n# c\r\n/data/x\r\n"
    assert parse.parse_uri_list(body) == [
        "/data/prearchive/projects/P1/20240101_101010123/S1",
        "/data/x",
    ]


def test_project_row() -> None:
    p = parse.project_from_row(
        {
            "ID": "P1",
            "secondary_ID": "p one",
            "name": "Project 1",
            "description": "d",
            "pi_firstname": "",
            "URI": "/data/projects/P1",
        }
    )
    assert (p.id, p.name, p.secondary_id, p.description) == ("P1", "Project 1", "p one", "d")
    assert p.uri == "/data/projects/P1" and p.mtime is None
    assert p.fields["pi_firstname"] == ""


def test_subject_row_is_project_scoped_and_keeps_primary_project() -> None:
    row = {
        "ID": "XNAT_S00032",
        "label": "QIN-01",
        "project": "OTHER",
        "insert_date": "2019-03-05 16:46:37.103",
        "URI": "/data/subjects/XNAT_S00032",
    }
    s = parse.subject_from_row(row, "TEST")
    assert s.uri == "/data/projects/TEST/subjects/XNAT_S00032"
    assert s.project == "OTHER"  # shared subject: primary project (§10.1)
    assert s.mtime == pytest.approx(utc(2019, 3, 5, 16, 46, 37) + 0.103)
    row["last_modified"] = "2020-01-01 00:00:00.0"
    assert parse.subject_from_row(row, "TEST").mtime == utc(2020, 1, 1)
    assert parse.subject_from_row({"ID": "S", "label": "L"}, "P").project == "P"


def test_experiment_row() -> None:
    row = {
        "date": "1987-06-10",
        "xsiType": "xnat:petSessionData",
        "xnat:subjectassessordata/id": "XNAT_E00037",
        "insert_date": "2019-03-05 16:46:37.103",
        "project": "TEST",
        "ID": "XNAT_E00037",
        "label": "SESS",
        "subject_ID": "XNAT_S1",
        "URI": "/data/experiments/XNAT_E00037",
    }
    e = parse.experiment_from_row(row)
    assert (e.id, e.label, e.project, e.subject_id, e.xsi_type, e.date) == (
        "XNAT_E00037",
        "SESS",
        "TEST",
        "XNAT_S1",
        "xnat:petSessionData",
        "1987-06-10",
    )
    assert e.uri == "/data/experiments/XNAT_E00037"


def test_scan_and_assessor_rows() -> None:
    s = parse.scan_from_row(
        {
            "ID": "3a/b",
            "type": "T1w",
            "series_description": "t1",
            "xsiType": "xnat:mrScanData",
            "quality": "usable",
        },
        "/data/experiments/E1",
    )
    assert s.id == "3a/b" and s.uri == "/data/experiments/E1/scans/3a%2Fb"
    assert (s.type, s.series_description, s.quality) == ("T1w", "t1", "usable")
    a = parse.assessor_from_row(
        {"ID": "E1_FS", "label": "FS", "xsiType": "fs:fsData"}, "/data/experiments/E1/"
    )
    assert a.uri == "/data/experiments/E1/assessors/E1_FS" and a.label == "FS"


def test_resource_row_builds_uri_from_numeric_id() -> None:
    row = {
        "xnat_abstractresource_id": "101",
        "label": "DICOM",
        "element_name": "xnat:resourceCatalog",
        "category": "scans",
        "cat_id": "1",
        "cat_desc": "T1w",
        "file_count": "2",
        "file_size": "",
        "tags": "",
        "content": "RAW",
        "format": "DICOM",
    }
    r = parse.resource_from_row(row, "/data/experiments/E1/scans/1")
    assert r.uri == "/data/experiments/E1/scans/1/resources/101"
    assert (r.id, r.label, r.file_count, r.file_size) == ("101", "DICOM", 2, None)
    # prearchive resources have only a label (§7.2)
    pr = parse.resource_from_row(
        {"label": "DICOM", "file_count": "3", "file_size": "30"},
        "/data/prearchive/projects/P/T/S/scans/1",
    )
    assert pr.uri == "/data/prearchive/projects/P/T/S/scans/1/resources/DICOM"


def test_file_row_keeps_subfolders_and_uri_verbatim() -> None:
    uri = "/data/experiments/XNAT_E00001/scans/1/resources/101/files/sub/dir/b.dcm"
    f = parse.file_from_row(
        {
            "Name": "b.dcm",
            "Size": "20",
            "URI": uri,
            "collection": "DICOM",
            "file_tags": "",
            "file_format": "DICOM",
            "file_content": "RAW",
            "cat_ID": "101",
            "digest": "abc",
        }
    )
    assert f == FileEntry(
        path="sub/dir/b.dcm",
        size=20,
        uri=uri,
        digest="abc",
        collection="DICOM",
        format="DICOM",
        content="RAW",
        tags="",
    )
    assert f.name == "b.dcm"
    # no digest column on sites with checksums off; a resource dir literally named "files"
    g = parse.file_from_row(
        {"Name": "x", "Size": "", "URI": "/data/projects/P/resources/7/files/files/x"}
    )
    assert (g.digest, g.size, g.path) == ("", 0, "files/x")
    # XNAT sends URIs raw (§1.8): non-ASCII, spaces and '%' are kept in ``path`` and
    # percent-encoded in ``uri`` for the wire
    h = parse.file_from_row(
        {
            "Name": "résumé – notes.txt",
            "Size": "5",
            "URI": "/data/projects/P/resources/7/files/d/résumé – notes.txt",
        }
    )
    assert h.path == "d/résumé – notes.txt"
    assert h.uri == "/data/projects/P/resources/7/files/d/r%C3%A9sum%C3%A9%20%E2%80%93%20notes.txt"
    k = parse.file_from_row(
        {"Name": "100%.txt", "Size": "1", "URI": "/data/projects/P/resources/7/files/a b/100%.txt"}
    )
    assert k.path == "a b/100%.txt"
    assert k.uri == "/data/projects/P/resources/7/files/a%20b/100%25.txt"


def test_a_row_without_a_uri_is_named_by_its_resource_and_name_encoded_once() -> None:
    """Never seen from XNAT; built from the listed resource's URI (encoded already) and the
    row's name (raw): ``100%`` was encoded twice (``100%2525``) and shown as ``100%25``."""
    res = "/data/projects/P/resources/my%20notes"
    f = parse.file_from_row({"Name": "a b/100%.txt", "Size": "1"}, res)
    assert f.path == "a b/100%.txt" and not f.problem
    assert f.uri == "/data/projects/P/resources/my%20notes/files/a%20b/100%25.txt"
    assert parse.file_from_row({"Name": "../x", "Size": "1"}, res).problem


def test_file_row_drops_a_context_path_prefix() -> None:
    f = parse.file_from_row(
        {"Name": "a", "Size": "1", "URI": "/xnat/data/projects/P/resources/7/files/a"}
    )
    assert f.uri == "/data/projects/P/resources/7/files/a"


def test_prearchive_row_gets_data_prefix() -> None:
    row = {
        "scan_time": "08:52:11.146",
        "status": "READY",
        "subject": "SUB1",
        "tag": "",
        "uploaded": "2021-12-29 10:11:28.996",
        "lastmod": "2022-01-18 16:41:25.0",
        "scan_date": "2001-09-24",
        "url": "/prearchive/projects/project1/20220122_105154616/N1",
        "timestamp": "20211229_101128996",
        "project": "project1",
        "name": "N1",
        "folderName": "F1",
    }
    s = parse.prearchive_from_row(row)
    assert s.uri == "/data/prearchive/projects/project1/20220122_105154616/N1"
    assert (s.project, s.name, s.folder_name, s.subject, s.status) == (
        "project1",
        "N1",
        "F1",
        "SUB1",
        "READY",
    )
    assert s.mtime == utc(2022, 1, 18, 16, 41, 25)
    row["url"] = "/data/prearchive/projects/p/t/n"
    assert parse.prearchive_from_row(row).uri == "/data/prearchive/projects/p/t/n"


def test_remote_stat_from_headers() -> None:
    st = parse.remote_stat_from_headers(
        {
            "Content-Length": "40",
            "Content-Type": "text/plain",
            "Last-Modified": "Thu, 08 Apr 2021 19:28:45 GMT",
        }
    )
    assert (st.size, st.mtime, st.content_type) == (40, utc(2021, 4, 8, 19, 28, 45), "text/plain")
    assert parse.remote_stat_from_headers({}).size is None


# -- hostile rows (issue 17 §8) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "size, why",
    [
        ("-5", "outside"),
        ("100000000000000000000000", "outside"),
        ("9223372036854775808", "outside"),
        ("abc", "not a byte count"),
        ("1e23", "not a byte count"),
    ],
)
def test_a_size_outside_0_to_2_63_is_refused_not_wrapped(size, why) -> None:
    f = parse.file_from_row(
        {"Name": "a", "Size": size, "URI": "/data/projects/P/resources/7/files/a"}
    )
    assert f.size == 0 and why in f.problem and size[:20] in f.problem


def test_sizes_that_are_byte_counts_pass() -> None:
    for size, want in (
        ("0", 0),
        ("20", 20),
        ("20.0", 20),
        ("", 0),
        ("9223372036854775807", (1 << 63) - 1),
    ):
        f = parse.file_from_row(
            {"Name": "a", "Size": size, "URI": "/data/projects/P/resources/7/files/a"}
        )
        assert (f.size, f.problem) == (want, "")


@pytest.mark.parametrize(
    "size, digest, refused",
    [
        ("", "5d41402abc4b2a76b9719d911017c592", True),  # MD5 of b"hello"
        ("0", "5d41402abc4b2a76b9719d911017c592", True),
        ("0.0", "not-even-hex", True),
        ("0", "d41d8cd98f00b204e9800998ecf8427e", False),  # the empty file's MD5
        ("", "D41D8CD98F00B204E9800998ECF8427E", False),
        ("0", "", False),  # checksums off
        ("5", "5d41402abc4b2a76b9719d911017c592", False),
    ],
)
def test_a_row_listed_empty_with_the_md5_of_bytes_is_refused(size, digest, refused) -> None:
    """Size 0 (or none) with an MD5 that is not the empty file's contradicts itself; read as
    listed it was an empty file read with success (the kernel asks no byte of it)."""
    f = parse.file_from_row(
        {"Name": "a", "Size": size, "URI": "/data/projects/P/resources/7/files/a", "digest": digest}
    )
    assert bool(f.problem) is refused and ("says empty" in f.problem) is refused, f.problem
    assert f.digest == digest


@pytest.mark.parametrize(
    "uri",
    [
        "/data/../../../etc/passwd",
        "/data/projects/P/resources/7/files/../../../../x",
        "/data/projects/P/resources/7/files/%2e%2e/%2E%2E/x",
        "//evil.example/data/x",
        "http://evil.example/data/projects/P/resources/7/files/a",
        "/etc/passwd",
        "/data/projects/P/resources/7/files/./a",
        # '..' once Tomcat drops a segment's ';' path parameters (the '/..;/' traversal)
        "/data/projects/H/resources/1/files/..;/..;/..;/..;/B/resources/1/files/secret.txt",
        "/data/projects/P/resources/7/files/..;",
        "/data/projects/P/resources/7/files/.;x/a",
        "/data/projects/P/resources/7/files/..%3B/..%3b/x",
        "/data/projects/P/resources/7/files/%2e%2E;jsessionid=1/x",
        "/data/projects/P/resources/7/files/..\\..\\x",
        # not a file of a resource: an object (rm would DELETE it), a resource, its files/
        "/data/projects/P/subjects/S1",
        "/data/projects/P",
        "/data/experiments/E1/resources/7",
        "/data/experiments/E1/resources/7/files/",
        "/data/experiments/E1/files/a",
    ],
)
def test_a_file_uri_leaving_data_is_marked_never_fetched(uri) -> None:
    f = parse.file_from_row({"Name": "a", "Size": "1", "URI": uri})
    assert f.problem, uri


@pytest.mark.parametrize(
    "path, dots",
    [
        ("/data/projects/P/resources/7/files/..", True),
        ("/data/projects/P/resources/7/files/%2E%2e/x", True),
        ("/data/projects/P/resources/7/files/..;/x", True),  # Tomcat: params dropped first
        ("/data/projects/P/resources/7/files/.;a=b", True),
        ("/data/projects/P/resources/7/files/..%3b/x", True),  # decoded first, then cut
        ("/data/projects/P/resources/7/files/.%2e%3Bx/y", True),
        ("/data/projects/P/resources/7/files/a%2F..%2Fb", True),
        ("/data/projects/P/resources/7/files/a\\..\\b", True),  # a backslash as '/'
        ("/data/projects/P/resources/7/files/a%5C..", True),
        ("/data/projects/P/resources/7/files/a;b.txt", False),
        ("/data/projects/P/resources/7/files/a%3Bb.txt", False),
        ("/data/projects/P/resources/7/files/;x", False),
        ("/data/projects/P/resources/7/files/..x;y", False),
        ("/data/projects/P/resources/7/files/...", False),
        ("/data/projects/P/resources/7/files/%252E%252E", False),  # decoded once, as sent
        ("/data/projects/P/resources/7/files//x", False),  # merged, never climbs
    ],
)
def test_a_dot_segment_is_found_in_every_spelling_a_server_reads_as_one(path, dots) -> None:
    """``..`` raw, percent-encoded, before a ``;`` path parameter (Tomcat drops those before
    it resolves ``..``: the ``/..;/`` traversal) or after a backslash all climb on some
    server; names that merely hold dots or a ``;`` do not."""
    assert parse.has_dot_segment(path) is dots


def test_a_semicolon_in_a_listed_name_is_sent_encoded_never_as_a_path_parameter() -> None:
    """XNAT lists URIs raw (§1.8): a file ``a;b.txt`` is ``.../files/a;b.txt``.  Sent so,
    Tomcat reads ``;b.txt`` as a path parameter and asks for ``a``; a file ``..;`` would be
    the resource itself (``rm`` sends DELETE with ``removeFiles=true``)."""
    f = parse.file_from_row(
        {"Name": "a;b.txt", "Size": "1", "URI": "/data/projects/P/resources/7/files/d;x/a;b.txt"},
        "/data/projects/P/resources/7",
    )
    assert (f.problem, f.path) == ("", "d;x/a;b.txt")
    assert f.uri == "/data/projects/P/resources/7/files/d%3Bx/a%3Bb.txt"
    assert parse.wire_uri("/data/projects/P/resources/7/files/..;").endswith("/..%3B")


def test_rows_with_a_lone_surrogate_are_left_out_not_fatal() -> None:
    """A lone surrogate is valid JSON (``"\\ud800"``) but no file name or URL can hold it: one
    such row made the whole listing fail with a UnicodeEncodeError (every sibling EIO)."""
    body = (
        '{"ResultSet":{"Result":[{"Name":"a\\ud800.txt","URI":"/data/projects/P/resources/7/'
        'files/a\\ud800.txt"},{"Name":"b\\udcff","URI":"x"},{"Name":"ok.txt","URI":"/data/'
        'projects/P/resources/7/files/ok.txt"}]}}'
    )
    rows, left_out = parse.without_unencodable(parse.rows_from_json(body))
    assert left_out == 2
    assert [r["Name"] for r in rows] == ["ok.txt"]
    assert parse.file_from_row(rows[0]).uri.endswith("/files/ok.txt")


@pytest.mark.parametrize(
    "uri, path",
    [
        ("/data/projects/files/resources/129/files/x.txt", "x.txt"),
        ("/data/projects/resources/resources/7/files/a/b", "a/b"),
        ("/data/experiments/E1/scans/files/resources/7/files/d/files/y", "d/files/y"),
        ("/data/projects/P/resources/7/files/resources/8/files/z", "resources/8/files/z"),
        ("/data/prearchive/projects/P/20240101_1/S/scans/1/resources/files/files/1.dcm", "1.dcm"),
    ],
)
def test_the_path_below_the_resource_whatever_the_objects_above_are_called(uri, path) -> None:
    """A project (or scan) called ``files``: its files were shown below a second
    ``resources/<id>/files`` folder (the path was taken after the first ``/files/``)."""
    assert (
        parse.file_from_row({"Name": path.rsplit("/", 1)[-1], "Size": "1", "URI": uri}).path == path
    )


#: (the resource a listing was asked for, as xnatfs builds it; a URI XNAT lists in it)
_LISTED_IN_THEIR_RESOURCE = [
    ("/data/projects/P/resources/7", "/data/projects/P/resources/7/files/a/b.txt"),
    (
        "/data/projects/P/subjects/XS1/resources/8",
        "/data/projects/P/subjects/XS1/resources/8/files/x",
    ),
    ("/data/experiments/XE1/resources/9", "/data/experiments/XE1/resources/9/files/x"),
    # XNAT's getBaseURI when the request named project and subject (the emulator does too)
    (
        "/data/experiments/XE1/resources/9",
        "/data/projects/P/subjects/XS1/experiments/XE1/resources/9/files/x",
    ),
    (
        "/data/experiments/XE1/scans/1/resources/10",
        "/data/experiments/XE1/scans/1/resources/10/files/1.dcm",
    ),
    # scan IDs are strings: quoted in xnatfs's URI, raw in XNAT's (plain concatenation)
    (
        "/data/experiments/XE1/scans/3%20a/resources/10",
        "/data/experiments/XE1/scans/3 a/resources/10/files/y",
    ),
    # an assessor's resources: XNAT adds its type folder (XNATTemplate: "out")
    (
        "/data/experiments/XE1/assessors/XA1/resources/11",
        "/data/experiments/XE1/assessors/XA1/out/resources/11/files/stats.txt",
    ),
    (
        "/data/prearchive/projects/P/20240101_1/S/scans/1/resources/DICOM",
        "/data/prearchive/projects/P/20240101_1/S/scans/1/resources/DICOM/files/1.dcm",
    ),
    # a context path, or XNAT 1.4's /REST, before the same path
    ("/data/projects/P/resources/7", "/xnat/data/projects/P/resources/7/files/c.txt"),
    ("/data/projects/P/resources/7", "/REST/projects/P/resources/7/files/c.txt"),
    # project "files" and a resource labelled "files" (file_relpath's cases)
    ("/data/projects/files/resources/129", "/data/projects/files/resources/129/files/x.txt"),
    # a resource known by its label only (a row without xnat_abstractresource_id, one made on
    # this mount): XNAT's URI has the number
    ("/data/projects/P/resources/NEW", "/data/projects/P/resources/77/files/n.txt"),
    # one listing for every scan of a session (layouts/xnat/bundle.py)
    ("/data/experiments/XE1/scans/ALL", "/data/experiments/XE1/scans/4/resources/12/files/z"),
]


@pytest.mark.parametrize("resource_uri, uri", _LISTED_IN_THEIR_RESOURCE)
def test_a_file_uri_under_the_resource_it_was_listed_in_is_kept(resource_uri, uri) -> None:
    f = parse.file_from_row({"Name": "n", "Size": "1", "URI": uri}, resource_uri)
    assert f.problem == "", (resource_uri, uri, f.problem)


@pytest.mark.parametrize(
    "resource_uri, uri",
    [
        # the issue: project A's listing names a file of project B
        ("/data/projects/A/resources/7", "/data/projects/B/resources/7/files/secret.txt"),
        ("/data/projects/A/resources/7", "/data/projects/A/resources/8/files/other.txt"),
        (
            "/data/projects/A/subjects/XS1/resources/8",
            "/data/projects/B/subjects/XS1/resources/8/files/x",
        ),
        ("/data/experiments/XE1/resources/9", "/data/experiments/XE2/resources/9/files/x"),
        (
            "/data/experiments/XE1/scans/1/resources/10",
            "/data/experiments/XE1/scans/2/resources/10/files/x",
        ),
        (
            "/data/experiments/XE1/scans/1/resources/10",
            "/data/experiments/XE1/resources/10/files/x",
        ),
        (
            "/data/experiments/XE1/assessors/XA1/resources/11",
            "/data/experiments/XE1/assessors/XA2/out/resources/11/files/x",
        ),
        ("/data/projects/A/resources/NEW", "/data/projects/B/resources/77/files/n.txt"),
        ("/data/experiments/XE1/scans/ALL", "/data/experiments/XE2/scans/4/resources/12/files/z"),
        (
            "/data/prearchive/projects/A/20240101_1/S/scans/1/resources/DICOM",
            "/data/prearchive/projects/B/20240101_1/S/scans/1/resources/DICOM/files/1.dcm",
        ),
        # an escape spelled so that only a decoding server sees it
        ("/data/projects/A/resources/7", "/data/projects/A%2F..%2FB/resources/7/files/x"),
    ],
)
def test_a_file_uri_outside_the_resource_it_was_listed_in_is_marked(resource_uri, uri) -> None:
    """A listing of project A's resource naming a file of project B (or of another object of
    A) was read, and removed with --allow-delete, as if it were A's: files are fetched only
    under the resource (or session, for the one-request scan listing) they were listed in."""
    f = parse.file_from_row({"Name": "n", "Size": "1", "URI": uri}, resource_uri)
    assert f.problem, (resource_uri, uri)


def test_server_json_failures_are_bad_documents_whatever_their_kind() -> None:
    """Broken, nested past the recursion limit (RecursionError, no ValueError), or more values
    than the cap: all ``BadDocument``, the one error callers turn into NotXnatResponse."""
    deep = "[" * 100_000 + "]" * 100_000
    for text, why in (
        ("{", "not JSON"),
        (deep, "nested too deeply"),
        (deep.encode(), "nested too deeply"),
        ('{"ResultSet":{"Result":[' + "[]," * 4_000_000 + "[]]}}", "JSON values"),
    ):
        with pytest.raises(parse.BadDocument, match=why):
            parse.loads_json(text)
    with pytest.raises(parse.BadDocument, match="nested too deeply"):
        parse.rows_from_json('{"ResultSet":{"Result":' + deep + "}}")
    assert parse.loads_json(b'{"a": [1, 2]}') == {"a": [1, 2]}


def test_catalogs_and_uri_lists_past_the_element_cap_are_refused_before_parsing() -> None:
    cap = parse.MAX_DOCUMENT_ELEMENTS
    catalog = b'<cat:Catalog xmlns:cat="http://nrg.wustl.edu/catalog">' + b"<a/>" * (cap + 1)
    with pytest.raises(parse.BadDocument, match="XML elements"):
        parse.catalog_times(catalog + b"</cat:Catalog>")
    with pytest.raises(parse.BadDocument, match="lines"):
        parse.parse_uri_list("ab\r\n" * (cap + 1))
    # blank lines and comments cost nothing; CRLF, CR and LF all end a line
    assert parse.parse_uri_list("\n" * (cap + 5) + "# c\r\n/data/a\r/data/b\n") == [
        "/data/a",
        "/data/b",
    ]


@pytest.mark.parametrize(
    "relpath",
    ["a?b.txt", "c#d.txt", "e%41f.txt", "g h.txt", "ümlaut.txt", "50%.txt", "x;y", "sub/a?b"],
)
def test_a_written_files_uri_is_the_one_its_listing_row_gets(relpath: str) -> None:
    """``file_uri`` (a file this mount wrote: the resource's URI, the name raw) is the URI
    XNAT's listing row of that file gets once it lands (``FileEntry.uri``): the times index
    and ``user.xnat.uri`` key it the same way, and a request for it names that file only
    (§1.8, §10.17).  Before, the name was raw (``.../files/e%41f.txt``: ``eAf.txt``)."""
    resource = "/data/projects/P/resources/101"
    row = {"Name": relpath.rsplit("/", 1)[-1], "Size": "3", "URI": f"{resource}/files/{relpath}"}
    listed = parse.file_from_row(row, resource)
    assert not listed.problem and listed.path == relpath
    assert parse.file_uri(resource, relpath) == listed.uri
    tail = parse.file_uri(resource, relpath).split("/files/", 1)[1]
    assert not set("?# ;") & set(tail) and "%41" not in tail and tail.isascii()
