"""Faster equivalents of SimpleITK and scipy morphology functions, with identical results."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

__all__ = ["regional_maxima", "distance_transform_edt"]

_FULL = ndi.generate_binary_structure(3, 3)


def regional_maxima(image: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """Regional maxima of a 3-D image, fully connected (26 neighbours).

    A regional maximum is a connected plateau of equal values whose neighbours
    are all strictly lower; voxels outside the image do not count (a constant
    image is one maximum). This is exactly ``SimpleITK.RegionalMaxima(image,
    fullyConnected=True)`` (as a boolean mask), about three times faster on
    candidate boxes that are mostly background.

    A voxel no lower than any neighbour is a *top* voxel; 26-adjacent top voxels
    are equal, so the connected top regions are pieces of plateaus. A piece is
    a regional maximum unless one of its voxels has an equal neighbour that is
    not a top voxel (the plateau goes on and, somewhere, rises).

    Parameters
    ----------
    image : numpy.ndarray
        3-D array without NaN (integers are compared as float64).
    within : numpy.ndarray, optional
        Boolean mask: only the maxima inside it are returned. When all its
        voxels are higher than all the others (no plateau then crosses its
        border), they are found from its voxels alone, several times faster on
        a thin structure in a large box.

    Returns
    -------
    numpy.ndarray
        Boolean array of ``image``'s shape.
    """
    image = np.asarray(image)
    if image.dtype.kind != "f":
        image = image.astype(np.float64)
    if within is not None:
        within = np.asarray(within, dtype=bool)
        low = np.min(image, where=within, initial=np.inf)
        if within.any() and low > np.max(image, where=~within, initial=-np.inf):
            return _maxima_of_raised(image, within)
        return regional_maxima(image) & within
    top = image == ndi.maximum_filter(image, size=3, mode="constant", cval=-np.inf)
    rest = np.where(top, -np.inf, image).astype(image.dtype, copy=False)
    leaks = top & (ndi.maximum_filter(rest, size=3, mode="constant", cval=-np.inf) == image)
    pieces, _ = ndi.label(top, structure=_FULL)
    dropped = np.zeros(int(pieces.max()) + 1, dtype=bool)
    dropped[pieces[leaks]] = True
    dropped[0] = True
    return ~dropped[pieces]


#: Flat-index offsets of the 26 neighbours, as (di, dj, dk).
_NEIGHBOURS = np.array(
    [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if a or b or c]
)


def _maxima_of_raised(image: np.ndarray, within: np.ndarray) -> np.ndarray:
    """:func:`regional_maxima` inside ``within``, whose voxels are higher than all others."""
    shape = np.array(image.shape) + 2
    padded = np.full(tuple(shape), -np.inf, dtype=image.dtype)  # outside: lower than all
    padded[1:-1, 1:-1, 1:-1] = image
    flat_padded = padded.ravel()
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    offsets = _NEIGHBOURS @ strides
    ijk = np.nonzero(within)
    at = (ijk[0] + 1) * strides[0] + (ijk[1] + 1) * strides[1] + (ijk[2] + 1)
    values = flat_padded[at]
    top = values >= flat_padded[at[:, None] + offsets].max(axis=1)
    out = np.zeros(image.shape, dtype=bool)
    if not top.any():
        return out
    top_at = at[top]
    is_top = np.zeros(flat_padded.size, dtype=bool)
    is_top[top_at] = True
    around = top_at[:, None] + offsets
    leaks = ((flat_padded[around] == values[top][:, None]) & ~is_top[around]).any(axis=1)
    # pieces: 26-connected components of the top voxels (labelled on the padded grid)
    pieces, n_pieces = ndi.label(is_top.reshape(tuple(shape)), structure=_FULL)
    piece = pieces.ravel()[top_at] - 1
    dropped = np.zeros(n_pieces, dtype=bool)
    dropped[piece[leaks]] = True
    keep = ~dropped[piece]
    out[tuple(a[top][keep] for a in ijk)] = True
    return out


#: Below this many voxels scipy's transform is the faster one.
_MAURER_MIN_VOXELS = 100_000


def distance_transform_edt(mask: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(mask, sampling=sampling)``, the same values.

    On a grid whose voxels are cubes with a power-of-two edge (1 mm, 2 mm, 0.5 mm)
    the distances come from SimpleITK's Maurer transform, which gives integer
    squared distances in voxels: scaled by the squared edge (exact) their square
    roots are scipy's float64 values bit for bit, at about half the cost on a
    brain-sized grid. Small arrays, other grids and masks without background
    are left to scipy.

    Parameters
    ----------
    mask : numpy.ndarray
        3-D array; non-zero voxels get their distance to the nearest zero voxel.
    sampling : array-like of float
        Voxel edge lengths along the three axes.

    Returns
    -------
    numpy.ndarray
        float64 distances, 0 at the zero voxels.
    """
    mask = np.asarray(mask) != 0
    sampling = np.broadcast_to(np.asarray(sampling, dtype=np.float64), (3,))
    edge = float(sampling[0])
    mantissa, _ = np.frexp(edge)
    if (mask.ndim != 3 or mask.size < _MAURER_MIN_VOXELS or not np.all(sampling == edge)
            or mantissa != 0.5 or mask.all() or not mask.any()):
        return ndi.distance_transform_edt(mask, sampling=sampling)
    # the voxels outside the object "zero voxels" get their distance to it
    zeros = sitk.GetImageFromArray((~mask).astype(np.uint8))
    squared = sitk.SignedMaurerDistanceMap(
        zeros, insideIsPositive=False, squaredDistance=True, useImageSpacing=False
    )
    voxels2 = np.maximum(sitk.GetArrayViewFromImage(squared), 0.0, dtype=np.float64)
    return np.where(mask, np.sqrt(voxels2 * (edge * edge)), 0.0)
