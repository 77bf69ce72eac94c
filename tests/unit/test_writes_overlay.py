"""The write overlay's view of a file between XNAT's confirmation and the release."""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

from xnatfs.tree.paths import split_path
from xnatfs.tree.writes import LocalFile, Writer
from xnatfs.uploads.journal import Entry
from xnatfs.uploads.target import UploadTarget


def test_a_stat_between_the_confirmed_upload_and_the_release_keeps_the_size():
    """``close()`` returns once XNAT confirmed the upload, but the kernel sends RELEASE (which
    drops the overlay entry) after it: a ``stat`` in between was answered with size 0."""
    writer = Writer.__new__(Writer)  # only the overlay state that _on_change touches
    writer._lock = threading.Lock()
    writer._files = {}
    writer._dirs = set()
    writer._verified = {}  # the checks' listings (none here: the folder is invalidated)
    writer.tree = SimpleNamespace(invalidate=lambda path: None)
    target = UploadTarget.file("/data/projects/P/resources/R", "a.nii")
    entry = Entry(
        id="e1", target=target, path="/P/resources/R/files/a.nii", size=1000, md5="", created=0.0
    )
    lf = LocalFile(parts=split_path(entry.path), target=target, entry=entry, handles=1)
    writer._files[lf.parts] = lf
    writer._on_change(dataclasses.replace(entry, state="done"))
    assert lf.entry is None and writer._files.get(lf.parts) is lf  # still open: kept
    assert Writer._file_node(lf).size == 1000
