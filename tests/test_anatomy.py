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


def _pockets():
    """A brain ball with a sulcus open to the outside and two enclosed dark pockets.

    On the pre scan all three are dark (CSF class). On the post scan the first pocket
    stays dark but holds a small bright "plexus" (a ventricle); the second is filled by
    contrast (a T1-hypointense enhancing lesion).
    """
    shape = (60, 60, 60)
    zooms = np.ones(3)
    grid = np.indices(shape) - 30

    def sphere(centre, radius):
        return np.sqrt(((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0)) <= radius

    mask = sphere((0, 0, 0), 26)
    pre = np.where(mask, 100.0, 0.0).astype(np.float32)
    sulcus = mask & (np.abs(grid[0]) <= 1) & (grid[1] > 12)
    ventricle = sphere((-10, 0, 0), 6)
    lesion = sphere((10, -8, 0), 4)
    plexus = sphere((-10, 0, 0), 2.5)
    for region in (sulcus, ventricle, lesion):
        pre[region] = 20.0
    post = pre.copy()
    post[plexus] = 180.0
    post[lesion] = 150.0
    return mask, pre, post, zooms, sulcus, ventricle, lesion, plexus


def test_enclosed_pocket_filled_by_contrast_is_not_csf_space():
    from gdlesion.anatomy import csf_space

    mask, pre, post, zooms, sulcus, ventricle, lesion, plexus = _pockets()
    without = csf_space(pre, mask, zooms, csf_threshold=60.0)
    assert without[lesion].all() and without[ventricle].all()  # pre scan alone: all dark
    space = anatomy_maps(mask=mask, post=post, pre_mapped=pre, zooms=zooms,
                         csf_threshold=60.0).csf_space
    assert space[sulcus].all()  # open to the outside of the brain
    assert space[ventricle].all() and space[plexus].all()  # mostly dark on post too
    assert not space[lesion].any()  # the contrast fills it: tissue, not CSF
    deep = ndi.binary_erosion(mask, iterations=3)
    assert not space[deep & (np.indices(mask.shape)[0] > 40)].any()  # plain tissue


def test_filled_pocket_beside_the_ventricles_stays_csf_space():
    from gdlesion.anatomy import csf_space

    mask, pre, post, zooms, sulcus, ventricle, lesion, plexus = _pockets()
    beside = np.zeros_like(mask)
    beside[46:49, 20:25, 28:33] = True  # a "ventricle" 2 mm from the filled pocket's edge
    assert not (beside & lesion).any()
    kept = csf_space(pre, mask, zooms, csf_threshold=60.0, post=post, ventricles=beside)
    assert kept[lesion].all()
    far = np.zeros_like(mask)
    far[28:33, 45:48, 28:33] = True
    assert not csf_space(pre, mask, zooms, csf_threshold=60.0, post=post, ventricles=far)[
        lesion].any()


def test_ventricle_neighbourhood_reaches_half_an_acquired_slice():
    from gdlesion.anatomy import anatomical_context, ventricle_zooms

    zooms = np.array([1.0, 1.0, 1.1])  # 5.5 mm slices split into five working slices
    vz = ventricle_zooms(zooms, (1, 1, 5), margin_mm=2.0, slice_fraction=0.5)
    np.testing.assert_allclose(vz, [1.0, 1.0, 1.1 * 2.0 / 2.75])
    # 3 mm slices: half a slice is under the 2 mm margin, nothing changes
    np.testing.assert_array_equal(
        ventricle_zooms(np.ones(3), (1, 1, 3), margin_mm=2.0, slice_fraction=0.5), np.ones(3))
    np.testing.assert_array_equal(  # off, and an unsplit grid
        ventricle_zooms(zooms, (1, 1, 5), margin_mm=2.0, slice_fraction=0.0), zooms)
    np.testing.assert_array_equal(
        ventricle_zooms(zooms, (1, 1, 1), margin_mm=2.0, slice_fraction=0.5), zooms)
    shape = (20, 20, 20)
    mask = np.ones(shape, dtype=bool)
    post = np.full(shape, 100.0, dtype=np.float32)
    maps = anatomy_maps(mask=mask, post=post, pre_mapped=post, zooms=zooms, csf_threshold=50.0)
    vent = np.zeros(shape, dtype=bool)
    vent[8:12, 8:12, 10] = True
    maps = type(maps)(maps.depth_mm, maps.csf_space, vent)
    labels = np.zeros(shape, dtype=np.int32)
    labels[10, 10, 12] = 1  # 2.2 mm across the slices: within 2.75 mm, not within 2 mm
    labels[10, 14, 10] = 2  # 3 mm in-plane: outside either way
    iso = anatomical_context(labels, zooms=zooms, maps=maps).ventricle_distance_mm
    split = anatomical_context(labels, zooms=zooms, maps=maps,
                               ventricle_zooms=vz).ventricle_distance_mm
    np.testing.assert_allclose(iso, [2.2, 3.0])
    assert split[0] <= 2.0 < iso[0]
    assert split[1] == pytest.approx(3.0)


def test_edge_band_reaches_a_whole_acquired_slice_on_split_grids():
    """A surface vessel averaged over a 5.5 mm slice reaches deeper than the 3 mm edge band on
    the working slices; on split grids the band is a slice deep (``edge_slice_fraction``)."""
    from gdlesion.anatomy import Context, edge_margin
    from gdlesion.measure import lesion_features
    from gdlesion.params import DetectionParams
    from gdlesion.rules import brain_edge

    zooms = np.array([0.9, 0.9, 1.1])
    p = DetectionParams()
    assert p.edge_slice_fraction == 1.0
    assert edge_margin(zooms, (1, 1, 5), margin_mm=3.0, slice_fraction=1.0) == pytest.approx(5.5)
    assert edge_margin(zooms, (1, 1, 1), margin_mm=3.0, slice_fraction=1.0) == 3.0  # unsplit
    assert edge_margin(zooms, (1, 1, 5), margin_mm=3.0, slice_fraction=0.0) == 3.0  # off
    assert edge_margin(np.ones(3), (1, 1, 3), margin_mm=3.0, slice_fraction=1.0) == 3.0  # 3 mm
    # a focus whose voxels lie 1-5.2 mm under the surface (one per working slice)
    shape = (8, 8, 12)
    labels = np.zeros(shape, dtype=np.int32)
    labels[4, 4, 3:9] = 1
    depth = np.array([1.0, 2.2, 3.4, 4.0, 4.6, 5.2])

    def table(margin):
        return lesion_features(
            labels, 1, affine=np.diag([*zooms, 1.0]), z=np.ones(shape, np.float32),
            residual=np.ones(shape, np.float32), nawm_level=1.0,
            context=Context(depth, *[np.full(6, 8.0)] * 2), edge_margin_mm=margin,
            ventricle_margin_mm=2.0, factors=(1, 1, 5),
        )

    thin, whole = table(3.0), table(edge_margin(zooms, (1, 1, 5), margin_mm=3.0,
                                                 slice_fraction=1.0))
    assert thin["edge_fraction"].iloc[0] == pytest.approx(0.5 - 1 / 6)
    assert whole["edge_fraction"].iloc[0] == pytest.approx(1.0)
    for t in (thin, whole):  # a vessel-like peak: no exemption for round nodules
        t["blob_ratio"] = 0.2
    assert not brain_edge(thin, p)[0] and brain_edge(whole, p)[0]
