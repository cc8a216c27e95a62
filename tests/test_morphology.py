"""The grey-level morphology helpers give exactly SimpleITK's results."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from gdlesion import _morphology
from gdlesion._morphology import distance_transform_edt, regional_maxima


def _sitk_regional_maxima(image: np.ndarray) -> np.ndarray:
    out = sitk.RegionalMaxima(
        sitk.GetImageFromArray(image), backgroundValue=0, foregroundValue=1, fullyConnected=True
    )
    return sitk.GetArrayFromImage(out).astype(bool)


@pytest.mark.parametrize("levels", [1, 2, 3, 6])
def test_regional_maxima_equals_simpleitk_on_plateaus(levels):
    rng = np.random.default_rng(levels)
    for _ in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 12, 3))
        image = rng.integers(0, levels, shape).astype(np.float32)
        if rng.random() < 0.5:  # wide plateaus and ties
            image = np.round(ndi.uniform_filter(image, 2), 1).astype(np.float32)
        np.testing.assert_array_equal(regional_maxima(image), _sitk_regional_maxima(image))


def test_regional_maxima_plateau_touching_a_higher_voxel_is_not_a_maximum():
    image = np.zeros((3, 7, 5), np.float32)
    image[1, 1:6, 2] = 2.0  # a ridge ...
    image[1, 6, 2] = 3.0  # ... that rises at its end
    image[0, 0, 0] = 1.0  # an isolated peak of the background
    peaks = regional_maxima(image)
    assert peaks[1, 6, 2] and peaks[0, 0, 0]
    assert not peaks[1, 1:6, 2].any()
    assert regional_maxima(np.ones((2, 3, 4))).all()  # a flat image is one maximum


@pytest.mark.parametrize(
    "sampling",
    [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), (0.9, 0.9, 5.5), (3.0, 3.0, 3.0)],
)
def test_distance_transform_edt_is_scipys_bit_for_bit(sampling, monkeypatch):
    monkeypatch.setattr(_morphology, "_MAURER_MIN_VOXELS", 0)  # small arrays take that path too
    rng = np.random.default_rng(7)
    for n in range(25):
        shape = tuple(int(s) for s in rng.integers(1, 30, 3))
        mask = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3.0)) > rng.uniform(0.4, 0.6)
        if n == 0:
            mask[:] = True  # no background
        elif n == 1:
            mask[:] = False
        got = distance_transform_edt(mask, np.asarray(sampling))
        expected = ndi.distance_transform_edt(mask, sampling=sampling)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_regional_maxima_within_a_raised_mask_equals_simpleitk(rng):
    for n in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 14, 3))
        within = ndi.gaussian_filter(rng.random(shape), 1.0) > 0.5
        image = np.zeros(shape, np.float32)
        levels = rng.integers(1, 5, shape).astype(np.float32)
        image[within] = 1.0 + np.round(ndi.uniform_filter(levels, 2), 1)[within]
        if n % 4 == 0:  # not raised: a voxel outside as high as the mask
            image[~within] = 3.0
        expected = _sitk_regional_maxima(image) & within
        np.testing.assert_array_equal(regional_maxima(image, within=within), expected)
