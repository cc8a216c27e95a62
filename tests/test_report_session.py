"""Session QC page: every lesion, every rejected candidate, the registration check, rebuild."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from typer.testing import CliRunner

from gdlesion.cli import app
from gdlesion.pipeline import write_study_outputs
from gdlesion.report import MAX_REJECTED_IMAGES, load_inspect_view, rebuild_reports
from report_helpers import (
    NASTY_POST,
    assert_self_contained,
    image_sources,
    lesion_ids,
    simulated_result,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    """An inspect --out folder with its report, from a simulated study."""
    root = tmp_path_factory.mktemp("inspect")
    result, pre, post = simulated_result(root / "raw")
    out = write_study_outputs(result, root / "out", inputs=(pre, post))
    return result, out, post


def test_page_shows_every_lesion_and_rejected_candidate(inspected):
    result, out, _ = inspected
    html = (out / "report.html").read_text(encoding="utf-8")
    assert result.lesion_count >= 1 and len(result.rejected) >= 1
    assert lesion_ids(html, "lesion") == sorted(result.lesions["lesion_id"].tolist())
    assert lesion_ids(html, "rejected") == sorted(result.rejected["lesion_id"].tolist())
    # each lesion block holds its zoomed image and its measures
    for lid, vol in zip(result.lesions["lesion_id"], result.lesions["volume_mm3"], strict=True):
        block = html.split(f'id="lesion-{lid}"')[1].split('<div class="lesion"')[0]
        assert image_sources(block) and f"{vol:.4g}" in block
    drawn = min(len(result.rejected), MAX_REJECTED_IMAGES)
    rejected_part = html.split('id="rejected"')[1].split('id="about"')[0]
    assert len(image_sources(rejected_part)) == drawn
    for reason in set(result.rejected["reason"]):
        assert f"rejected: {reason}" in rejected_part
    assert f'<b id="lesion-count">{result.lesion_count}</b>' in html


def test_page_has_registration_check_and_qc_numbers(inspected):
    result, out, _ = inspected
    html = (out / "report.html").read_text(encoding="utf-8")
    reg = html.split('id="registration"')[1].split('id="enhancement"')[0]
    flicker = reg.split('<div class="flicker">')[1].split("</div>")[0]
    assert len(image_sources(flicker)) == 2 and 'class="top"' in flicker
    assert "Edges of the registered pre scan" in reg
    qc = result.registration.qc_dict()
    for key in ("similarity_after", "metric_final", "overlap_fraction"):
        assert f"<th>{key}</th><td>{qc[key]:.4g}</td>" in reg
    assert "brain mask outline" in html.lower() and "Enhancement z-map" in html
    for key in ("high_threshold", "numpy", "registration"):  # parameters, versions, timings
        assert f"<th>{key}</th>" in html


def test_page_lists_the_flair_registration_when_there_is_one(inspected, tmp_path):
    result, out, post = inspected
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "FLAIR similarity_after" not in html  # no FLAIR given
    qc = dict(result.registration.qc_dict(), similarity_after=0.4321)
    with_flair = dataclasses.replace(result, flair_registration=qc)
    out2 = write_study_outputs(with_flair, tmp_path / "out", inputs=(post,))
    reg = (out2 / "report.html").read_text(encoding="utf-8").split('id="registration"')[1]
    assert "<th>FLAIR similarity_after</th><td>0.4321</td>" in reg
    assert "FLAIR matrix_ras" not in reg


def test_page_is_self_contained_small_and_escaped(inspected):
    _, out, _ = inspected
    html = (out / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    assert (out / "report.html").stat().st_size < 2_000_000
    assert "<script>&" not in html and "&lt;script&gt;&amp;post.nii.gz" in html
    assert "gdlesion" in html and "descrip" not in html


def test_report_command_rebuilds_inspect_page(inspected, tmp_path):
    result, out, post = inspected
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    res = runner.invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    html = (copy / "report.html").read_text(encoding="utf-8")
    assert lesion_ids(html, "lesion") == sorted(result.lesions["lesion_id"].tolist())
    assert lesion_ids(html, "rejected") == sorted(result.rejected["lesion_id"].tolist())
    view = load_inspect_view(copy)
    assert view.post.name == NASTY_POST and view.brain_mask.sum() == result.brain_mask.sum()


def test_rebuild_without_recorded_post_needs_post_option(inspected, tmp_path):
    _, out, post = inspected
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report_sources.json").unlink()
    res = runner.invoke(app, ["report", str(copy)])
    assert res.exit_code == 1 and "pass it with --post" in res.output
    res = runner.invoke(app, ["report", str(copy), "--post", str(post)])
    assert res.exit_code == 0, res.output
    assert json.loads((copy / "summary.json").read_text())["lesion_count"] >= 1


def test_report_command_rejects_other_folders(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "neither an inspect output" in res.output
    with pytest.raises(Exception, match="neither an inspect output"):
        rebuild_reports(tmp_path)


def test_no_report_option_skips_page(inspected, tmp_path):
    result, _, _ = inspected
    out = write_study_outputs(result, tmp_path / "out", report=False)
    assert (out / "summary.json").is_file() and not (out / "report.html").exists()


def test_enhancement_colours_are_matplotlibs_rdbu_r():
    # the report's colour map is built without importing matplotlib; it must stay the same
    import numpy as np
    from matplotlib import colormaps

    from gdlesion.report_figures import enhancement_rgb

    rng = np.random.default_rng(0)
    z = np.concatenate([
        rng.normal(0.0, 6.0, 100_000), [-8.0, 8.0, 0.0, -1e9, 1e9, 7.9999, -7.9999, np.nan],
        np.linspace(-8.0, 8.0, 4097),
    ])
    for values in (z, z.astype(np.float32)):
        rgba = colormaps["RdBu_r"](np.clip((values + 8.0) / 16.0, 0.0, 1.0))
        expected = np.round(rgba[..., :3] * 255).astype(np.uint8)
        got = enhancement_rgb(values)
        assert got.dtype == np.uint8 and got.shape == values.shape + (3,)
        assert np.array_equal(got, expected)
    assert np.array_equal(enhancement_rgb(np.array([[-1e3, 1e3]]), vmax=4.0),
                          enhancement_rgb(np.array([[-4.0, 4.0]]), vmax=4.0))


def test_mean_index_equals_the_mean_of_nonzero():
    import numpy as np

    from gdlesion.report import _mean_index

    rng = np.random.default_rng(3)
    for shape in ((40, 50, 30), (7, 1, 9), (3, 4, 5)):
        mask = rng.random(shape) < rng.uniform(0.05, 0.9)
        mask.flat[0] = True
        for view in (mask, mask[::-1, :, ::-1].transpose(2, 0, 1)):
            expected = np.array(np.nonzero(view)).mean(axis=1)
            assert np.array_equal(_mean_index(view), expected)
