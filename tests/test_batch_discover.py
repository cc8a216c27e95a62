"""Session discovery: BIDS with/without sessions, plain tree, manifest, filters, ambiguity."""

from __future__ import annotations

import pytest

from batch_helpers import write_bids, write_pair
from gdlesion.discover import Session, bids_label, discover_sessions
from gdlesion.errors import BatchError


def _by_key(sessions):
    return {s.key: s for s in sessions}


def test_bids_with_sessions_and_dates(tmp_path):
    root = write_bids(tmp_path / "bids", {"01": {"01": 1, "02": 2}, "02": {"01": 0}})
    (root / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-01\t2020-03-01T10:00:00\nses-02\t2020-06-15\n"
    )
    # scans.tsv wins over sessions.tsv for the post scan
    (root / "sub-02" / "ses-01" / "sub-02_ses-01_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-02_ses-01_ce-gadolinium_T1w.nii.gz\t2021-01-02T08:00:00\n"
    )
    (root / "derivatives" / "truth" / "sub-09" / "anat").mkdir(parents=True)
    sessions = discover_sessions(root)
    assert [s.key for s in sessions] == ["sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01"]
    s = _by_key(sessions)
    assert s["sub-01_ses-01"].acq_date == "2020-03-01"
    assert s["sub-01_ses-02"].acq_date == "2020-06-15"
    assert s["sub-02_ses-01"].acq_date == "2021-01-02"
    first = s["sub-01_ses-01"]
    assert first.subject == "sub-01" and first.session == "ses-01" and not first.error
    assert first.pre.name == "sub-01_ses-01_T1w.nii.gz"
    assert first.post.name == "sub-01_ses-01_ce-gadolinium_T1w.nii.gz"
    assert str(first.relative_dir) == "sub-01/ses-01/anat"


def test_bids_without_sessions(tmp_path):
    root = write_bids(tmp_path / "bids", {"a1": {"x": 1}, "b2": {"x": 2}}, sessions=False)
    sessions = discover_sessions(root)
    assert [s.key for s in sessions] == ["sub-a1", "sub-b2"]
    assert sessions[0].session == "" and str(sessions[0].relative_dir) == "sub-a1/anat"


@pytest.mark.parametrize("labels", [["01"], ["sub-01"]])
def test_bids_label_filters_accept_prefix_or_not(tmp_path, labels):
    root = write_bids(tmp_path / "bids", {"01": {"01": 1, "02": 1}, "02": {"01": 1}})
    keys = [s.key for s in discover_sessions(root, participant_labels=labels)]
    assert keys == ["sub-01_ses-01", "sub-01_ses-02"]
    keys = [s.key for s in discover_sessions(root, session_labels=["ses-02", "nope"])]
    assert keys == ["sub-01_ses-02"]
    with pytest.raises(BatchError, match="no bids session found"):
        discover_sessions(root, participant_labels=["99"])


def test_bids_ambiguity_and_missing_post_reported_per_session(tmp_path):
    root = write_bids(tmp_path / "bids", {"01": {"01": 1, "02": 1, "03": 1}, "02": {"01": 1}})
    anat = root / "sub-01" / "ses-02" / "anat"
    write_pair(anat, "sub-01_ses-02_run-2_T1w.nii.gz", "sub-01_ses-02_ce-Gd_T1w.nii.gz",
               n_blobs=1, seed=9)
    (root / "sub-01" / "ses-03" / "anat" / "sub-01_ses-03_ce-gadolinium_T1w.nii.gz").unlink()
    empty = root / "sub-02" / "ses-02" / "anat"
    empty.mkdir(parents=True)
    s = _by_key(discover_sessions(root))
    assert not s["sub-01_ses-01"].error
    assert "2 candidate post scans" in s["sub-01_ses-02"].error
    assert "ce-Gd" in s["sub-01_ses-02"].error and s["sub-01_ses-02"].post is None
    assert "has no post scan" in s["sub-01_ses-03"].error
    assert s["sub-01_ses-03"].status_if_error == "failed"
    assert s["sub-02_ses-02"].status_if_error == "skipped"


def test_plain_tree_with_and_without_session_level(tmp_path):
    root = tmp_path / "plain"
    write_pair(root / "patient01" / "visit1", "t1_pre.nii.gz", "t1_post.nii.gz",
               n_blobs=1, seed=1, flair_name="FLAIR.nii.gz")
    write_pair(root / "patient01" / "visit2", "T1.nii.gz", "T1POST.nii.gz", n_blobs=1, seed=2)
    write_pair(root / "patient02", "a_pre.nii", "a_post.nii", n_blobs=1, seed=3)
    write_pair(root / "patient03" / "v1", "scanA.nii.gz", "scanB.nii.gz", n_blobs=1, seed=4)
    s = _by_key(discover_sessions(root))
    assert set(s) == {"sub-patient01_ses-visit1", "sub-patient01_ses-visit2", "sub-patient02",
                      "sub-patient03_ses-v1"}
    v1 = s["sub-patient01_ses-visit1"]
    assert (v1.pre.name, v1.post.name, v1.flair.name) == ("t1_pre.nii.gz", "t1_post.nii.gz",
                                                          "FLAIR.nii.gz")
    assert s["sub-patient01_ses-visit2"].post.name == "T1POST.nii.gz"
    assert s["sub-patient02"].session == ""
    assert "no pre" in s["sub-patient03_ses-v1"].error
    # configurable patterns
    custom = _by_key(discover_sessions(root / "patient03", layout="plain",
                                       pre_patterns=("scana*",), post_patterns=("scanb*",)))
    assert list(custom) == ["sub-v1"] and not custom["sub-v1"].error
    custom = _by_key(discover_sessions(root, pre_patterns=("*scana*",), post_patterns=("*scanb*",),
                                       participant_labels=["patient03"]))
    assert custom["sub-patient03_ses-v1"].pre.name == "scanA.nii.gz"


def test_manifest(tmp_path):
    write_pair(tmp_path / "d", "p1.nii.gz", "q1.nii.gz", n_blobs=1, seed=1)
    write_pair(tmp_path / "d", "p2.nii.gz", "q2.nii.gz", n_blobs=1, seed=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "subject,session,pre,post,date\n"
        "P1,baseline,d/p1.nii.gz,d/q1.nii.gz,2020-01-05\n"
        "=cmd|x,m3,d/p2.nii.gz,d/q2.nii.gz,\n"
        "P3,baseline,d/p1.nii.gz,d/missing.nii.gz,2020-02-01\n"
        "P4,baseline,d/p1.nii.gz,d/q1.nii.gz,not-a-date\n"
    )
    s = _by_key(discover_sessions(manifest))
    p1 = s["sub-P1_ses-baseline"]
    assert p1.acq_date == "2020-01-05" and p1.pre == tmp_path / "d" / "p1.nii.gz"
    assert s["sub-cmdx_ses-m3"].subject == "=cmd|x"
    assert "post scan" in s["sub-P3_ses-baseline"].error
    assert "missing.nii.gz not found" in s["sub-P3_ses-baseline"].error
    assert "not a date" in s["sub-P4_ses-baseline"].error


@pytest.mark.parametrize(
    ("text", "match"),
    [("subject,pre,post\nA,a,b\n", "missing column.*session"), ("", "unreadable")],
)
def test_manifest_errors(tmp_path, text, match):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(BatchError, match=match):
        discover_sessions(manifest)


def test_layout_errors(tmp_path):
    with pytest.raises(BatchError, match="not found"):
        discover_sessions(tmp_path / "nothing")
    with pytest.raises(BatchError, match="layout 'xml'"):
        discover_sessions(tmp_path, layout="xml")
    with pytest.raises(BatchError, match="no plain session found"):
        discover_sessions(tmp_path)


def test_colliding_output_names_refused(tmp_path):
    write_pair(tmp_path / "p" / "a-1", "pre.nii.gz", "post.nii.gz", n_blobs=1, seed=1)
    write_pair(tmp_path / "p" / "a_1", "pre.nii.gz", "post.nii.gz", n_blobs=1, seed=2)
    with pytest.raises(BatchError, match="both map to output name sub-a1"):
        discover_sessions(tmp_path / "p")


def test_bids_label():
    assert bids_label("sub-01", "sub") == "01"
    assert bids_label("patient_07", "sub") == "patient07"
    with pytest.raises(BatchError, match="no letters or digits"):
        bids_label("==", "sub")
    assert Session("=x", "").key == "sub-x"
