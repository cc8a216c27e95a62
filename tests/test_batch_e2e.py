"""End to end: ``gdlesion batch`` with the real pipeline on a simulated BIDS dataset."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from gdlesion.cli import EXIT_ERROR, EXIT_SESSIONS_FAILED, app

simulate = pytest.importorskip("gdlesion.simulate")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "bids"
    simulate.write_bids_dataset(root, n_subjects=1, n_sessions=2, seed=3, n_lesions=3,
                                voxel_size=1.5, zero_background=True, with_flair=False)
    # sub-02 (copied scans): ses-01 has a truncated post scan, ses-02 no post scan at all
    for ses in ("01", "02"):
        src, dst = root / "sub-01" / f"ses-{ses}" / "anat", root / "sub-02" / f"ses-{ses}" / "anat"
        dst.mkdir(parents=True)
        pre = (src / f"sub-01_ses-{ses}_T1w.nii.gz").read_bytes()
        (dst / f"sub-02_ses-{ses}_T1w.nii.gz").write_bytes(pre)
    post = (root / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_ce-gadolinium_T1w.nii.gz")
    (root / "sub-02" / "ses-01" / "anat" / "sub-02_ses-01_ce-gadolinium_T1w.nii.gz").write_bytes(
        post.read_bytes()[:2000])
    return root


@pytest.mark.slow
def test_cli_batch_on_simulated_bids(dataset, tmp_path):
    out = tmp_path / "results"
    runner = CliRunner()
    # no --pipeline: "auto" picks the preset per session and records the one it used
    res = runner.invoke(app, ["batch", str(dataset), str(out), "--workers", "1"])
    assert res.exit_code == EXIT_SESSIONS_FAILED, res.output
    assert "2 ok, 2 failed" in res.stdout
    counts = pd.read_csv(out / "lesion_counts.csv", keep_default_na=False)
    assert list(counts["status"]) == ["ok", "ok", "failed", "failed"]
    sessions = pd.read_csv(dataset / "sub-01" / "sub-01_sessions.tsv", sep="\t")
    assert list(counts["acq_date"][:2]) == [t[:10] for t in sessions["acq_time"]]
    assert "truncated or corrupt" in counts["error"][2] or "not a readable" in counts["error"][2]
    assert "has no post scan" in counts["error"][3]
    ok = counts[counts["status"] == "ok"]
    assert (ok["lesion_count"].astype(int) >= 1).all()
    assert (ok["reg_similarity_after"].astype(float) > 0.5).all()
    lesions = pd.read_csv(out / "lesions.csv")
    assert len(lesions) == ok["lesion_count"].astype(int).sum()
    sidecar = json.loads(next(out.glob("sub-01/ses-01/anat/*_mask.json")).read_text())
    assert sidecar["Parameters"]["high_threshold"] > 0 and sidecar["Pipeline"] == "default"
    assert list(counts["pipeline"]) == ["default", "default", "auto", "auto"]  # as run / asked
    assert "matrix_ras" in sidecar["RegistrationQC"]

    before = (out / "lesion_counts.csv").read_bytes()
    again = runner.invoke(app, ["batch", str(dataset), str(out), "--workers", "1"])
    assert again.exit_code == EXIT_SESSIONS_FAILED
    assert "(1 run, 2 reused)" in again.stdout
    assert (out / "lesion_counts.csv").read_bytes() == before


def test_cli_batch_user_errors_are_one_line(dataset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["batch", str(dataset), str(dataset)])
    assert res.exit_code == EXIT_ERROR and "is the input" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["batch", str(dataset), str(tmp_path / "o"), "--pipeline", "nope"])
    assert res.exit_code == EXIT_ERROR and "pipeline 'nope'" in res.output
