"""Brain mask, tissue classes and intensity normalisation of the registered pre scan.

Everything here works on arrays already on the post-contrast grid and takes
voxel sizes (``zooms``, mm) so that morphological radii are true millimetres
on anisotropic and thick-slice scans. Distances are computed with Euclidean
distance transforms (``scipy.ndimage.distance_transform_edt`` with
``sampling=zooms``) instead of structuring elements, which keeps erosion and
dilation exact in mm and vectorised.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu

from ._morphology import distance_transform_edt
from .errors import SegmentationError
from .skullstrip import largest_component as _largest_component
from .skullstrip import watershed_brain

__all__ = [
    "estimate_brain_mask",
    "fill_holes",
    "conditional_median_mapping",
    "equal_count_bins",
    "per_bin_median",
    "interp_float32",
    "tissue_thresholds",
    "n4_bias_field",
    "bounding_box",
    "ball",
]


def bounding_box(mask: np.ndarray, *, margin: int = 0) -> tuple[slice, slice, slice]:
    """Return the slices of the smallest box holding ``mask``, grown by ``margin`` voxels."""
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(i.size == 0 for i in idx):
        return (slice(0, 0),) * 3  # type: ignore[return-value]
    return tuple(  # type: ignore[return-value]
        slice(max(int(i[0]) - margin, 0), min(int(i[-1]) + 1 + margin, n))
        for i, n in zip(idx, mask.shape, strict=True)
    )


def ball(radius_mm: float, zooms: np.ndarray) -> np.ndarray:
    """Boolean structuring element of the voxels within ``radius_mm`` of the centre (true mm)."""
    half = np.floor(radius_mm / np.asarray(zooms) + 1e-9).astype(int)
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * z for h, z in zip(half, zooms, strict=True)], indexing="ij"
    )
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def fill_holes(mask: np.ndarray, *, in_plane_of: int | None = None) -> np.ndarray:
    """Fill the holes of ``mask`` (as ``scipy.ndimage.binary_fill_holes``, several times faster).

    A hole is a background component (face connectivity) that does not touch
    the array border. With ``in_plane_of=axis`` the holes are those of each
    slice perpendicular to ``axis`` (connectivity and border within the slice),
    as filling slice by slice. One labelling instead of scipy's iterated
    dilation from the border.
    """
    background = ~np.asarray(mask, dtype=bool)
    if in_plane_of is None:
        structure = ndi.generate_binary_structure(3, 1)
        border_axes = (0, 1, 2)
    else:
        structure = np.zeros((3, 3, 3), dtype=bool)
        plane = [slice(None)] * 3
        plane[in_plane_of] = 1  # type: ignore[call-overload]
        structure[tuple(plane)] = ndi.generate_binary_structure(2, 1)
        border_axes = tuple(a for a in range(3) if a != in_plane_of)
    lab, n = ndi.label(background, structure=structure)
    if n == 0:
        return ~background
    outside = np.zeros(n + 1, dtype=bool)
    for axis in border_axes:
        for index in (0, -1):
            face = [slice(None)] * 3
            face[axis] = index  # type: ignore[call-overload]
            outside[lab[tuple(face)]] = True
    outside[0] = True  # the mask itself
    return ~outside[lab] | ~background


#: Semi-axes (mm, world R-L, A-P, S-I) of the region around the brain's centre kept in a
#: full-head scan: an adult brain is at most ~150 x 200 x 140 mm, with margin.
BRAIN_SEMI_AXES_MM = (80.0, 105.0, 80.0)

#: Largest non-zero region (ml) read as a skull-stripped brain. Adult intracranial volume is
#: 1.1-1.9 l, and skull-stripped scans hold 1.1-1.6 l (the Lesjak and TCGA pairs); a head
#: whose air was set to zero is larger: 2.6-3.1 l for simulated heads, 2.9 l for the TCGA
#: thick-slice head (143 mm of coverage).
MAX_STRIPPED_ML = 2200.0


def _within_ellipsoid(
    shape: tuple[int, ...], centre: tuple, zooms: np.ndarray, affine: np.ndarray, semi: tuple
) -> np.ndarray:
    """Voxels of a (strided) grid within a world-axis-aligned ellipsoid around ``centre``."""
    rot = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # voxel axes -> world
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    offs = [(g - c) * z for g, c, z in zip(grid, centre, zooms, strict=True)]  # mm along axes
    total = np.zeros(shape, dtype=np.float32)
    for w in range(3):
        world = offs[0] * rot[w, 0] + offs[1] * rot[w, 1] + offs[2] * rot[w, 2]
        total += (world / semi[w]) ** 2
    return total <= 1.0


def _slice_axis(affine: np.ndarray) -> int:
    """Voxel axis closest to the world superior-inferior direction (the 'axial' slicing axis)."""
    directions = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return int(np.argmax(np.abs(directions[2])))


def estimate_brain_mask(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    opening_mm: float = 5.0,
    full_head_opening_mm: float = 7.0,
    central_radius_mm: float = 25.0,
    ceiling_factor: float = 1.1,
    shift_iterations: int = 3,
    min_volume_ml: float = 20.0,
    name: str = "post scan",
    coarse_voxel_mm: float = 2.5,
    full_head_core_mm: float = 11.0,
    full_head_floor: float = 0.35,
    max_hole_ml: float = 5.0,
    min_enclosed: float = 0.5,
) -> np.ndarray:
    """Classical brain mask of a T1 scan, skull-stripped or full-head.

    Steps: Otsu threshold of the lightly smoothed image (separates air or the
    zero background from tissue); erosion by ``opening_mm`` (cuts the thin
    bridges between brain and scalp through the dark skull); largest 3-D
    component; dilation back by the same radius inside the tissue mask
    (an opening by reconstruction); filling of enclosed holes in 3-D and in
    every axial slice (ventricles, dark lesions).

    Parameters
    ----------
    data : numpy.ndarray
        3-D image (nibabel order).
    affine : numpy.ndarray
        Voxel-to-RAS affine (for voxel sizes and the axial axis).
    opening_mm : float, optional
        Erosion/dilation radius in mm. 5 mm is thicker than the meninges and
        thinner than the narrowest brain structures that must survive the
        erosion (it would remove a gyrus only if it were < 10 mm wide).
    full_head_opening_mm : float, optional
        Radius used instead when the image is not skull-stripped: less than 30 %
        of its voxels are background (zero, or the constant value of the grid's
        eight corners, as in a z-scored skull-stripped image), or the rest is
        larger than :data:`MAX_STRIPPED_ML` (a full head whose air was set to
        zero). The scalp touches the brain through thin dark skull, and 7 mm
        separates them on 1 mm and 5.5 mm-slice scans alike.
    central_radius_mm : float, optional
        Full-head input: radius of the sphere around the head's centre of mass
        whose intensities define brain; voxels more than 10 % brighter than its
        99th percentile (scalp and marrow fat) are not brain tissue.
    ceiling_factor : float, optional
        Full-head input: voxels brighter than this factor times the 99th
        percentile of the central sphere are scalp or marrow fat, not brain
        (1.1; 1.1-1.4 and no ceiling give the same masks within 0.5 % leak on
        simulated heads).
    shift_iterations : int, optional
        Full-head input: the brain-sized ellipsoid that cuts off neck and face
        starts at the thickest tissue point and is moved this many times to the
        centre of mass of the tissue core inside it (0 keeps the thickest
        point, which cut 10-25 % of the brain on simulated 1 mm heads).
    min_volume_ml : float, optional
        A mask smaller than this (inclusive lower bound) means "no brain".
    name : str, optional
        Used in the error message.
    coarse_voxel_mm : float, optional
        Full-head input whose largest voxel dimension exceeds this (thick-slice
        2-D, 3-4 mm 3-D) is "coarse": the skull base and the oblique skull are
        blurred by partial volume, and the three options below apply. Finer
        full heads (1-2.5 mm) keep the plain opening, which does not leak there.
    full_head_core_mm : float, optional
        Coarse full head: opening radius used instead of ``full_head_opening_mm``;
        the opened mask is then intersected with the brain's watershed catchment
        (:func:`gdlesion.skullstrip.watershed_brain`: its boundary follows the
        dark skull ridge however blurred). Measured on simulated heads
        (``benchmarks/brain_mask.py``): the 7 mm opening alone leaves 19-27 % of
        the mask outside the brain on 2-D and 3-4 mm heads, this 2-4 %.
    full_head_floor : float, optional
        Coarse full head: fraction of the white-matter level (95th percentile
        of the head within 60 mm of its centre) below which a voxel is CSF, bone
        or their partial volume; the watershed's brain marker is the core of the
        tissue above it. Results are the same for 0.2-0.45 (CSF is 0.2-0.3 and
        grey matter 0.6-0.75 of white matter on T1).
    max_hole_ml : float, optional
        Coarse full head: enclosed regions brighter than the ceiling up to this
        volume (enhancing lesions, vessels) count as tissue before the opening;
        otherwise the wider opening cuts the cortex between a bright lesion and
        the brain's surface, and the lesion ends up outside the mask. A larger
        region (a lesion touching the sinuses) has its thick cores, cut off by
        an erosion of one voxel, filled when they are up to this volume.
        Measured (a 14 mm lesion 10 mm under the surface of 4 mm heads, 60
        random sites): 2 sites kept 0.33 of it without that step, none below
        0.95 with it; the mask's share outside the brain on nine 2-D, 3 mm
        and 4 mm heads rose by at most 0.1 point. Raising this volume to 20 ml
        instead also kept them, but added up to 1.5 points there.
    min_enclosed : float, optional
        Full-head input: a region brighter than the ceiling, of at most
        ``max_hole_ml``, joins the mask when at least this fraction of the voxels
        bordering it are brain (:func:`_bright_inclusions`). A strongly enhancing
        lesion is brighter than the ceiling; beside a sulcus it is not enclosed
        by tissue, and without this step it was cut out of the mask. On
        simulated 1 mm heads such lesions border brain on 78-93 % of their
        surface, the scalp and marrow fat on 33-63 % (and are 9-14 ml).

    Returns
    -------
    numpy.ndarray
        Boolean mask.

    Raises
    ------
    SegmentationError
        No brain-sized connected tissue is found.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    f = tuple(max(1, int(2.0 // z)) for z in zooms)  # the opening runs on ~2 mm voxels
    small_zooms = zooms * np.asarray(f)
    # the background of a skull-stripped scan is zero, or another constant (the lowest value
    # of an image z-scored after stripping): the value shared by the grid's eight corners
    corners = data[np.ix_(*[[0, n - 1] for n in data.shape])]
    background = float(corners.flat[0]) if np.all(corners == corners.flat[0]) else 0.0
    offset = np.abs(data - np.float32(background)) if background else np.abs(data)
    near_zero = offset <= 1e-3 * float(offset.max())
    del offset
    veto = None
    coarse = False
    bright = None
    n_zero = int(np.count_nonzero(near_zero))
    stripped_ml = (data.size - n_zero) * float(np.prod(zooms)) / 1000.0
    if n_zero >= 0.3 * data.size and stripped_ml <= MAX_STRIPPED_ML:
        # skull-stripped or masked input: everything but the constant background is tissue
        # (a larger non-zero region is a head whose air was zeroed: it takes the full-head
        # path, which separates the scalp; read as brain, its scalp, dura and neck made
        # candidates of up to 60 ml on simulated heads)
        tissue = ~near_zero
        del near_zero
        full_head = False
    else:
        # full head: Otsu separates air from head. Voxels brighter than anything at the
        # head's centre (which is brain in any head) are scalp and marrow fat: they are
        # cut away, and the opening below then detaches the brain from the scalp across
        # the dark skull.
        del near_zero
        smooth = ndi.gaussian_filter(data, sigma=0.7 / zooms)
        step = tuple(max(1, s // 80) for s in data.shape)
        sample = smooth[:: step[0], :: step[1], :: step[2]].ravel()
        head = smooth > threshold_otsu(sample)
        centre = np.asarray(ndi.center_of_mass(head))
        grid = np.ogrid[tuple(slice(0, n) for n in data.shape)]
        dist2 = sum(((g - c) * z) ** 2 for g, c, z in zip(grid, centre, zooms, strict=True))
        central = head & (dist2 <= central_radius_mm**2)
        ceiling = np.inf
        if np.count_nonzero(central) > 100:
            ceiling = ceiling_factor * float(np.percentile(smooth[central], 99))
        tissue = head & (smooth <= ceiling)
        bright = head & ~tissue
        opening_mm = max(opening_mm, full_head_opening_mm)
        full_head = True
        coarse = float(zooms.max()) > coarse_voxel_mm
        if coarse:
            # bright enhancing lesions and vessels above the ceiling are holes in the tissue;
            # enclosed small ones are filled so that the wider opening does not open them
            enclosed = ndi.binary_fill_holes(tissue) & (smooth > ceiling)
            holes, n_holes = ndi.label(enclosed)
            if n_holes:
                voxel_ml = float(np.prod(zooms)) / 1000.0
                sizes = np.bincount(holes.ravel()) * voxel_ml
                sizes[0] = np.inf
                small = (sizes <= max_hole_ml)[holes]
                tissue |= small
                # a bright lesion touching a larger bright structure (the sinuses, on 3-4 mm
                # voxels) is one region with it: its thick core, cut off by an erosion of
                # one voxel, is filled too, grown back by up to three voxels within the
                # region (a 14 mm lesion is 3.5 voxels of 4 mm across: one voxel gave back
                # about half of it, two 0.78-0.96, three all of it)
                large = enclosed & ~small
                cores, n_cores = ndi.label(ndi.binary_erosion(large))
                if n_cores:
                    core_ml = np.bincount(cores.ravel()) * voxel_ml
                    core_ml[0] = np.inf
                    keep = (core_ml <= max_hole_ml)[cores]
                    tissue |= ndi.binary_dilation(keep, iterations=3) & large
                del small, large, cores
            del holes, enclosed
            # thick slices / coarse voxels blur the skull base: a wider opening, and a
            # watershed on the dark skull ridge vetoes what still leaks (gdlesion.skullstrip)
            nearby = head & (dist2 <= 60.0**2)
            floor = full_head_floor * float(np.percentile(smooth[nearby], 95))
            opening_mm = max(opening_mm, full_head_core_mm)
            head_s = ndi.binary_fill_holes(_largest_component(head[:: f[0], :: f[1], :: f[2]]))
            veto = watershed_brain(
                smooth[:: f[0], :: f[1], :: f[2]], head_s, small_zooms, floor=floor,
                core_mm=full_head_core_mm,
            )
            del nearby, head_s
        del smooth, head, central, dist2
    small = tissue[:: f[0], :: f[1], :: f[2]]
    depth = distance_transform_edt(small, small_zooms)
    core = _largest_component(depth > opening_mm)
    if full_head and core.any():
        # the brain's centre is its thickest point; a full head's tissue also runs down
        # the neck and into the face, which lie outside a brain-sized ellipsoid around it
        if veto is not None and veto.any():
            # coarse scans: the thickest tissue can be the skull base and face blurred into
            # one block; inside the watershed region (bounded by the skull) it is the brain's
            depth = np.where(veto, ndi.distance_transform_edt(veto, sampling=small_zooms), 0)
        centre = np.unravel_index(int(np.argmax(np.where(core, depth, 0))), core.shape)
        # the thickest point need not be central (frontal white matter, a bias-brightened
        # side): move the ellipsoid to the centre of mass of the tissue core inside it
        # (mean shift); a brain-sized ellipsoid around the thickest point alone cut 10-25 %
        # of the brain on simulated 1 mm heads
        for _ in range(shift_iterations):
            inside = core & _within_ellipsoid(
                core.shape, centre, small_zooms, affine, BRAIN_SEMI_AXES_MM
            )
            if not inside.any():
                break
            centre = tuple(float(c) for c in ndi.center_of_mass(inside))
        core &= _within_ellipsoid(core.shape, centre, small_zooms, affine, BRAIN_SEMI_AXES_MM)
        core = _largest_component(core)
    del depth
    if not core.any():
        raise SegmentationError(
            f"{name}: no brain found (no tissue thicker than {2 * opening_mm:g} mm)"
        )
    # back by the radius plus one voxel of the coarse grid; in-plane on coarse full heads
    # (one 5.5 mm slice more would reach 12 mm into the scalp)
    margin = float(small_zooms.min() if coarse else small_zooms.max())
    small = distance_transform_edt(~core, small_zooms) <= opening_mm + margin
    del core
    if veto is not None and veto.any():
        small &= veto
    index = np.ix_(*(np.arange(n) // fi for n, fi in zip(data.shape, f, strict=True)))
    brain = small[index] & tissue
    if bright is not None:
        brain |= _bright_inclusions(
            brain, bright, zooms, max_ml=max_hole_ml, min_enclosed=min_enclosed
        )
        del bright
    del tissue, small
    # the last steps run in the mask's bounding box grown by one background voxel: every
    # voxel outside it is background connected to the grid's border, so the components and
    # holes are those of the whole grid, at a fraction of the cost
    box = bounding_box(brain, margin=1)
    if brain[box].any():
        part = _largest_component(brain[box])
        part = fill_holes(part)
        part = fill_holes(part, in_plane_of=_slice_axis(affine))
        brain = np.zeros(data.shape, dtype=bool)
        brain[box] = part
    volume_ml = float(brain.sum()) * float(np.prod(zooms)) / 1000.0
    if volume_ml < min_volume_ml:
        raise SegmentationError(
            f"{name}: no brain found "
            f"(largest tissue region {volume_ml:.1f} ml < {min_volume_ml:g} ml)"
        )
    return brain


def _bright_inclusions(
    brain: np.ndarray,
    bright: np.ndarray,
    zooms: np.ndarray,
    *,
    max_ml: float,
    min_enclosed: float,
) -> np.ndarray:
    """Regions of ``bright`` of at most ``max_ml`` bordered mostly by ``brain``.

    The border of a region is the set of voxels outside it that touch it
    (26-connectivity); the region is returned when at least ``min_enclosed`` of
    them are in ``brain``. Only regions within the brain's bounding box count
    (one reaching beyond it is not enclosed by the brain).
    """
    out = np.zeros(brain.shape, dtype=bool)
    if not brain.any():
        return out
    box = bounding_box(brain, margin=1)
    lab, n = ndi.label(bright[box], structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return out
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * float(np.prod(zooms)) / 1000.0
    small = sizes <= max_ml
    small[0] = False
    for axis in range(3):  # regions cut by the box reach beyond the brain
        for face in (0, -1):
            small[np.take(lab, face, axis=axis)] = False
    if not small.any():
        return out
    lab = np.where(small[lab], lab, 0)
    sub = bounding_box(lab > 0, margin=1)  # only around the small regions
    lab = lab[sub]
    near = ndi.maximum_filter(lab, size=3)
    border = (lab == 0) & (near > 0)
    total = np.bincount(near[border], minlength=n + 1)
    inside = np.bincount(near[border & brain[box][sub]], minlength=n + 1)
    keep = small & (inside >= min_enclosed * np.maximum(total, 1))
    out[box][sub] = keep[lab]
    return out


def conditional_median_mapping(
    pre: np.ndarray, post: np.ndarray, mask: np.ndarray, *, n_bins: int = 128
) -> np.ndarray:
    """Map pre-scan intensities onto the post scan by the conditional median.

    For each quantile bin of the pre intensity inside ``mask``, the median post
    intensity is the value that a *non-enhancing* voxel with that pre intensity
    has in the post scan (enhancing voxels are a small minority, so the median
    ignores them). Interpolating this curve maps the pre scan onto the post
    scan's intensity scale through any monotone or non-monotone contrast change
    between the two sequences, where a global linear fit leaves tissue-dependent
    residuals (grey matter, CSF and white matter do not line up on one line
    when the pre and post sequences differ).

    Parameters
    ----------
    pre, post : numpy.ndarray
        Registered pre scan and post scan on the same grid.
    mask : numpy.ndarray
        Voxels used to fit the mapping (the brain).
    n_bins : int, optional
        Number of equal-count bins.

    Returns
    -------
    numpy.ndarray
        float32 array: the pre scan in post-scan intensity units.
    """
    # a regular subsample of ~500k voxels fits 128 medians to well below the noise
    step = max(1, int(np.count_nonzero(mask)) // 500_000)
    x = pre[mask][::step].astype(np.float64)
    y = post[mask][::step].astype(np.float64)
    idx, mid, _ = equal_count_bins(x, n_bins=n_bins)
    centres = per_bin_median(x, idx, mid)
    medians = per_bin_median(y, idx, mid)
    # a short running mean removes bin-to-bin jitter without bending the curve
    if medians.size >= 5:
        kernel = np.ones(3) / 3.0
        medians[1:-1] = np.convolve(medians, kernel, mode="valid")
    centres, first = np.unique(centres, return_index=True)
    return interp_float32(pre, centres, medians[first])


def interp_float32(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp(x, xp, fp).astype(np.float32)``, the two halves of a large ``x`` in two threads.

    The same values (each voxel is computed alone); NumPy releases the GIL for
    the interpolation and the casts, so a brain-sized volume takes about 0.6 of
    the time on two cores.
    """
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] < 2 or x.size < 1_000_000 or (os.cpu_count() or 1) < 2:
        return np.interp(x, xp, fp).astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    half = x.shape[0] // 2

    def part(sl: slice) -> None:
        out[sl] = np.interp(x[sl], xp, fp)

    with ThreadPoolExecutor(max_workers=1) as pool:
        job = pool.submit(part, slice(0, half))
        part(slice(half, None))
        job.result()
    return out


def equal_count_bins(x: np.ndarray, *, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort samples ``x`` into ``n_bins`` equal-count (quantile) bins.

    Returns
    -------
    tuple of numpy.ndarray
        ``(idx, mid, keep)``: the bin of each sample, the position of each
        non-empty bin's lower median in a per-bin sorted order (see
        :func:`per_bin_median`), and which bins are non-empty.
    """
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    idx = np.searchsorted(edges, x, side="right")
    counts = np.bincount(idx, minlength=edges.size + 1)
    keep = counts > 0
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return idx, (starts + (counts - 1) // 2)[keep], keep


def per_bin_median(values: np.ndarray, idx: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """Lower median of ``values`` in each non-empty bin of :func:`equal_count_bins`.

    ``mid`` are positions in ``values`` sorted by bin, then by value; the result
    is exactly ``values[np.lexsort((values, idx))][mid]``, found by grouping the
    samples by bin (a stable radix sort of the small bin numbers) and one
    partial sort per bin, several times faster than the full lexsort.
    """
    mid = np.asarray(mid)
    if mid.size == 0:
        return values[:0].copy()
    counts = np.bincount(idx)
    ends = np.cumsum(counts)
    starts = ends - counts
    grouped = values[np.argsort(idx.astype(np.min_scalar_type(counts.size)), kind="stable")]
    bins = np.searchsorted(ends, mid, side="right")
    out = np.empty(mid.shape, dtype=values.dtype)
    for b in np.unique(bins):
        at = np.flatnonzero(bins == b)
        kth = mid[at] - starts[b]
        out[at] = np.partition(grouped[starts[b] : ends[b]], kth)[kth]
    return out


def tissue_thresholds(data: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Two multi-Otsu thresholds (CSF|GM, GM|WM) of a T1 scan inside ``mask``."""
    values = data[mask]
    step = max(1, values.size // 200_000)
    sample = np.sort(values)[::step] if step > 1 else values
    low, high = threshold_multiotsu(sample, classes=3)
    return float(low), float(high)


def n4_bias_field(
    data: np.ndarray, mask: np.ndarray, zooms: np.ndarray, *, shrink: int = 4
) -> np.ndarray:
    """Multiplicative bias field of ``data`` inside ``mask`` by N4 (SimpleITK), float32.

    Run on a ``shrink``-times downsampled copy for speed; the smooth field is
    evaluated at full resolution with ``GetLogBiasFieldAsImage``.
    """
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32))
    img.SetSpacing(tuple(float(z) for z in zooms))
    msk = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0), dtype=np.uint8))
    msk.CopyInformation(img)
    factors = [max(1, min(shrink, int(s // 32))) for s in img.GetSize()]
    small = sitk.Shrink(img, factors)
    small_mask = sitk.Shrink(msk, factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([25, 25, 25])
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(img)
    return np.exp(sitk.GetArrayFromImage(log_field).transpose(2, 1, 0)).astype(np.float32)
