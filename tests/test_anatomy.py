"""Candidate-independent anatomy maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from gdlesion.anatomy import anatomy_maps


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (0.9, 0.9, 5.5)])
def test_depth_is_scipys_exact_distance_bit_for_bit(rng, zooms):
    zooms = np.asarray(zooms)
    for shape in ((7, 8, 9), (30, 24, 19)):
        noise = ndi.gaussian_filter(rng.random(shape), 1.5)
        mask = noise > np.median(noise)
        mask[0] = True  # touches the grid's edge, which counts as outside
        post = rng.normal(100.0, 10.0, shape).astype(np.float32)
        maps = anatomy_maps(mask=mask, post=post, pre_mapped=post, zooms=zooms,
                            csf_threshold=90.0)
        expected = ndi.distance_transform_edt(np.pad(mask, 1), sampling=zooms)[1:-1, 1:-1, 1:-1]
        assert maps.depth_mm.dtype == np.float64
        np.testing.assert_array_equal(maps.depth_mm, expected)
