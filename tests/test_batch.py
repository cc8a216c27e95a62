"""Batch runner: outputs, failures in the middle, resume, force, lock, CSV injection, executors.

These tests substitute ``batch_helpers.fake_study`` for the detection pipeline so
that they exercise the batch machinery in a few seconds; the end-to-end tests
with the real pipeline are in ``test_batch_e2e.py``.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from batch_helpers import fake_study, write_bids, write_pair
from gdlesion.batch import _lock, rebuild_tables, run_batch
from gdlesion.errors import BatchError


@pytest.fixture
def study(tmp_path):
    """Five sessions; sub-02/ses-01 has a corrupted post scan, sub-02/ses-02 no post scan."""
    root = write_bids(tmp_path / "bids", {"01": {"01": 1, "02": 2}, "02": {"01": 1, "02": 1},
                                          "03": {"01": 3}})
    anat = root / "sub-02" / "ses-01" / "anat"
    good = (anat / "sub-02_ses-01_ce-gadolinium_T1w.nii.gz").read_bytes()
    (anat / "sub-02_ses-01_ce-gadolinium_T1w.nii.gz").write_bytes(good[: len(good) // 2])
    (root / "sub-02" / "ses-02" / "anat" / "sub-02_ses-02_ce-gadolinium_T1w.nii.gz").unlink()
    (root / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-01\t2020-01-01\nses-02\t2020-04-01\n")
    return root


def _run(inp, out, **kw):
    kw.setdefault("workers", 1)
    return run_batch(inp, out, study_fn=fake_study, **kw)


def _read(path):
    return path.read_bytes()


def test_batch_outputs_and_failures_in_the_middle(study, tmp_path):
    events = []
    result = _run(study, tmp_path / "out", progress=events.append)
    assert (result.n_ok, result.n_failed, result.ran, result.reused) == (3, 2, 4, 0)
    assert [e.done for e in events] == [1, 2, 3, 4, 5] and events[-1].failed == 2
    counts = pd.read_csv(result.counts_path, dtype={"session": str}, keep_default_na=False)
    assert list(counts["subject"]) == ["sub-01", "sub-01", "sub-02", "sub-02", "sub-03"]
    by = counts.set_index(["subject", "session"])
    assert by.loc[("sub-01", "ses-02"), "lesion_count"] == "2"
    assert by.loc[("sub-03", "ses-01"), "lesion_count"] == "3"
    assert by.loc[("sub-01", "ses-02"), "acq_date"] == "2020-04-01"
    bad = by.loc[("sub-02", "ses-01")]
    assert bad["status"] == "failed" and bad["lesion_count"] == ""
    assert "post-contrast scan" in bad["error"] and "sub-02_ses-01_ce-gadolinium" in bad["error"]
    missing = by.loc[("sub-02", "ses-02")]
    assert missing["status"] == "failed" and "has no post scan" in missing["error"]
    lesions = pd.read_csv(result.lesions_path)
    assert len(lesions) == 1 + 2 + 3
    assert list(lesions.columns[:4]) == ["subject", "session", "acq_date", "label"]
    anat = tmp_path / "out" / "sub-01" / "ses-02" / "anat"
    stem = "sub-01_ses-02_space-individual"
    for name in ("_label-lesion_desc-enhancing_mask.nii.gz", "_desc-lesion_dseg.nii.gz",
                 "_desc-lesion_dseg.tsv", "_desc-registered_T1w.nii.gz",
                 "_label-lesion_desc-enhancing_mask.json"):
        assert (anat / (stem + name)).is_file(), name
    sidecar = json.loads((anat / f"{stem}_label-lesion_desc-enhancing_mask.json").read_text())
    assert sidecar["LesionCount"] == 2 and "RegistrationQC" in sidecar
    assert sidecar["Parameters"] == {}
    dseg = pd.read_csv(anat / f"{stem}_desc-lesion_dseg.tsv", sep="\t")
    assert list(dseg["name"]) == ["lesion-001", "lesion-002"]
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "gdlesion"
    assert not (tmp_path / "out" / ".gdlesion" / "tmp").exists() or not any(
        (tmp_path / "out" / ".gdlesion" / "tmp").iterdir())


def test_rerun_reuses_complete_sessions_and_retries_failed(study, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = _run(study, out)
    counts, lesions = _read(first.counts_path), _read(first.lesions_path)
    again = _run(study, out)
    assert (again.ran, again.reused) == (1, 3)  # the failed sessions are retried
    assert _read(again.counts_path) == counts and _read(again.lesions_path) == lesions
    # fix the missing post scan: the rerun now succeeds for it
    anat = study / "sub-02" / "ses-02" / "anat"
    write_pair(anat, "sub-02_ses-02_T1w.nii.gz", "sub-02_ses-02_ce-gadolinium_T1w.nii.gz",
               n_blobs=2, seed=77)
    fixed = _run(study, out)
    assert fixed.n_ok == 4 and fixed.n_failed == 1
    # a modified output file invalidates its session only
    mask = out / "sub-03" / "ses-01" / "anat" / (
        "sub-03_ses-01_space-individual_label-lesion_desc-enhancing_mask.nii.gz")
    mask.write_bytes(b"garbage")
    redo = _run(study, out)
    assert redo.ran == 2 and mask.read_bytes() != b"garbage"  # sub-03 + the corrupt one
    assert _run(study, out, force=True).ran == 5
    # other parameters -> every session is redone and the parameters are recorded
    changed = _run(study, out, params={"threshold": 50})
    assert changed.ran == 5
    sidecar = next(out.glob("sub-01/ses-01/anat/*_mask.json"))
    assert json.loads(sidecar.read_text())["Parameters"] == {"threshold": 50}
    assert _run(study, out, params={"threshold": 50}).ran == 1  # only the failed one
    # another gdlesion version -> every session is redone too
    import gdlesion

    monkeypatch.setattr(gdlesion, "__version__", "999.0")
    assert _run(study, out, params={"threshold": 50}).ran == 5


def test_process_pool_matches_serial(study, tmp_path):
    serial = _run(study, tmp_path / "serial")
    pooled = _run(study, tmp_path / "pool", workers=2, executor="processes")
    assert pooled.ran == 4 and pooled.n_failed == 2
    assert _read(serial.counts_path) == _read(pooled.counts_path)
    assert _read(serial.lesions_path) == _read(pooled.lesions_path)


def test_unexpected_exception_is_recorded_and_batch_goes_on(tmp_path):
    root = write_bids(tmp_path / "bids", {"01": {"01": 1}, "02": {"01": 1}})
    result = _run(root, tmp_path / "out", params={"fail_on": "sub-01"})
    rec = {r["key"]: r for r in result.records}
    assert rec["sub-01_ses-01"]["status"] == "failed"
    assert rec["sub-01_ses-01"]["error"].endswith("no brain found")
    assert rec["sub-02_ses-01"]["status"] == "ok"
    result = _run(root, tmp_path / "out2", params={"delay_s": "not a number"})
    assert result.n_failed == 2
    assert "internal error ValueError" in result.records[0]["error"]


def test_tsv_format(study, tmp_path):
    result = _run(study, tmp_path / "out", fmt="tsv")
    assert result.counts_path.name == "lesion_counts.tsv"
    table = pd.read_csv(result.counts_path, sep="\t", keep_default_na=False)
    assert (table.loc[table["status"] == "failed", "lesion_count"] == "n/a").all()


def test_csv_injection_escaped(tmp_path):
    for i in range(4):
        write_pair(tmp_path / "d", f"pre{i}.nii.gz", f"post{i}.nii.gz", n_blobs=1, seed=i)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "subject,session,pre,post\n"
        '"=HYPERLINK(""http://evil"")",a1,d/pre0.nii.gz,d/post0.nii.gz\n'
        "+cmd,b2,d/pre1.nii.gz,d/post1.nii.gz\n"
        "-2+3,c3,d/pre2.nii.gz,d/post2.nii.gz\n"
        "@SUM(A1),d4,d/pre3.nii.gz,d/missing.nii.gz\n"
    )
    result = _run(manifest, tmp_path / "out")
    with open(result.counts_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["subject"] for r in rows) == sorted(
        ["'+cmd", "'-2+3", "'=HYPERLINK(\"http://evil\")", "'@SUM(A1)"])
    assert all(not r["subject"].startswith(("=", "+", "-", "@")) for r in rows)
    # numbers are not text: negative metric values stay numbers
    assert all(r["reg_metric_final"] in ("-0.5000", "") for r in rows)
    with open(result.lesions_path, newline="") as fh:
        assert all(r["subject"].startswith("'") for r in csv.DictReader(fh))


def test_lock_refuses_second_batch(study, tmp_path):
    out = tmp_path / "out"
    with _lock(out), pytest.raises(BatchError, match="another gdlesion batch is running"):
        _run(study, out)
    assert _run(study, out).n_ok == 3  # released afterwards


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_inside_input_refused(study, where):
    out = study if where == "same" else study / "results"
    with pytest.raises(BatchError, match="is the input|inside the input"):
        _run(study, out)
    assert not (study / "lesion_counts.csv").exists()


def test_output_in_derivatives_allowed_and_foreign_output_refused(study, tmp_path):
    assert _run(study, study / "derivatives" / "gdlesion").n_ok == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("x")
    with pytest.raises(BatchError, match="not empty and holds no gdlesion batch"):
        _run(study, foreign)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"fmt": "xls"}, "format 'xls'"), ({"executor": "mpi"}, "executor 'mpi'"),
     ({"workers": 0}, "workers 0")],
)
def test_bad_options(study, tmp_path, kw, match):
    with pytest.raises(BatchError, match=match):
        _run(study, tmp_path / "out", **kw)


def test_rebuild_tables_is_deterministic(study, tmp_path):
    result = _run(study, tmp_path / "out")
    before = _read(result.counts_path)
    counts, _ = rebuild_tables(tmp_path / "out")
    assert _read(counts) == before
