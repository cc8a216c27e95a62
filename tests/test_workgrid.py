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
    merge,
    merge_factors,
    repeat_blocks,
    subdivide,
    subdivision_factors,
    table_to_post_grid,
    unmerge,
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


@pytest.mark.parametrize(
    ("zooms", "expected"),
    [
        ((0.45, 0.45, 5.5), (2, 2, 1)),  # 512 matrix, 5.5 mm slices: 0.9 x 0.9 x 1.1 mm working
        ((0.45, 0.45, 3.0), (2, 2, 1)),
        ((0.3, 5.0, 0.3), (3, 1, 3)),  # slice axis anywhere
        ((0.6, 0.6, 5.0), (2, 2, 1)),  # else split only in two: 2.5 mm working slices
        ((0.7, 0.7, 5.0), (1, 1, 1)),  # splits into 0.7 x 0.7 x 1.67 mm: no merge needed
        ((0.9, 0.9, 5.5), (1, 1, 1)),
        ((0.5, 0.5, 1.0), (2, 2, 1)),  # a 512-matrix 3-D scan: analysed on 1 mm voxels
        ((0.45, 0.45, 0.45), (2, 2, 2)),
        ((0.625, 0.625, 1.0), (1, 1, 1)),  # merged voxels would be 1.25 mm: as it is
        ((0.508, 0.508, 1.0), (2, 2, 1)),  # 260 mm / 512: 1.016 mm merged
        ((0.8, 0.8, 0.8), (1, 1, 1)),  # near the working size: as it is
        ((1.0, 1.0, 1.0), (1, 1, 1)),
    ],
)
def test_merge_factors_bring_fine_axes_near_the_working_size(zooms, expected):
    assert merge_factors(np.asarray(zooms), 1.0) == expected
    merged = np.asarray(zooms) * expected
    split = subdivision_factors(merged, 1.0)
    assert (merged / split).max() < 2.0  # every axis near the working size afterwards
    assert merge_factors(np.asarray(zooms), 0.0) == (1, 1, 1)


def test_merge_keeps_world_positions_and_unmerge_crops_back():
    aff = oblique_affine(zooms=(0.45, 0.5, 5.0), angles_deg=(10.0, -5.0, 15.0), origin=(4, -7, 9))
    shape = (9, 8, 5)  # odd along i: padded with the edge, cropped again
    vol = Volume(np.zeros(shape, np.float32), aff, "post")
    xyz = vol.voxel_to_world(np.indices(shape).reshape(3, -1).T)
    vol = vol.with_data((xyz @ [0.5, -1.0, 2.0] + 10.0).reshape(shape).astype(np.float32))
    coarse = merge(vol, (2, 2, 1))
    assert coarse.shape == (5, 4, 5) and coarse.data.dtype == np.float32
    assert np.allclose(coarse.zooms, [0.9, 1.0, 5.0])
    # a merged voxel's value and centre are its block's mean: a linear function agrees
    inner = np.indices((4, 4, 5)).reshape(3, -1).T.astype(float)
    expect = coarse.voxel_to_world(inner) @ [0.5, -1.0, 2.0] + 10.0
    assert np.allclose(coarse.data[:4], expect.reshape(4, 4, 5), atol=1e-3)
    first_block_centre = vol.voxel_to_world(np.array([0.5, 0.5, 0.0]))
    assert np.allclose(coarse.voxel_to_world(np.zeros(3)), first_block_centre)
    back = unmerge(coarse.data, (2, 2, 1), shape)
    assert back.shape == shape
    assert np.array_equal(back[1::2, 1::2], coarse.data[:4])
    # masks by majority: a block of 4 needs 3 set
    m = np.zeros(shape, bool)
    m[0:2, 0:2, 0] = [[True, True], [True, False]]
    m[2:4, 0:2, 0] = [[True, False], [True, False]]
    out = np.asarray(merge(vol.with_data(m), (2, 2, 1), labels=True).data)
    assert out.dtype == bool and out[0, 0, 0] and not out[1, 0, 0] and out.sum() == 1


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


def test_table_to_post_grid_undoes_an_in_plane_merge():
    labels = np.zeros((5, 4, 2), np.int32)
    labels[2:4, 0:2, :] = 1  # merged voxel (1, 0) of a 2x2x1 merge, both slices
    labels[4, 2:4, 1] = 2  # merged voxel (2, 1): its block reaches past the odd edge
    table = pd.DataFrame({
        "lesion_id": [1, 2], "n_voxels": [6, 1], "volume_mm3": [6.0, 1.0],
        "bbox_i_min": [1, 2], "bbox_i_max": [1, 2], "bbox_j_min": [0, 1], "bbox_j_max": [0, 1],
        "bbox_k_min": [0, 3], "bbox_k_max": [5, 5],
    })
    out = table_to_post_grid(table, labels, (1, 1, 3), (2, 2, 1))
    assert out["n_voxels"].tolist() == [8, 2]
    for lid in (1, 2):
        ijk = np.argwhere(labels == lid)
        row = out.set_index("lesion_id").loc[lid]
        assert [row[f"bbox_{a}_min"] for a in "ijk"] == ijk.min(0).tolist()
        assert [row[f"bbox_{a}_max"] for a in "ijk"] == ijk.max(0).tolist()
