"""Small QC figures of the HTML report, as PNG data URIs.

Images are composed as RGB arrays (vectorised numpy) and encoded as PNG with
Pillow, so the two frames of the registration flicker are pixel-aligned and a
page with many lesions stays fast and small. Volumes are first put in the
closest RAS orientation (axis flips and permutations only, no resampling);
each displayed slice is then resampled to square pixels. Display convention:
neurological (patient left on image left), anterior up in axial slices,
superior up in coronal and sagittal slices.
"""

from __future__ import annotations

import base64
import functools
import io as _io
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation
from scipy import ndimage as ndi

__all__ = [
    "Canonical",
    "canonical",
    "plane_slices",
    "window",
    "to_rgb",
    "overlay_outline",
    "overlay_edges",
    "enhancement_rgb",
    "png_data_uri",
    "hstack",
    "lesion_tile",
    "PLANES",
]

#: Planes shown for whole-brain figures, in order.
PLANES = ("axial", "coronal", "sagittal")
#: Longest side of a whole-brain plane image, in pixels (keeps pages small).
PLANE_PIXELS = 220
#: Side of one zoomed lesion panel, in pixels.
TILE_PIXELS = 120
#: Margin around a lesion's bounding box in the zoomed panels, in mm.
TILE_MARGIN_MM = 10.0

RED = (255, 40, 40)
YELLOW = (255, 220, 0)
CYAN = (0, 220, 255)
MAGENTA = (255, 0, 255)


@dataclass(frozen=True, eq=False)
class Canonical:
    """A volume's geometry reoriented to the closest RAS axes.

    ``apply(data)`` reorders any array on the original grid; ``zooms`` are the
    voxel sizes along the reordered x, y, z axes; ``ornt`` is nibabel's
    orientation transform.
    """

    ornt: np.ndarray
    zooms: np.ndarray

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Reorder an array on the original grid to RAS axis order."""
        return np.ascontiguousarray(self.view(data))

    def view(self, data: np.ndarray) -> np.ndarray:
        """:meth:`apply` without the copy: a view with flipped and permuted strides."""
        return apply_orientation(np.asarray(data), self.ornt)

    def index(self, ijk: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Map original voxel indices ``(..., 3)`` to indices of the reordered array."""
        ijk = np.asarray(ijk, dtype=np.float64)
        out = np.empty_like(ijk)
        for src, (dst, flip) in enumerate(self.ornt.astype(int)):
            out[..., dst] = (shape[src] - 1 - ijk[..., src]) if flip < 0 else ijk[..., src]
        return out


def canonical(affine: np.ndarray) -> Canonical:
    """Orientation transform of ``affine`` to the closest RAS axes."""
    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out = np.empty(3)
    out[ornt[:, 0].astype(int)] = zooms
    return Canonical(ornt=ornt, zooms=out)


def _plane(data: np.ndarray, plane: str, index: int) -> np.ndarray:
    """2-D display array (row 0 at the top) of a RAS-ordered volume."""
    if plane == "axial":
        sl = data[:, :, index]
    elif plane == "coronal":
        sl = data[:, index, :]
    else:
        sl = data[index, :, :]
    return sl.T[::-1]


def _plane_zooms(zooms: np.ndarray, plane: str) -> tuple[float, float]:
    """(row, column) pixel sizes in mm of :func:`_plane`'s output."""
    x, y, z = (float(v) for v in zooms)
    return {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}[plane]


def _square(img: np.ndarray, zooms: tuple[float, float], *, pixels: int, order: int) -> np.ndarray:
    """Resample a 2-D slice to square pixels with its longest side ``pixels``."""
    extent = np.array(img.shape, dtype=float) * np.asarray(zooms)
    scale = pixels / max(float(extent.max()), 1e-6)
    target = np.maximum(1, np.round(extent * scale)).astype(int)
    factors = target / np.array(img.shape, dtype=float)
    if np.allclose(factors, 1.0):
        return img
    return ndi.zoom(img, factors, order=order, mode="nearest", grid_mode=True)


def plane_slices(
    data: np.ndarray, zooms: np.ndarray, center: np.ndarray, *, pixels: int = PLANE_PIXELS,
    order: int = 1,
) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``center`` (RAS-ordered indices)."""
    c = np.clip(np.round(center).astype(int), 0, np.array(data.shape) - 1)
    index = {"axial": c[2], "coronal": c[1], "sagittal": c[0]}
    return [
        _square(_plane(data, p, int(index[p])).astype(np.float32 if order else data.dtype),
                _plane_zooms(zooms, p), pixels=pixels, order=order)
        for p in PLANES
    ]


def window(data: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Display window: 1st and 99.5th percentiles inside ``mask`` (or of non-zero voxels)."""
    values = data[mask] if mask is not None and mask.any() else data[data != 0]
    if values.size == 0:
        values = data.ravel()
    values = values[:: max(1, values.size // 200_000)]
    lo, hi = np.percentile(values, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def to_rgb(img: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Grey-scale RGB uint8 image of ``img`` windowed to ``[vmin, vmax]``."""
    g = np.clip((img - vmin) / (vmax - vmin), 0.0, 1.0)
    g8 = np.round(g * 255).astype(np.uint8)
    return np.repeat(g8[..., None], 3, axis=2)


def _boundary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def overlay_outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Paint the one-pixel outline of ``mask`` onto a copy of ``rgb``."""
    out = rgb.copy()
    out[_boundary(mask)] = color
    return out


def overlay_edges(rgb: np.ndarray, img: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Paint the Canny edges of ``img`` (another scan's slice) onto a copy of ``rgb``."""
    from skimage.feature import canny

    out = rgb.copy()
    scale = float(np.percentile(img, 99.5)) or 1.0
    edges = canny(img / scale, sigma=1.5, low_threshold=0.05, high_threshold=0.15)
    out[edges] = color
    return out


#: ColorBrewer's diverging "RdBu" scheme (Cynthia Brewer, colorbrewer2.org; Apache
#: License 2.0), the 11 colours from which matplotlib builds its ``RdBu`` colour map.
_RDBU = np.array([
    (0.40392156862745099, 0.0, 0.12156862745098039),
    (0.69803921568627447, 0.09411764705882353, 0.16862745098039217),
    (0.83921568627450982, 0.37647058823529411, 0.30196078431372547),
    (0.95686274509803926, 0.6470588235294118, 0.50980392156862742),
    (0.99215686274509807, 0.85882352941176465, 0.7803921568627451),
    (0.96862745098039216, 0.96862745098039216, 0.96862745098039216),
    (0.81960784313725488, 0.89803921568627454, 0.94117647058823528),
    (0.5725490196078431, 0.77254901960784317, 0.87058823529411766),
    (0.2627450980392157, 0.57647058823529407, 0.76470588235294112),
    (0.12941176470588237, 0.4, 0.67450980392156867),
    (0.0196078431372549, 0.18823529411764706, 0.38039215686274508),
])
_LUT_SIZE = 256


@functools.cache
def _red_blue_lut() -> np.ndarray:
    """Return matplotlib's ``RdBu_r`` colours as a ``(256, 3)`` uint8 RGB lookup table.

    Built from the same 11 colours and linear interpolation as matplotlib
    (a test checks that the table and :func:`enhancement_rgb` are identical to
    matplotlib's); importing matplotlib for it would cost ``inspect`` about
    0.1 s of the interpreter lock while the study is still being measured.
    """
    colours = _RDBU[::-1]  # reversed: blue (negative) to red (positive)
    knots = np.linspace(0.0, 1.0, len(colours))
    grid = np.linspace(0.0, 1.0, _LUT_SIZE)
    lut = np.stack([np.interp(grid, knots, colours[:, c]) for c in range(3)], axis=1)
    return np.round(lut * 255).astype(np.uint8)


def enhancement_rgb(z: np.ndarray, *, vmax: float = 8.0) -> np.ndarray:
    """Colour image of an enhancement z-map (blue negative, red positive).

    The colours of matplotlib's ``RdBu_r`` over ``[-vmax, vmax]`` (values
    beyond are clipped; NaN is black, matplotlib's "bad" colour).
    """
    x = np.clip((z + vmax) / (2 * vmax), 0.0, 1.0)
    # matplotlib's indexing: floor(x * N), with x == 1 in the last bin
    idx = x * _LUT_SIZE
    bad = np.isnan(idx)
    idx[bad | (idx == _LUT_SIZE)] = _LUT_SIZE - 1
    rgb = _red_blue_lut()[idx.astype(np.intp)]
    rgb[bad] = 0
    return rgb


def hstack(images: list[np.ndarray], *, gap: int = 4) -> np.ndarray:
    """Place RGB images side by side (bottom-padded to equal height) with a dark gap."""
    h = max(im.shape[0] for im in images)
    parts = []
    for n, im in enumerate(images):
        pad = np.zeros((h, im.shape[1], 3), dtype=np.uint8)
        pad[: im.shape[0]] = im
        parts.append(pad)
        if n < len(images) - 1:
            parts.append(np.full((h, gap, 3), 32, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


def png_data_uri(rgb: np.ndarray) -> str:
    """Encode an RGB uint8 image as a ``data:image/png;base64,...`` URI.

    Written as the opaque RGBA PNG that ``matplotlib.image.imsave`` writes (same
    pixels and resolution), at zlib level 1: twice as fast as the default level 6
    for ~10 % more bytes. Thread-safe; the compression releases the GIL.
    """
    from PIL import Image

    rgba = np.empty(rgb.shape[:2] + (4,), dtype=np.uint8)
    rgba[..., :3] = rgb
    rgba[..., 3] = 255
    buf = _io.BytesIO()
    Image.fromarray(rgba).save(buf, format="png", compress_level=1, dpi=(100, 100))
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def lesion_tile(
    layers: list[tuple[np.ndarray, str]],
    labels: np.ndarray,
    label: int,
    zooms: np.ndarray,
    windows: list[tuple[float, float]],
    *,
    color: tuple[int, int, int] = RED,
    box: tuple[slice, ...] | None = None,
) -> tuple[np.ndarray, int]:
    """Zoomed axial panels through one lesion's largest cross-section, outlined.

    Parameters
    ----------
    layers : list of (array, kind)
        RAS-ordered volumes to show; kind ``"gray"`` or ``"z"`` (enhancement map).
    labels : numpy.ndarray
        RAS-ordered label map holding ``label``.
    label : int
        The lesion's label value.
    zooms : numpy.ndarray
        Voxel sizes (mm) along x, y, z of the RAS-ordered arrays.
    windows : list of (float, float)
        Display window of each grey layer (ignored for ``"z"``).
    color : tuple of int
        Outline colour.
    box : tuple of slice, optional
        The label's bounding box (``scipy.ndimage.find_objects``), found if omitted.

    Returns
    -------
    tuple
        RGB image of the panels side by side, and the axial slice index shown.
    """
    if box is None:
        objects = ndi.find_objects((labels == label).astype(np.uint8))
        if not objects or objects[0] is None:
            raise ValueError(f"label {label} is absent from the label map")
        box = objects[0]
    slab = labels[box] == label
    k = box[2].start + int(np.argmax(slab.sum(axis=(0, 1))))
    # A square field of view (in mm) centred on the lesion: the lesion's extent plus margins.
    centre = np.array([(b.start + b.stop - 1) / 2.0 for b in box[:2]])
    half_mm = max((b.stop - b.start) * z for b, z in zip(box[:2], zooms[:2], strict=True)) / 2
    half = (half_mm + TILE_MARGIN_MM) / np.asarray(zooms[:2])
    lo = np.maximum(0, np.floor(centre - half)).astype(int)
    hi = np.minimum(labels.shape[:2], np.ceil(centre + half) + 1).astype(int)
    crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), k)
    zz = _plane_zooms(zooms, "axial")
    # Nearest-neighbour upsampling keeps voxels visible and the outline exact. Every
    # layer is upsampled alike: zoom the pixel indices once, then gather each layer.
    shape = (hi[1] - lo[1], hi[0] - lo[0])  # of the displayed (transposed) slice
    index = _square(np.arange(shape[0] * shape[1], dtype=np.float64).reshape(shape), zz,
                    pixels=TILE_PIXELS, order=0).astype(np.intp)

    def upsample(vol: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vol[crop].T[::-1]).ravel()[index]

    mask = upsample(labels) == label
    outline = _boundary(mask)
    panels = []
    for (vol, kind), (vmin, vmax) in zip(layers, windows, strict=True):
        img = upsample(vol).astype(np.float32)
        rgb = enhancement_rgb(img) if kind == "z" else to_rgb(img, vmin, vmax)
        rgb[outline] = color
        panels.append(rgb)
    return hstack(panels), k
