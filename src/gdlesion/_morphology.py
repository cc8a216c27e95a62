"""Grey-level morphology helpers that are faster than their SimpleITK counterparts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["regional_maxima"]

_FULL = ndi.generate_binary_structure(3, 3)


def regional_maxima(image: np.ndarray) -> np.ndarray:
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

    Returns
    -------
    numpy.ndarray
        Boolean array of ``image``'s shape.
    """
    image = np.asarray(image)
    if image.dtype.kind != "f":
        image = image.astype(np.float64)
    top = image == ndi.maximum_filter(image, size=3, mode="constant", cval=-np.inf)
    rest = np.where(top, -np.inf, image).astype(image.dtype, copy=False)
    leaks = top & (ndi.maximum_filter(rest, size=3, mode="constant", cval=-np.inf) == image)
    pieces, _ = ndi.label(top, structure=_FULL)
    dropped = np.zeros(int(pieces.max()) + 1, dtype=bool)
    dropped[pieces[leaks]] = True
    dropped[0] = True
    return ~dropped[pieces]
