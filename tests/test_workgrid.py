"""Working grid for coarse voxels: subdivision and the way back to the post grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import oblique_affine
from gdlesion.io import Volume
from gdlesion.workgrid import (
    block_any,
    block_labels,
    block_mean,
    repeat_blocks,
    subdivide,
    subdivision_factors,
    table_to_post_grid,
)


@pytest.mark.parametrize(
    ("zooms", "work", "expected"),
    [
        ((1.0, 1.0, 3.0), 1.0, (1, 1, 3)),
        ((0.9, 0.9, 1.99), 1.0, (1, 1, 1)),  # split only at twice the working size
        ((2.0, 2.0, 2.0), 1.0, (2, 2, 2)),  # inclusive
        ((0.9, 0.9, 5.5), 1.0, (1, 1, 5)),
        ((0.45, 0.45, 5.5), 1.0, (1, 1, 1)),  # working voxels would be 0.22 mm3: not split
        ((1.0, 1.0, 3.0), 0.0, (1, 1, 1)),  # off
    ],
)
def test_subdivision_factors(zooms, work, expected):
    assert subdivision_factors(np.asarray(zooms), work) == expected


def test_subdivide_keeps_world_positions():
    aff = oblique_affine(zooms=(1.0, 1.2, 3.0), angles_deg=(10.0, -5.0, 15.0), origin=(4, -7, 9))
    vol = Volume(np.zeros((9, 8, 7), np.float32), aff, "post")
    # a linear function of world x, y, z: linear interpolation reproduces it exactly
    xyz = vol.voxel_to_world(np.indices(vol.shape).reshape(3, -1).T)
    vol = vol.with_data((xyz @ [0.5, -1.0, 2.0] + 10.0).reshape(vol.shape).astype(np.float32))
    fine = subdivide(vol, (1, 1, 3))
    assert fine.shape == (9, 8, 21)
    assert np.allclose(fine.zooms, [1.0, 1.2, 1.0])
    # the fine voxels of post voxel (4, 4, 3) surround its centre
    centre = vol.voxel_to_world(np.array([4.0, 4.0, 3.0]))
    assert np.allclose(fine.voxel_to_world(np.array([4.0, 4.0, 10.0])), centre)
    inner = np.indices(fine.shape).reshape(3, -1).T
    inner = inner[(inner[:, 2] >= 1) & (inner[:, 2] <= 19)]  # not the half voxel beyond the ends
    expect = fine.voxel_to_world(inner.astype(float)) @ [0.5, -1.0, 2.0] + 10.0
    assert np.allclose(fine.data[tuple(inner.T)], expect, atol=1e-3)


def test_blocks_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((4, 5, 3)) > 0.5
    values = rng.random((4, 5, 3)).astype(np.float32)
    k = (1, 2, 3)
    assert repeat_blocks(mask, k).shape == (4, 10, 9)
    assert np.array_equal(block_any(repeat_blocks(mask, k), k), mask)
    assert np.allclose(block_mean(repeat_blocks(values, k), k), values)


def test_block_labels_most_covering_label_and_no_lesion_lost():
    fine = np.zeros((1, 1, 9), np.int32)
    fine[0, 0, :3] = [0, 0, 2]  # one voxel of lesion 2: the post voxel is lesion 2
    fine[0, 0, 3:6] = [1, 2, 2]  # lesion 2 covers most
    fine[0, 0, 6:9] = [3, 1, 0]  # tie: the lower label
    assert block_labels(fine, (1, 1, 3)).ravel().tolist() == [2, 2, 1]


def test_table_to_post_grid_counts_voxels_of_the_label_map():
    labels = np.zeros((2, 2, 2), np.int32)
    labels[0, 0, :] = 1
    labels[1, 1, 1] = 2
    table = pd.DataFrame({
        "lesion_id": [1, 2], "n_voxels": [6, 1], "volume_mm3": [6.0, 1.0],
        "bbox_i_min": [0, 1], "bbox_i_max": [0, 1], "bbox_j_min": [0, 1], "bbox_j_max": [0, 1],
        "bbox_k_min": [0, 5], "bbox_k_max": [5, 5],
    })
    out = table_to_post_grid(table, labels, (1, 1, 3))
    assert out["n_voxels"].tolist() == [2, 1]
    assert out["bbox_k_min"].tolist() == [0, 1] and out["bbox_k_max"].tolist() == [1, 1]
    assert out["volume_mm3"].tolist() == [6.0, 1.0]  # measured on the finer grid, kept
