"""Detection core: thresholds, splitting, trimming, rules, parameters, brain mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdlesion.errors import InputError, SegmentationError
from gdlesion.measure import LESION_COLUMNS
from gdlesion.params import DetectionParams, load_params, preset_names
from gdlesion.preprocess import conditional_median_mapping, estimate_brain_mask
from gdlesion.rules import RULES, apply_rules
from gdlesion.segment import (
    hysteresis_components,
    refine_boundaries,
    regrow_small,
    residual_fwhm,
    split_touching,
)

REPO = Path(__file__).resolve().parents[1]


def _ball(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    return ((grid - np.asarray(centre, float)[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_hysteresis_thresholds_are_inclusive():
    z = np.zeros((9, 8, 7), np.float32)
    z[2, 2, 2] = 6.0  # seed exactly at high
    z[2, 3, 2] = 3.0  # grows exactly at low
    z[6, 6, 5] = 5.99  # below high, no seed
    labels, n = hysteresis_components(z, np.ones(z.shape, bool), low=3.0, high=6.0)
    assert n == 1
    assert labels[2, 2, 2] == labels[2, 3, 2] == 1
    assert labels[6, 6, 5] == 0


@pytest.mark.parametrize("fwhm_mm", [2.5, 3.5])  # >= 1.7 voxels on every axis
def test_residual_fwhm_recovers_the_smoothing_of_noise(rng, fwhm_mm):
    from scipy import ndimage as ndi

    zooms = np.array([1.0, 0.8, 1.4])  # unequal voxels: the FWHM is in mm on every axis
    noise = rng.normal(size=(96, 110, 70)).astype(np.float32)
    smooth = ndi.gaussian_filter(noise, fwhm_mm / 2.3548 / zooms)
    mask = _ball(noise.shape, (48, 55, 35), 34)
    smooth[~mask] += 50.0  # what lies outside the brain does not count
    got = residual_fwhm(smooth, mask, zooms)
    np.testing.assert_allclose(got, fwhm_mm, rtol=0.08)
    # a lesion-sized blob and a bright edge inside the brain barely move it (robust variances)
    blob = smooth.copy()
    blob[_ball(blob.shape, (48, 55, 35), 4)] += 20 * float(smooth[mask].std())
    np.testing.assert_allclose(residual_fwhm(blob, mask, zooms), got, rtol=0.03)


def test_residual_fwhm_of_white_noise_and_of_too_small_a_mask(rng):
    noise = rng.normal(size=(60, 60, 60)).astype(np.float32)
    mask = np.ones(noise.shape, bool)
    assert (residual_fwhm(noise, mask, np.ones(3)) < 1.0).all()  # no correlation: under a voxel
    tiny = _ball(noise.shape, (30, 30, 30), 3)
    assert residual_fwhm(noise, tiny, np.ones(3)).tolist() == [0.0, 0.0, 0.0]


def test_split_touching_separates_two_peaks_but_not_a_plateau():
    shape = (30, 20, 20)
    z = np.zeros(shape, np.float32)
    z[_ball(shape, (9, 10, 10), 4)] = 20.0
    z[_ball(shape, (19, 10, 10), 4)] = 16.0
    bridge = np.zeros(shape, bool)
    bridge[12:17, 9:11, 9:11] = True
    z[bridge & (z == 0)] = 4.0  # faint bridge: saddle 4 < 0.4 * 16
    labels, n = hysteresis_components(z, np.ones(shape, bool), low=3.0, high=6.0)
    assert n == 1
    split, n_split = split_touching(z, labels, saddle_ratio=0.4, min_voxels=5)
    assert n_split == 2
    assert split[9, 10, 10] != split[19, 10, 10]
    # a bright bridge (saddle 10 >= 0.4 * 16) keeps one lesion
    z[bridge & (z == 4.0)] = 10.0
    _, n_one = split_touching(z, labels, saddle_ratio=0.4, min_voxels=5)
    assert n_one == 1


def _gauss(shape, centre, sigmas, amplitude):
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, sigmas, strict=True))
    return (amplitude * np.exp(-0.5 * d2)).astype(np.float32)


def test_regrow_small_gives_a_round_peak_its_half_maximum_outline():
    shape = (21, 22, 23)
    raw = _gauss(shape, (10, 11, 11), (1.3, 1.3, 1.3), 100.0)  # a 3 mm focus
    raw += _gauss(shape, (4, 4, 5), (0.8, 0.8, 6.0), 100.0)  # a tube along the last axis
    smoothed = raw.copy()
    z = smoothed / np.float32(10.0)
    mask = np.ones(shape, bool)
    labels = np.zeros(shape, np.int32)
    labels[10, 11, 11] = 1  # cut to one voxel by the hysteresis
    labels[4, 4, 5] = 2  # the tube's peak, also one voxel
    labels[15:19, 15:19, 15:19] = 3  # a large candidate: left alone
    out, n = regrow_small(
        labels, 3, z, smoothed, raw, mask, np.ones(3), min_voxels=6, min_peak=4.0,
        min_blob_ratio=0.7, fraction=0.5, radius_mm=4.0,
    )
    assert n == 3
    half = smoothed >= 50.0
    focus = out == out[10, 11, 11]
    assert focus.sum() == (half & (_ball(shape, (10, 11, 11), 4.0))).sum() >= 6
    assert (out == out[4, 4, 5]).sum() == 1  # a tube's peak is not a round blob
    assert (out == out[16, 16, 16]).sum() == 64
    # a weak peak (z < min_peak) is not regrown either
    out, _ = regrow_small(
        labels, 3, z / 4, smoothed, raw, mask, np.ones(3), min_voxels=6, min_peak=4.0,
        min_blob_ratio=0.7, fraction=0.5, radius_mm=4.0,
    )
    assert (out == out[10, 11, 11]).sum() == 1


def test_refine_boundaries_keeps_half_maximum():
    smoothed = np.array([[[0, 4, 10, 6, 0]]], np.float32)
    raw = np.array([[[0, 4.9, 10, 5.0, 0]]], np.float32)
    labels = (smoothed > 0).astype(np.int32)
    out, n = refine_boundaries(labels, smoothed, raw, np.ones(3), fraction=0.5)
    assert n == 1
    assert out.ravel().tolist() == [0, 0, 1, 1, 0]


def test_refine_boundaries_drops_a_faint_trail_but_keeps_a_weaker_side():
    # candidate 1: a bright ball (100) with a faint tube (8) growing out of it, as a vein
    # followed by the growing level; candidate 2: two nodules of 100 and 30 joined by a
    # bridge, the weaker side of a heterogeneous lesion (its own peak 30 % of the top)
    img = np.zeros((40, 24, 24), np.float32)
    ii, jj, kk = np.indices(img.shape)
    ball = (ii - 8) ** 2 + (jj - 6) ** 2 + (kk - 6) ** 2 <= 9
    tube = (ii >= 8) & (ii <= 30) & (abs(jj - 6) <= 1) & (abs(kk - 6) <= 1) & ~ball
    img[tube] = 8.0
    img[ball] = 100.0
    left = (ii - 8) ** 2 + (jj - 18) ** 2 + (kk - 18) ** 2 <= 9
    right = (ii - 24) ** 2 + (jj - 18) ** 2 + (kk - 18) ** 2 <= 9
    bridge = (ii > 8) & (ii < 24) & (jj == 18) & (kk == 18)
    img[bridge] = 16.0
    img[left] = 100.0
    img[right] = 30.0
    labels = np.zeros(img.shape, np.int32)
    labels[ball | tube] = 1
    labels[left | right | bridge] = 2
    kept, n = refine_boundaries(labels, img, img, np.ones(3), fraction=0.5)
    # without the rule the trail beyond the ball's 3 mm reach keeps its own half maximum
    assert n == 2 and (kept == 1)[tube & (ii > 14)].all()
    out, n = refine_boundaries(labels, img, img, np.ones(3), fraction=0.5, part_fraction=0.2)
    assert n == 2
    assert ((out == 1) == ball).all()  # the trail is dropped, the ball is whole
    assert ((out == 2)[left | right]).all()  # the weaker nodule stays
    # the bridge's middle, out of both nodules' reach, peaks at 16: under a fifth of 100
    middle = bridge & (ii >= 15) & (ii <= 17)
    assert (kept == 2)[middle].all() and not (out == 2)[middle].any()


def _table(**values):
    row = {c: 0.0 for c in LESION_COLUMNS}
    row.update(
        volume_mm3=50.0,
        elongation=1.2,
        length_mm=5.0,
        csf_distance_mm=5.0,
        flair_z=np.nan,
        thickness_mm=4.0,
        compactness=2.0,
        outline_compactness=2.0,
        blob_ratio=0.8,
        conspicuity=5.0,
        max_enhancement_pct=50.0,
        pattern="nodular",
    )
    row.update(values)
    if "slice_blob_ratio" not in values:  # no split: the two ratios are the same
        row["slice_blob_ratio"] = row["blob_ratio"]
    return pd.DataFrame([row])


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({}, ""),
        ({"volume_mm3": 5.99}, "too_small"),
        ({"volume_mm3": 6.0}, ""),
        ({"elongation": 3.0, "length_mm": 6.0}, "vessel"),
        ({"elongation": 3.0, "length_mm": 5.9}, ""),
        ({"thickness_mm": 5.0, "compactness": 6.0, "blob_ratio": 0.5}, "vessel"),
        ({"thickness_mm": 5.1, "compactness": 6.0, "blob_ratio": 0.5}, ""),
        ({"thickness_mm": 5.0, "compactness": 6.0, "blob_ratio": 0.5, "pattern": "ring"}, ""),
        # a round nodule at the peak (blob ratio >= 0.6) is not a branching vessel
        ({"thickness_mm": 5.0, "compactness": 6.0, "blob_ratio": 0.59}, "vessel"),
        ({"thickness_mm": 5.0, "compactness": 6.0, "blob_ratio": 0.6}, ""),
        ({"blob_ratio": 0.3}, "vessel"),
        ({"blob_ratio": 0.31}, ""),
        ({"blob_ratio": 0.3, "pattern": "ring"}, ""),
        # a "ring" whose filled outline is not compact (a sheet or loops of vessels) is not exempt
        ({"thickness_mm": 5.0, "compactness": 6.0, "blob_ratio": 0.5, "pattern": "ring",
          "outline_compactness": 14.99}, ""),
        ({"thickness_mm": 5.0, "compactness": 6.0, "blob_ratio": 0.5, "pattern": "ring",
          "outline_compactness": 15.0}, "vessel"),
        ({"blob_ratio": 0.3, "pattern": "ring", "outline_compactness": 15.0}, "vessel"),
        ({"blob_ratio": 0.3, "pattern": "ring", "outline_compactness": np.nan}, ""),
        ({"max_enhancement_pct": 150.0, "blob_ratio": 0.5, "pattern": "ring",
          "outline_compactness": 15.0}, "vessel"),
        ({"max_enhancement_pct": 150.0, "blob_ratio": 0.5, "pattern": "ring",
          "outline_compactness": 14.99}, ""),
        ({"blob_ratio": np.nan}, ""),
        # blood-level enhancement (>= 150 %) with a peak neither round nor a ring
        ({"max_enhancement_pct": 150.0, "blob_ratio": 0.59}, "vessel"),
        ({"max_enhancement_pct": 149.9, "blob_ratio": 0.59}, ""),
        ({"max_enhancement_pct": 300.0, "blob_ratio": 0.6}, ""),
        # split thick slices: the tube part reads the slice-corrected ratio, the others not
        ({"blob_ratio": 0.25, "slice_blob_ratio": 0.5}, ""),
        ({"blob_ratio": 0.5, "slice_blob_ratio": 0.3}, "vessel"),
        ({"blob_ratio": 0.25, "slice_blob_ratio": np.nan}, "vessel"),
        ({"blob_ratio": 0.25, "slice_blob_ratio": 0.6, "max_enhancement_pct": 150.0}, "vessel"),
        ({"thickness_mm": 5.0, "compactness": 6.0, "blob_ratio": 0.5,
          "slice_blob_ratio": 0.6}, "vessel"),
        ({"max_enhancement_pct": 300.0, "blob_ratio": 0.5, "pattern": "ring"}, ""),
        ({"max_enhancement_pct": 300.0, "blob_ratio": np.nan}, ""),
        ({"edge_fraction": 0.5, "blob_ratio": 0.5}, "brain_edge"),
        ({"edge_fraction": 0.49, "blob_ratio": 0.5}, ""),
        # a round (blob ratio >= 0.6), conspicuous (>= 4.5) nodule or ring at the edge
        # is a juxtacortical lesion
        ({"edge_fraction": 0.9}, ""),
        ({"edge_fraction": 0.9, "blob_ratio": 0.6, "conspicuity": 4.5}, ""),
        ({"edge_fraction": 0.9, "blob_ratio": 0.59}, "brain_edge"),
        ({"edge_fraction": 0.9, "conspicuity": 4.49}, "brain_edge"),
        ({"edge_fraction": 0.9, "compactness": 5.99}, ""),
        ({"edge_fraction": 0.9, "compactness": 6.0}, "brain_edge"),
        ({"edge_fraction": 0.9, "compactness": 30.0, "pattern": "ring"}, ""),
        ({"edge_fraction": 0.9, "blob_ratio": np.nan}, "brain_edge"),
        # split thick slices: the round-nodule exemption reads the slice-corrected ratio
        ({"edge_fraction": 0.9, "blob_ratio": 0.45, "slice_blob_ratio": 0.6}, ""),
        ({"edge_fraction": 0.9, "blob_ratio": 0.6, "slice_blob_ratio": 0.59}, "brain_edge"),
        ({"ventricle_fraction": 0.5}, "choroid_plexus"),
        # a round, strongly significant nodule in tissue on the ventricular wall is not plexus
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": 0.5, "csf_distance_mm": 2.0}, ""),
        ({"ventricle_fraction": 1.0, "max_z": 5.9, "blob_ratio": 0.5, "csf_distance_mm": 2.0},
         "choroid_plexus"),
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": 0.49, "csf_distance_mm": 2.0},
         "choroid_plexus"),
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": 0.5, "csf_distance_mm": 1.9},
         "choroid_plexus"),
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "csf_distance_mm": 2.0, "pattern": "ring"},
         "choroid_plexus"),
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": np.nan, "csf_distance_mm": 2.0},
         "choroid_plexus"),
        # a large compact one counts as round whatever its peak
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": 0.45, "csf_distance_mm": 2.0,
          "volume_mm3": 100.0, "compactness": 3.0}, ""),
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": 0.45, "csf_distance_mm": 2.0,
          "volume_mm3": 99.9, "compactness": 3.0}, "choroid_plexus"),
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": 0.45, "csf_distance_mm": 2.0,
          "volume_mm3": 100.0, "compactness": 3.01}, "choroid_plexus"),
        ({"ventricle_fraction": 1.0, "max_z": 6.0, "blob_ratio": 0.45, "csf_distance_mm": 1.9,
          "volume_mm3": 100.0, "compactness": 3.0}, "choroid_plexus"),
        ({"csf_distance_mm": 1.0}, "csf_space"),
        ({"csf_distance_mm": 1.1}, ""),
        # a strongly significant ring: its non-enhancing core is dark like CSF
        ({"csf_distance_mm": 0.0, "pattern": "ring", "max_z": 8.0}, ""),
        ({"csf_distance_mm": 0.0, "pattern": "ring", "max_z": 7.99}, "csf_space"),
        ({"csf_distance_mm": 0.0, "max_z": 6.0}, "csf_space"),
        ({"csf_distance_mm": 0.0, "pattern": "ring", "max_z": 8.0, "blob_ratio": np.nan},
         "csf_space"),
        # a large compact strongly significant nodule: a T1-dark lesion open to a sulcus
        ({"csf_distance_mm": 0.0, "max_z": 6.0, "volume_mm3": 100.0, "compactness": 3.0}, ""),
        ({"csf_distance_mm": 0.0, "max_z": 6.0, "volume_mm3": 99.9, "compactness": 3.0},
         "csf_space"),
        ({"csf_distance_mm": 0.0, "max_z": 6.0, "volume_mm3": 100.0, "compactness": 3.01},
         "csf_space"),
        ({"csf_distance_mm": 0.0, "max_z": 5.99, "volume_mm3": 100.0, "compactness": 3.0},
         "csf_space"),
        ({"flair_z": 0.45}, "no_flair_lesion"),
        ({"flair_z": 0.5}, ""),
        ({"max_enhancement_pct": 24.9}, "faint"),
        ({"max_enhancement_pct": 25.0}, ""),
        ({"conspicuity": 2.99}, "inconspicuous"),
        ({"conspicuity": 3.0}, ""),
        # a peak that is not round (blob ratio < 0.6) must stand out more
        ({"conspicuity": 4.49, "blob_ratio": 0.59}, "inconspicuous"),
        ({"conspicuity": 4.5, "blob_ratio": 0.59}, ""),
        ({"conspicuity": 3.0, "blob_ratio": 0.6}, ""),
        ({"conspicuity": 3.0, "blob_ratio": 0.5, "pattern": "ring"}, ""),
        ({"conspicuity": 3.0, "blob_ratio": np.nan}, ""),
        # a round (blob ratio >= 0.7), strong (z >= 6) peak needs a conspicuity of only 2
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": 0.7}, ""),
        ({"conspicuity": 1.99, "max_z": 6.0, "blob_ratio": 0.7}, "inconspicuous"),
        ({"conspicuity": 2.0, "max_z": 5.99, "blob_ratio": 0.7}, "inconspicuous"),
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": 0.69}, "inconspicuous"),
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": np.nan}, "inconspicuous"),
        # a large compact candidate counts as round whatever its peak's blob ratio
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": 0.5, "volume_mm3": 100.0,
          "compactness": 3.0}, ""),
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": 0.5, "volume_mm3": 99.9,
          "compactness": 3.0}, "inconspicuous"),
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": 0.5, "volume_mm3": 100.0,
          "compactness": 3.01}, "inconspicuous"),
        ({"conspicuity": 2.0, "max_z": 5.99, "blob_ratio": 0.5, "volume_mm3": 100.0,
          "compactness": 3.0}, "inconspicuous"),
        # a strongly significant ring needs 2 too (its rim is the shape evidence)
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": 0.5, "volume_mm3": 400.0,
          "compactness": 20.0, "pattern": "ring"}, ""),
        ({"conspicuity": 1.99, "max_z": 6.0, "blob_ratio": 0.5, "pattern": "ring"},
         "inconspicuous"),
        ({"conspicuity": 2.0, "max_z": 5.99, "blob_ratio": 0.5, "pattern": "ring"},
         "inconspicuous"),
        ({"conspicuity": 2.0, "max_z": 6.0, "blob_ratio": np.nan, "pattern": "ring"}, ""),
        # ... when its outline, holes filled, is a ball or an ovoid (not a sheet with holes)
        ({"conspicuity": 2.0, "max_z": 6.0, "pattern": "ring", "outline_compactness": 3.0}, ""),
        ({"conspicuity": 2.0, "max_z": 6.0, "pattern": "ring", "outline_compactness": 3.01},
         "inconspicuous"),
    ],
)
def test_rules_inclusive_thresholds(values, reason):
    assert apply_rules(_table(**values), DetectionParams()).tolist() == [reason]


def test_round_conspicuity_part_off_in_clinical_2d_and_never_stricter():
    strong_round = _table(conspicuity=2.5, max_z=20.0, blob_ratio=0.9)
    assert apply_rules(strong_round, load_params("clinical-2d")).tolist() == ["inconspicuous"]
    assert apply_rules(strong_round, DetectionParams()).tolist() == [""]
    strong_ring = _table(conspicuity=2.5, max_z=20.0, pattern="ring")
    assert apply_rules(strong_ring, load_params("clinical-2d")).tolist() == ["inconspicuous"]
    assert apply_rules(strong_ring, DetectionParams()).tolist() == [""]
    assert apply_rules(strong_ring, DetectionParams(min_conspicuity_ring=0.0)).tolist() == [
        "inconspicuous"
    ]
    # it only relaxes: a preset whose own minimum is lower keeps it
    lenient = DetectionParams(min_conspicuity=1.5)
    assert apply_rules(_table(conspicuity=1.6, max_z=20.0), lenient).tolist() == [""]


def test_irregular_ring_part_off_in_clinical_2d_and_can_be_disabled():
    sheet = _table(blob_ratio=0.2, pattern="ring", outline_compactness=30.0)
    assert apply_rules(sheet, DetectionParams()).tolist() == ["vessel"]
    assert apply_rules(sheet, DetectionParams(ring_max_outline_compactness=0.0)).tolist() == [""]
    assert load_params("clinical-2d").ring_max_outline_compactness == 0.0


def test_blood_bright_vessel_part_can_be_disabled():
    bright_ovoid = _table(max_enhancement_pct=200.0, blob_ratio=0.45)
    assert apply_rules(bright_ovoid, DetectionParams()).tolist() == ["vessel"]
    off = DetectionParams(vessel_min_enhancement_pct=0.0)
    assert apply_rules(bright_ovoid, off).tolist() == [""]


def test_csf_and_plexus_nodule_exemptions_off_in_clinical_2d():
    # on thick slices the blob ratio is the in-plane one (finite): the preset turns them off
    ring = _table(csf_distance_mm=0.0, pattern="ring", max_z=20.0, blob_ratio=0.5)
    assert apply_rules(ring, DetectionParams()).tolist() == [""]
    assert apply_rules(ring, load_params("clinical-2d")).tolist() == ["csf_space"]
    wall = _table(ventricle_fraction=1.0, max_z=20.0, blob_ratio=0.9, csf_distance_mm=3.0)
    assert apply_rules(wall, DetectionParams()).tolist() == [""]
    assert apply_rules(wall, load_params("clinical-2d")).tolist() == ["choroid_plexus"]
    large_nodule = _table(csf_distance_mm=0.0, max_z=20.0, volume_mm3=400.0, compactness=1.5)
    assert apply_rules(large_nodule, DetectionParams()).tolist() == [""]
    assert apply_rules(large_nodule, load_params("clinical-2d")).tolist() == ["csf_space"]
    assert load_params("clinical-2d").vessel_split_blob_ratio == 0.0


def test_round_edge_exemption_off_in_clinical_2d():
    round_at_edge = _table(edge_fraction=0.9, conspicuity=10.0, blob_ratio=0.9)
    assert apply_rules(round_at_edge, load_params("clinical-2d")).tolist() == ["brain_edge"]
    assert apply_rules(round_at_edge, DetectionParams()).tolist() == [""]
    assert apply_rules(round_at_edge, load_params("flair")).tolist() == [""]


def test_ring_pattern_for_a_thin_shell_with_a_small_hole():
    from gdlesion.measure import RING_HOLE_FRACTION, _per_lesion_shape

    grid = np.indices((21, 21, 21)) - 10.0
    r = np.sqrt((grid**2).sum(0))
    shell = ((r <= 5.0) & (r > 2.4)).astype(np.int32)  # hole: 11 % of the filled ball
    solid = (r <= 5.0).astype(np.int32)
    solid[10, 10, 10] = 0  # one dark voxel inside a nodule is not a core
    for labels, expected in ((shell, True), (solid, False)):
        filled = int((r <= 5.0).sum())
        hole = filled - int(labels.sum())
        assert (hole >= RING_HOLE_FRACTION * filled) == expected
        ring, thickness, _, _ = _per_lesion_shape(labels, 1, np.ones(3))
        assert bool(ring[0]) is expected
        assert thickness[0] > 0


def test_outline_compactness_of_a_ring_lesion_and_of_a_sheet_with_holes():
    from gdlesion.anatomy import Context
    from gdlesion.measure import lesion_features

    grid = np.indices((40, 64, 30)).astype(float)
    r = np.sqrt(((grid - np.array([20, 15, 15])[:, None, None, None]) ** 2).sum(0))
    labels = np.zeros(grid.shape[1:], dtype=np.int32)
    labels[(r <= 6.0) & (r > 3.5)] = 1  # a 12 mm ring lesion with a 2.5 mm wall
    plate = (np.abs(grid[2] - 15) <= 1) & (grid[1] >= 32) & (grid[1] <= 56)
    plate &= (grid[0] >= 8) & (grid[0] <= 32)
    holes = (grid[0] % 8 >= 2) & (grid[0] % 8 <= 5) & (grid[1] % 8 >= 2) & (grid[1] % 8 <= 5)
    labels[plate & ~holes] = 2  # a sheet with holes: also a "ring"
    count = int((labels > 0).sum())
    table = lesion_features(
        labels, 2, affine=np.diag([1.0, 1.0, 1.0, 1.0]), z=np.ones(labels.shape, np.float32),
        residual=np.ones(labels.shape, np.float32), nawm_level=1.0,
        context=Context(np.full(count, 20.0), np.full(count, 8.0), np.full(count, 8.0)),
        edge_margin_mm=3.0, ventricle_margin_mm=2.0,
    )
    ring, sheet = table.iloc[0], table.iloc[1]
    assert ring["pattern"] == "ring" and sheet["pattern"] == "ring"
    assert ring["compactness"] > 10 and sheet["compactness"] > 10
    assert ring["outline_compactness"] <= 2.0  # the filled ring is a ball
    assert sheet["outline_compactness"] > 10  # the filled sheet is still a sheet
    # a nodule's outline compactness is its compactness
    solid = (r <= 4.0).astype(np.int32)
    t = lesion_features(
        solid, 1, affine=np.eye(4), z=np.ones(solid.shape, np.float32),
        residual=np.ones(solid.shape, np.float32), nawm_level=1.0,
        context=Context(*[np.full(int(solid.sum()), 8.0)] * 3),
        edge_margin_mm=3.0, ventricle_margin_mm=2.0,
    )
    assert t["pattern"].iloc[0] == "nodular"
    assert t["outline_compactness"].iloc[0] == t["compactness"].iloc[0]


def test_rules_first_failing_rule_wins():
    table = _table(volume_mm3=1.0, edge_fraction=1.0)
    assert apply_rules(table, DetectionParams()).tolist() == ["too_small"]
    assert [name for name, _ in RULES][0] == "too_small"


def test_presets_load_and_pipelines_folder_matches():
    assert {"default", "clinical-2d", "high-sensitivity"} <= set(preset_names())
    assert load_params("default") == DetectionParams() == load_params(None)
    assert load_params("high-sensitivity").high_threshold < DetectionParams().high_threshold
    for name in ("default", "clinical-2d", "high-sensitivity"):
        doc = REPO / "pipelines" / f"{name}.json"
        packaged = REPO / "src" / "gdlesion" / "presets" / f"{name}.json"
        assert doc.read_text() == packaged.read_text()
        assert load_params(doc) == load_params(name)


def test_load_params_from_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"high_threshold": 7.5, "_comment": "x"}))
    assert load_params(path).high_threshold == 7.5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"hgh_threshold": 5}', "unknown detection parameter"),
        ('{"min_volume_mm3": -1}', "must be >= 0"),
        ('{"low_threshold": 9}', "exceeds high_threshold"),
        ('{"bias_correction": "magic"}', "bias_correction"),
        ('{"high_threshold": "six"}', "not a number"),
    ],
)
def test_load_params_bad_files(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        load_params(path)


def test_load_params_unknown_name():
    with pytest.raises(InputError, match="not a preset"):
        load_params("no-such-preset")


def test_brain_mask_skull_stripped_sphere_and_no_brain(rng, affine_oblique):
    shape = (60, 50, 24)  # oblique 0.9x1.1x2.5 mm grid
    data = np.zeros(shape, np.float32)
    brain = _ball(shape, (30, 25, 12), 18) & (np.indices(shape)[2] >= 0)
    grid = np.indices(shape).astype(float)
    zooms = np.sqrt((affine_oblique[:3, :3] ** 2).sum(0))
    d = np.sqrt(sum(((grid[a] - c) * zooms[a]) ** 2 for a, c in enumerate((30, 25, 12))))
    brain = d <= 25.0
    data[brain] = 500 + rng.normal(0, 10, int(brain.sum()))
    mask = estimate_brain_mask(data, affine_oblique, min_volume_ml=20)
    assert abs(int(mask.sum()) - int(brain.sum())) <= 0.05 * brain.sum()
    noise = rng.normal(100, 30, shape).astype(np.float32)
    with pytest.raises(SegmentationError, match="no brain found"):
        estimate_brain_mask(noise, affine_oblique)


def test_conditional_median_maps_a_nonlinear_contrast(rng):
    pre = rng.uniform(0, 100, (40, 30, 20)).astype(np.float32)
    post = (0.02 * pre**2 + 5).astype(np.float32)  # non-linear, monotone contrast change
    post[:4] += 300  # a few enhancing voxels must not bend the curve
    mapped = conditional_median_mapping(pre, post, np.ones(pre.shape, bool))
    err = np.abs(mapped[4:] - post[4:])
    assert np.median(err) < 1.0


def test_conditional_spread_follows_the_noise_of_each_tissue_class(rng):
    """Noise 1 where the guide is dark, 3 where it is bright: the spread map says so."""
    from gdlesion.segment import conditional_spread

    guide = np.repeat(np.linspace(0.0, 1.0, 40)[:, None, None], 30, axis=1).repeat(30, axis=2)
    noisy = np.where(guide > 0.5, 3.0, 1.0) * rng.standard_normal(guide.shape)
    mask = np.ones(guide.shape, dtype=bool)
    spread = conditional_spread(noisy, guide, mask)
    assert spread.shape == guide.shape and spread.dtype == np.float32
    assert np.median(spread[guide < 0.4]) == pytest.approx(1.0, rel=0.1)
    assert np.median(spread[guide > 0.6]) == pytest.approx(3.0, rel=0.1)


def test_auto_preset_by_slice_thickness_and_flair():
    from gdlesion.params import auto_preset, load_params, preset_names

    # thick slices are split into ~1 mm working slices and get the 1 mm presets
    assert auto_preset((0.9, 0.9, 5.5), has_flair=True) == "flair"
    assert auto_preset((0.9, 0.9, 5.5), has_flair=False) == "default"
    assert auto_preset((4.0, 1.0, 1.0), has_flair=False) == "default"
    assert auto_preset((1.0, 1.0, 3.9), has_flair=False) == "default"
    assert auto_preset((1.0, 1.0, 3.0), has_flair=True) == "flair"
    # too fine in-plane to split alone: merged in-plane first, then split like the others
    assert auto_preset((0.45, 0.45, 3.0), has_flair=False) == "default"
    assert auto_preset((0.45, 0.45, 5.0), has_flair=True) == "flair"
    assert auto_preset((0.6, 0.6, 5.0), has_flair=False) == "default"
    assert auto_preset((0.9, 0.9, 1.9), has_flair=False) == "default"
    assert auto_preset((1.0, 1.0, 1.0), has_flair=True) == "flair"
    assert {"default", "flair", "clinical-2d"} <= set(preset_names())
    assert load_params("default").noise_guide_mm > 0 == load_params("clinical-2d").noise_guide_mm
    assert load_params("flair").noise_guide_mm == load_params("default").noise_guide_mm
    # the FLAIR rule, not the stricter contrast rules, cleans up the flair preset
    assert load_params("flair").min_conspicuity < load_params("default").min_conspicuity
    assert load_params("flair").min_conspicuity_elongated == 0.0


def test_faint_rule_inclusive_and_off_in_clinical_2d():
    strict = DetectionParams(min_enhancement_pct=20.0)
    assert apply_rules(_table(max_enhancement_pct=19.9), strict).tolist() == ["faint"]
    assert apply_rules(_table(max_enhancement_pct=20.0), strict).tolist() == [""]
    assert apply_rules(_table(max_enhancement_pct=5.0), DetectionParams()).tolist() == ["faint"]
    off = load_params("clinical-2d")
    assert apply_rules(_table(max_enhancement_pct=5.0), off).tolist() == [""]
    assert load_params("flair").min_enhancement_pct == 20.0


def test_faint_rule_lets_a_significant_round_nodule_enhance_from_20_percent():
    p = DetectionParams()  # 25 %, 20 % for a compact, round, strongly significant nodule
    nodule = {"max_z": 6.0, "blob_ratio": 0.6, "compactness": 2.0, "conspicuity": 5.0}
    assert apply_rules(_table(max_enhancement_pct=20.0, **nodule), p).tolist() == [""]
    assert apply_rules(_table(max_enhancement_pct=19.9, **nodule), p).tolist() == ["faint"]
    # each condition is needed: weakly significant, flat peak, extended shell, ring
    for change in ({"max_z": 5.9}, {"blob_ratio": 0.59}, {"compactness": 6.0},
                   {"pattern": "ring"}):
        table = _table(max_enhancement_pct=22.0, **dict(nodule, **change))
        assert apply_rules(table, p).tolist() == ["faint"], change
    assert apply_rules(_table(max_enhancement_pct=25.0, max_z=5.0), p).tolist() == [""]
    # at or above min_enhancement_pct the exemption changes nothing
    same = DetectionParams(min_enhancement_pct_nodule=25.0)
    assert apply_rules(_table(max_enhancement_pct=22.0, **nodule), same).tolist() == ["faint"]
    assert load_params("default").min_enhancement_pct_nodule == 20.0


def test_conspicuity_isolated_focus_versus_a_field_of_similar_foci():
    from gdlesion.measure import conspicuity

    shape = (60, 60, 30)
    grid = np.indices(shape).astype(float)
    z = np.zeros(shape, dtype=np.float32)
    # left half: one focus; right half: the same focus among a lattice of similar ones
    lattice = [(x, y, k) for x in range(32, 60, 5) for y in range(0, 60, 5)
               for k in range(0, 30, 5)]  # holds (42, 30, 15)
    for c in [(15, 30, 15), *lattice]:
        bump = np.exp(-((grid - np.array(c)[:, None, None, None]) ** 2).sum(0) / 4.5)
        z = np.maximum(z, 8.0 * bump)
    labels = np.zeros(shape, dtype=np.int32)
    labels[(z >= 4) & (np.abs(grid[0] - 15) <= 2) & (np.abs(grid[1] - 30) <= 2)] = 1
    labels[(z >= 4) & (np.abs(grid[0] - 42) <= 2) & (np.abs(grid[1] - 30) <= 2)] = 2
    mask = np.ones(shape, dtype=bool)
    peaks = np.array([z[labels == 1].max(), z[labels == 2].max()], dtype=float)
    c = conspicuity(labels, 2, z, mask, np.ones(3), peaks=peaks)
    assert c[0] >= 10.0  # nothing around it: background floored at 0.5
    assert c[1] < 2.0  # its neighbours 5 mm away are as bright
    flair = load_params("flair")
    assert apply_rules(_table(conspicuity=1.9), flair).tolist() == ["inconspicuous"]
    assert apply_rules(_table(conspicuity=2.0), flair).tolist() == [""]
    # in the flair preset the shape of the peak does not change the threshold
    assert apply_rules(_table(conspicuity=2.0, blob_ratio=0.4), flair).tolist() == [""]


def test_flair_exemption_from_location_rules_only():
    p = DetectionParams(flair_exempt_z=2.0)
    at_edge = dict(edge_fraction=0.9, flair_z=2.0, blob_ratio=0.5)
    assert apply_rules(_table(**at_edge), DetectionParams()).tolist() == ["brain_edge"]
    assert apply_rules(_table(**at_edge), p).tolist() == [""]
    assert apply_rules(_table(edge_fraction=0.9, flair_z=1.9, blob_ratio=0.5), p).tolist() == [
        "brain_edge"
    ]
    # shape rules still apply to FLAIR-bright candidates
    assert apply_rules(_table(blob_ratio=0.1, flair_z=5.0), p).tolist() == ["vessel"]
    assert load_params("flair").flair_exempt_z == 2.0 and load_params().flair_exempt_z == 0.0


def test_fill_holes_matches_scipy_in_3d_and_slice_by_slice(rng):
    from scipy import ndimage as ndi

    from gdlesion.preprocess import fill_holes

    for _ in range(10):
        shape = tuple(int(s) for s in rng.integers(5, 25, 3))
        m = ndi.gaussian_filter(rng.random(shape), 1.2) > rng.uniform(0.45, 0.55)
        assert np.array_equal(fill_holes(m), ndi.binary_fill_holes(m))
        for axis in range(3):
            st = np.zeros((3, 3, 3), dtype=bool)
            plane = [slice(None)] * 3
            plane[axis] = 1
            st[tuple(plane)] = ndi.generate_binary_structure(2, 1)
            expected = ndi.binary_fill_holes(m, structure=st)
            assert np.array_equal(fill_holes(m, in_plane_of=axis), expected)
            # what measure._per_lesion_shape relies on: every 3-D hole is a hole of its slices
            assert not (fill_holes(m) & ~expected).any()
    # a closed shell with a dent: its cavity is a 3-D hole and a hole of every slice through it
    shell = _ball((15, 15, 15), (7, 7, 7), 6) & ~_ball((15, 15, 15), (7, 7, 7), 3.5)
    shell[1:3, 6:9, 6:9] = False
    cavity = fill_holes(shell) & ~shell
    assert cavity.sum() > 100
    for axis in range(3):
        assert not (cavity & ~fill_holes(shell, in_plane_of=axis)).any()


def test_interp_float32_equals_numpy_in_halves(rng):
    from gdlesion.preprocess import interp_float32

    xp = np.sort(rng.uniform(0, 500, 40))
    fp = rng.normal(size=40)
    for shape in ((131, 90, 100), (5, 4), ()):  # threaded (>= 1M voxels), small, 0-d
        x = rng.uniform(-50, 550, shape).astype(np.float32)
        got = interp_float32(x, xp, fp)
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.array_equal(got, np.interp(x, xp, fp).astype(np.float32))


def test_relabel_sequential_keeps_order_and_matches_a_unique_based_renumbering(rng):
    from gdlesion.segment import relabel_sequential

    for dtype in (np.int32, np.int64, np.uint16):
        labels = rng.integers(0, 40, size=(9, 7, 5)).astype(dtype)
        labels[rng.random(labels.shape) < 0.6] = 0
        for view in (labels, np.asfortranarray(labels), labels[:, ::2], labels.transpose(2, 0, 1)):
            kept = np.unique(view)
            kept = kept[kept > 0]
            lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
            lut[kept] = np.arange(1, kept.size + 1)
            out, n = relabel_sequential(view)
            assert n == kept.size and out.dtype == np.int32
            assert np.array_equal(out, lut[view])
    empty, n_empty = relabel_sequential(np.zeros((3, 3, 3), dtype=np.int32))
    assert n_empty == 0 and not empty.any()
    none, n_none = relabel_sequential(np.zeros((0, 3, 3), dtype=np.int32))
    assert n_none == 0 and none.shape == (0, 3, 3)


def test_context_features_equal_the_lesion_table_columns(rng):
    """The pipeline's second pass measures only these columns: same values as the full table."""
    from gdlesion.anatomy import anatomical_context
    from gdlesion.measure import CONTEXT_COLUMNS, context_features, lesion_features

    shape = (48, 40, 24)
    zooms = np.array([0.9, 1.1, 2.0])
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(zooms)
    grid = np.indices(shape).astype(float)
    mask = ((grid - np.array([24, 20, 12])[:, None, None, None]) ** 2
            / np.array([22, 18, 11])[:, None, None, None] ** 2).sum(0) <= 1
    post = np.where(mask, 400.0, 0.0) + rng.normal(0, 5, shape)
    post[20:28, 17:23, 10:14] = 60.0  # a CSF-dark space beside two of the lesions
    z = rng.normal(0, 1, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for k, centre in enumerate([(12, 20, 12), (30, 12, 8), (24, 30, 15), (26, 24, 12)], start=1):
        ball = _ball(shape, centre, 3) & mask
        labels[ball] = k
        z[ball] += 8.0 - 0.1 * ((grid[:, ball] - np.array(centre)[:, None]) ** 2).sum(0)
    context = anatomical_context(labels, mask=mask, post=post, pre_mapped=post - 10,
                                 zooms=zooms, csf_threshold=200.0)
    table = lesion_features(labels, 4, affine=affine, z=z, residual=z * 10, nawm_level=400.0,
                            context=context, edge_margin_mm=3.0, ventricle_margin_mm=2.0,
                            mask=mask)
    lazy = context_features(labels, 4, affine=affine, z=z, mask=mask, context=context,
                            ventricle_margin_mm=2.0)
    assert set(lazy) == set(CONTEXT_COLUMNS)
    for col in CONTEXT_COLUMNS:
        np.testing.assert_array_equal(lazy[col], table[col].to_numpy())
    assert np.isfinite(table["conspicuity"]).all()
    assert np.ptp(table["csf_distance_mm"].to_numpy()) > 0  # the dark box is a CSF space


def test_shift_tolerance_ignores_a_displaced_edge_but_keeps_new_enhancement(rng):
    """A bright structure moved by one voxel in the pre scan is no enhancement with
    ``shift_tolerance_mm``; a blob absent from the pre scan stays at full strength."""
    from gdlesion.segment import enhancement_map

    shape = (60, 60, 12)
    zooms = np.array([0.9, 0.9, 5.5])
    grid = np.indices(shape).astype(float)
    mask = np.zeros(shape, dtype=bool)
    mask[5:55, 5:55, 2:10] = True
    pre = np.where(mask, 400.0, 0.0) + rng.normal(0, 4, shape)
    pre[10:20, 10:50, 2:10] += 200.0  # a bright band (grey matter, a sinus)
    post = np.where(mask, 400.0, 0.0) + rng.normal(0, 4, shape)
    post[11:21, 10:50, 2:10] += 200.0  # the same band, registered 0.9 mm off
    blob = ((grid - np.array([40, 30, 6])[:, None, None, None]) ** 2
            * (zooms**2)[:, None, None, None]).sum(0) <= 3.0**2
    post[blob] += 120.0  # new enhancement, 30 %
    plain = load_params("clinical-2d").replace(shift_tolerance_mm=0.0)
    z_plain, r_plain, _ = enhancement_map(post, pre, mask, zooms, params=plain)
    z_shift, r_shift, _ = enhancement_map(post, pre, mask, zooms,
                                          params=load_params("clinical-2d"))
    edge = np.zeros(shape, dtype=bool)
    edge[20, 12:48, 3:9] = True  # where the band moved in
    assert z_plain[edge].max() >= 6.0  # without the tolerance the moved edge "enhances"
    assert z_shift[edge].max() < 3.0
    assert r_shift[blob].max() >= 0.9 * r_plain[blob].max()  # amplitude (intensity units)
    assert z_shift[blob].max() >= 10.0


def test_elongation_on_a_split_grid_discounts_the_acquired_slice():
    """A 3.3 mm nodule acquired in one 5.5 mm slice spans the slice on the working grid
    (five 1.1 mm slices): elongated by the slice, not by itself. With ``factors`` its
    elongation and length are those of a nodule; a vein running across five acquired
    slices stays long and elongated."""
    from gdlesion.anatomy import Context
    from gdlesion.measure import lesion_features

    shape = (40, 40, 60)
    zooms = np.array([0.9, 0.9, 1.1])
    grid = np.indices(shape).astype(float) * zooms[:, None, None, None]
    labels = np.zeros(shape, dtype=np.int32)
    inplane = (grid[0] - 9.0) ** 2 + (grid[1] - 9.0) ** 2 <= 1.65**2
    labels[inplane & (grid[2] >= 11.0) & (grid[2] < 16.5)] = 1  # one acquired slice
    tube = (grid[0] - 27.0) ** 2 + (grid[1] - 27.0) ** 2 <= 1.2**2
    labels[tube & (grid[2] >= 11.0) & (grid[2] < 38.5)] = 2  # five acquired slices
    count = int((labels > 0).sum())

    def measure(factors):
        return lesion_features(
            labels, 2, affine=np.diag([*zooms, 1.0]), z=np.ones(shape, np.float32),
            residual=np.ones(shape, np.float32), nawm_level=1.0,
            context=Context(*[np.full(count, 8.0)] * 3), edge_margin_mm=3.0,
            ventricle_margin_mm=2.0, factors=factors,
        )

    plain, split = measure(None), measure((1, 1, 5))
    assert plain["elongation"].iloc[0] > 1.5  # 5.5 mm tall, 3.3 mm wide
    assert split["elongation"].iloc[0] < 1.3
    assert split["length_mm"].iloc[0] < plain["length_mm"].iloc[0]
    assert split["elongation"].iloc[1] >= 3.0 and split["length_mm"].iloc[1] > 20.0
    for col in ("n_voxels", "volume_mm3", "compactness", "blob_ratio"):  # only the moments
        np.testing.assert_array_equal(split[col].to_numpy(), plain[col].to_numpy())
