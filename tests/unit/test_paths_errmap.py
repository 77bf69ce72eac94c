"""Path escaping, the errno table and option parsing: pure functions."""

from __future__ import annotations

import errno

import pytest

from xnatfs.fs.errmap import errno_for
from xnatfs.options import parse_size
from xnatfs.tree.paths import escape_name, split_path, unescape_name
from xnatfs.xnat import errors as xe


@pytest.mark.parametrize(
    "name", ["plain", "a/b", "100%", "%2F", "x\0y", "résumé – notes.txt", "with space", "a%25b/c"]
)
def test_escape_round_trip(name):
    escaped = escape_name(name)
    assert "/" not in escaped and "\0" not in escaped
    assert unescape_name(escaped) == name


def test_escape_leaves_ordinary_names_alone():
    assert escape_name("résumé – notes.txt") == "résumé – notes.txt"
    assert escape_name("T1w/MPRAGE") == "T1w%2FMPRAGE"


def test_split_path():
    assert split_path("/") == ()
    assert split_path("/P//subjects/S/") == ("P", "subjects", "S")


@pytest.mark.parametrize(
    "exc, code",
    [
        (xe.NotFound("GET", "u", 404), errno.ENOENT),
        (xe.Unauthorized("GET", "u", 401), errno.EACCES),
        (xe.Forbidden("GET", "u", 403), errno.EACCES),
        (xe.Conflict("PUT", "u", 409), errno.EEXIST),
        (xe.ServerError("GET", "u", 500), errno.EIO),
        (xe.ServerError("GET", "u", 503), errno.EIO),
        (xe.XnatTimeout("GET", "u"), errno.ETIMEDOUT),
        (xe.Unreachable("GET", "u"), errno.EIO),
        (xe.NotXnatResponse("GET", "u", 200), errno.EIO),
        (OSError(errno.EROFS, "ro"), errno.EROFS),
        (OSError(errno.ENOTEMPTY, "x"), errno.ENOTEMPTY),
        (TimeoutError(errno.ETIMEDOUT, "late"), errno.ETIMEDOUT),
        (ValueError("bug"), errno.EIO),
    ],
)
def test_errno_table(exc, code):
    assert errno_for(exc) == code


def test_timeout_is_never_enoent():
    assert errno_for(xe.XnatTimeout("GET", "u")) != errno.ENOENT


@pytest.mark.parametrize(
    "text, value", [("1000", 1000), ("512M", 512 * 2**20), ("20G", 20 * 2**30), ("1.5KiB", 1536)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects_garbage():
    with pytest.raises(ValueError):
        parse_size("lots")
