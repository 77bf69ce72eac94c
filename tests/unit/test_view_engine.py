"""The view engine without FUSE (#14): several layouts in one mount, policies as plug-ins, the
write side registered as an overlay, typed node references.  The mounted proof is
tests/mount/test_toy_layout.py."""

from __future__ import annotations

import copy
import errno
import time
from types import SimpleNamespace
from typing import List, Tuple

import pytest

from tests.mount.toy_layout import MIRROR, TREE, ToyLayout
from xnatfs import deadline
from xnatfs.cache.content import ContentCache, ContentKey
from xnatfs.cache.meta import MetaCache
from xnatfs.tree.writes import Writer
from xnatfs.view.engine import Engine
from xnatfs.view.layout import Layout, Opened, Overlay
from xnatfs.view.node import Generated, Local, NodeInfo


@pytest.fixture
def engine(tmp_path):
    main, mirror = ToyLayout(TREE), ToyLayout(MIRROR)
    by_uri = {f"toy:{id(main)}": main, f"toy:{id(mirror)}": mirror}
    content = ContentCache(
        str(tmp_path / "content"),
        size_limit=1 << 24,
        fetch=lambda uri, sink: by_uri[uri.rsplit(":", 1)[0]].fetch(uri, sink),
    )
    content.start()
    eng = Engine(main, MetaCache(ttl=60.0), content, fs_timeout=10.0)
    eng.mount(".mirror", mirror)  # the one line that wires a second layout
    yield eng, main, mirror
    eng.close()
    content.close()


def test_a_toy_layout_satisfies_the_protocol():
    assert isinstance(ToyLayout(TREE), Layout)
    assert isinstance(Writer.__new__(Writer), Overlay)


def test_paths_route_to_the_layout_mounted_under_their_first_name(engine):
    eng, main, mirror = engine
    assert {n.name for n in eng.listdir("/")} == set(TREE) | {".mirror"}
    node = eng.lookup("/.mirror/only-here.txt")
    assert node.mount == ".mirror" and eng.lookup("/docs/readme.txt").mount == ""
    handle = eng.open(node, "/.mirror/only-here.txt")
    try:
        assert handle.read(0, 1000) == MIRROR["only-here.txt"]
    finally:
        handle.close()
    with pytest.raises(FileNotFoundError):
        eng.lookup("/.mirror/docs")
    assert eng.read_only("/.mirror/new.txt") and eng.read_only("/.mirror")
    assert not eng.read_only("/docs/new.txt") and not eng.read_only("/")
    assert not eng.writable(eng.lookup("/.mirror"))


def test_a_mounted_layouts_listings_are_cached_under_its_name(engine):
    eng, main, mirror = engine
    eng.listdir("/.mirror")
    eng.listdir("/.mirror")
    assert mirror.loads == 1 and main.loads == 0  # one load, kept under ("/.mirror",)
    eng.invalidate("/.mirror/only-here.txt")  # the parent's listing goes too
    eng.listdir("/.mirror")
    assert mirror.loads == 2 and main.loads == 0


def test_writes_below_a_mounted_layout_are_erofs(engine):
    from xnatfs.fs import ops
    from xnatfs.options import Options

    eng, _main, _mirror = engine
    runtime = SimpleNamespace(
        options=Options(url="toy://", allow_other_write=True), writer=object(), tree=eng
    )
    adapter = ops.XnatOperations(runtime)
    with pytest.raises(OSError) as info:
        adapter._writer("/.mirror/x")  # the one gate every write passes
    assert info.value.errno == errno.EROFS
    assert adapter._writer("/docs/x") is runtime.writer


class Recorder:
    """A read-ahead policy is one class: this one records what the engine tells it."""

    def __init__(self, take: bool) -> None:
        self.take = take
        self.seen: List[Tuple[str, Tuple[str, ...]]] = []
        self.listed: List[object] = []
        self.closed = False

    def on_readdir(self, view, parts, children) -> None:
        self.seen.append(("readdir", parts))

    def on_open(self, view, parts, node) -> bool:
        self.seen.append(("open", parts))
        # noted, asserted by the test: the engine does not let a policy's exception fail an open
        self.listed.append(view.listing(parts[:-1], view.node(parts[:-1])).children[node.name])
        return self.take

    def close(self) -> None:
        self.closed = True


def test_policies_plug_in_and_the_first_to_take_an_open_stops_the_rest(engine):
    eng, _main, _mirror = engine
    first, second = Recorder(take=True), Recorder(take=False)
    eng.add_policy(first)
    eng.add_policy(second)
    eng.readdir("/docs")
    node = eng.lookup("/docs/readme.txt")
    eng.open(node, "/docs/readme.txt").close()
    eng.open(eng.lookup("/docs/.about.json"), "/docs/.about.json").close()  # generated: no hook
    assert first.seen == [("readdir", ("docs",)), ("open", ("docs", "readme.txt"))]
    assert first.listed == [node]
    assert second.seen == [("readdir", ("docs",))]
    eng.close()
    assert first.closed and second.closed


def test_an_open_of_a_cached_file_asks_only_the_policies_that_want_it(engine):
    """A hit says nothing about what else to download (the next uncached open of the folder
    decides), and asking such policies cost ~12 % of the daemon's time per warm open
    (benchmarks/RESULTS.md "Warm opens"); a policy with ``on_cached_opens`` (prefetch pages
    the next cached files in) is still asked, and the open of an uncached file asks both."""
    from tests.helpers.waiting import wait_for

    eng, _main, _mirror = engine
    recorder, at_hits = Recorder(take=False), Recorder(take=False)
    recorder.on_cached_opens = False
    at_hits.on_cached_opens = True
    eng.add_policy(recorder)
    eng.add_policy(at_hits)
    node = eng.lookup("/docs/readme.txt")
    handle = eng.open(node, "/docs/readme.txt")
    try:
        assert handle.read(0, 1000) == TREE["docs"]["readme.txt"]
    finally:
        handle.close()
    assert recorder.seen == [("open", ("docs", "readme.txt"))]
    key = eng.content_key(node)
    wait_for(lambda: eng.content.state(key) == "cached", timeout=30, what="readme.txt cached")
    for _ in range(2):
        handle = eng.open(eng.lookup("/docs/readme.txt"), "/docs/readme.txt")
        try:
            assert handle.read(0, 1000) == TREE["docs"]["readme.txt"]
        finally:
            handle.close()
    assert recorder.seen == [("open", ("docs", "readme.txt"))]
    assert at_hits.seen == [("open", ("docs", "readme.txt"))] * 3


def test_overlay_nodes_are_typed_not_string_sentinels():
    folder = Writer._dir(("P", "resources", "R", "files", "new"))
    assert isinstance(folder.ref, Local) and folder.is_local and folder.local_file is None
    assert folder.subpath == ()
    assert not Writer.owns(folder)


def test_the_overlay_is_registered_not_assigned(engine):
    eng, _main, _mirror = engine

    class Shadow:
        def node(self, parts):
            return None

        def dir_node(self, parts):
            return Writer._dir(parts) if parts == ("docs", "local") else None

        def children(self, parts):
            return [Writer._dir(parts + ("local",))] if parts == ("docs",) else []

        def owns(self, node):
            return False

        def local_read_handle(self, node):  # pragma: no cover - owns nothing
            raise AssertionError

        def mtime_ns(self, node):  # pragma: no cover - owns nothing
            raise AssertionError

    eng.attach_overlay(Shadow())
    assert "local" in {n.name for n in eng.listdir("/docs")}
    assert eng.listdir("/docs/local") == []  # a local folder: no request, only local children
    assert "local" not in {n.name for n in eng.listdir("/.mirror")}  # main layout only


class _ServerMade(ToyLayout):
    """Every folder answers an unlisted ``bundle.zip`` the server makes (sized: its bytes are
    brought into the content cache at lookup, as XNAT's zip of a folder is)."""

    def lookup(self, parts, parent, name):
        if name != "bundle.zip":
            return super().lookup(parts, parent, name)
        return NodeInfo(
            name=name,
            kind="zip",
            is_dir=False,
            mtime=0.0,
            uri=parent.uri,
            ref=Generated("zip", parent, sized=True),
        )

    def open(self, node, path):
        if node.kind == "zip":
            return Opened(key=ContentKey(uri=f"zip:{node.uri}", size=None, digest=""))
        return super().open(node, path)


class _NeverDownloaded:
    """A content cache whose downloads never end: ``wait`` records its deadline, answers
    False (not there in time)."""

    def __init__(self) -> None:
        self.untils: List[float] = []

    def open(self, key):
        untils = self.untils

        class Handle:
            def wait(self, until: float) -> bool:
                untils.append(until)
                return False

            def close(self) -> None:
                pass

        return Handle()


def test_a_server_made_file_is_sized_within_the_calls_deadline():
    """The wait for its download took a fresh ``fs_timeout`` however much of the call was
    spent already (the old code): a stat could take up to twice --timeout."""
    content = _NeverDownloaded()
    eng = Engine(_ServerMade(TREE), MetaCache(ttl=60.0), content, fs_timeout=30.0)
    with deadline.scope(1.0) as end:  # what is left of the call when the walk gets there
        with pytest.raises(OSError) as info:
            eng.lookup("/docs/bundle.zip")
    assert info.value.errno == errno.ETIMEDOUT
    assert content.untils and content.untils[0] <= end


class _DeadlineSeen:
    """A read-ahead policy that notes the call deadline its open hook runs under (a real
    one may load the folder's listing there: expired since the lookup)."""

    def __init__(self) -> None:
        self.seen: List[object] = []

    def on_readdir(self, view, parts, children) -> None:
        return None

    def on_open(self, view, parts, node) -> bool:
        self.seen.append(deadline.current())
        return False

    def close(self) -> None:
        return None


def test_an_opens_read_ahead_runs_within_the_opens_deadline(engine):
    """FUSE ``open`` = lookup, then the layout's open and the policies: the policies ran
    outside any call deadline (the old code), so each listing one loaded had a fresh
    --timeout and an open could last several."""
    import os

    from xnatfs.fs import ops
    from xnatfs.options import Options

    eng, _main, _mirror = engine
    policy = _DeadlineSeen()
    eng.add_policy(policy)
    adapter = ops.XnatOperations(
        SimpleNamespace(
            options=Options(url="toy://"), writer=None, tree=eng, note_fuse=lambda op: None
        )
    )
    fi = SimpleNamespace(flags=os.O_RDONLY, fh=0, direct_io=0, keep_cache=0, noflush=0)
    began = time.monotonic()
    adapter.open("/docs/readme.txt", fi)
    adapter.release("/docs/readme.txt", fi)
    assert policy.seen and policy.seen[0] is not None
    assert policy.seen[0] <= began + eng.fs_timeout + 1.0  # the open's own, not a later one


class _SlowFolder(_DeadlineSeen):
    """A read-ahead policy whose folder listing is not there by the open's deadline."""

    def on_open(self, view, parts, node) -> bool:
        raise TimeoutError(errno.ETIMEDOUT, "waited for a listing another call is loading")


def test_a_read_ahead_that_runs_out_of_time_does_not_fail_the_open(engine):
    """The open's own work is done when the policies are asked: one that cannot finish in
    what is left of the deadline (the old code) failed the open with ETIMEDOUT, and the
    content-cache handle already opened (an fd, and a pin that keeps the file from eviction)
    was lost with the exception."""
    eng, _main, _mirror = engine
    eng.add_policy(_SlowFolder())
    handle = eng.open(eng.lookup("/docs/readme.txt"), "/docs/readme.txt")
    try:
        assert handle.read(0, 1000) == TREE["docs"]["readme.txt"]
    finally:
        handle.close()
    assert eng.content.stats["pinned"] == 0


# ---------------------------------------------------------------------- readdirplus
def _all_dirs(eng: Engine, path: str = "/") -> List[str]:
    found = [path]
    for child in eng.listdir(path):
        if child.is_dir:
            found += _all_dirs(eng, path.rstrip("/") + "/" + child.name)
    return found


def test_a_listed_node_handed_to_the_kernel_is_the_one_lookup_returns(engine):
    eng, _main, _mirror = engine
    handed = 0
    for path in _all_dirs(eng):
        children = eng.readdir(path)
        for child, node in zip(children, eng.as_looked_up(path, children)):
            if node is not None:
                handed += 1
                assert node == eng.lookup(path.rstrip("/") + "/" + child.name)
    assert handed >= 6  # files and folders of both layouts
    mirror = eng.readdir("/.mirror")
    (node,) = eng.as_looked_up("/.mirror", mirror)
    assert node is not None and node.mount == ".mirror"  # as lookup marks it


def test_what_lookup_must_answer_itself_is_not_handed_over(engine):
    eng, main, _mirror = engine
    root = eng.readdir("/")
    by_name = dict(zip([c.name for c in root], eng.as_looked_up("/", root)))
    assert by_name[".mirror"] is None  # a mounted view's root
    assert by_name["docs"] is not None and by_name["top.txt"] is not None

    class Writing:
        """An overlay that owns docs/readme.txt (a file being written: its size moves)."""

        def node(self, parts):
            return None

        def dir_node(self, parts):
            return None

        def children(self, parts):
            return []

        def owns(self, node):
            return node.name == "readme.txt"

        def local_read_handle(self, node):  # pragma: no cover
            raise AssertionError

        def mtime_ns(self, node):  # pragma: no cover
            raise AssertionError

    eng.attach_overlay(Writing())
    docs = eng.readdir("/docs")
    answers = {c.name: n for c, n in zip(docs, eng.as_looked_up("/docs", docs))}
    assert answers["readme.txt"] is None and answers["empty.txt"] is not None
    # a name the layout resolves itself (the generated .about.json) is never handed over
    listing = eng.readdir("/docs") + [eng.lookup("/docs/.about.json")]
    assert eng.as_looked_up("/docs", listing)[-1] is None


def test_a_directory_pass_resumes_from_its_own_snapshot(engine, tmp_path):
    """The kernel reads a directory in chunks and resumes at an offset: a listing that
    changes between chunks must not shift names into or out of the pass."""
    from xnatfs.fs import ops
    from xnatfs.options import Options

    eng, main, _mirror = engine
    calls: dict = {}
    runtime = SimpleNamespace(
        options=Options(url="toy://", cache_dir=tmp_path),
        writer=None,
        tree=eng,
        note_fuse=lambda op: calls.__setitem__(op, calls.get(op, 0) + 1),
        note_error=lambda name: None,
    )
    adapter = ops.XnatOperations(runtime)
    fh = adapter.opendir("/docs")
    first = adapter.dir_entries("/docs", fh, 0)
    names = [e.name for e in first]
    assert names[:2] == [".", ".."] and set(names[2:]) == {"readme.txt", "empty.txt"}
    assert all(e.node is not None for e in first[2:])
    attrs = adapter.entry_attrs(first[2])
    assert attrs == adapter.getattr("/docs/" + first[2].name)
    main.tree = copy.deepcopy(main.tree)  # TREE itself is shared with other tests
    main.tree["docs"]["new.txt"] = b"arrived between two chunks"
    eng.invalidate("/docs/new.txt")
    assert [e.name for e in adapter.dir_entries("/docs", fh, 2)] == names[2:]
    # a new pass (offset 0, as after rewinddir or a new opendir) sees the change
    assert "new.txt" in {e.name for e in adapter.dir_entries("/docs", fh, 0)}
    adapter.releasedir("/docs", fh)
    assert adapter._dirs == {} and calls["readdir"] == 3
    # names only: no node handed over
    names_only = ops.XnatOperations(
        SimpleNamespace(
            **{
                **vars(runtime),
                "options": Options(url="t://", cache_dir=tmp_path, names_only_listings=True),
            }
        )
    )
    fh = names_only.opendir("/docs")
    assert all(e.node is None for e in names_only.dir_entries("/docs", fh, 0))


def test_known_below_names_what_held_listings_gave_and_loads_nothing(engine):
    """What a refresh makes the kernel forget (fs/control.py): every name a listing still
    held gave out below the folder, fresh or last seen; a folder never listed is not read."""
    eng, main, _mirror = engine
    eng.listdir("/")
    eng.listdir("/data")
    loads = main.loads
    assert sorted(eng.known_below("/data")) == ["/data/deep"]  # /data/deep was never listed
    eng.listdir("/data/deep")
    assert sorted(eng.known_below("/data")) == ["/data/deep", "/data/deep/numbers.bin"]
    assert "/docs" in eng.known_below("/") and "/docs/readme.txt" not in eng.known_below("/")
    assert main.loads == loads + 1  # only the listdir above
    assert len(eng.known_below("/", limit=2)) == 2


def test_known_below_outlives_the_folders_own_entry():
    """The kernel keeps a name for a TTL from its own lookup, which may end after the engine's
    entry for the folder above it: a refresh then found that entry gone and made the kernel
    forget nothing below it (a stale ``stat`` size after ``xnatfs refresh`` of the XNAT side,
    seen for ``.bids/P``).  The folders' last seen listings still name them; no request."""
    now = [0.0]
    main = ToyLayout(TREE)
    eng = Engine(main, MetaCache(ttl=10.0, timer=lambda: now[0]), content=None, fs_timeout=10.0)
    try:
        eng.listdir("/data")
        eng.listdir("/data/deep")
        assert eng.peek_node(("data",)) is not None
        now[0] += 11.0  # every entry expired; the listings are kept as last seen
        loads = main.loads
        assert eng.peek_node(("data",)) is None
        assert sorted(eng.known_below("/data")) == ["/data/deep", "/data/deep/numbers.bin"]
        assert eng.known_below("/docs") == []  # never listed: not looked into
        assert main.loads == loads  # before: the walk from the root asked the source again
    finally:
        eng.close()
