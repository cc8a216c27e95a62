"""Anatomical context of candidate voxels: brain surface, CSF spaces, ventricles.

The rules that reject normally enhancing structures need, for each candidate
voxel, its distance to the brain surface, to the nearest CSF space and to the
ventricles. Full-volume Euclidean distance maps would cost a second each on a
1 mm brain; distances to CSF and ventricles are only needed near the few
candidates, so they are computed in each candidate's bounding box (exact up to
:data:`CAP_MM`). The depth below the brain surface is one full distance map
(the lesion table reports it exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ._morphology import distance_transform_edt
from .preprocess import ball

__all__ = [
    "AnatomyMaps", "Context", "anatomical_context", "anatomy_maps", "distance_at",
    "ENCLOSED_MIN_DARK_FRACTION", "ventricle_mask", "csf_space", "ventricle_zooms",
    "edge_margin",
]


#: A dark pre-scan pocket enclosed by brain tissue is CSF space (a ventricle, or a piece of
#: one cut off by thick slices) only if at least this fraction of it stays dark on the post
#: scan (:func:`csf_space`). An enhancing lesion that is hypointense on the pre scan is a
#: pocket that the contrast fills: without this test its core lay "in CSF space" and it was
#: rejected as a vessel in a sulcus (an 11.4 mm lesion, 38 % darker than white matter on the
#: pre scan, enhancing by 36 %, on a simulated 2-D head). Ventricles stay mostly dark even
#: where the choroid plexus fills them: with no such test (any enclosed pocket is tissue)
#: plexus in lateral-ventricle pockets cut off by the 5.5 mm slices was reported (3 false
#: detections on 20 heads); at 0.5 one piece of plexus filling its pocket still was; 0.1
#: keeps those rejected, and a pocket beside the ventricles stays CSF space whatever its
#: post-scan darkness (a plexus glomus in a 5.5 mm slice of another head). Measured in
#: ``benchmarks/README.md`` (twelfth session).
ENCLOSED_MIN_DARK_FRACTION = 0.1


@dataclass(frozen=True)
class Context:
    """Per-voxel context of the labelled voxels, in the order of ``np.flatnonzero(labels)``."""

    depth_mm: np.ndarray
    csf_distance_mm: np.ndarray
    ventricle_distance_mm: np.ndarray


#: Distances to CSF space and ventricles are exact up to this many mm (rules use 1-2 mm).
CAP_MM = 8.0


def distance_at(
    targets: np.ndarray, labels: np.ndarray, zooms: np.ndarray, *, cap_mm: float
) -> np.ndarray:
    """Distance (mm) from each labelled voxel to the nearest ``True`` voxel of ``targets``.

    Computed with an exact Euclidean distance transform in each label's own
    bounding box grown by ``cap_mm``; distances are therefore exact up to
    ``cap_mm`` and reported as ``cap_mm`` beyond. Values are in the order of
    ``np.flatnonzero(labels)``.
    """
    flat = np.flatnonzero(labels)
    out = np.full(flat.size, float(cap_mm))
    pad = np.ceil(cap_mm / zooms).astype(int) + 1
    for idx, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        box = tuple(
            slice(max(s.start - p, 0), min(s.stop + p, n))
            for s, p, n in zip(box, pad, labels.shape, strict=True)
        )
        tgt = targets[box]
        if not tgt.any():
            continue
        dist = distance_transform_edt(~tgt, zooms)
        sel = labels[box] == idx + 1
        ijk = [a + s.start for a, s in zip(np.nonzero(sel), box, strict=True)]
        where = np.searchsorted(flat, np.ravel_multi_index(ijk, labels.shape))
        out[where] = np.minimum(dist[sel], cap_mm)
    return out


def csf_space(
    pre_mapped: np.ndarray,
    mask: np.ndarray,
    zooms: np.ndarray,
    *,
    csf_threshold: float,
    closing_mm: float = 1.5,
    post: np.ndarray | None = None,
    min_dark_fraction: float = ENCLOSED_MIN_DARK_FRACTION,
    ventricles: np.ndarray | None = None,
    ventricle_margin_mm: float = 2.0,
) -> np.ndarray:
    """CSF spaces (sulci, fissures, cisterns, ventricles) and the outside of the brain.

    Where the registered *pre* scan (not brightened by contrast) is darker than
    the CSF|grey-matter threshold, plus everything outside the brain mask,
    closed by ``closing_mm`` so that thin structures lying inside these spaces
    (vessels, choroid plexus) count as part of the space that holds them.

    With ``post`` (the post scan on the same grid), a dark pocket enclosed by
    brain tissue (a 6-connected component of that space that does not reach
    the outside of the mask) counts only if at least ``min_dark_fraction`` of
    its voxels stay below the threshold on the post scan, or if it reaches the
    box of half-width ``ventricle_margin_mm`` (rounded down to whole voxels per
    axis) around a voxel of ``ventricles`` (when given): CSF does not enhance,
    while an enhancing lesion that is T1-hypointense on the pre scan (common in
    active MS lesions) is a dark pocket that the contrast fills. The choroid
    plexus can fill a piece of a ventricle that thick slices cut off from the
    rest; beside the ventricles such a pocket stays CSF space. See
    :data:`ENCLOSED_MIN_DARK_FRACTION`.
    """
    smooth = ndi.gaussian_filter(pre_mapped, sigma=0.5 / zooms)
    space = (smooth < csf_threshold) | ~mask
    del smooth
    struct = ball(closing_mm, zooms)
    closed = ndi.binary_erosion(ndi.binary_dilation(space, struct), struct, border_value=1)
    space |= closed
    del closed
    if post is None or min_dark_fraction <= 0:
        return space
    lab, n = ndi.label(space)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(lab[~mask])] = True  # sulci, fissures, cisterns: open to the outside
    dark = np.bincount(lab[post < csf_threshold], minlength=n + 1)
    keep |= dark >= min_dark_fraction * np.bincount(lab.ravel(), minlength=n + 1)
    if ventricles is not None and ventricles.any():  # plexus filling a piece of a ventricle
        # the box that holds the ball of ventricle_margin_mm (a separable maximum filter,
        # a third of the time of the ball's binary dilation on a 1 mm brain)
        size = ball(ventricle_margin_mm, zooms).shape
        near = ndi.maximum_filter(np.asarray(ventricles, dtype=bool).view(np.uint8), size=size)
        keep[np.unique(lab[near > 0])] = True
    keep[0] = False
    return keep[lab]


def ventricle_mask(
    data: np.ndarray,
    mask: np.ndarray,
    zooms: np.ndarray,
    *,
    csf_threshold: float,
    min_depth_mm: float = 15.0,
    min_volume_ml: float = 1.0,
) -> np.ndarray:
    """Ventricles: dark (CSF-class) brain components that reach at least ``min_depth_mm`` deep.

    Sulcal CSF never lies that far from the brain surface; the lateral and
    third ventricles do. The depth is measured on a grid of about 2 mm voxels,
    which is ample for a 15 mm criterion.
    """
    csf = (data < csf_threshold) & mask
    lab, n = ndi.label(csf)
    if n == 0:
        return csf
    f = tuple(max(1, int(2.0 // z)) for z in zooms)
    small = np.pad(mask[:: f[0], :: f[1], :: f[2]], 1)
    deep_small = distance_transform_edt(small, zooms * np.asarray(f))[1:-1, 1:-1, 1:-1]
    index = np.ix_(*(np.arange(s) // fi for s, fi in zip(mask.shape, f, strict=True)))
    deep = deep_small[index] >= min_depth_mm
    voxel_ml = float(np.prod(zooms)) / 1000.0
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel_ml
    reaches = np.bincount(lab[deep & csf], minlength=n + 1) > 0
    good = (sizes >= min_volume_ml) & reaches
    good[0] = False
    return good[lab]


def ventricle_zooms(
    zooms: np.ndarray,
    factors: tuple[int, int, int],
    *,
    margin_mm: float,
    slice_fraction: float,
) -> np.ndarray:
    """Voxel size for distances to the ventricles on a (possibly split) working grid.

    On an axis split by ``factors`` (thick slices analysed on thinner working
    slices) the neighbourhood of the ventricles reaches ``max(margin_mm,
    slice_fraction * acquired edge)``, elsewhere ``margin_mm``: distances
    measured with the returned voxel size are at most ``margin_mm`` exactly
    inside that ellipsoid (see ``DetectionParams.ventricle_slice_fraction``).

    Examples
    --------
    >>> ventricle_zooms(np.array([0.9, 0.9, 1.1]), (1, 1, 5), margin_mm=2.0,
    ...                 slice_fraction=0.5).round(3).tolist()
    [0.9, 0.9, 0.8]
    """
    zooms = np.asarray(zooms, dtype=float)
    split = np.asarray(factors) > 1
    if margin_mm <= 0 or slice_fraction <= 0 or not split.any():
        return zooms
    acquired = zooms * np.asarray(factors)
    reach = np.where(split, np.maximum(margin_mm, slice_fraction * acquired), margin_mm)
    return zooms * (margin_mm / reach)


def edge_margin(
    zooms: np.ndarray,
    factors: tuple[int, int, int],
    *,
    margin_mm: float,
    slice_fraction: float,
) -> float:
    """Depth (mm) of the brain-edge band on a (possibly split) working grid.

    ``margin_mm`` on an unsplit grid; on a grid whose axes are split by
    ``factors`` (thick slices on thinner working slices) at least
    ``slice_fraction`` times the thickest acquired edge of a split axis (see
    ``DetectionParams.edge_slice_fraction``).

    Examples
    --------
    >>> edge_margin(np.array([0.9, 0.9, 1.1]), (1, 1, 5), margin_mm=3.0, slice_fraction=1.0)
    5.5
    >>> edge_margin(np.array([1.0, 1.0, 1.0]), (1, 1, 3), margin_mm=3.0, slice_fraction=1.0)
    3.0
    """
    split = np.asarray(factors) > 1
    if slice_fraction <= 0 or not split.any():
        return float(margin_mm)
    acquired = np.asarray(zooms, dtype=float) * np.asarray(factors)
    return float(max(margin_mm, slice_fraction * acquired[split].max()))


@dataclass(frozen=True, eq=False)
class AnatomyMaps:
    """Candidate-independent maps on the analysis grid: brain depth (mm), CSF space, ventricles."""

    depth_mm: np.ndarray
    csf_space: np.ndarray
    ventricles: np.ndarray


def anatomy_maps(
    *,
    mask: np.ndarray,
    post: np.ndarray,
    pre_mapped: np.ndarray,
    zooms: np.ndarray,
    csf_threshold: float,
    ventricle_margin_mm: float = 2.0,
) -> AnatomyMaps:
    """Depth below the brain surface, CSF spaces and ventricles (computed once per study).

    ``ventricle_margin_mm`` is the study's ``DetectionParams.ventricle_margin_mm``: the
    neighbourhood of the ventricles that the choroid-plexus rule uses is also the one in
    which an enclosed dark pocket stays CSF space (:func:`csf_space`).
    """
    depth = _depth_mm(mask, zooms)
    vent = ventricle_mask(post, mask, zooms, csf_threshold=csf_threshold)
    space = csf_space(pre_mapped, mask, zooms, csf_threshold=csf_threshold, post=post,
                      ventricles=vent, ventricle_margin_mm=ventricle_margin_mm)
    return AnatomyMaps(depth, space, vent)


def _depth_mm(mask: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """Distance (mm) of each voxel of ``mask`` to the nearest voxel outside it or the grid."""
    return distance_transform_edt(np.pad(mask, 1), zooms)[1:-1, 1:-1, 1:-1]


def anatomical_context(
    labels: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    post: np.ndarray | None = None,
    pre_mapped: np.ndarray | None = None,
    zooms: np.ndarray,
    csf_threshold: float | None = None,
    maps: AnatomyMaps | None = None,
    ventricle_zooms: np.ndarray | None = None,
) -> Context:
    """Distances (mm) of every labelled voxel to the brain surface, CSF space and ventricles.

    ``maps`` (from :func:`anatomy_maps`) avoids recomputing the candidate-independent
    maps when several candidate sets of one study are judged; otherwise ``mask``,
    ``post``, ``pre_mapped`` and ``csf_threshold`` are required. ``ventricle_zooms``
    (default ``zooms``) is the voxel size used for the distance to the ventricles: a
    smaller value along an axis stretches the ventricles' neighbourhood along it
    (``DetectionParams.ventricle_slice_fraction``).
    """
    if not labels.any():
        empty = np.zeros(0)
        return Context(empty, empty, empty)
    if maps is None:
        maps = anatomy_maps(
            mask=mask, post=post, pre_mapped=pre_mapped, zooms=zooms,  # type: ignore[arg-type]
            csf_threshold=csf_threshold,  # type: ignore[arg-type]
        )
    flat = np.flatnonzero(labels)
    depth = maps.depth_mm.ravel()[flat]
    csf = distance_at(maps.csf_space, labels, zooms, cap_mm=CAP_MM)
    vzooms = zooms if ventricle_zooms is None else np.asarray(ventricle_zooms, dtype=float)
    vdist = distance_at(maps.ventricles, labels, vzooms, cap_mm=CAP_MM)
    return Context(depth, csf, vdist)
