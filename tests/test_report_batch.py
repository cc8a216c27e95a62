"""Batch QC page: every session linked, flags, counts over time, rebuild, --no-report."""

from __future__ import annotations

import re
import shutil

import pytest
from typer.testing import CliRunner

from batch_helpers import fake_study, write_bids
from gdlesion.batch import run_batch
from gdlesion.cli import app
from gdlesion.report_batch import (
    JUMP_MIN,
    MAX_SIMILARITY_DROP,
    MIN_SIMILARITY_AFTER,
    render_batch_page,
    session_flags,
    session_page_relpath,
)
from report_helpers import assert_self_contained, image_sources

runner = CliRunner()


def _links(html: str) -> list[str]:
    return re.findall(r'<a class="session-link" href="([^"]*)"', html)


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    write_bids(root / "in", {"01": {"01": 1, "02": 2}, "02": {"01": 0, "02": 3}})
    # a session without a post scan fails and must be listed, unlinked
    bad = root / "in" / "sub-03" / "ses-01" / "anat"
    bad.mkdir(parents=True)
    shutil.copy(next((root / "in").rglob("sub-01_ses-01_T1w.nii.gz")),
                bad / "sub-03_ses-01_T1w.nii.gz")
    result = run_batch(root / "in", root / "out", study_fn=fake_study, workers=1)
    return result


def test_batch_page_links_every_session(batch_out):
    out = batch_out.output
    html = (out / "report.html").read_text(encoding="utf-8")
    ok = [r for r in batch_out.records if r["status"] == "ok"]
    assert len(ok) == 4 and batch_out.n_failed == 1
    links = _links(html)
    assert sorted(links) == sorted(session_page_relpath(r) for r in ok)
    for link in links:
        page = out / link
        assert page.is_file()
        sub = page.read_text(encoding="utf-8")
        assert_self_contained(sub)
        back = re.search(r'<a href="([^"]*)">← batch report', sub).group(1)
        assert (page.parent / back).resolve() == (out / "report.html").resolve()
    assert "sub-03" in html
    assert re.search(r'<span class="flag" title="[^"]*no post scan[^"]*">failed</span>', html)
    body = html.split('<table class="sortable" id="sessions">')[1].split("</tbody>")[0]
    assert body.count("<tr") == 1 + len(batch_out.records)


def test_batch_session_pages_show_the_planted_lesions(batch_out):
    out = batch_out.output
    for rec in batch_out.records:
        if rec["status"] != "ok":
            continue
        html = (out / session_page_relpath(rec)).read_text(encoding="utf-8")
        assert f'<b id="lesion-count">{rec["lesion_count"]}</b>' in html
        assert len(re.findall(r'<div class="lesion" id="lesion-', html)) == rec["lesion_count"]


def test_report_command_rebuilds_batch_pages(batch_out, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(batch_out.output, copy)
    for page in list(copy.rglob("*report.html")):
        page.unlink()
    res = runner.invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    html = (copy / "report.html").read_text(encoding="utf-8")
    assert len(_links(html)) == 4 and all((copy / link).is_file() for link in _links(html))


def test_batch_no_report(tmp_path):
    write_bids(tmp_path / "in", {"01": {"01": 1}})
    run_batch(tmp_path / "in", tmp_path / "out", study_fn=fake_study, workers=1, report=False)
    assert not list((tmp_path / "out").rglob("*report*"))


def _rec(subject, session, *, count=2, date="", status="ok", sim=0.95, metric=-0.5, before=0.5):
    key = f"{subject}_{session}"
    return {
        "key": key, "subject": subject, "session": session, "acq_date": date, "status": status,
        "lesion_count": count, "total_volume_mm3": 10.0 * count, "warnings": [],
        "error": "" if status == "ok" else "no post scan",
        "registration": {"similarity_after": sim, "similarity_before": before,
                         "metric_final": metric,
                         "overlap_fraction": 1.0},
        "lesions_file": f"{subject}/{session}/anat/{key}_lesions.tsv" if status == "ok" else "",
    }


def test_flags_registration_count_jump_and_failure():
    records = [
        _rec("sub-01", "ses-01", count=1, date="2020-01-01"),
        _rec("sub-01", "ses-02", count=1 + JUMP_MIN, date="2020-04-01"),  # jump
        _rec("sub-01", "ses-03", count=JUMP_MIN + 2, date="2020-07-01"),  # small change
        _rec("sub-02", "ses-01", sim=MIN_SIMILARITY_AFTER - 0.01),  # bad registration
        _rec("sub-02", "ses-02", sim=MIN_SIMILARITY_AFTER, before=0.3),  # bound passes
        _rec("sub-03", "ses-01", status="failed"),
        _rec("sub-04", "ses-01", sim=0.8, before=0.8 + MAX_SIMILARITY_DROP + 0.01),  # worse
        _rec("sub-04", "ses-02", sim=0.8, before=0.8 + MAX_SIMILARITY_DROP),  # bound passes
    ]
    flags = session_flags(records)
    assert flags == [[], ["count jump"], [], ["registration"], [], ["failed"],
                     ["registration"], []]


def test_robust_registration_outlier_needs_enough_sessions():
    sims = [0.95, 0.951, 0.949, 0.952, 0.948, 0.85]
    records = [_rec(f"sub-{n:02d}", "ses-01", sim=s) for n, s in enumerate(sims)]
    assert session_flags(records)[-1] == ["registration"]
    assert session_flags(records[-4:])[-1] == []  # 4 sessions: no robust statistics


def test_counts_plot_only_with_dates(tmp_path):
    dated = [_rec("sub-01", f"ses-0{n}", count=n, date=f"2020-0{n}-01") for n in (1, 2, 3)]
    html = render_batch_page(tmp_path, dated)
    assert len(image_sources(html)) == 1 and "No acquisition dates" not in html
    undated = [_rec("sub-01", "ses-01")]
    html = render_batch_page(tmp_path, undated)
    assert image_sources(html) == [] and "No acquisition dates" in html
    assert _links(html) == []  # no page on disk, no link


def test_batch_page_escapes_labels(tmp_path):
    html = render_batch_page(tmp_path, [_rec("sub-<img src=x>", "ses-01")])
    assert "<img src=x>" not in html and "sub-&lt;img src=x&gt;" in html


@pytest.mark.parametrize("flag", [[], ["--no-report"]])
def test_batch_cli_writes_report_unless_no_report(tmp_path, flag):
    write_bids(tmp_path / "in", {"01": {"01": 1}})
    res = runner.invoke(app, ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "-j", "1",
                              *flag])
    assert res.exit_code in (0, 3), res.output  # tiny noise scans may fail the real pipeline
    assert (tmp_path / "out" / "report.html").is_file() == (not flag)
