"""run_longitudinal and the `gdlesion longitudinal` command on the designed demo cohort.

The lesion counts here are the design's true counts (no phantoms, fast); the full chain
simulate -> batch -> longitudinal is in test_longitudinal_cohort.py.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from gdlesion.cli import app
from gdlesion.cohort import clinical_tables, design_rescue_cohort
from gdlesion.longitudinal import run_longitudinal


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    visits, _ = design_rescue_cohort()
    tabs = clinical_tables(visits)
    for key, df in tabs.items():
        if key.startswith("sub-"):
            (root / "bids" / key).mkdir(parents=True)
            df.to_csv(root / "bids" / key / f"{key}_sessions.tsv", sep="\t", index=False)
    tabs["clinical"].to_csv(root / "clinical.tsv", sep="\t", index=False)
    t = tabs["truth"]
    counts = pd.DataFrame({
        "subject": "sub-" + t["subject"], "session": "ses-" + t["session"], "acq_date": t["date"],
        "lesion_count": t["lesion_count"], "total_volume_mm3": 10.0 * t["lesion_count"],
        "status": "ok", "error": "",
    })
    counts = counts.astype({"lesion_count": object, "total_volume_mm3": object})
    counts.loc[5, ["lesion_count", "total_volume_mm3", "status", "error"]] = ["", "", "failed",
                                                                              "boom"]
    counts.to_csv(root / "lesion_counts.csv", index=False)
    return root, t


def test_run_recovers_design_from_bids_sessions(cohort, tmp_path):
    root, truth = cohort
    res = run_longitudinal(root / "lesion_counts.csv", root / "bids", out_dir=tmp_path / "out")
    expected = truth.groupby("subject")["outcome"].first()
    got = res.subjects.set_index("subject")["outcome"]
    assert got.to_dict() == expected.to_dict()
    st = res.statistics
    means = st["gd_count_model"]["mean_per_scan"]
    assert means["baseline"] > 2 * means["rescue"]
    assert st["gd_count_model"]["rate_ratios"]["rescue"]["ci"][1] < 1
    assert st["gd_edss_visits"]["effect"] > 0 and st["gd_edss_within"]["effect"] > 0
    assert st["proportion_stable"]["effect"] == pytest.approx(0.7)
    failed = res.visits[res.visits["status"] == "failed"]
    assert len(failed) == 1 and failed["lesion_count"].isna().all()
    names = {p.name for p in res.files}
    assert {"visits.csv", "phase_summary.csv", "subject_summary.csv", "tracking.csv",
            "statistics.json", "cohort.png", "sub-01_timeline.png"} <= names
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())
    for test in ("gd_baseline_vs_rescue", "gd_friedman", "gd_count_model", "gd_edss_within"):
        assert {"statistic", "p", "effect", "ci", "n"} <= set(stats[test])


def test_run_is_reproducible_and_refuses_overwrite(cohort, tmp_path):
    root, _ = cohort
    a = run_longitudinal(root / "lesion_counts.csv", root / "bids", out_dir=tmp_path / "a",
                         figures=False)
    run_longitudinal(root / "lesion_counts.csv", root / "bids", out_dir=tmp_path / "b",
                     figures=False)
    for f in a.files:
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    from gdlesion.errors import OutputError

    with pytest.raises(OutputError, match="not empty"):
        run_longitudinal(root / "lesion_counts.csv", root / "bids", out_dir=tmp_path / "a")


def test_cli_date_join_and_summary(cohort, tmp_path):
    root, truth = cohort
    result = CliRunner().invoke(app, [
        "longitudinal", str(root / "lesion_counts.csv"), str(root / "clinical.tsv"),
        "--out", str(tmp_path / "o"), "--max-days", "10", "--no-figures",
    ])
    assert result.exit_code == 0, result.output
    assert "0 joined by session, 100 by date" in result.output
    assert "7 stable, 3 worsening" in result.output
    visits = pd.read_csv(tmp_path / "o" / "visits.csv", dtype={"subject": str, "session": str})
    assert (visits["match"] == "date").all() and visits["days_apart"].abs().max() <= 7
    subjects = pd.read_csv(tmp_path / "o" / "subject_summary.csv", dtype={"subject": str})
    assert subjects["reason"].str.len().min() > 10


def test_cli_bad_clinical_table_is_one_red_line(tmp_path, cohort):
    root, _ = cohort
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,date,edss\n01,2021-01-04,2\n01,04/02/2021,2\n")
    result = CliRunner().invoke(app, ["longitudinal", str(root / "lesion_counts.csv"), str(bad),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "bad.csv: line 3, column 'date': cannot parse date '04/02/2021'" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["longitudinal", str(root / "lesion_counts.csv"), str(bad),
                                      "--out", str(tmp_path / "o2"), "--column", "edss"])
    assert result.exit_code == 1 and "expected CANONICAL=NAME" in result.output
