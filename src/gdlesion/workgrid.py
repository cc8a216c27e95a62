"""A finer working grid for scans with coarse voxels, and the way back to the post grid.

The default detection rules (shape scales, shells, minimum sizes, blob ratios)
were chosen on 1 mm 3-D scans. A 1x1x3 mm scan (the classic 2-D spin-echo T1
of MS trials) or a 2 mm one is therefore analysed on its post grid subdivided
by an integer factor per axis (:func:`subdivision_factors`): each post voxel
becomes ``ki x kj x kk`` working voxels, the post scan is interpolated
linearly onto them, and the pre scan (and FLAIR) are registered and
resampled there directly. The results come back to the post grid block by
block (:func:`block_labels`, :func:`block_mean`, :func:`block_any`,
:func:`table_to_post_grid`; put together by ``gdlesion.pipeline``): because
the working grid is an exact subdivision, each post voxel is the union of its
own working voxels, with no second interpolation.

Axes of half the working size or less are merged first, ``m`` voxels into
one by their mean (:func:`merge_factors`, :func:`merge`): a 512-matrix
reconstruction, 0.45 x 0.45 x 5 mm, becomes 0.9 x 0.9 x 5 mm and is then
split into 0.9 x 0.9 x 1.0 mm working voxels (its slices could not be split
alone: 0.2 mm3 working voxels), and a 0.5 x 0.5 x 1 mm 3-D scan is analysed
on 1 mm voxels. On the way back each merged voxel's value goes to all of the
post voxels it merged (:func:`unmerge`). Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .io import Volume

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "subdivision_factors",
    "merge_factors",
    "subdivide",
    "merge",
    "unmerge",
    "repeat_blocks",
    "block_any",
    "block_mean",
    "block_labels",
    "table_to_post_grid",
]


#: A working voxel holds at least this fraction of ``work_voxel_mm ** 3``: the working grid
#: of a scan never has more than 1 / 0.7 times the voxels of a 1 mm grid over the same field
#: of view, which bounds time and memory (a 0.45 x 0.45 x 3 mm scan is not split).
MIN_WORK_VOXEL_FRACTION = 0.7


def subdivision_factors(zooms: np.ndarray, work_voxel_mm: float) -> tuple[int, int, int]:
    """Integer subdivision of each voxel axis that brings it near ``work_voxel_mm``.

    ``k = floor(zoom / work_voxel_mm)``, at least 1: an axis is only split when
    it is at least twice the working size, so 1.0-1.9 mm axes stay as they are
    and working voxel edges are never shorter than ``work_voxel_mm``. The
    largest factor is then lowered until a working voxel holds at least
    :data:`MIN_WORK_VOXEL_FRACTION` of a working-size cube. ``0`` turns
    subdivision off.

    Examples
    --------
    >>> subdivision_factors(np.array([1.0, 1.0, 3.0]), 1.0)
    (1, 1, 3)
    >>> subdivision_factors(np.array([0.9, 0.9, 1.5]), 1.0)
    (1, 1, 1)
    >>> subdivision_factors(np.array([0.45, 0.45, 3.0]), 1.0)
    (1, 1, 1)
    >>> subdivision_factors(np.array([2.0, 2.0, 2.0]), 0.0)
    (1, 1, 1)
    """
    if work_voxel_mm <= 0:
        return (1, 1, 1)
    zooms = np.asarray(zooms, dtype=np.float64)
    k = np.maximum(np.floor(zooms / float(work_voxel_mm) + 1e-6), 1).astype(int)
    floor = MIN_WORK_VOXEL_FRACTION * float(work_voxel_mm) ** 3
    while k.max() > 1 and float(np.prod(zooms)) / float(np.prod(k)) < floor:
        k[int(np.argmax(k))] -= 1
    return tuple(int(v) for v in k)  # type: ignore[return-value]


def merge_factors(zooms: np.ndarray, work_voxel_mm: float) -> tuple[int, int, int]:
    """Integer merge of each axis of about half the working voxel size or less.

    ``m = floor(1.05 * work_voxel_mm / zoom)``, at least 1, so merged voxels
    are at most 5 % coarser than ``work_voxel_mm``: 0.45 mm -> 2 (0.9 mm),
    0.508 mm (a 260 mm field of view in 512 voxels) -> 2, 0.3 mm -> 3, while
    0.53-1.9 mm axes stay as they are. The rules were chosen on
    ~1 mm voxels; on finer voxels their shape scales, minimum sizes and noise
    levels mean something else, and time and memory grow with the voxel
    count (a 0.5 x 0.5 x 1 mm scan has four times the voxels of a 1 mm one).
    Merging averages away resolution finer than the smallest lesion the rules
    report (about 3 mm). When the grid still cannot be split
    (:func:`subdivision_factors` leaves an edge of ``2 * work_voxel_mm`` or
    more, e.g. 0.6 x 0.6 x 5 mm: 2.5 mm working slices), axes under ``0.75 *
    work_voxel_mm`` are merged in pairs as well (1.2 x 1.2 x 1.0 mm working
    voxels). Rounding instead of the floor (0.625 mm -> 1.25 mm) lost lesions
    on 3-D grids: ``benchmarks/README.md``, twenty-second session. ``0`` turns
    merging off.

    Examples
    --------
    >>> merge_factors(np.array([0.45, 0.45, 5.0]), 1.0)
    (2, 2, 1)
    >>> merge_factors(np.array([0.9, 0.9, 5.5]), 1.0)
    (1, 1, 1)
    >>> merge_factors(np.array([0.5, 0.5, 1.0]), 1.0)
    (2, 2, 1)
    >>> merge_factors(np.array([0.625, 0.625, 1.0]), 1.0)
    (1, 1, 1)
    >>> merge_factors(np.array([0.6, 0.6, 5.0]), 1.0)
    (2, 2, 1)
    >>> merge_factors(np.array([0.3, 5.0, 0.3]), 1.0)
    (3, 1, 3)
    """
    if work_voxel_mm <= 0:
        return (1, 1, 1)
    zooms = np.asarray(zooms, dtype=np.float64)
    work = float(work_voxel_mm)
    m = np.maximum(np.floor(1.05 * work / zooms + 1e-6), 1).astype(int)
    merged = zooms * m
    if (merged / np.asarray(subdivision_factors(merged, work))).max() >= 2 * work - 1e-6:
        m = np.where((m == 1) & (zooms < 0.75 * work), 2, m)
    return tuple(int(v) for v in m)  # type: ignore[return-value]


def merge(volume: Volume, factors: tuple[int, int, int], *, labels: bool = False) -> Volume:
    """Average each ``factors`` block of voxels into one (``labels``: more than half set).

    An axis whose length is not a multiple of its factor is padded with its
    edge value first; the merged grid then reaches up to ``factor - 1`` voxels
    beyond the original, which :func:`unmerge` crops again. The merged voxel
    centre is the centre of its block.

    Returns
    -------
    Volume
        float32 (``labels``: bool) with shape ``ceil(shape / factors)``.
    """
    k = np.asarray(factors, dtype=np.int64)
    data = np.asarray(volume.data)
    pad = [(0, int(-n % f)) for n, f in zip(data.shape, k, strict=True)]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    if labels:
        out = _blocks(data.astype(np.float32), factors).mean(axis=-1) > 0.5
    else:
        out = block_mean(data.astype(np.float32, copy=False), factors)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * k
    affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, :3] @ ((k - 1) / 2.0)
    return Volume(out, affine, volume.name)


def unmerge(array: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Each merged voxel's value on all of the post voxels it merged, cropped to ``shape``."""
    out = repeat_blocks(array, factors)
    return out[tuple(slice(0, n) for n in shape)]


def subdivide(volume: Volume, factors: tuple[int, int, int]) -> Volume:
    """Interpolate ``volume`` linearly onto its grid with each voxel split in ``factors``.

    Working voxel ``w`` along an axis split ``k`` times has its centre at the
    post-grid coordinate ``(w + 0.5) / k - 0.5``; the outermost ones, half a
    post voxel beyond the last centre, take the edge value.

    Returns
    -------
    Volume
        float32, shape ``volume.shape * factors``, same world extent.
    """
    from scipy import ndimage as ndi  # imported here: auto_preset needs only the factors

    k = np.asarray(factors, dtype=np.float64)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] / k
    affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, :3] @ (0.5 / k - 0.5)
    data = ndi.zoom(
        np.asarray(volume.data, dtype=np.float32), k, order=1, mode="nearest",
        grid_mode=True, output=np.float32,
    )
    return Volume(data, affine, volume.name)


def repeat_blocks(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Each post voxel's value on all of its working voxels (e.g. a brain mask)."""
    for axis, k in enumerate(factors):
        if k > 1:
            array = np.repeat(array, k, axis=axis)
    return array


def _blocks(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """View ``(n0, n1, n2, k0 * k1 * k2)`` of a working-grid array, one row per post voxel."""
    (n0, n1, n2), (k0, k1, k2) = (
        (s // k for s, k in zip(array.shape, factors, strict=True)), factors
    )
    b = array.reshape(n0, k0, n1, k1, n2, k2).transpose(0, 2, 4, 1, 3, 5)
    return b.reshape(n0, n1, n2, k0 * k1 * k2)


def block_any(mask: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mark a post voxel when any of its working voxels is marked."""
    return _blocks(np.asarray(mask, dtype=bool), factors).any(axis=-1)


def block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean of each post voxel's working voxels (float32)."""
    return _blocks(array, factors).mean(axis=-1, dtype=np.float32)


def block_labels(labels: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Label of each post voxel: the label that covers most of its working voxels.

    Background is only the answer when no working voxel is labelled, so every
    lesion keeps at least one post voxel unless a larger neighbour covers more
    of each one (ties: the lower label). Vectorised over voxels; the loop runs
    over the ``k0 * k1 * k2`` positions inside a block.
    """
    b = _blocks(labels, factors)
    best = np.zeros(b.shape[:3], dtype=labels.dtype)
    best_count = np.zeros(b.shape[:3], dtype=np.int32)
    for i in range(b.shape[-1]):
        cand = b[..., i]
        count = (b == cand[..., None]).sum(axis=-1, dtype=np.int32)
        better = (cand > 0) & (
            (count > best_count) | ((count == best_count) & ((best == 0) | (cand < best)))
        )
        best = np.where(better, cand, best)
        best_count = np.where(better, count, best_count)
    return best


def table_to_post_grid(
    table: pd.DataFrame,
    labels: np.ndarray,
    factors: tuple[int, int, int],
    merged: tuple[int, int, int] = (1, 1, 1),
) -> pd.DataFrame:
    """Voxel columns of a lesion table measured on the working grid, in post-grid voxels.

    ``n_voxels`` becomes the lesion's voxel count in ``labels`` (the post-grid
    label map) and the bounding box the post voxels holding its working
    voxels (``merged``: the in-plane merge of :func:`merge_factors`, undone
    after the split); the millimetre measures (volume, centroid, distances)
    stay as measured on the working grid.
    """
    table = table.copy()
    if not len(table):
        return table
    counts = np.bincount(labels.ravel(), minlength=int(table["lesion_id"].max()) + 1)
    table["n_voxels"] = counts[table["lesion_id"].to_numpy()].astype(np.int64)
    for axis, k, m, n in zip("ijk", factors, merged, labels.shape, strict=True):
        low = table[f"bbox_{axis}_min"].to_numpy() // k * m
        high = np.minimum(table[f"bbox_{axis}_max"].to_numpy() // k * m + m - 1, n - 1)
        table[f"bbox_{axis}_min"] = low.astype(np.int64)
        table[f"bbox_{axis}_max"] = high.astype(np.int64)
    return table
