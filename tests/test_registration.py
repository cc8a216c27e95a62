"""Rigid registration: known transforms (synthetic and real), direction, determinism, failures."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import oblique_affine
from gdlesion.errors import RegistrationError
from gdlesion.io import Volume, load_volume
from gdlesion.registration import (
    MIN_OVERLAP,
    RegistrationResult,
    register_rigid,
    resample_volume,
    rigid_matrix,
)


def max_error_mm(estimated: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """Max over ``points`` (N, 3) RAS mm of |M_est x - M_true x|."""
    diff = points @ (estimated[:3, :3] - truth[:3, :3]).T + (estimated[:3, 3] - truth[:3, 3])
    return float(np.sqrt((diff**2).sum(axis=1)).max())


def phantom(points: np.ndarray) -> np.ndarray:
    """Asymmetric head-like phantom evaluated at (..., 3) RAS mm points (smooth edges)."""

    def blob(centre, radii, width=1.5):
        r = np.sqrt((((points - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=-1))
        return 0.5 * (1 - np.tanh((r - 1) * np.min(radii) / width))

    head = blob((0, 0, 0), (62, 80, 70))
    brain = blob((0, 2, 4), (54, 72, 62))
    out = 150 * head - 60 * brain  # bright scalp shell, brain darker
    out += -45 * blob((-8, 5, 10), (6, 20, 9)) - 40 * blob((9, 8, 12), (5, 16, 8))  # ventricles
    out += 50 * blob((25, -30, 20), (8, 8, 8)) + 35 * blob((-30, 35, -15), (10, 6, 12))
    out += 25 * blob((10, 45, -25), (14, 8, 6))
    # smooth anatomical texture (moves with the head) so that every rotation axis is constrained
    texture = np.sin(points @ _WAVES.T + _PHASES) @ _AMPLITUDES
    return out + brain * texture


_rs = np.random.default_rng(3)
_directions = _rs.normal(size=(16, 3))
_WAVES = _directions / np.linalg.norm(_directions, axis=1, keepdims=True) * (
    2 * np.pi / _rs.uniform(12, 35, (16, 1)))  # wavelengths 12-35 mm
_PHASES = _rs.uniform(0, 2 * np.pi, 16)
_AMPLITUDES = _rs.uniform(3, 8, 16)


def grid_points(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def centred(affine: np.ndarray, shape) -> np.ndarray:
    """Shift ``affine`` so the grid is centred on the world origin (the head lies inside it)."""
    out = affine.copy()
    out[:3, 3] = -out[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return out


@pytest.fixture(scope="module")
def synthetic_fixed() -> Volume:
    shape = (96, 100, 64)
    affine = centred(oblique_affine(zooms=(2.0, 2.2, 3.0)), shape)
    return Volume(phantom(grid_points(shape, affine)).astype(np.float32), affine, "post.nii.gz")


def make_moving(fixed: Volume, truth: np.ndarray, rng, *, noise: float = 2.0) -> Volume:
    """Sample the phantom through ``truth`` on a differently oriented grid, other contrast."""
    shape = (110, 108, 58)
    affine = centred(oblique_affine(zooms=(1.8, 2.0, 3.3), angles_deg=(-5.0, 9.0, -14.0)), shape)
    affine[:3, 3] += (3.0, -4.0, 5.0)
    world = grid_points(shape, affine)
    inv = np.linalg.inv(truth)
    anatomy = world @ inv[:3, :3].T + inv[:3, 3]  # moving point y shows the fixed anatomy T^-1 y
    values = phantom(anatomy)
    # another contrast than the fixed scan, plus noise
    values = 0.02 * np.clip(values, 0, None) ** 1.5 + noise * rng.standard_normal(values.shape)
    return Volume(values.astype(np.float32), affine, "pre.nii.gz")


@pytest.fixture(scope="module")
def synthetic_pair(synthetic_fixed):
    truth = rigid_matrix(rotation_deg=(6.0, -4.0, 9.0), translation_mm=(7.0, -5.0, 4.0),
                         center_mm=(5.0, 0.0, -3.0))
    moving = make_moving(synthetic_fixed, truth, np.random.default_rng(7))
    return moving, synthetic_fixed, truth


def head_points(fixed: Volume) -> np.ndarray:
    world = grid_points(fixed.shape, fixed.affine)
    return world[phantom(world) > 60]


# --- helpers ------------------------------------------------------------------------------


def test_rigid_matrix_rotates_about_centre_and_is_orthonormal():
    centre = np.array([10.0, -20.0, 5.0])
    m = rigid_matrix(rotation_deg=(10, -20, 30), translation_mm=(1, 2, 3), center_mm=centre)
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(m @ np.append(centre, 1), np.append(centre + [1, 2, 3], 1))
    quarter = rigid_matrix(rotation_deg=(0, 0, 90))
    np.testing.assert_allclose(quarter @ [1, 0, 0, 1], [0, 1, 0, 1], atol=1e-12)  # R -> A


def test_resample_identity_same_grid_returns_data(rng, affine_oblique, shape_unequal):
    vol = Volume(rng.normal(size=shape_unequal).astype(np.float32), affine_oblique, "x")
    out = resample_volume(vol, vol)
    np.testing.assert_allclose(out.data, vol.data, atol=1e-4)
    np.testing.assert_array_equal(out.affine, vol.affine)


def test_resample_matrix_maps_reference_point_to_moving_point(rng, affine_oblique, shape_unequal):
    labels = rng.integers(0, 5, size=shape_unequal).astype(np.int16)
    vol = Volume(labels, affine_oblique, "labels")
    step_i = np.eye(4)
    step_i[:3, 3] = affine_oblique[:3, 0]  # one voxel along i, in world mm
    out = resample_volume(vol, vol, step_i, interpolation="nearest", default_value=-1)
    assert out.data.dtype == np.int16
    np.testing.assert_array_equal(out.data[:-1], labels[1:])  # value at x is moving at M x
    assert (out.data[-1] == -1).all()


def test_resample_rejects_bad_options(rng, affine_oblique, shape_unequal):
    vol = Volume(rng.normal(size=shape_unequal).astype(np.float32), affine_oblique)
    with pytest.raises(ValueError, match="interpolation must be"):
        resample_volume(vol, vol, interpolation="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be 4x4"):
        resample_volume(vol, vol, np.eye(3))


# --- synthetic known transform --------------------------------------------------------------


def test_synthetic_known_transform_oblique_grids(synthetic_pair):
    moving, fixed, truth = synthetic_pair
    result = register_rigid(moving, fixed)
    assert isinstance(result, RegistrationResult)
    assert max_error_mm(result.matrix_ras, truth, head_points(fixed)) <= 0.5
    assert result.registered.shape == fixed.shape
    np.testing.assert_array_equal(result.registered.affine, fixed.affine)
    assert result.metric_final < result.metric_initial
    assert result.similarity_after > result.similarity_before
    assert result.similarity_after > 0.9
    assert result.overlap_fraction >= MIN_OVERLAP
    assert result.iterations > 0 and result.stop_reason


def test_matrix_maps_fixed_point_to_moving_point(synthetic_fixed):
    # The nibabel way: same voxels, affine moved by T. A fixed point x shows the anatomy the
    # moving scan has at T x, so the returned matrix must be T itself (not its inverse).
    shift = rigid_matrix(translation_mm=(10.0, 0.0, 0.0))
    moving = Volume(synthetic_fixed.data, shift @ synthetic_fixed.affine, "moved")
    result = register_rigid(moving, synthetic_fixed)
    np.testing.assert_allclose(result.matrix_ras[:3, 3], [10.0, 0.0, 0.0], atol=0.3)
    np.testing.assert_allclose(result.matrix_ras[:3, :3], np.eye(3), atol=5e-3)
    again = resample_volume(moving, synthetic_fixed, result.matrix_ras)
    np.testing.assert_allclose(again.data, result.registered.data, atol=1e-3)
    head = synthetic_fixed.data > 60
    assert np.abs(result.registered.data - synthetic_fixed.data)[head].mean() < 2.0


def test_deterministic_bit_identical(synthetic_pair):
    moving, fixed, _ = synthetic_pair
    first = register_rigid(moving, fixed)
    second = register_rigid(moving, fixed)
    np.testing.assert_array_equal(first.matrix_ras, second.matrix_ras)
    np.testing.assert_array_equal(first.registered.data, second.registered.data)
    assert json.dumps(first.qc_dict(), sort_keys=True) == json.dumps(
        {**second.qc_dict(), "elapsed_s": first.qc_dict()["elapsed_s"]}, sort_keys=True)


def test_concurrent_registrations_are_bit_identical_and_restore_itk_threads(synthetic_pair):
    """run_study registers pre and FLAIR in two threads: each must equal a lone run."""
    moving, fixed, _ = synthetic_pair
    alone = register_rigid(moving, fixed)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(register_rigid, moving, fixed) for _ in range(3)]
        results = [job.result() for job in jobs]
    for result in results:
        np.testing.assert_array_equal(result.matrix_ras, alone.matrix_ras)
        np.testing.assert_array_equal(result.registered.data, alone.registered.data)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def test_qc_dict_is_json_ready(synthetic_pair):
    moving, fixed, truth = synthetic_pair
    qc = register_rigid(moving, fixed).qc_dict()
    text = json.dumps(qc, allow_nan=False)
    assert json.loads(text)["matrix_ras"][3] == [0.0, 0.0, 0.0, 1.0]
    assert set(qc) >= {"metric_initial", "metric_final", "similarity_before", "similarity_after",
                       "overlap_fraction", "iterations", "stop_reason", "elapsed_s"}
    np.testing.assert_allclose(qc["rotation_deg"], [6.0, -4.0, 9.0], atol=0.3)


# --- failures -----------------------------------------------------------------------------------


def test_disjoint_heads_raise(synthetic_fixed):
    far = Volume(synthetic_fixed.data, rigid_matrix(translation_mm=(0, 500, 0))
                 @ synthetic_fixed.affine, "far.nii.gz")
    with pytest.raises(RegistrationError, match=r"far\.nii\.gz onto post\.nii\.gz: the heads do "
                                                r"not overlap in world space \(centres 500 mm"):
        register_rigid(far, synthetic_fixed)


def test_other_object_fails_overlap_check(synthetic_fixed, rng):
    # a small object that cannot cover the fixed head: registration "converges" but overlaps little
    world = grid_points(synthetic_fixed.shape, synthetic_fixed.affine)
    small = 100.0 * (np.sqrt((world**2).sum(axis=-1)) < 25) + rng.normal(0, 1, world.shape[:3])
    moving = Volume(small.astype(np.float32), synthetic_fixed.affine, "ball.nii.gz")
    with pytest.raises(RegistrationError, match=r"ball\.nii\.gz .*of the fixed head overlaps"):
        register_rigid(moving, synthetic_fixed)


def test_bad_options_raise(synthetic_pair):
    moving, fixed, _ = synthetic_pair
    with pytest.raises(ValueError, match="init must be"):
        register_rigid(moving, fixed, init="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="levels_mm must be positive"):
        register_rigid(moving, fixed, levels_mm=(4.0, 0.0))


# --- real data ------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    ("patient", "rotation", "translation"),
    [("patient07", (8.0, -8.0, 8.0), (8.0, -8.0, 8.0)),  # accuracy case, <= 10 deg / 10 mm
     ("patient19", (-15.0, 10.0, 12.0), (20.0, -12.0, 10.0))],  # 15 deg / 20 mm convergence
)
def test_lesjak_moved_by_known_transform(lesjak_dir, patient, rotation, translation):
    pre = load_volume(lesjak_dir / patient / "T1.nii.gz", role="pre-contrast scan")
    post = load_volume(lesjak_dir / patient / "T1POST.nii.gz", role="post-contrast scan")
    brain = post.voxel_to_world(np.argwhere(post.data > 0))
    truth = rigid_matrix(rotation_deg=rotation, translation_mm=translation,
                         center_mm=tuple(brain.mean(axis=0)))
    moved = Volume(pre.data, truth @ pre.affine, "T1_moved")  # move the affine, not the voxels
    result = register_rigid(moved, post)
    assert max_error_mm(result.matrix_ras, truth, brain) <= 0.5
    assert result.similarity_after > result.similarity_before + 0.3


@pytest.mark.realdata
@pytest.mark.slow
def test_tcga_native_thick_slice_pair(tcga_dir):
    pre = load_volume(tcga_dir / "native" / "T1w_pre.nii.gz", role="pre-contrast scan")
    post = load_volume(tcga_dir / "native" / "T1w_post_gad.nii.gz", role="post-contrast scan")
    np.testing.assert_array_equal(pre.affine, post.affine)  # same header although the head moved
    result = register_rigid(pre, post)
    assert result.similarity_after > result.similarity_before + 0.15
    angle = np.rad2deg(np.arccos((np.trace(result.matrix_ras[:3, :3]) - 1) / 2))
    assert angle > 3.0  # the head really turned; the identity would not do
    # a careful slow registration (full resolution, 3x the samples) agrees within 1 mm
    careful = register_rigid(pre, post, levels_mm=(4.0, 2.0, 1.0), samples_per_level=60_000)
    head = post.voxel_to_world(np.argwhere(post.data > np.percentile(post.data, 60)))
    assert max_error_mm(result.matrix_ras, careful.matrix_ras, head) <= 1.0
    # the registered pre's head lies on the post's head (Dice of the head masks improves)
    def dice(a, b):
        return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    post_head = post.data > np.percentile(post.data, 60)
    level = np.percentile(pre.data, 60)
    before = dice(pre.data > level, post_head)
    assert dice(result.registered.data > level, post_head) > before + 0.02


@pytest.mark.parametrize("seed", [1, 3])
def test_simulated_head_overlap_is_measured_on_the_whole_head(seed):
    """Regression: Otsu on a pre scan with dark skull picked the brain only (overlap ~42%)."""
    from gdlesion.simulate import simulate_study

    study = simulate_study(resolution="1mm", voxel_size=3.0, n_lesions=1, seed=seed,
                           subject_seed=seed + 100)
    result = register_rigid(study.pre, study.post)
    assert result.overlap_fraction > 0.9
    x = study.post.voxel_to_world(np.argwhere(study.post.data > np.percentile(study.post.data, 60)))
    xh = np.c_[x, np.ones(len(x))]
    err = np.linalg.norm((xh @ (result.matrix_ras - study.matrix_ras).T)[:, :3], axis=1)
    assert err.max() < 1.0


def test_head_mask_equals_the_scipy_and_skimage_formulation(synthetic_pair, rng):
    """The registration's SimpleITK-only head mask is the one scipy and scikit-image give."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from gdlesion import registration as reg
    from gdlesion.io import to_sitk
    from gdlesion.preprocess import fill_holes

    def reference(image: sitk.Image) -> np.ndarray:
        arr = sitk.GetArrayViewFromImage(image)
        values = arr[:: max(1, arr.shape[0] // 16)].ravel()
        fg = arr > min(threshold_otsu(values), 0.1 * float(np.percentile(values, 99)))
        labels, n = ndi.label(fg)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            fg = labels == int(np.argmax(sizes))
        return fill_holes(fg)

    moving, fixed, _ = synthetic_pair
    for volume in (moving, fixed):
        for mm in (4.0, 8.0):
            level = reg._shrink(to_sitk(volume), mm)
            assert np.array_equal(reg._head_mask(level), reference(level))
    # the Otsu level decides when it is below 10 % of the 99th percentile: a bright
    # minority of voxels on a dim background (with a hole, and a second, smaller blob)
    data = rng.normal(10.0, 1.0, (30, 32, 28)).astype(np.float32)
    data[5:25, 6:26, 4:24] = 300.0
    data[12:16, 12:16, 10:14] = 10.0
    data[27:29, 2:5, 2:5] = 300.0
    image = sitk.GetImageFromArray(data)
    values = data[:: max(1, data.shape[0] // 16)].ravel()
    assert threshold_otsu(values) < 0.1 * np.percentile(values, 99)
    assert np.array_equal(reg._head_mask(image), reference(image))
    for _ in range(50):
        mask = rng.random((9, 12, 7)) > rng.uniform(0.3, 0.7)
        assert np.array_equal(reg._fill_holes(mask), fill_holes(mask))


def test_registration_imports_neither_scipy_ndimage_nor_skimage():
    """``inspect`` starts the registration before scipy.ndimage and scikit-image are loaded."""
    import subprocess
    import sys

    code = (
        "import sys, gdlesion.registration; "
        "print(sorted(m for m in ('scipy.ndimage', 'skimage', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
