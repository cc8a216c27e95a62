"""Binning helpers of the intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from gdlesion.preprocess import equal_count_bins, per_bin_median


@pytest.mark.parametrize("decimals", [0, 1, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_bin_median_is_the_lexsorted_median(rng, decimals, dtype):
    for _ in range(30):
        n = int(rng.integers(1, 2000))
        x = np.round(rng.normal(size=n), decimals)
        values = np.round(rng.normal(size=n), decimals).astype(dtype)
        idx, mid, _ = equal_count_bins(x, n_bins=int(rng.integers(1, 200)))
        expected = values[np.lexsort((values, idx))][mid]
        got = per_bin_median(values, idx, mid)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        anywhere = np.sort(rng.integers(0, n, size=5))  # any sorted positions, not only medians
        np.testing.assert_array_equal(
            per_bin_median(values, idx, anywhere), values[np.lexsort((values, idx))][anywhere]
        )
