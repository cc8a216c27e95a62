"""Rigid point transforms in RAS millimetres and resampling between grids.

A 4x4 matrix ``M`` here maps a point of the reference (fixed, post-contrast)
scan to the same anatomy in the moving scan, the convention of
:attr:`gdlesion.registration.RegistrationResult.matrix_ras` and of SimpleITK's
resampler. :mod:`gdlesion.registration` re-exports these helpers.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk

from .io import Volume, from_sitk, sitk_transform_from_matrix, to_sitk

__all__ = ["rigid_matrix", "resample_volume", "rotation_angles_deg"]


def rigid_matrix(
    *,
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Build a 4x4 rigid RAS-mm point transform.

    The rotation is ``Rz @ Ry @ Rx`` (angles about the R, A and S axes, right
    handed) about ``center_mm``, followed by ``translation_mm``:
    ``x -> R (x - c) + c + t``.

    Parameters
    ----------
    rotation_deg : tuple of float
        Rotation angles about x, y, z in degrees.
    translation_mm : tuple of float
        Translation in mm.
    center_mm : tuple of float
        Centre of rotation in RAS mm.

    Returns
    -------
    numpy.ndarray
        4x4 float64 matrix.

    Examples
    --------
    >>> m = rigid_matrix(rotation_deg=(0, 0, 90), translation_mm=(1, 0, 0))
    >>> np.round(m @ [1, 0, 0, 1], 6).tolist()
    [1.0, 1.0, 0.0, 1.0]
    """
    ax, ay, az = np.deg2rad(np.asarray(rotation_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    c = np.asarray(center_mm, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = c + np.asarray(translation_mm, dtype=np.float64) - rot @ c
    return out


def resample_volume(
    moving: Volume,
    reference: Volume,
    matrix_ras: np.ndarray | None = None,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
    default_value: float = 0.0,
) -> Volume:
    """Resample ``moving`` onto the grid of ``reference``.

    Parameters
    ----------
    moving : Volume
        Image to resample (e.g. the pre scan, a FLAIR, a label map).
    reference : Volume
        Grid of the output.
    matrix_ras : numpy.ndarray, optional
        4x4 RAS-mm matrix mapping reference points to moving points (as
        returned in :attr:`RegistrationResult.matrix_ras`). ``None`` means
        identity: pure world-coordinate resampling.
    interpolation : {"linear", "nearest"}
        Use ``"nearest"`` for label maps and masks (keeps the values and dtype).
    default_value : float
        Value of output voxels that map outside ``moving``.

    Returns
    -------
    Volume
        On ``reference``'s grid; float32 for linear, ``moving``'s dtype for nearest.

    Raises
    ------
    ValueError
        Unknown ``interpolation`` or a matrix that is not 4x4.
    """
    interps = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    if interpolation not in interps:
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    matrix = np.eye(4) if matrix_ras is None else np.asarray(matrix_ras, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"matrix_ras must be 4x4, got shape {matrix.shape}")
    data = np.asarray(moving.data)
    if interpolation == "nearest":
        # float64 / int64 carry any float or label value through unchanged
        work = data.astype(np.float64 if data.dtype.kind == "f" else np.int64)
    else:
        work = data.astype(np.float32, copy=False)
    src = to_sitk(Volume(work, moving.affine), pixel_type=sitk.GetImageFromArray(work[:1, :1, :1])
                  .GetPixelID())
    ref = to_sitk(Volume(np.zeros(reference.shape, np.uint8), reference.affine),
                  pixel_type=sitk.sitkUInt8)
    out = sitk.Resample(src, ref, sitk_transform_from_matrix(matrix), interps[interpolation],
                        float(default_value), src.GetPixelID())
    out_data = from_sitk(out).data
    if interpolation == "nearest":
        out_data = out_data.astype(data.dtype)
    return Volume(out_data, reference.affine, moving.name)


def rotation_angles_deg(matrix: np.ndarray) -> tuple[float, float, float]:
    """Angles (x, y, z) of ``Rz @ Ry @ Rx``, the inverse of :func:`rigid_matrix`."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    ry = -np.arcsin(np.clip(r[2, 0], -1.0, 1.0))
    rx = np.arctan2(r[2, 1], r[2, 2])
    rz = np.arctan2(r[1, 0], r[0, 0])
    return tuple(float(v) for v in np.rad2deg([rx, ry, rz]))  # type: ignore[return-value]
