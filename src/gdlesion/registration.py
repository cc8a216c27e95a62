"""Rigid (6-DOF) registration of one scan onto another.

The fixed image's grid is the reference space of every output (in the
pipeline the fixed image is the post-contrast scan and the moving image the
pre-contrast scan; for longitudinal tracking it is an earlier visit's post
scan). Transforms are 4x4 matrices acting on RAS millimetre points and map a
point of the *fixed* scan to the same anatomy in the *moving* scan, which is
also the direction SimpleITK resamples with. :func:`rigid_matrix` and
:func:`resample_volume` live in :mod:`gdlesion.transforms` and are re-exported.

Method (chosen by timing on the real data, see ``benchmarks/README.md``):

* both images are cropped to their head's bounding box (+ margin) and turned
  into a small pyramid by block averaging (``BinShrink``) with per-axis
  factors chosen from the voxel size, so that thick-slice 2-D scans are only
  shrunk in-plane;
* the initial transform is the better (lower Mattes MI) of the GEOMETRY and
  MOMENTS centred initialisers;
* each level runs Mattes mutual information with random sampling at a fixed
  seed and physical-shift parameter scales: conjugate gradient with a short
  line search on the coarsest level (regular-step descent stalled a few
  degrees short on smooth images), then regular-step descent. The finest
  level is the grid given by ``levels_mm[-1]`` (default 2 mm: accurate to a
  few tenths of a millimetre on 1 mm brains and much faster than a
  full-resolution pass).

ITK's multithreaded Mattes metric accumulates its joint histogram in a racy
order, so the optimisation runs single-threaded by default (``threads=1``) to
keep the matrix bit-identical run to run; resampling stays multithreaded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from .errors import RegistrationError
from .io import Volume, from_sitk, matrix_from_sitk_transform, to_sitk
from .transforms import resample_volume, rigid_matrix, rotation_angles_deg

__all__ = [
    "RegistrationResult",
    "register_rigid",
    "resample_volume",
    "rigid_matrix",
    "MIN_OVERLAP",
]

#: Default minimum fraction of the fixed head that must land inside the moving head after
#: registration (inclusive: exactly this fraction passes).
MIN_OVERLAP = 0.5

_CROP_MARGIN_MM = 12.0


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """Outcome of :func:`register_rigid`.

    Attributes
    ----------
    matrix_ras : numpy.ndarray
        4x4 RAS-mm matrix mapping a point of the fixed (post) scan to the same
        anatomy in the moving (pre) scan.
    registered : Volume
        The moving scan resampled on the fixed grid (linear interpolation, 0 outside).
    metric_initial, metric_final : float
        Mattes mutual information (lower is better) after initialisation and at
        the end, on the finest analysis grid.
    similarity_before, similarity_after : float
        Pearson correlation over the fixed scan's head between the fixed scan
        and the moving scan mapped with the identity (header alignment) and
        with ``matrix_ras``.
    overlap_fraction : float
        Fraction of the fixed head that maps inside the moving head.
    iterations : int
        Optimiser iterations summed over levels.
    stop_reason : str
        The optimiser's stop condition at the finest level.
    elapsed_s : float
        Wall time of the registration, including resampling.
    levels : tuple of dict
        Per pyramid level: ``level_mm``, ``iterations``, ``metric``, ``stop_reason``.
    """

    matrix_ras: np.ndarray
    registered: Volume
    metric_initial: float
    metric_final: float
    similarity_before: float
    similarity_after: float
    overlap_fraction: float
    iterations: int
    stop_reason: str
    elapsed_s: float
    levels: tuple[dict[str, Any], ...] = field(default=())

    def qc_dict(self) -> dict[str, Any]:
        """Return the QC numbers as a JSON-ready dict (matrix as nested lists, rounded floats)."""
        return {
            "matrix_ras": np.round(self.matrix_ras, 6).tolist(),
            "metric_initial": round(float(self.metric_initial), 6),
            "metric_final": round(float(self.metric_final), 6),
            "similarity_before": round(float(self.similarity_before), 4),
            "similarity_after": round(float(self.similarity_after), 4),
            "overlap_fraction": round(float(self.overlap_fraction), 4),
            "iterations": int(self.iterations),
            "stop_reason": self.stop_reason,
            "elapsed_s": round(float(self.elapsed_s), 2),
            "rotation_deg": [round(float(v), 3) for v in rotation_angles_deg(self.matrix_ras)],
            "translation_mm": [round(float(v), 3) for v in self.matrix_ras[:3, 3]],
        }


def register_rigid(
    moving: Volume,
    fixed: Volume,
    *,
    levels_mm: tuple[float, ...] = (4.0, 2.0),
    samples_per_level: int | tuple[int, ...] | None = None,
    histogram_bins: int = 32,
    max_iterations: int = 200,
    init: Literal["auto", "geometry", "moments", "identity"] = "auto",
    seed: int = 20240611,
    threads: int = 1,
    min_overlap: float = MIN_OVERLAP,
) -> RegistrationResult:
    """Rigidly register ``moving`` onto ``fixed`` (6 degrees of freedom).

    Parameters
    ----------
    moving : Volume
        Image to align, e.g. the pre-contrast scan (or an earlier visit).
    fixed : Volume
        Reference image, e.g. the post-contrast scan; its grid is the output grid.
    levels_mm : tuple of float
        Pyramid levels as target voxel edges in mm, coarse to fine. Each axis
        is block-averaged by ``max(1, round(level / voxel_edge))``, so thick
        slices are never shrunk through-plane. Use ``(4, 2, 1)`` for a
        (slower) full-resolution final pass.
    samples_per_level : int or tuple of int, optional
        Random metric samples (fixed seed, see ``seed``): one number for every
        level, or one per level of ``levels_mm``. Default: 20,000 on the
        finest level and 8,000 on the coarser ones, where the conjugate
        gradient's line search evaluates the metric several times per
        iteration. Measured on the 3 real Lesjak pairs moved by 12 random rigid
        transforms (up to 10 degrees and 10 mm): the same accuracy as 20,000
        everywhere and about a third less time (see ``benchmarks/README.md``).
    histogram_bins : int
        Mattes mutual information histogram bins.
    max_iterations : int
        Optimiser iteration cap per level.
    init : {"auto", "geometry", "moments", "identity"}
        Initial transform: centred on the images' geometric centres, on their
        intensity centres of mass, the header alignment as is, or (``"auto"``)
        the better-scoring of geometry and moments.
    seed : int
        Seed of the metric's random sampling; same inputs and options give a
        bit-identical matrix.
    threads : int
        ITK threads used while optimising. ITK's Mattes metric adds the
        threads' histogram contributions in a racy order, so only ``1`` gives
        a bit-identical matrix run to run (more threads differ by ~1e-7 mm).
    min_overlap : float
        Smallest accepted :attr:`RegistrationResult.overlap_fraction`
        (inclusive).

    Returns
    -------
    RegistrationResult
        Transform (fixed RAS point -> moving RAS point), moving resampled on
        the fixed grid, and QC numbers.

    Raises
    ------
    RegistrationError
        The heads' bounding boxes do not intersect in world space before
        registration (wrong pairing or a broken header), ITK fails (e.g. all samples map outside the
        moving image), the metric is not finite, or the final overlap is
        below ``min_overlap``.

    Examples
    --------
    >>> result = register_rigid(pre, post)  # doctest: +SKIP
    >>> pre_on_post = result.registered  # doctest: +SKIP
    """
    if init not in ("auto", "geometry", "moments", "identity"):
        raise ValueError(f"init must be auto, geometry, moments or identity, got {init!r}")
    if not levels_mm or any(float(v) <= 0 for v in levels_mm):
        raise ValueError(f"levels_mm must be positive voxel sizes, got {levels_mm!r}")
    start = time.perf_counter()
    who = f"registration of {moving.name or 'moving image'} onto {fixed.name or 'fixed image'}"
    # the two images are converted and cropped side by side (numpy and ITK release the GIL)
    with ThreadPoolExecutor(max_workers=1) as pool:
        moving_job = pool.submit(_pyramid, moving, levels_mm)
        fixed_img, fixed_crop, fixed_levels = _pyramid(fixed, levels_mm)
        moving_img, moving_crop, moving_levels = moving_job.result()
    samples = _level_samples(samples_per_level, len(levels_mm))
    settings = _Settings(samples, histogram_bins, max_iterations, seed, threads)

    _check_world_overlap(fixed_crop, moving_crop, who)
    try:
        with _itk_threads(threads):
            transform, metric_initial, levels = _optimise(
                fixed_levels, moving_levels, levels_mm, init, settings)
    except RuntimeError as exc:
        raise RegistrationError(f"{who} failed in ITK: {_itk_reason(exc)}") from None

    matrix = matrix_from_sitk_transform(transform)
    # the full-resolution resampling runs while the final metric and the QC numbers are
    # computed (the resampling does not depend on them; the metric is evaluated with the
    # same thread setting as before, so it is the same number)
    with ThreadPoolExecutor(max_workers=1) as pool:
        resampled = pool.submit(_resample_array, moving_img, fixed_img, transform)
        try:
            with _itk_threads(threads):
                metric_final = _metric(fixed_levels[-1], moving_levels[-1], transform, settings)
        except RuntimeError as exc:
            raise RegistrationError(f"{who} failed in ITK: {_itk_reason(exc)}") from None
        if not (np.isfinite(metric_initial) and np.isfinite(metric_final)):
            raise RegistrationError(
                f"{who}: metric is not finite ({metric_final}); the images share no content"
            )
        before, after, overlap = _qc(fixed_levels[-1], moving_levels[-1], transform)
        if not overlap >= min_overlap:
            raise RegistrationError(
                f"{who}: only {overlap:.0%} of the fixed head overlaps the moving head after "
                f"registration (minimum {min_overlap:.0%}); are these scans of the same head?"
            )
        out = Volume(resampled.result(), fixed.affine, moving.name)
    return RegistrationResult(
        matrix_ras=matrix,
        registered=out,
        metric_initial=float(metric_initial),
        metric_final=float(metric_final),
        similarity_before=before,
        similarity_after=after,
        overlap_fraction=overlap,
        iterations=sum(lv["iterations"] for lv in levels),
        stop_reason=levels[-1]["stop_reason"],
        elapsed_s=time.perf_counter() - start,
        levels=tuple(levels),
    )


def _pyramid(volume: Volume, levels_mm: tuple[float, ...]
             ) -> tuple[sitk.Image, sitk.Image, list[sitk.Image]]:
    """SimpleITK image, its crop to the head and the crop's pyramid levels."""
    image = to_sitk(volume)
    crop = _crop_to_head(image)
    return image, crop, [_shrink(crop, mm) for mm in levels_mm]


def _resample_array(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform
                    ) -> np.ndarray:
    """Resample ``moving`` on ``fixed``'s grid (linear, 0 outside); nibabel-order float32."""
    registered = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return from_sitk(registered).data


def _optimise(fixed_levels: list[sitk.Image], moving_levels: list[sitk.Image],
              levels_mm: tuple[float, ...], init: str,
              settings: _Settings,
              ) -> tuple[sitk.Euler3DTransform, float, list[dict[str, Any]]]:
    """Initialise, then run each level; return transform, initial metric, per-level records."""
    transform = _initial_transform(fixed_levels[0], moving_levels[0], init, settings)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # the initial metric (of a copy of the transform, its own single-threaded method)
        # is evaluated while the first level runs
        initial = pool.submit(_metric, fixed_levels[-1], moving_levels[-1],
                              sitk.Euler3DTransform(transform), settings)
        records = _run_levels(fixed_levels, moving_levels, levels_mm, transform, settings)
        metric_initial = initial.result()
    return transform, metric_initial, records


def _run_levels(fixed_levels: list[sitk.Image], moving_levels: list[sitk.Image],
                levels_mm: tuple[float, ...], transform: sitk.Euler3DTransform,
                settings: _Settings) -> list[dict[str, Any]]:
    """Optimise ``transform`` in place level by level; return the per-level records."""
    records = []
    for level, (f_img, m_img) in enumerate(zip(fixed_levels, moving_levels, strict=True)):
        method = _method(f_img, settings, settings.samples[level])
        step = float(levels_mm[level])
        if level == 0:
            # coarse: conjugate gradient with a short line search copes with flat, badly
            # conditioned MI landscapes (regular-step descent stalled there on smooth phantoms)
            method.SetOptimizerAsConjugateGradientLineSearch(
                learningRate=1.0, numberOfIterations=settings.max_iterations,
                convergenceMinimumValue=1e-5, convergenceWindowSize=5,
                lineSearchUpperLimit=2.0, lineSearchEpsilon=0.05, lineSearchMaximumIterations=3,
                maximumStepSizeInPhysicalUnits=0.5 * step)
        else:
            # fine: cheap regular-step descent from the coarse optimum
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=0.25 * step, minStep=0.002 * step,
                numberOfIterations=settings.max_iterations, relaxationFactor=0.7,
                gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(f_img, m_img)
        records.append({"level_mm": step, "iterations": int(method.GetOptimizerIteration()),
                        "metric": float(method.GetMetricValue()),
                        "stop_reason": method.GetOptimizerStopConditionDescription()})
    return records


_THREADS_STATE = {"active": 0, "value": 0, "old": 0}
_THREADS_CHANGED = threading.Condition()


@contextlib.contextmanager
def _itk_threads(threads: int) -> Iterator[None]:
    """Temporarily set ITK's global thread count (the v4 metrics ignore per-method settings).

    The setting is process-wide, so concurrent registrations (e.g. pre and
    FLAIR in :func:`gdlesion.pipeline.run_study`) share it: the first one in
    sets it, the last one out restores it, and a registration asking for
    another count waits until the others are done (never changed under a
    running one, which keeps every matrix bit-identical).
    """
    threads = int(threads)
    state = _THREADS_STATE
    with _THREADS_CHANGED:
        while state["active"] and state["value"] != threads:
            _THREADS_CHANGED.wait()
        if not state["active"]:
            state["old"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            state["value"] = threads
        state["active"] += 1
    try:
        yield
    finally:
        with _THREADS_CHANGED:
            state["active"] -= 1
            if not state["active"]:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(state["old"])
                _THREADS_CHANGED.notify_all()


def _level_samples(samples: int | tuple[int, ...] | None, n_levels: int) -> tuple[int, ...]:
    """Metric samples of each pyramid level (see ``register_rigid``'s ``samples_per_level``)."""
    if samples is None:
        return (COARSE_SAMPLES,) * (n_levels - 1) + (FINE_SAMPLES,)
    values = (samples,) * n_levels if np.ndim(samples) == 0 else tuple(samples)
    if len(values) != n_levels or any(int(v) < 1 for v in values):
        raise ValueError(
            f"samples_per_level must be a positive number or one per level ({n_levels}), "
            f"got {samples!r}"
        )
    return tuple(int(v) for v in values)


#: Default metric samples on the finest pyramid level (and for the initial/final metric).
FINE_SAMPLES = 20_000
#: Default metric samples on the coarser levels.
COARSE_SAMPLES = 8_000


@dataclass(frozen=True)
class _Settings:
    samples: tuple[int, ...]  # per level; the last one also for the metric evaluations
    bins: int
    max_iterations: int
    seed: int
    threads: int


def _method(fixed_level: sitk.Image, settings: _Settings, samples: int
            ) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    n_vox = float(np.prod(fixed_level.GetSize()))
    method.SetMetricSamplingPercentage(min(1.0, samples / n_vox), settings.seed)
    # sparse samples: central differences at the samples beat a whole-image gradient filter
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetNumberOfThreads(settings.threads)
    return method


def _metric(fixed_level: sitk.Image, moving_level: sitk.Image, transform: sitk.Transform,
            settings: _Settings) -> float:
    method = _method(fixed_level, settings, settings.samples[-1])
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(fixed_level, moving_level))


def _initial_transform(fixed_level: sitk.Image, moving_level: sitk.Image, init: str,
                       settings: _Settings) -> sitk.Euler3DTransform:
    if init == "identity":
        center = fixed_level.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2.0 for s in fixed_level.GetSize()])
        transform = sitk.Euler3DTransform()
        transform.SetCenter(center)
        return transform
    modes = {"geometry": [sitk.CenteredTransformInitializerFilter.GEOMETRY],
             "moments": [sitk.CenteredTransformInitializerFilter.MOMENTS]}
    candidates = modes.get(init, modes["geometry"] + modes["moments"])
    best, best_value = None, np.inf
    for mode in candidates:
        tx = sitk.CenteredTransformInitializer(fixed_level, moving_level,
                                               sitk.Euler3DTransform(), mode)
        value = _metric(fixed_level, moving_level, tx, settings) if len(candidates) > 1 else 0.0
        if best is None or value < best_value:
            best, best_value = tx, value
    return sitk.Euler3DTransform(best)


def _head_mask(image: sitk.Image) -> np.ndarray:
    """Largest Otsu foreground component with holes filled, as a ``[k, j, i]`` bool array.

    SimpleITK and numpy only: this module imports neither scipy nor scikit-image, so that
    a registration can start while those are still being imported (``gdlesion inspect``).
    """
    arr = sitk.GetArrayViewFromImage(image)
    values = arr[:: max(1, arr.shape[0] // 16)].ravel()
    if values.min() == values.max():
        return np.zeros(arr.shape, dtype=bool)
    # Otsu alone may split tissue classes instead of head/air on T1 scans whose skull and CSF
    # are dark (the largest component is then the brain only); 10% of the 99th percentile is
    # above air noise on every scan we have seen, so take whichever threshold is lower.
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(256)
    otsu.SetReturnBinMidpoint(True)  # as skimage's threshold_otsu
    otsu.Execute(sitk.GetImageFromArray(values.reshape(1, 1, -1)))
    fg = arr > min(otsu.GetThreshold(), 0.1 * float(np.percentile(values, 99)))
    labels = _components(fg)
    if labels.max() > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    return _fill_holes(fg)


def _components(mask: np.ndarray) -> np.ndarray:
    """Face-connected components of a 3-D mask, numbered 1..n (0 outside)."""
    image = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return sitk.GetArrayFromImage(image)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """:func:`gdlesion.preprocess.fill_holes` of a 3-D mask, with SimpleITK's labelling.

    A hole is a face-connected background component that touches no face of the grid.
    """
    labels = _components(~mask)
    outside = np.zeros(int(labels.max()) + 1, dtype=bool)
    for axis in range(3):
        for index in (0, -1):
            face = [slice(None)] * 3
            face[axis] = index  # type: ignore[call-overload]
            outside[labels[tuple(face)]] = True
    outside[0] = True  # the mask itself
    return ~outside[labels] | mask


def _crop_to_head(image: sitk.Image) -> sitk.Image:
    """Crop to the head's bounding box plus a margin (found on a ~4 mm copy)."""
    coarse = _shrink(image, 4.0)
    mask = _head_mask(coarse)
    if not mask.any():
        return image
    factors = np.array(_factors(image, 4.0))
    idx = np.nonzero(mask)
    lo_kji = np.array([i.min() for i in idx])
    hi_kji = np.array([i.max() + 1 for i in idx])
    spacing = np.array(image.GetSpacing())
    margin = np.ceil(_CROP_MARGIN_MM / spacing).astype(int)
    lo = np.maximum(lo_kji[::-1] * factors - margin, 0)
    hi = np.minimum(hi_kji[::-1] * factors + margin, np.array(image.GetSize()))
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def _shrink(image: sitk.Image, target_mm: float) -> sitk.Image:
    """Block-average each axis towards ``target_mm`` voxels (never through thick slices)."""
    factors = _factors(image, target_mm)
    return image if factors == [1, 1, 1] else sitk.BinShrink(image, factors)


def _factors(image: sitk.Image, target_mm: float) -> list[int]:
    factors = [max(1, int(round(target_mm / s))) for s in image.GetSpacing()]
    return [min(f, n) for f, n in zip(factors, image.GetSize(), strict=True)]


def _world_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(image.GetSize()) - 1
    corners = np.array(np.meshgrid(*[[0, s] for s in size], indexing="ij")).reshape(3, -1).T
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return pts.min(axis=0), pts.max(axis=0)


def _check_world_overlap(fixed_crop: sitk.Image, moving_crop: sitk.Image, who: str) -> None:
    f_lo, f_hi = _world_box(fixed_crop)
    m_lo, m_hi = _world_box(moving_crop)
    if np.any(f_hi < m_lo) or np.any(m_hi < f_lo):
        gap = float(np.linalg.norm((f_lo + f_hi) / 2 - (m_lo + m_hi) / 2))
        raise RegistrationError(
            f"{who}: the heads do not overlap in world space (centres {gap:.0f} mm apart); "
            "check that the two scans belong together and their headers"
        )


def _qc(fixed_level: sitk.Image, moving_level: sitk.Image,
        transform: sitk.Transform) -> tuple[float, float, float]:
    """Pearson correlation over the fixed head before/after, and head overlap fraction."""
    fixed_arr = sitk.GetArrayFromImage(fixed_level).astype(np.float64)
    head = _head_mask(fixed_level)
    identity = sitk.Euler3DTransform()
    corr = []
    for tx in (identity, transform):
        moved = sitk.Resample(moving_level, fixed_level, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        corr.append(_pearson(fixed_arr[head], sitk.GetArrayViewFromImage(moved)[head]))
    moving_head = sitk.GetImageFromArray(_head_mask(moving_level).astype(np.uint8))
    moving_head.CopyInformation(moving_level)
    mapped = sitk.Resample(moving_head, fixed_level, transform, sitk.sitkNearestNeighbor, 0)
    inside = sitk.GetArrayViewFromImage(mapped)[head] > 0
    overlap = float(inside.mean()) if inside.size else 0.0
    return corr[0], corr[1], overlap


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _itk_reason(exc: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if not ln.startswith(("itk::", "Location"))), "")
    return (reason or type(exc).__name__)[:200]
