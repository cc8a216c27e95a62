"""File input/output and the one nibabel <-> SimpleITK conversion.

Conventions used everywhere else in gdlesion:

* arrays are in nibabel order ``data[i, j, k]``;
* an affine maps voxel indices ``(i, j, k, 1)`` to scanner **RAS** millimetres;
* rigid transforms are 4x4 matrices acting on RAS millimetre points.

SimpleITK works in **LPS** world coordinates and its arrays are indexed
``[k, j, i]``. This module is the only place that flips between the two
(``diag(-1, -1, 1, 1)``) and transposes the axes, following TorchIO's
``data/io.py``. It is also the only module that reads NIfTI files and the
place that owns atomic writes (temporary file + :func:`os.replace`), so that a
killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from isal import isal_zlib
from nibabel.arraywriters import get_slope_inter, make_array_writer

from .errors import InputError, OutputError

if TYPE_CHECKING:  # SimpleITK (~0.1 s) is imported by the conversions that use it
    import SimpleITK as sitk

__all__ = [
    "Volume",
    "load_volume",
    "load_mask",
    "load_labels",
    "save_volume",
    "to_sitk",
    "from_sitk",
    "ras_to_lps",
    "matrix_from_sitk_transform",
    "sitk_transform_from_matrix",
    "atomic_path",
    "write_text_atomic",
    "write_json_atomic",
    "ensure_writable_dir",
    "MIN_VOXEL_MM",
    "MAX_VOXEL_MM",
]

#: Smallest voxel edge accepted, in mm (exclusive bound: 0.05 mm itself is accepted).
MIN_VOXEL_MM = 0.05
#: Largest voxel edge accepted, in mm (exclusive bound: 20 mm itself is accepted).
MAX_VOXEL_MM = 20.0

#: RAS <-> LPS flip, its own inverse.
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D scalar image: voxel array plus voxel-to-RAS affine.

    Parameters
    ----------
    data : numpy.ndarray
        3-D array indexed ``[i, j, k]`` (nibabel order).
    affine : numpy.ndarray
        4x4 matrix mapping voxel indices to scanner RAS millimetres.
    name : str, optional
        File name (or label) used in messages; never a header field.
    """

    data: np.ndarray
    affine: np.ndarray
    name: str = field(default="")

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            who = self.name or "image"
            raise InputError(f"{who}: expected a 3-D array, got shape {self.data.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"{self.name or 'image'}: affine must be 4x4, got {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(ni, nj, nk)``."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> np.ndarray:
        """Voxel edge lengths in mm along i, j, k (column norms of the affine)."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in cubic millimetres."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def with_data(self, data: np.ndarray, *, name: str | None = None) -> Volume:
        """Return a volume on the same grid holding ``data``."""
        if data.shape != self.data.shape:
            raise ValueError(f"shape {data.shape} does not match grid {self.data.shape}")
        return Volume(data, self.affine, self.name if name is None else name)

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` voxel coordinates to RAS mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` RAS mm points to (fractional) voxel coordinates."""
        inv = np.linalg.inv(self.affine)
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ inv[:3, :3].T + inv[:3, 3]


def _describe(role: str, path: Path) -> str:
    return f"{role} {path}" if role else str(path)


def _check_file(path: Path, who: str) -> None:
    if not path.exists():
        raise InputError(f"{who}: file not found")
    if path.is_dir():
        raise InputError(f"{who}: is a directory, expected a NIfTI file (.nii or .nii.gz)")
    if path.stat().st_size == 0:
        raise InputError(f"{who}: empty file (0 bytes)")
    name = path.name.lower()
    if not name.endswith(_NIFTI_SUFFIXES):
        raise InputError(f"{who}: not a NIfTI file name (expected .nii or .nii.gz)")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if name.endswith(".gz") and magic != b"\x1f\x8b":
        raise InputError(f"{who}: named .gz but not gzip-compressed; rename it to .nii")


def load_volume(path: str | os.PathLike[str], *, role: str = "scan") -> Volume:
    """Load and validate a 3-D NIfTI image.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.nii`` or ``.nii.gz`` file.
    role : str, optional
        What the file is for ("pre-contrast scan", "FLAIR", ...), used in messages.

    Returns
    -------
    Volume
        float32 data in nibabel order and the image's voxel-to-RAS affine
        (sform if set, else qform, exactly as nibabel resolves it).

    Raises
    ------
    InputError
        Missing, empty, truncated or non-NIfTI file; 2-D or truly 4-D data;
        complex or RGB voxels; NaN/inf voxels; all-constant image; voxel size outside
        (:data:`MIN_VOXEL_MM`, :data:`MAX_VOXEL_MM`) inclusive; singular affine.
        Each message names the file and the problem.

    Examples
    --------
    >>> vol = load_volume("sub-01_ses-01_T1w.nii.gz", role="pre-contrast scan")  # doctest: +SKIP
    """
    path = Path(path)
    who = _describe(role, path)
    _check_file(path, who)
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, ValueError, OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{who}: not a readable NIfTI image ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{who}: not a NIfTI image (found {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3:
        raise InputError(f"{who}: image is {len(shape)}-D {shape}; a 3-D volume is needed")
    if len(shape) > 3:
        raise InputError(
            f"{who}: image is {len(shape)}-D {tuple(img.shape)}; pass a single 3-D volume"
        )
    if min(shape) < 1:
        raise InputError(f"{who}: image has an empty dimension {shape}")
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind not in "biuf":
        # Complex (phase) or RGB data: nibabel would drop the imaginary part or refuse.
        raise InputError(
            f"{who}: voxel type {dtype} is not a real scalar intensity; pass a magnitude image"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{who}: affine contains NaN or inf")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    header_zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    for label, z in (("voxel size", header_zooms), ("affine voxel size", zooms)):
        if np.any(z <= 0):
            raise InputError(f"{who}: {label} {_fmt(z)} mm has a zero or negative edge")
        if np.any(z < MIN_VOXEL_MM) or np.any(z > MAX_VOXEL_MM):
            raise InputError(
                f"{who}: {label} {_fmt(z)} mm is implausible "
                f"(each edge must be within {MIN_VOXEL_MM}-{MAX_VOXEL_MM} mm)"
            )
    det = np.linalg.det(affine[:3, :3])
    if abs(det) < 1e-6 * float(np.prod(zooms)):
        raise InputError(f"{who}: affine is singular (determinant {det:.3g}); fix the sform/qform")
    try:
        data = np.asarray(_read_fdata(img, path)).reshape(shape)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{who}: truncated or corrupt image data ({_short(exc)})") from None
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - np.count_nonzero(finite))
        raise InputError(f"{who}: {n_bad} voxels are NaN or inf")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{who}: all voxels have the same value ({float(data.min()):g})")
    return Volume(np.ascontiguousarray(data), affine, path.name)


def _read_fdata(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """``img.get_fdata(dtype=np.float32)``, decompressing a ``.nii.gz`` file in one call.

    nibabel reads compressed data through Python's gzip module in ~1500 small
    chunks, taking the GIL for each: beside another busy Python thread (another
    scan loading, an import) every chunk waits for its turn and loading slows
    down several times. One inflate call over the whole file (ISA-L's, via
    ``isal``: about 1.3x faster than zlib's on the Lesjak scans, see
    ``benchmarks/compression.py``) holds the GIL once; nibabel then reads the
    voxels from memory with the same header, hence the same dtype and
    scaling. Anything but a clean gzip stream (truncated, bad checksum,
    padding) is left to nibabel, which decides as before.
    """
    raw = _gunzip(path.read_bytes()) if path.name.lower().endswith(".gz") else None
    if raw is None:
        return img.get_fdata(dtype=np.float32)
    return type(img).from_bytes(raw).get_fdata(dtype=np.float32)


def _gunzip(data: bytes) -> bytes | None:
    """Decompress a clean gzip file (one or more members), else ``None``."""
    parts = []
    while data:
        stream = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
        try:
            parts.append(stream.decompress(data))
        except isal_zlib.error:
            return None
        if not stream.eof:
            return None
        data = stream.unused_data
        if data and data[:2] != b"\x1f\x8b":
            return None
    return b"".join(parts)


def load_mask(path: str | os.PathLike[str], *, reference: Volume, role: str = "mask") -> np.ndarray:
    """Load a binary mask that must lie on the grid of ``reference``.

    Parameters
    ----------
    path : str or os.PathLike
        NIfTI mask; voxels > 0 are inside.
    reference : Volume
        The grid the mask must match (same shape, affine within 1e-3 mm).
    role : str, optional
        Used in messages.

    Returns
    -------
    numpy.ndarray
        Boolean array with ``reference.shape``.

    Raises
    ------
    InputError
        Unreadable file, different grid, or an empty mask.
    """
    who = _describe(role, Path(path))
    data, affine = _read_grid_map(path, who, reference)
    if not np.allclose(affine, reference.affine, atol=1e-3):
        raise InputError(f"{who}: affine differs from the post scan's; resample it onto that grid")
    mask = np.nan_to_num(np.asarray(data, dtype=np.float32)) > 0
    if not mask.any():
        raise InputError(f"{who}: mask is empty")
    return mask


def load_labels(
    path: str | os.PathLike[str], *, reference: Volume | None = None, role: str = "label map"
) -> Volume:
    """Load an integer label map (which, unlike a scan, may be all zero).

    Parameters
    ----------
    path : str or os.PathLike
        NIfTI label map.
    reference : Volume, optional
        When given, the map must have the reference's shape (same grid).
    role : str, optional
        Used in messages.

    Returns
    -------
    Volume
        int32 labels (rounded) with the file's affine.

    Raises
    ------
    InputError
        Missing or unreadable file, or a shape that differs from ``reference``.
    """
    path = Path(path)
    data, affine = _read_grid_map(path, _describe(role, path), reference)
    labels = np.rint(np.nan_to_num(np.asarray(data, dtype=np.float64))).astype(np.int32)
    return Volume(labels, affine, path.name)


def _read_grid_map(
    path: str | os.PathLike[str], who: str, reference: Volume | None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a mask/label map's raw 3-D array and affine; check the shape against ``reference``."""
    path = Path(path)
    _check_file(path, who)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, ValueError, OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{who}: not a readable NIfTI image ({_short(exc)})") from None
    if data.ndim > 3 and np.prod(data.shape[3:]) == 1:
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise InputError(f"{who}: image is {data.ndim}-D {data.shape}; expected 3-D")
    if reference is not None and data.shape != reference.shape:
        raise InputError(f"{who}: shape {data.shape} differs from the post scan {reference.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def save_volume(
    path: str | os.PathLike[str],
    data: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: np.dtype | type | str = np.float32,
) -> Path:
    """Write a NIfTI image atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.nii`` or ``.nii.gz``.
    data : numpy.ndarray
        3-D array in nibabel order.
    affine : numpy.ndarray
        Voxel-to-RAS affine, written as both sform and qform (code 1, scanner).
    dtype : numpy dtype, optional
        On-disk data type.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    arr = np.asarray(data).astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(arr.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["descrip"] = b"gdlesion"
    blob = _nifti_gz_bytes(img) if path.name.lower().endswith(".gz") else None
    with atomic_path(path) as tmp:
        if blob is None:
            nib.save(img, str(tmp))
        else:
            tmp.write_bytes(blob)
    return path


def _fortran_order_bytes(data: np.ndarray) -> memoryview:
    """Return the voxels in NIfTI (Fortran) order: the bytes of ``data.tobytes(order="F")``.

    ``tobytes(order="F")`` copies a C-ordered array element by element through
    a generic iterator: 0.05-0.076 s for a 182x218x182 volume of uint8 to
    float32, six times per ``inspect --out`` (the pipeline's volumes are
    C-ordered). numpy's transposing array copy gives the same bytes in
    0.012-0.019 s (tested); an F-ordered array is not copied at all.
    """
    return memoryview(np.ascontiguousarray(np.asarray(data).T).reshape(-1).view(np.uint8))


#: Python's gzip header as nibabel writes it: no file name, mtime 0, level-1 flag, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"


def _nifti_gz_bytes(img: nib.Nifti1Image) -> bytes | None:
    """Build a ``.nii.gz`` file holding exactly what ``nib.save`` writes, with one compression call.

    nibabel's gzip writer compresses one slice at a time, taking the GIL for
    each: beside a busy thread (the QC figures) every slice waits for its turn.
    Here the header comes from nibabel's own code (the steps of
    ``to_file_map``), the voxels are one :func:`_fortran_order_bytes` buffer, and one
    ISA-L deflate at level 1 (``isal``: about 10x faster than zlib's level 1,
    and smaller files, on the Lesjak scans; ``benchmarks/compression.py``) is
    wrapped in Python's gzip framing. Decompressed, the file is byte for byte
    what ``nib.save`` writes (tested); the compressed bytes are deterministic
    but not zlib's. ``None`` when nibabel would rescale the data.
    """
    data = np.asanyarray(img.dataobj)
    img.get_data_dtype(finalize=True)
    img.update_header()
    hdr = img.header
    out_dtype = hdr.get_data_dtype()
    preset = (hdr["scl_slope"].item(), hdr["scl_inter"].item())
    if data.dtype != out_dtype or not np.all(np.isnan(preset)):
        return None
    writer = make_array_writer(data, out_dtype, hdr.has_data_slope, hdr.has_data_intercept)
    slope, inter = get_slope_inter(writer)
    if slope != 1 or inter != 0:
        return None
    hdr.set_slope_inter(slope, inter)
    head = io.BytesIO()
    hdr.write_to(head)
    header = head.getvalue().ljust(int(hdr.get_data_offset()), b"\x00")
    voxels = _fortran_order_bytes(data)
    deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
    size = len(header) + voxels.nbytes
    return b"".join((
        _GZIP_HEADER, deflate.compress(header), deflate.compress(voxels), deflate.flush(),
        struct.pack("<II", isal_zlib.crc32(voxels, isal_zlib.crc32(header)), size & 0xFFFFFFFF),
    ))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the full suffix (e.g. ``.nii.gz``) so writers that
    choose compression from the name behave. On any exception the temporary
    file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the final file the usual permissions (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (reproducible bytes)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def ensure_writable_dir(
    out_dir: str | os.PathLike[str], *, overwrite: bool, inputs: tuple = ()
) -> Path:
    """Check that results may be written into ``out_dir`` without silent loss.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output directory; created if missing.
    overwrite : bool
        Allow replacing files of an existing, non-empty directory.
    inputs : tuple of paths
        Input files, which must never lie inside ``out_dir`` when overwriting.

    Raises
    ------
    OutputError
        ``out_dir`` is a file, is non-empty and ``overwrite`` is false, or holds an input.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(
                f"output {out}: directory is not empty; choose another or pass --overwrite"
            )
        resolved = out.resolve()
        for p in inputs:
            if p is not None and resolved in Path(p).resolve().parents:
                raise OutputError(f"output {out}: contains the input {p}; choose another directory")
    return out


# --- nibabel (RAS, i,j,k) <-> SimpleITK (LPS, k,j,i) ----------------------------------


def ras_to_lps(matrix: np.ndarray) -> np.ndarray:
    """Convert a 4x4 point transform between RAS and LPS (the flip is its own inverse)."""
    return _FLIP @ np.asarray(matrix, dtype=np.float64) @ _FLIP


def to_sitk(volume: Volume, *, pixel_type: int | None = None) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image with identical world geometry.

    SimpleITK's array is ``[k, j, i]``; its index ``(x, y, z)`` is nibabel's
    ``(i, j, k)`` and its physical space is LPS. ``pixel_type`` defaults to
    ``sitk.sitkFloat32``.
    """
    import SimpleITK as sitk

    if pixel_type is None:
        pixel_type = sitk.sitkFloat32
    arr = np.ascontiguousarray(np.asarray(volume.data).transpose(2, 1, 0))
    img = sitk.GetImageFromArray(arr)
    if img.GetPixelID() != pixel_type:
        img = sitk.Cast(img, pixel_type)
    lps = _FLIP @ volume.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    return img


def from_sitk(image: sitk.Image, *, name: str = "") -> Volume:
    """Convert a SimpleITK image back to a :class:`Volume` (RAS affine, nibabel order)."""
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = image.GetOrigin()
    return Volume(np.ascontiguousarray(data), _FLIP @ lps, name)


def matrix_from_sitk_transform(transform: sitk.Transform) -> np.ndarray:
    """Return the 4x4 RAS-mm matrix of a SimpleITK affine-like transform.

    SimpleITK maps fixed-image LPS points to moving-image LPS points as
    ``A (p - c) + c + t``; the result maps RAS points the same way.
    """
    a = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = c + t - a @ c
    return ras_to_lps(lps)


def sitk_transform_from_matrix(matrix_ras: np.ndarray) -> sitk.AffineTransform:
    """Build a SimpleITK affine transform from a 4x4 RAS-mm point matrix."""
    import SimpleITK as sitk

    lps = ras_to_lps(matrix_ras)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    tx.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    return tx


def _fmt(values: np.ndarray) -> str:
    return "x".join(f"{v:g}" for v in np.round(values, 4))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
