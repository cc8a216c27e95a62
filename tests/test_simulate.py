"""Simulator: truth consistency, determinism, per-subject anatomy, resolutions, writers, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from gdlesion.cli import app
from gdlesion.errors import InputError, OutputError
from gdlesion.io import load_volume
from gdlesion.simulate import (
    LesionSpec,
    random_lesions,
    simulate_study,
    write_bids_dataset,
    write_study,
)

FAST = dict(voxel_size=4.0)


def _resample_pre_on_post(study, matrix):
    """Pre scan sampled at matrix @ (post grid points), trilinear."""
    post = study.post
    full = np.linalg.inv(study.pre.affine) @ matrix @ post.affine
    return ndimage.affine_transform(
        study.pre.data, full[:3, :3], offset=full[:3, 3], output_shape=post.shape, order=1
    )


def test_truth_matches_label_map():
    study = simulate_study(n_lesions=6, seed=3, **FAST)
    ids = sorted(int(v) for v in np.unique(study.labels) if v)
    assert ids == [s.lesion_id for s in study.lesions] == list(range(1, 7))
    assert study.labels.dtype == np.int32 and study.labels.shape == study.post.shape
    vox = study.post.voxel_volume_mm3
    for entry in study.truth["lesions"]:
        n = int(np.count_nonzero(study.labels == entry["id"]))
        assert entry["n_voxels"] == n >= 1
        assert entry["volume_mm3"] == pytest.approx(n * vox)
        # label centroid lies near the declared centre (within a voxel diagonal + radius slack)
        ijk = np.argwhere(study.labels == entry["id"]).mean(axis=0)
        centroid = study.post.voxel_to_world(ijk)
        assert np.linalg.norm(centroid - entry["center_mm"]) < 4.0 * np.sqrt(3)
        assert entry["kind"] in ("nodular", "ring") and entry["contrast"] > 0


def test_ring_lesion_volume_and_rim():
    """Realised volume ~ nominal sphere volume (>= 0.5 rule); the rim enhances, not the core."""
    spec = LesionSpec(center_mm=(22.0, -10.0, 28.0), diameter_mm=12.0, kind="ring", contrast=0.6)
    study = simulate_study(lesions=[spec], seed=1, subject_seed=7, with_flair=False, voxel_size=2.0)
    entry = study.truth["lesions"][0]
    assert entry["volume_mm3"] == pytest.approx(np.pi / 6 * 12.0**3, rel=0.25)  # 2 mm voxels
    # ring: rim enhances more than the core on post (registered pre subtracted)
    c = np.round(study.post.world_to_voxel(np.asarray(spec.center_mm))).astype(int)
    core = study.post.data[tuple(c)]
    dist = ndimage.distance_transform_edt(study.labels > 0)
    rim = study.post.data[(dist > 0) & (dist <= 1.5)].mean()
    assert rim > core


def test_transform_maps_post_to_pre_anatomy():
    study = simulate_study(
        n_lesions=0, seed=4, noise=False, max_rotation_deg=6, max_translation_mm=6, **FAST
    )
    assert study.truth["misalignment"]["brain_displacement_mm_max"] > 2.0
    head = study.post.data > 0.3 * study.post.data.max()
    head = ndimage.binary_erosion(head, iterations=2)
    good = _resample_pre_on_post(study, study.matrix_ras)
    bad = _resample_pre_on_post(study, np.eye(4))
    inv = _resample_pre_on_post(study, np.linalg.inv(study.matrix_ras))
    r_good = np.corrcoef(good[head], study.post.data[head])[0, 1]
    r_bad = np.corrcoef(bad[head], study.post.data[head])[0, 1]
    r_inv = np.corrcoef(inv[head], study.post.data[head])[0, 1]
    assert r_good > 0.8 and r_good > r_bad + 0.05 and r_good > r_inv + 0.05


def test_hypointense_lesion_is_dark_on_pre_at_the_moved_position():
    spec = LesionSpec(
        center_mm=(24.0, -20.0, 30.0), diameter_mm=10.0, contrast=0.8, hypointense=True, t1_drop=0.4
    )
    study = simulate_study(lesions=[spec], seed=2, subject_seed=7, noise=False, voxel_size=2.0)
    pre_point = study.matrix_ras @ np.r_[spec.center_mm, 1.0]
    v_pre = np.round(study.pre.world_to_voxel(pre_point[:3])).astype(int)
    v_post = np.round(study.post.world_to_voxel(np.asarray(spec.center_mm))).astype(int)
    wm = study.truth["white_matter_signal"]
    assert study.pre.data[tuple(v_pre)] < 0.8 * wm["pre"]
    assert study.post.data[tuple(v_post)] > 1.3 * wm["post"]
    assert study.flair.data[tuple(v_post)] > 1.3 * wm["flair"]


def test_determinism_and_session_variation():
    a = simulate_study(n_lesions=3, seed=11, subject_seed=2, **FAST)
    b = simulate_study(n_lesions=3, seed=11, subject_seed=2, **FAST)
    c = simulate_study(n_lesions=3, seed=12, subject_seed=2, **FAST)
    for name in ("pre", "post", "flair"):
        np.testing.assert_array_equal(getattr(a, name).data, getattr(b, name).data)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.truth == b.truth
    assert not np.array_equal(a.post.data, c.post.data)
    assert not np.allclose(a.matrix_ras, c.matrix_ras)


def test_anatomy_identical_across_sessions_of_a_subject():
    s1 = simulate_study(n_lesions=0, seed=1, subject_seed=9, noise=False, **FAST)
    s2 = simulate_study(n_lesions=0, seed=2, subject_seed=9, noise=False, **FAST)
    other = simulate_study(n_lesions=0, seed=1, subject_seed=10, noise=False, **FAST)

    # the post scans differ only by the bias field and contrast jitter: ratio is smooth, so the
    # edges (anatomy) coincide; a different subject's edges do not
    def edges(v):
        return ndimage.gaussian_gradient_magnitude(v.data / v.data.max(), 1.0) > 0.05

    e1, e2, e3 = edges(s1.post), edges(s2.post), edges(other.post)
    same = np.count_nonzero(e1 & e2) / np.count_nonzero(e1 | e2)
    diff = np.count_nonzero(e1 & e3) / np.count_nonzero(e1 | e3)
    assert same > 0.8 and diff < same - 0.15
    assert s1.truth["chronic_lesions"] == s2.truth["chronic_lesions"]
    assert random_lesions(subject_seed=9, n=4, seed=5) == random_lesions(
        subject_seed=9, n=4, seed=5
    )


def test_random_lesions_are_in_white_matter_and_separated():
    from gdlesion.phantom import build_anatomy

    specs = random_lesions(subject_seed=3, n=10, seed=0)
    anat = build_anatomy(3, 2.0)
    for s in specs:
        assert 2.0 <= s.diameter_mm <= 15.0
        ijk = np.round(np.linalg.solve(anat.affine, np.r_[s.center_mm, 1.0])[:3]).astype(int)
        assert anat.fractions["wm"][tuple(ijk)] > 100
    centers = np.array([s.center_mm for s in specs])
    radii = np.array([s.semi_axes_mm.max() for s in specs])
    d = np.linalg.norm(centers[:, None] - centers[None], axis=2) + np.eye(len(specs)) * 1e3
    assert np.all(d >= radii[:, None] + radii[None] + 2.0 - 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "resolution, zooms, shape",
    [
        ("1mm", (1.0, 1.0, 1.0), (172, 214, 176)),
        ("2d", (0.9, 0.9, 5.5), (208, 240, 26)),
    ],
)
def test_full_resolutions(resolution, zooms, shape):
    study = simulate_study(resolution=resolution, n_lesions=5, seed=7, subject_seed=7)
    assert study.post.shape == study.pre.shape == shape
    np.testing.assert_allclose(study.post.zooms, zooms)
    np.testing.assert_array_equal(study.pre.affine, study.post.affine)  # same grid, moved head
    assert len(study.truth["lesions"]) == 5
    assert all(e["n_voxels"] >= 1 for e in study.truth["lesions"])
    assert study.pre.data.min() >= 0 and study.post.data.max() < 32767
    for e in study.truth["lesions"]:
        if e["diameter_mm"] >= 6 and resolution == "1mm":
            assert e["volume_mm3"] == pytest.approx(e["nominal_volume_mm3"], rel=0.15)


def test_bad_inputs():
    with pytest.raises(InputError, match="resolution"):
        simulate_study(resolution="3T", **FAST)
    with pytest.raises(InputError, match="negative"):
        simulate_study(n_lesions=-1, **FAST)
    with pytest.raises(InputError, match="kind"):
        LesionSpec(center_mm=(0, 0, 0), diameter_mm=5, kind="cloud")
    with pytest.raises(InputError, match="outside the image grid"):
        simulate_study(lesions=[LesionSpec(center_mm=(500.0, 0, 0), diameter_mm=5)], **FAST)
    with pytest.raises(InputError, match="duplicate"):
        simulate_study(
            lesions=[
                LesionSpec(center_mm=(20, -10, 20), diameter_mm=5, lesion_id=2),
                LesionSpec(center_mm=(-20, -10, 20), diameter_mm=5, lesion_id=2),
            ],
            **FAST,
        )


def test_write_study_round_trip(tmp_path):
    study = simulate_study(n_lesions=2, seed=5, **FAST)
    paths = write_study(study, tmp_path / "s", stem="x")
    post = load_volume(paths["post"])
    labels = load_volume(paths["labels"])
    np.testing.assert_array_equal(post.data, study.post.data)
    np.testing.assert_array_equal(labels.data.astype(np.int32), study.labels)
    np.testing.assert_allclose(labels.affine, study.post.affine)
    truth = json.loads(paths["truth"].read_text())
    np.testing.assert_allclose(truth["matrix_ras"], study.matrix_ras, atol=1e-8)
    with pytest.raises(OutputError, match="not empty"):
        write_study(study, tmp_path / "s", stem="x")


def test_bids_dataset_layout(tmp_path):
    root = tmp_path / "bids"
    records = write_bids_dataset(root, n_subjects=2, n_sessions=2, seed=3, n_lesions=(1, 3), **FAST)
    assert len(records) == 4
    assert json.loads((root / "dataset_description.json").read_text())["BIDSVersion"]
    deriv = root / "derivatives" / "truth"
    assert (
        json.loads((deriv / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    )
    assert (root / "participants.tsv").read_text().splitlines()[1].startswith("sub-01\t")
    sessions = (root / "sub-02" / "sub-02_sessions.tsv").read_text().splitlines()
    assert sessions[0] == "session_id\tacq_time" and sessions[2].startswith("ses-02\t")
    for sub in ("sub-01", "sub-02"):
        for ses in ("ses-01", "ses-02"):
            anat = root / sub / ses / "anat"
            for suffix in ("T1w", "ce-gadolinium_T1w", "FLAIR"):
                load_volume(anat / f"{sub}_{ses}_{suffix}.nii.gz")
            tdir = deriv / sub / ses / "anat"
            lab = load_volume(tdir / f"{sub}_{ses}_space-individual_label-lesion_dseg.nii.gz")
            truth = json.loads((tdir / f"{sub}_{ses}_truth.json").read_text())
            assert sorted(np.unique(lab.data)[1:].astype(int)) == [
                e["id"] for e in truth["lesions"]
            ]
    # sessions of a subject share the subject seed; subjects differ
    seeds = {(r["subject"], r["subject_seed"]) for r in records}
    assert len(seeds) == 2


def test_cli_simulate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "one"
    res = runner.invoke(
        app, ["simulate", str(out), "--voxel-size", "4", "--lesions", "2", "--seed", "1"]
    )
    assert res.exit_code == 0, res.output
    truth = json.loads((out / "sim_truth.json").read_text())
    assert truth["n_lesions"] == 2 and truth["settings"]["seed"] == 1
    res = runner.invoke(app, ["simulate", str(out), "--voxel-size", "4"])
    assert res.exit_code == 1 and "not empty" in res.output
    res = runner.invoke(
        app,
        [
            "simulate",
            str(tmp_path / "b"),
            "--voxel-size",
            "4",
            "--subjects",
            "1",
            "--sessions",
            "2",
            "--lesion-range",
            "1-2",
            "--no-flair",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_T1w.nii.gz").exists()
    assert not list((tmp_path / "b").rglob("*FLAIR*"))
    res = runner.invoke(app, ["simulate", str(tmp_path / "c"), "--resolution", "7T"])
    assert res.exit_code == 1 and "resolution" in res.output
