"""Enhancement map and candidate lesions: hysteresis, 3-D components, splitting.

The numeric core takes arrays on the post-contrast grid and returns arrays; no
file I/O, no printing. Detection parameters live in
:class:`~gdlesion.params.DetectionParams`; the rules that reject normally
enhancing structures are in :mod:`gdlesion.rules`.

Thresholds are inclusive: a voxel is a seed when ``z >= high_threshold`` and
belongs to a candidate when ``z >= low_threshold``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ._morphology import regional_maxima
from .blob import label_peaks, peak_blob_ratio
from .params import DetectionParams, load_params
from .preprocess import ball, equal_count_bins, interp_float32, per_bin_median

__all__ = [
    "DetectionParams",
    "load_params",
    "robust_sigma",
    "residual_fwhm",
    "conditional_spread",
    "enhancement_map",
    "hysteresis_components",
    "split_touching",
    "find_candidates",
    "relabel_sequential",
    "refine_boundaries",
    "regrow_small",
]

#: 26-connectivity: diagonal neighbours belong to the same lesion.
CONNECTIVITY = ndi.generate_binary_structure(3, 3)


def robust_sigma(values: np.ndarray) -> tuple[float, float]:
    """Median and normal-consistent MAD (``1.4826 * MAD``) of ``values``.

    Returns
    -------
    tuple of float
        ``(median, sigma)``; sigma is never below ``1e-6 * (|median| + 1)``.
    """
    values = np.asarray(values, dtype=np.float64)
    step = max(1, values.size // 500_000)
    sample = values[::step]
    med = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - med)))
    return med, max(sigma, 1e-6 * (abs(med) + 1.0))


#: Voxel pairs needed along an axis before :func:`residual_fwhm` gives a value.
MIN_FWHM_PAIRS = 1000


def residual_fwhm(
    residual: np.ndarray, mask: np.ndarray, zooms: np.ndarray, *, erode: int = 2, stride: int = 2
) -> np.ndarray:
    """Smoothness of the pre/post residual along each voxel axis, as a Gaussian FWHM in mm.

    The estimator of Forman et al. (1995), as in AFNI's ``3dFWHMx`` and FSL's
    ``smoothest``, made robust: the lag-1 autocorrelation along an axis is
    ``rho = 1 - var(diff) / (2 var)``, with both variances from the MAD
    (:func:`robust_sigma`) over the brain eroded by ``erode`` voxels, so that
    edges, vessels and lesions do not count; a Gaussian kernel of that FWHM
    applied to white noise gives the same ``rho``, so
    ``FWHM = zoom * sqrt(-2 ln 2 / ln rho)``. It is the smoothness of what
    the detection calls noise (thermal noise and the small pre/post
    differences of tissue, flow and partial volume), the FWHM that SPM and
    AFNI use to count resolution elements; it is not the scans' resolution: on
    the real Lesjak pairs (1 mm, resampled to MNI space) the residual is
    1.7-2.2 mm in-plane and 2.6-3.0 mm across slices while their tissue edges
    are as sharp as a ~0.5-0.7 mm Gaussian blur (``benchmarks/README.md``).
    Simulated 1 mm heads give ~0.8 mm. One more linear resampling raises it
    (by ~1 mm on the Lesjak pairs moved by half a voxel), and the detection's
    rules were chosen on the values above. An axis whose voxels are much
    longer than the smoothness gives about its own voxel size or less.
    Pairs are taken on every ``stride``-th line across each axis (the
    variances need far fewer voxels than a brain holds).

    Returns
    -------
    numpy.ndarray
        Three floats (mm); 0 for an axis with fewer than ``MIN_FWHM_PAIRS``
        voxel pairs in the eroded mask or no measurable correlation.
    """
    zooms = np.asarray(zooms, dtype=np.float64)
    inner = ndi.binary_erosion(mask, iterations=erode) if erode > 0 else np.asarray(mask, bool)
    out = np.zeros(3)
    if inner.sum() < MIN_FWHM_PAIRS:
        return out
    every = (slice(None, None, stride),) * 3
    _, sd = robust_sigma(residual[every][inner[every]])
    for axis in range(3):
        # pairs along ``axis`` on every ``stride``-th line across it (2: a quarter of the work)
        lo = [slice(None, None, stride)] * 3
        hi = [slice(None, None, stride)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = inner[tuple(lo)] & inner[tuple(hi)]
        if both.sum() < MIN_FWHM_PAIRS:
            continue
        diff = residual[tuple(hi)][both].astype(np.float64) - residual[tuple(lo)][both]
        _, sd_diff = robust_sigma(diff)
        rho = 1.0 - sd_diff**2 / (2.0 * sd**2)
        if 0.0 < rho < 1.0:
            out[axis] = zooms[axis] * np.sqrt(-2.0 * np.log(2.0) / np.log(rho))
    return out


def conditional_spread(
    values: np.ndarray, guide: np.ndarray, mask: np.ndarray, *, n_bins: int = 32
) -> np.ndarray:
    """Robust spread of ``values`` as a function of ``guide``, evaluated at every voxel.

    The voxels of ``mask`` are sorted into ``n_bins`` equal-count bins of
    ``guide``; in each bin the normal-consistent MAD (``1.4826 * MAD``) of
    ``values`` is taken (a minority of enhancing voxels does not move it) and
    the curve is interpolated linearly over ``guide``. Vectorised: one sort,
    no loop over bins or voxels.

    Returns
    -------
    numpy.ndarray
        float32 array of ``guide``'s shape.
    """
    step = max(1, int(np.count_nonzero(mask)) // 500_000)
    x = guide[mask][::step].astype(np.float64)
    y = values[mask][::step].astype(np.float64)
    idx, mid, keep = equal_count_bins(x, n_bins=n_bins)
    centres = per_bin_median(x, idx, mid)
    med = np.zeros(keep.size)
    med[keep] = per_bin_median(y, idx, mid)
    spread = 1.4826 * per_bin_median(np.abs(y - med[idx]), idx, mid)
    centres, first = np.unique(centres, return_index=True)
    return interp_float32(guide, centres, spread[first])


def enhancement_map(
    post: np.ndarray,
    pre_mapped: np.ndarray,
    mask: np.ndarray,
    zooms: np.ndarray,
    *,
    params: DetectionParams,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Enhancement in robust noise units, with an allowance for misregistration at edges.

    The residual ``post - pre_mapped`` (pre already mapped to post intensities)
    is smoothed by a Gaussian of ``params.smoothing_mm``; its median and MAD in
    the brain give the noise ``sigma``. With ``params.shift_tolerance_mm > 0``
    the residual is instead the smoothed post minus the grey dilation of the
    smoothed ``pre_mapped`` by a ball of that radius (the brightest pre value
    within reach: a displaced structure leaves no residual).

    A sub-voxel misregistration by ``d`` mm produces a residual of about
    ``d * |grad pre|`` at an edge, so each voxel is divided by
    ``sqrt(sigma**2 + (params.misregistration_mm * |grad pre|)**2)``:
    in flat tissue the map is the plain z-score, at tissue edges an edge
    artefact no longer looks like enhancement. With ``params.noise_guide_mm > 0``
    the map is then divided by its own robust spread per tissue intensity
    (:func:`conditional_spread` over the smoothed ``pre_mapped``), so that ``z``
    is in units of the noise of the voxel's own tissue class.

    Returns
    -------
    tuple
        ``(z, residual, sigma)``: float32 z map and smoothed residual (both 0
        outside ``mask``, residual in post intensity units, median removed) and
        the noise level in post-scan intensity units.
    """
    sig_vox = params.smoothing_mm / zooms
    if params.shift_tolerance_mm > 0:
        resid = ndi.gaussian_filter(post, sigma=sig_vox, output=np.float32)
        pre_s = ndi.gaussian_filter(pre_mapped, sigma=sig_vox, output=np.float32)
        resid -= ndi.grey_dilation(pre_s, footprint=ball(params.shift_tolerance_mm, zooms))
        del pre_s
    else:
        resid = post - pre_mapped
        resid = ndi.gaussian_filter(resid, sigma=sig_vox, output=np.float32)
    med, sigma = robust_sigma(resid[mask])
    resid -= med
    if params.misregistration_mm > 0:
        grad2 = np.zeros_like(resid)
        for axis in range(3):
            order = [0, 0, 0]
            order[axis] = 1
            d = ndi.gaussian_filter(
                pre_mapped, sigma=np.maximum(sig_vox, 0.5), order=order, output=np.float32
            )
            d /= np.float32(zooms[axis])
            grad2 += d * d
        del d
        grad2 *= np.float32(params.misregistration_mm**2)
        grad2 += np.float32(sigma**2)
        np.sqrt(grad2, out=grad2)
        z = resid / grad2
        del grad2
    else:  # no gradient allowance (clinical-2d): the same values, without three filters
        z = resid / np.sqrt(np.float32(sigma**2))
    if params.noise_guide_mm > 0:
        guide = ndi.gaussian_filter(
            pre_mapped, sigma=params.noise_guide_mm / zooms, output=np.float32
        )
        spread = conditional_spread(z, guide, mask)
        del guide
        # a bin never counts as more than 4x quieter than the brain as a whole
        np.maximum(spread, np.float32(0.25), out=spread)
        z /= spread
        del spread
    z[~mask] = 0.0
    resid[~mask] = 0.0
    return z, resid, sigma


def hysteresis_components(
    z: np.ndarray,
    mask: np.ndarray,
    *,
    low: float,
    high: float,
    min_extent_voxels: int | None = None,
    blob_image: np.ndarray | None = None,
    zooms: np.ndarray | None = None,
    blob_low: float = np.inf,
    blob_ratio: float = 1.0,
) -> tuple[np.ndarray, int]:
    """Return 26-connected components of ``z >= low`` inside ``mask`` that are significant.

    A component is kept when it holds a voxel ``z >= high`` (a strong peak) or,
    if ``min_extent_voxels`` is given, when it has at least that many voxels
    (a weak but extended enhancement: clusters of noise above the growing
    level are only a few voxels, the size of the smoothing kernel), or, if
    ``blob_image`` is given, when its peak is ``z >= blob_low`` and
    ``blob_image`` is a round blob there (:func:`gdlesion.blob.peak_blob_ratio`
    ``>= blob_ratio``; voxel size ``zooms``).
    """
    lab, n = ndi.label((z >= low) & mask, structure=CONNECTIVITY)
    if n == 0:
        return lab.astype(np.int32), 0
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[np.unique(lab[(z >= high) & (lab > 0)])] = True
    if min_extent_voxels is not None:
        seeded |= np.bincount(lab.ravel(), minlength=n + 1) >= min_extent_voxels
    if blob_image is not None and blob_low < high:
        peak, ijk = label_peaks(z, lab, n)
        weak = np.flatnonzero(~seeded[1:] & (peak >= blob_low))
        if weak.size:
            ratio, _ = peak_blob_ratio(
                blob_image, ijk[weak], np.ones(3) if zooms is None else zooms
            )
            seeded[weak[np.nan_to_num(ratio, nan=-1.0) >= blob_ratio] + 1] = True
    seeded[0] = False
    keep = seeded[lab]
    return relabel_sequential(np.where(keep, lab, 0))


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the non-zero labels of ``labels`` to ``1..N`` keeping their order; int32.

    ``labels`` holds non-negative integers. Only the labelled voxels (a small
    fraction of a volume) are read after one pass that finds them: the labels
    present are counted with ``np.bincount`` over those voxels (no sort) and
    only they are renumbered, 4x faster than a lookup over every voxel.
    """
    labels = np.asarray(labels)
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    values = flat[where]
    present = np.bincount(values, minlength=1) > 0
    present[0] = False
    lut = np.cumsum(present, dtype=np.int32)
    out = np.zeros(labels.shape, dtype=np.int32)
    out.ravel()[where] = lut[values]
    return out, int(present.sum())


def split_touching(
    z: np.ndarray, labels: np.ndarray, *, saddle_ratio: float, min_voxels: int
) -> tuple[np.ndarray, int]:
    """Split components that hold several distinct enhancement peaks (watershed).

    Two peaks are distinct foci when the enhancement on the best path between
    them drops below ``saddle_ratio`` times the lower peak: this is an h-maxima
    transform of ``log z`` with ``h = -log(saddle_ratio)``, which makes the
    rule independent of how strongly a lesion enhances (a bright ring with a
    bumpy rim is not cut into pieces, two nodules joined by a faint bridge
    are). A split is kept only if every piece has at least ``min_voxels``
    voxels; otherwise the markers of the small pieces are dropped and the
    watershed runs again, so small shoulders stay with their neighbour.

    The work is done in each component's bounding box (a loop over
    components, not voxels); the components are split in two threads
    (SimpleITK, scipy and the watershed release the GIL), the largest first,
    and numbered in their order.

    Returns
    -------
    tuple
        ``(labels, n)``: int32 label map ``0..n``.
    """
    out = np.asarray(labels, dtype=np.int32).copy()
    if saddle_ratio <= 0:
        return relabel_sequential(out)
    fg_all = out > 0
    if not fg_all.any():
        return relabel_sequential(out)
    # log z shifted to be >= 1 inside the candidates, 0 outside (one global shift)
    shift = np.log(z[fg_all].astype(np.float32, copy=False)).min() - np.float32(1.0)
    h = float(-np.log(saddle_ratio))
    sizes = np.bincount(out.ravel())

    def pieces_of(comp: int, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, int] | None:
        fg = out[box] == comp
        zc = np.where(fg, z[box], 0.0).astype(np.float32)
        # h-maxima transform (ITK's) in the component's box: components are
        # 26-separated by background (0), so this equals the whole-volume transform
        logz = np.zeros(fg.shape, dtype=np.float32)
        np.log(zc, out=logz, where=fg)
        logz[fg] -= shift
        rec = sitk.HMaxima(sitk.GetImageFromArray(logz), h)
        peaks = regional_maxima(sitk.GetArrayViewFromImage(rec), within=fg)
        if np.count_nonzero(peaks) < 2:
            return None
        markers, n_markers = ndi.label(peaks, structure=CONNECTIVITY)
        while n_markers > 1:
            pieces = watershed(-zc, markers, mask=fg, connectivity=CONNECTIVITY)
            piece_sizes = np.bincount(pieces[fg], minlength=n_markers + 1)
            small = piece_sizes < min_voxels
            small[0] = False
            if not small.any():
                return fg, pieces, n_markers
            smallest = int(np.argmin(np.where(small, piece_sizes, np.iinfo(np.int64).max)))
            # drop that marker, renumber the others 1..n-1 in order
            lut = np.arange(n_markers + 1, dtype=np.int32)
            lut[smallest] = 0
            lut[smallest + 1 :] -= 1
            markers = lut[markers]
            n_markers -= 1
        return None

    jobs = [
        (idx + 1, box) for idx, box in enumerate(ndi.find_objects(out))
        if box is not None and sizes[idx + 1] >= 2 * min_voxels
    ]
    by_size = sorted(range(len(jobs)), key=lambda j: -sizes[jobs[j][0]])
    with ThreadPoolExecutor(max_workers=2 if (os.cpu_count() or 1) > 1 else 1) as pool:
        futures = {j: pool.submit(pieces_of, *jobs[j]) for j in by_size}
        results = [futures[j].result() for j in range(len(jobs))]
    next_label = int(out.max()) + 1
    for (comp, box), split in zip(jobs, results, strict=True):
        if split is not None:
            fg, pieces, n_markers = split
            region = out[box]
            region[fg] = np.where(pieces[fg] == 1, comp, pieces[fg] + next_label - 2)
            next_label += n_markers - 1
    return relabel_sequential(out)


def refine_boundaries(
    labels: np.ndarray,
    smoothed: np.ndarray,
    raw: np.ndarray,
    zooms: np.ndarray,
    *,
    fraction: float,
    radius_mm: float = 3.0,
    part_fraction: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Trim candidates to the voxels enhancing at least ``fraction`` of their local peak.

    Hysteresis at a few noise units follows a bright lesion far into its
    blurred, partial-volume edge and overstates its volume. For a uniformly
    enhancing object, the voxels at least half covered are those whose signal
    is at least half the plateau: a boundary at half the peak enhancement
    (``fraction=0.5``) gives an unbiased volume. The peak is *local*: the
    maximum of the ``smoothed`` residual of candidate voxels within a box of
    half-width ``radius_mm``, so that the weaker parts of a heterogeneous
    ring keep their own reference. The comparison uses the ``raw`` residual,
    because smoothing moves the half-maximum surface of a small curved lesion
    inwards (by ``sigma**2 / radius``: -19 % volume for a 7 mm lesion at
    0.8 mm smoothing); noise only flips boundary voxels both ways.

    A voxel whose local peak is below ``part_fraction`` times its candidate's
    highest (``smoothed``) value is dropped as well: a faint structure trailing
    out of a bright lesion has a local reference of its own but is not part of
    the lesion (``DetectionParams.part_peak_fraction``; 0 keeps every part).
    """
    if fraction <= 0 or not labels.any():
        return relabel_sequential(labels)
    fg = labels > 0
    size = tuple(2 * int(np.ceil(radius_mm / z - 1e-9)) + 1 for z in zooms)
    peak = ndi.maximum_filter(np.where(fg, smoothed, np.float32(0)), size=size)
    keep = fg & (raw >= np.float32(fraction) * peak)
    if part_fraction > 0:
        top, _ = label_peaks(smoothed, labels, int(labels.max()))
        top = np.concatenate(([0.0], top)).astype(np.float32)  # indexed by label
        keep[fg] &= peak[fg] >= np.float32(part_fraction) * top[labels[fg]]
    return relabel_sequential(np.where(keep, labels, 0))


def find_candidates(
    z: np.ndarray,
    smoothed: np.ndarray,
    raw: np.ndarray,
    mask: np.ndarray,
    zooms: np.ndarray,
    *,
    params: DetectionParams,
) -> tuple[np.ndarray, int]:
    """Hysteresis components of the enhancement map, split into foci, trimmed at half peak.

    Seeds: a peak ``z >= params.high_threshold``, an extended region (``min_extent_resels``),
    or a round blob of the ``raw`` residual peaking at ``z >= params.blob_seed_threshold``.

    Returns
    -------
    tuple
        ``(labels, n)``: int32 candidate map ``0..n`` (no size or shape rule applied yet).
    """
    voxel_mm3 = float(np.prod(zooms))
    # resolution element: the smoothing kernel's FWHM or the voxel, whichever is larger
    resel = float(np.prod(np.maximum(2.3548 * params.smoothing_mm, zooms)))
    labels, n = hysteresis_components(
        z, mask, low=params.low_threshold, high=params.high_threshold,
        min_extent_voxels=max(1, int(np.ceil(params.min_extent_resels * resel / voxel_mm3 - 1e-9))),
        blob_image=raw, zooms=zooms, blob_low=params.blob_seed_threshold,
        blob_ratio=params.blob_seed_ratio,
    )
    if n == 0:
        return labels, 0
    min_voxels = max(1, int(np.ceil(params.min_volume_mm3 / voxel_mm3 - 1e-9)))
    labels, n = split_touching(
        z, labels, saddle_ratio=params.split_saddle_ratio, min_voxels=min_voxels
    )
    labels, n = refine_boundaries(
        labels, smoothed, raw, zooms, fraction=params.boundary_fraction,
        part_fraction=params.part_peak_fraction,
    )
    if params.regrow_radius_mm <= 0:
        return labels, n
    return regrow_small(
        labels, n, z, smoothed, raw, mask, zooms, min_voxels=min_voxels,
        min_peak=min(params.blob_seed_threshold, params.high_threshold),
        min_blob_ratio=params.blob_seed_ratio, fraction=params.boundary_fraction,
        radius_mm=params.regrow_radius_mm,
    )


def regrow_small(
    labels: np.ndarray,
    n: int,
    z: np.ndarray,
    smoothed: np.ndarray,
    raw: np.ndarray,
    mask: np.ndarray,
    zooms: np.ndarray,
    *,
    min_voxels: int,
    min_peak: float,
    min_blob_ratio: float,
    fraction: float,
    radius_mm: float,
) -> tuple[np.ndarray, int]:
    """Give a small candidate with a strong round peak its half-maximum outline.

    A candidate with fewer than ``min_voxels`` voxels whose peak reaches
    ``z >= min_peak`` and is a round blob of ``raw`` (Hessian blob ratio
    ``>= min_blob_ratio``, :func:`gdlesion.blob.peak_blob_ratio`) is replaced
    by the voxels connected to its peak (26-connectivity) where the
    ``smoothed`` residual is at least ``fraction`` of the peak's, within
    ``radius_mm`` of the peak, inside ``mask`` and not in another candidate.
    Such a candidate is a real focus whose growing region above the
    hysteresis level was cut to a few voxels: a faint 3 mm lesion holds only
    a few voxels above 3 noise units, and the misregistration allowance of
    :func:`enhancement_map` lowers ``z`` at a T1-hypointense lesion's own
    border on the pre scan (a simulated 3.6 mm lesion: 1 voxel at ``z >= 3``
    with the allowance, 25 without). Without this step both fall under the
    minimum size; noise clusters are not round blobs at ``z >= min_peak``.

    Returns
    -------
    tuple
        ``(labels, n)``: int32 label map ``0..n`` (order kept).
    """
    if n == 0:
        return labels, 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peak, ijk = label_peaks(z, labels, n)
    small = np.flatnonzero((sizes < min_voxels) & (peak >= min_peak))
    if small.size == 0:
        return labels, n
    ratio, _ = peak_blob_ratio(raw, ijk[small], zooms)
    small = small[np.nan_to_num(ratio, nan=-1.0) >= min_blob_ratio]
    if small.size == 0:
        return labels, n
    out = np.asarray(labels, dtype=np.int32).copy()
    within = ball(radius_mm, np.asarray(zooms, dtype=float))
    reach = (np.array(within.shape) - 1) // 2
    for idx in small:
        pk = ijk[idx]
        lo = pk - reach
        clip_lo = np.maximum(lo, 0)
        clip_hi = np.minimum(pk + reach + 1, out.shape)
        box = tuple(slice(a, b) for a, b in zip(clip_lo, clip_hi, strict=True))
        near = within[
            tuple(slice(a - b, c - b) for a, b, c in zip(clip_lo, lo, clip_hi, strict=True))
        ]
        sub = out[box]
        level = np.float32(fraction) * smoothed[tuple(pk)]
        ok = near & mask[box] & (smoothed[box] >= level) & ((sub == 0) | (sub == idx + 1))
        lab, _ = ndi.label(ok, structure=CONNECTIVITY)
        at = lab[tuple(pk - clip_lo)]
        if at:
            sub[lab == at] = idx + 1
    return relabel_sequential(out)
