"""Clinical table reading, joins, phases, phase summaries and the outcome rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gdlesion.clinical import (
    has_clinical_columns,
    parse_date,
    read_clinical,
    read_counts,
    read_relapse_dates,
)
from gdlesion.errors import ClinicalDataError, InputError
from gdlesion.outcome import OutcomeRule, classify_outcomes
from gdlesion.visits import derive_phases, join_visits, phase_summary


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


COUNTS = """subject,session,acq_date,lesion_count,total_volume_mm3,status,error
sub-01,ses-01,2020-01-01,3,120.5,ok,
sub-01,ses-02,2020-02-03,0,0,ok,
sub-01,ses-03,2020-03-01,,,failed,registration failed
sub-02,ses-01,2020-01-10,2,50,ok,
sub-02,ses-02,2020-06-20,1,10,ok,
"""


# --- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2021-03-04", "2021-03-04"), ("2021-03-04T23:59:59", "2021-03-04"),
     ("2021-03-04T10:15", "2021-03-04"), ("n/a", None), ("", None)],
)
def test_parse_date_strict_accepts(text, expected):
    got = parse_date(text, where="f")
    assert (pd.isna(got) if expected is None else got == pd.Timestamp(expected))


@pytest.mark.parametrize("text", ["2021/03/04", "04-03-2021", "2021-3-4", "2021-02-30", "March 4"])
def test_parse_date_strict_rejects(text):
    with pytest.raises(ClinicalDataError, match="where: .*" + text[:4]):
        parse_date(text, where="where")


def test_read_counts_zero_is_zero_failed_is_nan(tmp_path):
    df = read_counts(write(tmp_path, "lesion_counts.csv", COUNTS))
    assert df["subject"].tolist() == ["01", "01", "01", "02", "02"]
    assert df.loc[1, "lesion_count"] == 0
    assert np.isnan(df.loc[2, "lesion_count"]) and df.loc[2, "status"] == "failed"


def test_read_counts_missing_column(tmp_path):
    path = write(tmp_path, "c.csv", "subject,session,status\n01,01,ok\n")
    with pytest.raises(InputError, match=r"c\.csv: missing column 'lesion_count'"):
        read_counts(path)


def test_read_clinical_bids_dir_and_aliases(tmp_path):
    write(tmp_path, "sub-01/sub-01_sessions.tsv",
          "session_id\tacq_time\tedss\trelapses\ttreatment\n"
          "ses-01\t2020-01-01T09:00:00\t2.5\t1\tIFNB\nses-02\t2020-02-01T09:00:00\tn/a\t0\tMX\n")
    write(tmp_path, "sub-02/sub-02_sessions.tsv",
          "session_id\tacq_time\tedss\trelapses\ttreatment\nses-01\t2020-01-10T09:00:00\t4\t0\tIFNB\n")
    df = read_clinical(tmp_path)
    assert df["subject"].tolist() == ["01", "01", "02"]
    assert df["session"].tolist() == ["01", "02", "01"]
    assert np.isnan(df.loc[1, "edss"])  # missing stays missing
    assert df.loc[0, "date"] == pd.Timestamp("2020-01-01")


def test_read_clinical_column_map(tmp_path):
    path = write(tmp_path, "c.csv", "Patient,VisitDate,Score\nP1,2020-01-01,3.5\n")
    cmap = {"subject": "Patient", "date": "VisitDate", "edss": "Score"}
    df = read_clinical(path, column_map=cmap)
    assert df.loc[0, "edss"] == 3.5 and df.loc[0, "subject"] == "P1"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("session,edss\n01,2\n", r"c\.csv: missing column 'subject'"),
        ("subject,edss\n01,2\n", r"c\.csv: missing column 'session' or 'date'"),
        ("subject,date\n01,2020-01-01\n01,2020/02/01\n",
         r"c\.csv: line 3, column 'date': cannot parse date '2020/02/01'"),
        ("subject,session\n01,a\n02,a\n01,a\n",
         r"c\.csv:4: duplicate visit \(subject '01', session 'a'\) already at c\.csv:2"),
        ("subject,date\n01,2020-01-01\n01,2020-01-01\n", r"duplicate visit .*date '2020-01-01'"),
        ("subject,session,edss\n01,a,severe\n", r"line 2, column 'edss': 'severe' is not a number"),
        ("subject,session,edss\n01,a,11\n", r"'11' is not a number in \[0, 10\]"),
        ("subject,session,relapses\n01,a,1.5\n", r"'1.5' is not a whole number"),
        ("subject,session,date\n01,,\n", r"line 2: visit has neither a session nor a date"),
    ],
)
def test_bad_clinical_tables(tmp_path, text, match):
    with pytest.raises(ClinicalDataError, match=match) as info:
        read_clinical(write(tmp_path, "c.csv", text))
    assert "\n" not in str(info.value)


def test_missing_mapped_column_and_missing_file(tmp_path):
    path = write(tmp_path, "c.csv", "subject,date\n01,2020-01-01\n")
    with pytest.raises(ClinicalDataError, match="missing column 'EDSS_x' \\(mapped to 'edss'\\)"):
        read_clinical(path, column_map={"edss": "EDSS_x"})
    with pytest.raises(ClinicalDataError, match="nope.csv: file not found"):
        read_clinical(tmp_path / "nope.csv")
    with pytest.raises(ClinicalDataError, match="unknown key 'score'"):
        read_clinical(path, column_map={"score": "x"})


# --- join -----------------------------------------------------------------------------


def test_join_by_session(tmp_path):
    counts = read_counts(write(tmp_path, "lesion_counts.csv", COUNTS))
    clin = read_clinical(write(tmp_path, "c.csv",
                               "subject,session,edss,treatment\n01,01,2,A\n01,02,2.5,A\n"
                               "01,09,3,B\n02,01,1,A\n"))
    v = join_visits(counts, clin)
    got = {(r.subject, r.session): r.match for r in v.itertuples()}
    assert got[("01", "01")] == got[("01", "02")] == got[("02", "01")] == "session"
    assert got[("01", "09")] == "clinical_only"
    assert got[("01", "03")] == got[("02", "02")] == "scan_only"
    assert len(v) == 6  # nothing dropped
    assert v.loc[(v.subject == "01") & (v.session == "02"), "lesion_count"].item() == 0


def test_join_by_date_with_tolerance(tmp_path):
    counts = read_counts(write(tmp_path, "lesion_counts.csv", COUNTS))
    clin = read_clinical(write(tmp_path, "c.csv",
                               "subject,date,edss\n01,2019-12-20,2\n01,2020-02-01,2\n"
                               "01,2020-02-04,9\n02,2020-04-01,1\n"))
    v = join_visits(counts, clin, max_days=12)
    m = v[v["match"] == "date"].set_index("session")
    # 2019-12-20 -> ses-01 (12 days, inclusive); 2020-02-04 is closer to ses-02 (02-03) than 02-01
    assert m.loc["01", "days_apart"] == -12
    assert set(m.index) == {"01", "02"} and m.loc["02", "edss"] == 9
    assert sorted(v.loc[v["match"] == "clinical_only", "visit_date"].dt.day) == [1, 1]
    assert sorted(v.loc[v["match"] == "scan_only", "session"]) == ["01", "02", "03"]
    v11 = join_visits(counts, clin, max_days=11)
    assert "01" not in set(v11.loc[(v11.subject == "01") & (v11.match == "date"), "session"])


# --- phases, summaries, outcome --------------------------------------------------------


def timeline(subject, months, treatments, edss, relapses, counts=None):
    start = pd.Timestamp("2020-01-01")
    n = len(months)
    counts = [0] * n if counts is None else counts
    dates = [start + pd.Timedelta(days=round(m * 30.4375)) for m in months]
    return pd.DataFrame({
        "subject": subject, "session": [f"{k:02d}" for k in range(1, n + 1)], "date": dates,
        "visit_date": dates, "scan_date": dates, "days_apart": 0, "match": "session",
        "status": "ok", "lesion_count": np.asarray(counts, float),
        "total_volume_mm3": 0.0, "new_lesions": np.nan, "edss": np.asarray(edss, float),
        "relapses": np.asarray(relapses, float), "treatment": treatments,
        "treatment_carried": False, "phase": "", "exposure_phase": "", "months": np.nan,
        "source": "",
    })


def analyse(*frames, rule=None):
    v = derive_phases(pd.concat(frames, ignore_index=True))
    ph = phase_summary(v)
    return v, ph, classify_outcomes(v, ph, rule=rule).set_index("subject")


TREAT = ["IFNB", "IFNB", "MX", "MX", "MX", "IFNB", "IFNB", "IFNB", "MX", "MX"]
MONTHS = [0, 1, 2, 3, 4, 5, 8, 11, 14, 17]


def test_phase_derivation_and_exposure():
    v, ph, _ = analyse(timeline("a", MONTHS, TREAT, [3] * 10, [0] * 10))
    assert v["phase"].tolist() == (["baseline"] * 2 + ["rescue"] * 3 + ["return"] * 3
                                   + ["retreatment"] * 2)
    assert v["exposure_phase"].tolist()[:4] == ["baseline", "baseline", "baseline", "rescue"]
    assert ph["phase"].tolist() == ["baseline", "rescue", "return", "retreatment"]
    assert ph["months"].tolist() == pytest.approx([2, 3, 9, 3], abs=0.05)


def test_treatment_carried_forward_and_repeated_phases():
    t = ["A", "", "B", "A", "B", "A"]
    v, _, _ = analyse(timeline("a", range(6), t, [1] * 6, [0] * 6))
    assert v["phase"].tolist() == ["baseline", "baseline", "rescue", "return", "retreatment",
                                   "return_2"]
    assert v["treatment_carried"].tolist() == [False, True, False, False, False, False]


def test_phase_summary_numbers():
    counts = [4, 6, 5, 1, 0, 0, 1, 0, 2, 0]
    rel = [3, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    edss = [3, 3.5, np.nan, 4, 4, 3.5, 3.5, 3.5, 4, 4]
    _, ph, _ = analyse(timeline("a", MONTHS, TREAT, edss, rel, counts))
    base = ph.set_index("phase").loc["baseline"]
    # exposure: visits 1..3 (first visit + the two intervals ending at month 1 and 2)
    assert base["n_scans"] == 3 and base["total_gd"] == 15 and base["mean_gd_per_scan"] == 5
    assert base["relapses"] == 2  # first visit's relapses excluded
    assert base["annualised_relapse_rate"] == pytest.approx(2 / (2 / 12), rel=0.01)
    assert (base["edss_start"], base["edss_end"], base["edss_change"]) == (3, 3.5, 0.5)
    rescue = ph.set_index("phase").loc["rescue"]
    assert rescue["edss_start"] == 4  # first non-missing EDSS of the phase


def test_outcome_stable_and_worsening():
    stable = timeline("s", MONTHS[:8], TREAT[:8], [3] * 8, [0, 1, 1, 0, 0, 0, 0, 0])
    worse = timeline("w", MONTHS, TREAT, [3, 3, 3, 3, 3, 3, 4, 4, 4.5, 4.5],
                     [0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    _, _, out = analyse(stable, worse)
    assert out.loc["s", "outcome"] == "stable"
    assert "no confirmed EDSS worsening" in out.loc["s", "reason"]
    assert out.loc["w", "outcome"] == "worsening"
    assert out.loc["w", "edss_worsening_date"] == "2020-09-01"
    assert "confirmed EDSS worsening 3 -> 4" in out.loc["w", "reason"]


def test_outcome_relapse_rate_criterion_and_switch():
    rel = [0, 1, 0, 0, 0, 0, 1, 1, 0]  # baseline 1/2 months = 6/y; return 2/6... 2 in 9 months
    t = TREAT[:8] + ["IFNB"]
    m = MONTHS[:8] + [14]
    more = timeline("r", m, t, [3] * 9, [0, 0, 0, 0, 0, 0, 2, 2, 2], [0] * 9)
    _, _, out = analyse(more, timeline("q", m, t, [3] * 9, rel))
    assert out.loc["r", "outcome"] == "worsening" and "relapse rate" in out.loc["r", "reason"]
    assert out.loc["q", "outcome"] == "stable"
    _, _, out2 = analyse(more, rule=OutcomeRule(use_relapse_rate=False))
    assert out2.loc["r", "outcome"] == "stable"


@pytest.mark.parametrize(
    ("edss", "expected", "fragment"),
    [
        ([6] * 5 + [6, 6.5, 6.5], "worsening", "6 -> 6.5"),  # +0.5 suffices from 5.5
        ([5] * 5 + [5, 5.5, 5.5], "stable", "reference 5"),  # +0.5 is not enough below 5.5
        ([3] * 5 + [3, 3, 4], "stable", "unconfirmed"),  # last visit: nothing to confirm
        ([3] * 5 + [3, 4, 3.5], "stable", "no confirmed"),  # not sustained
        ([3] * 5 + [np.nan, 4, 4], "stable", "reference 4"),  # missing EDSS: next one is ref
    ],
)
def test_outcome_edss_edge_cases(edss, expected, fragment):
    _, _, out = analyse(timeline("e", MONTHS[:8], TREAT[:8], edss, [0] * 8),
                        rule=OutcomeRule(use_relapse_rate=False))
    assert out.loc["e", "outcome"] == expected
    assert fragment in out.loc["e", "reason"]


def test_outcome_undetermined_cases():
    single = timeline("one", [0], ["IFNB"], [3], [0])
    no_return = timeline("nr", MONTHS[:5], TREAT[:5], [3] * 5, [0] * 5)
    no_data = timeline("nd", MONTHS[:8], TREAT[:8], [np.nan] * 8, [np.nan] * 8)
    _, _, out = analyse(single, no_return, no_data)
    assert out.loc["one", "outcome"] == "undetermined"
    assert out.loc["nr", "reason"] == "no return phase (phases: baseline, rescue)"
    assert out.loc["nd", "outcome"] == "undetermined"


def test_relapse_dates_table(tmp_path):
    df = read_relapse_dates(write(tmp_path, "r.csv", "subject,date\nsub-01,2020-03-02\n"))
    assert df.loc[0, "subject"] == "01"
    with pytest.raises(ClinicalDataError, match=r"r2.csv: line 2, column 'date': missing relapse"):
        read_relapse_dates(write(tmp_path, "r2.csv", "subject,date\n01,\n"))


def test_has_clinical_columns(tmp_path):
    write(tmp_path / "a", "sub-01/sub-01_sessions.tsv", "session_id\tacq_time\nses-01\t2020\n")
    assert not has_clinical_columns(tmp_path / "a")
    write(tmp_path / "b", "sub-01/sub-01_sessions.tsv", "session_id\tacq_time\tEDSS\nses-01\t\t2\n")
    assert has_clinical_columns(tmp_path / "b")
    assert has_clinical_columns(write(tmp_path, "c.csv", "subject,date,treatment\n"))
    assert not has_clinical_columns(tmp_path / "missing.csv")
