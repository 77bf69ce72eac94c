"""``ExperimentBundles``: per-directory listings served from one or two experiment-wide tables
(issue 12, B4), with a fake client that counts its calls."""

from __future__ import annotations

import threading
from typing import Dict, List

from xnatfs import deadline
from xnatfs.layouts.xnat.bundle import ExperimentBundles
from xnatfs.xnat.models import FileEntry, Resource

EXP = ("P", "subjects", "S", "experiments", "E")
EXP_URI = "/data/experiments/E1"


def _res(scan: str, rid: str, label: str, count: int) -> Resource:
    return Resource(
        id=rid, label=label, file_count=count, uri=f"{EXP_URI}/scans/{scan}/resources/{rid}"
    )


def _file(scan: str, rid: str, path: str) -> FileEntry:
    return FileEntry(
        path=path, size=1, uri=f"/data/experiments/E1/scans/{scan}/resources/{rid}/files/{path}"
    )


class FakeClient:
    def __init__(self) -> None:
        self.calls: List[str] = []
        self.resources: Dict[str, List[Resource]] = {
            "1": [_res("1", "101", "DICOM", 2)],
            "2": [_res("2", "102", "NIFTI", 1)],
        }
        self.files = [
            _file("1", "101", "a.dcm"),
            _file("1", "101", "sub/b.dcm"),
            _file("2", "102", "c.nii"),
        ]

    def list_scan_resources(self, uri: str) -> Dict[str, List[Resource]]:
        self.calls.append(f"all-resources {uri}")
        return self.resources

    def list_files(self, uri: str) -> List[FileEntry]:
        self.calls.append(f"files {uri}")
        return list(self.files)


def _own(client: FakeClient, what: str):
    def load():
        client.calls.append(f"own {what}")
        return [what]

    return load


def test_a_walk_lists_an_experiment_in_two_requests() -> None:
    c = FakeClient()
    b = ExperimentBundles(c)
    assert b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1")) == c.resources["1"]
    assert b.scan_resources(EXP, EXP_URI, "2", _own(c, "r2")) == c.resources["2"]
    got1 = b.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/101", _own(c, "f1"))
    got2 = b.scan_files(EXP, EXP_URI, "2", f"{EXP_URI}/scans/2/resources/102", _own(c, "f2"))
    assert [e.path for e in got1] == ["a.dcm", "sub/b.dcm"]
    assert [e.path for e in got2] == ["c.nii"]
    assert c.calls == [f"all-resources {EXP_URI}", f"files {EXP_URI}/scans/ALL"]


def test_one_resource_alone_is_listed_alone() -> None:
    """No resources table seen (cp -r of one known path): the files table is not asked for."""
    c = FakeClient()
    b = ExperimentBundles(c)
    assert b.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/101", _own(c, "f1")) == [
        "f1"
    ]
    assert c.calls == ["own f1"]


def test_a_big_session_lists_one_series_alone() -> None:
    c = FakeClient()
    c.resources["3"] = [_res("3", "103", "DICOM", 5000)]
    b = ExperimentBundles(c, files_max=100)
    b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1"))
    assert b.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/101", _own(c, "f1")) == [
        "f1"
    ]
    assert "files /data/experiments/E1/scans/ALL" not in c.calls


def test_unknown_resource_and_unplaceable_rows_fall_back() -> None:
    c = FakeClient()
    b = ExperimentBundles(c)
    b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1"))
    # a resource the table does not name (made since): its own listing
    assert b.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/999", _own(c, "f999")) == [
        "f999"
    ]
    c2 = FakeClient()
    c2.files.append(FileEntry(path="x", size=1, uri="/data/elsewhere/files/x"))
    b2 = ExperimentBundles(c2)
    b2.scan_resources(EXP, EXP_URI, "1", _own(c2, "r1"))
    assert b2.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/101", _own(c2, "f1")) == [
        "f1"
    ]


def test_a_change_below_the_experiment_forgets_its_tables() -> None:
    c = FakeClient()
    b = ExperimentBundles(c)
    b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1"))
    b.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/101", _own(c, "f1"))
    c.files.append(_file("1", "101", "new.dcm"))
    b.invalidated(EXP + ("scans", "1", "resources", "DICOM", "files", "new.dcm"))
    b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1"))
    got = b.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/101", _own(c, "f1"))
    assert "new.dcm" in [e.path for e in got]
    assert c.calls.count(f"all-resources {EXP_URI}") == 2
    # a change above (the subject) forgets it too; one elsewhere does not
    b.invalidated(("P", "subjects", "OTHER"))
    b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1"))
    assert c.calls.count(f"all-resources {EXP_URI}") == 2
    b.invalidated(("P", "subjects", "S"))
    b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1"))
    assert c.calls.count(f"all-resources {EXP_URI}") == 3


def test_a_failed_table_falls_back_to_the_directory_request() -> None:
    class Failing(FakeClient):
        def list_scan_resources(self, uri: str) -> Dict[str, List[Resource]]:
            raise OSError("boom")

    c = Failing()
    b = ExperimentBundles(c)
    assert b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1")) == ["r1"]


class _HeldClient(FakeClient):
    """The first table request blocks until ``release`` is set (a slow XNAT, or another
    thread's request that began with a whole deadline of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def list_scan_resources(self, uri: str) -> Dict[str, List[Resource]]:
        self.started.set()
        self.release.wait(30)
        return super().list_scan_resources(uri)

    def list_files(self, uri: str) -> List[FileEntry]:
        self.started.set()
        self.release.wait(30)
        return super().list_files(uri)


def _joiner_within_its_deadline(c: _HeldClient, call) -> list:
    """``call()`` in a thread inside a filesystem call's deadline (50 ms), while another
    thread's load of the same table is held; returns what it got (empty: still waiting)."""
    got: list = []

    def joiner() -> None:
        with deadline.scope(0.05):
            got.append(call())

    t = threading.Thread(target=joiner, daemon=True)
    t.start()
    t.join(10)
    return got


def test_a_call_waits_for_another_threads_resources_table_only_until_its_deadline() -> None:
    """The old code joined the load with no bound: a ``stat`` whose call had little time left
    waited for a request that began with a whole deadline of its own (held here)."""
    c = _HeldClient()
    b = ExperimentBundles(c)
    leader = threading.Thread(
        target=lambda: b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1")), daemon=True
    )
    leader.start()
    assert c.started.wait(10)
    try:
        got = _joiner_within_its_deadline(
            c, lambda: b.scan_resources(EXP, EXP_URI, "2", _own(c, "r2"))
        )
        assert got == [["r2"]], "the joiner waited past its call's deadline"
    finally:
        c.release.set()
        leader.join(10)


def test_a_call_waits_for_another_threads_files_table_only_until_its_deadline() -> None:
    c = _HeldClient()
    b = ExperimentBundles(c)
    c.release.set()
    b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1"))  # the walk: resources table known
    c.release.clear()
    c.started.clear()
    r1 = f"{EXP_URI}/scans/1/resources/101"
    leader = threading.Thread(
        target=lambda: b.scan_files(EXP, EXP_URI, "1", r1, _own(c, "f1")), daemon=True
    )
    leader.start()
    assert c.started.wait(10)
    try:
        r2 = f"{EXP_URI}/scans/2/resources/102"
        got = _joiner_within_its_deadline(
            c, lambda: b.scan_files(EXP, EXP_URI, "2", r2, _own(c, "f2"))
        )
        assert got == [["f2"]], "the joiner waited past its call's deadline"
    finally:
        c.release.set()
        leader.join(10)


class Jobs:
    """An executor's ``submit`` that keeps the jobs for the test to run."""

    def __init__(self) -> None:
        self.jobs: list = []

    def __call__(self, job) -> None:
        self.jobs.append(job)

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()


def test_warming_loads_both_tables_once_ahead_of_the_walker() -> None:
    c = FakeClient()
    b = ExperimentBundles(c)
    b.submit = jobs = Jobs()
    b.warm(EXP, EXP_URI)
    b.warm(EXP, EXP_URI)  # the same experiment again: nothing more
    assert len(jobs.jobs) == 1 and c.calls == []
    jobs.run()
    assert c.calls == [f"all-resources {EXP_URI}", f"files {EXP_URI}/scans/ALL"]
    # the walker's listings now come from the tables, without a request
    assert b.scan_resources(EXP, EXP_URI, "2", _own(c, "r2")) == c.resources["2"]
    got = b.scan_files(EXP, EXP_URI, "1", f"{EXP_URI}/scans/1/resources/101", _own(c, "f1"))
    assert [e.path for e in got] == ["a.dcm", "sub/b.dcm"]
    assert len(c.calls) == 2
    assert b.stats()["warmed"] == 1


def test_warming_a_big_session_leaves_its_files_to_each_resource() -> None:
    c = FakeClient()
    b = ExperimentBundles(c, files_max=2)  # three files in the session
    b.submit = jobs = Jobs()
    b.warm(EXP, EXP_URI)
    jobs.run()
    assert c.calls == [f"all-resources {EXP_URI}"]


def test_a_failed_warming_leaves_the_tables_to_the_walker() -> None:
    c = FakeClient()
    b = ExperimentBundles(c)
    b.submit = jobs = Jobs()
    failing = [True]
    real = c.list_scan_resources

    def flaky(uri: str):
        if failing.pop(0) if failing else False:
            c.calls.append("all-resources failed")
            raise OSError(5, "server error")
        return real(uri)

    c.list_scan_resources = flaky  # type: ignore[method-assign]
    b.warm(EXP, EXP_URI)
    jobs.run()  # logged, not raised; nothing kept
    assert b.scan_resources(EXP, EXP_URI, "1", _own(c, "r1")) == c.resources["1"]
    assert c.calls == ["all-resources failed", f"all-resources {EXP_URI}"]


def test_no_pool_no_warming() -> None:
    c = FakeClient()
    b = ExperimentBundles(c)
    b.warm(EXP, EXP_URI)
    assert c.calls == [] and b.stats()["warmed"] == 0


def test_warming_is_bounded_by_the_jobs_pending() -> None:
    """The pool is shared with listing refreshes: past ``WARM_PENDING_MAX`` experiments waiting,
    the next is not warmed (its walker asks for its tables itself)."""
    from xnatfs.layouts.xnat import bundle

    c = FakeClient()
    b = ExperimentBundles(c)
    b.submit = jobs = Jobs()
    for i in range(bundle.WARM_PENDING_MAX + 3):
        b.warm(EXP[:-1] + (f"E{i}",), f"/data/experiments/E{i}")
    assert len(jobs.jobs) == bundle.WARM_PENDING_MAX
    jobs.run()
    b.warm(EXP[:-1] + ("Elater",), "/data/experiments/Elater")
    assert len(jobs.jobs) == 1
