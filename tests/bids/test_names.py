"""The label rule, the session rule, run numbers and file names (xnatfs/bids/names.py)."""

from __future__ import annotations

from xnatfs.bids import names as N


def test_valid_labels_keep_their_name() -> None:
    m = N.LabelMap(["SUBJ01", "02", "abcXYZ9"])
    assert [m[x] for x in ("SUBJ01", "02", "abcXYZ9")] == ["SUBJ01", "02", "abcXYZ9"]


def test_hostile_labels_become_alphanumeric_and_distinct() -> None:
    hostile = ["sub.01", "a/b", "Zoë_2", "Ελένη", "..", "", "x\ty", "SUBJ_01", "SUBJ-01", "SUBJ01"]
    m = N.LabelMap(hostile)
    out = [m[x] for x in hostile]
    assert all(N.is_label(o) for o in out), out
    assert len(set(out)) == len(hostile), out  # collision-free
    assert m["sub.01"] == "sub01" and m["a/b"] == "ab" and m["x\ty"] == "xy"
    assert m["Zoë_2"] == "Zoe2"  # NFKD keeps the base letter
    # the already-valid label wins its name; the sanitised twins get the label's hash
    assert m["SUBJ01"] == "SUBJ01"
    assert m["SUBJ_01"] == "SUBJ01" + N.label_hash("SUBJ_01")
    assert m["SUBJ-01"] == "SUBJ01" + N.label_hash("SUBJ-01")
    # nothing left after step 1: the hash alone
    assert m[""] == N.label_hash("") and m[".."] == N.label_hash("..")
    assert m["Ελένη"] == N.label_hash("Ελένη")
    for label, name in m.items():
        assert m.original(name) == label


def test_label_rule_is_deterministic_whatever_the_order() -> None:
    labels = ["SUBJ_01", "SUBJ-01", "SUBJ01", "s.2", "s/2"]
    first = dict(N.LabelMap(labels).items())
    assert dict(N.LabelMap(list(reversed(labels))).items()) == first


def test_session_rule() -> None:
    assert N.session_label("SUBJ01", "SUBJ01_MR1") == "MR1"
    assert N.session_label("SUBJ01", "SUBJ01") == "SUBJ01"
    assert N.session_label("SUBJ01", "baseline") == "baseline"
    assert not N.sessions_shown({"a": 1, "b": 1})
    assert N.sessions_shown({"a": 1, "b": 2})


def test_runs_in_scan_order_only_for_repeated_kinds() -> None:
    t1, bold = ("anat", "T1w", ()), ("func", "bold", (("task", "rest"),))
    assert N.number_runs([t1, bold, t1, t1]) == [1, None, 2, 3]


def test_file_stem_puts_entities_in_bids_order() -> None:
    ents = {
        "run": "2",
        "sub": "01",
        "acq": "hi",
        "task": "rest",
        "ses": "A",
        "dir": "AP",
        "zzz": "custom",
    }
    assert N.file_stem(ents, "bold") == "sub-01_ses-A_task-rest_acq-hi_dir-AP_run-2_zzz-custom_bold"
    assert N.parse_entities("acq-high.res_task-rest") == {"acq": "highres", "task": "rest"}
