"""Watershed separation of the brain from scalp, skull base and neck on coarse full-head scans.

On thick-slice (5 mm) and coarse (3-4 mm) full-head T1 scans the skull base and the
oblique parts of the skull are blurred by partial volume: no intensity threshold
separates the brain from the neck and the occipital scalp there, and a morphological
opening only cuts bridges narrower than its diameter. What is left of the skull is a
ridge of *darker* voxels between two brighter regions. A marker-controlled watershed
(flooding of the inverted image from a brain marker and from an outside marker) puts
the boundary on that ridge wherever it is, whatever its absolute level.

:func:`watershed_brain` returns the brain's catchment region; :func:`estimate_brain_mask
<gdlesion.preprocess.estimate_brain_mask>` intersects its own mask with it (a veto: it
removes the leaks, it adds nothing).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

__all__ = ["largest_component", "watershed_brain"]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Return the largest face-connected component of ``mask`` (``mask`` itself when empty)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def watershed_brain(
    smooth: np.ndarray,
    head: np.ndarray,
    zooms: np.ndarray,
    *,
    floor: float,
    core_mm: float = 11.0,
    seed_radius_mm: float = 60.0,
    shell_mm: float = 4.0,
) -> np.ndarray:
    """Brain catchment region of a full-head T1 scan by marker-controlled watershed.

    Parameters
    ----------
    smooth : numpy.ndarray
        Lightly smoothed image on a grid of about 2 mm voxels or coarser.
    head : numpy.ndarray
        Boolean head mask (above the air level) on the same grid.
    zooms : numpy.ndarray
        Voxel sizes (mm) of that grid.
    floor : float
        Intensity below which a voxel is CSF, bone or their partial volume.
    core_mm : float, optional
        The brain marker is the largest region of voxels above ``floor`` lying
        deeper than this (mm) inside them...
    seed_radius_mm : float, optional
        ... within this distance of its thickest point (the cerebrum's centre):
        60 mm reaches the cerebellum, not the neck (70-100 mm below).
    shell_mm : float, optional
        The outside marker is the air and the head's outer ``shell_mm`` (skin:
        the brain is at least scalp + skull, ~10 mm, deep).

    Returns
    -------
    numpy.ndarray
        Boolean region on the input grid; all ``False`` when no marker is found.
    """
    zooms = np.asarray(zooms, dtype=float)
    depth = ndi.distance_transform_edt(head, sampling=zooms)
    strict_depth = ndi.distance_transform_edt(head & (smooth > floor), sampling=zooms)
    core = largest_component(strict_depth > core_mm)
    del strict_depth
    if not core.any():
        return np.zeros(head.shape, dtype=bool)
    centre = np.unravel_index(int(np.argmax(np.where(core, depth, 0))), head.shape)
    grid = np.ogrid[tuple(slice(0, n) for n in head.shape)]
    dist2 = sum(((g - c) * z) ** 2 for g, c, z in zip(grid, centre, zooms, strict=True))
    markers = np.zeros(head.shape, dtype=np.uint8)
    markers[~head | (depth <= shell_mm)] = 1
    markers[core & (dist2 <= seed_radius_mm**2) & (depth > shell_mm + 2 * zooms.max())] = 2
    del depth, dist2, core
    # SimpleITK indexes (x, y, z) = numpy axes reversed; flooding the inverted image makes
    # the dark skull/CSF shell the ridge between the two catchment basins
    img = sitk.GetImageFromArray(np.ascontiguousarray(-smooth.transpose(2, 1, 0), np.float32))
    img.SetSpacing(tuple(float(z) for z in zooms))
    mk = sitk.GetImageFromArray(np.ascontiguousarray(markers.transpose(2, 1, 0)))
    mk.CopyInformation(img)
    ws = sitk.MorphologicalWatershedFromMarkers(
        img, mk, markWatershedLine=False, fullyConnected=False
    )
    return sitk.GetArrayFromImage(ws).transpose(2, 1, 0) == 2
