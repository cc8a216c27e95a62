"""One study: load -> register -> preprocess -> segment -> measure -> :class:`StudyResult`.

:func:`run_study` does no file writing and no printing;
:func:`gdlesion.outputs.write_study_outputs` (re-exported here) writes the
``gdlesion inspect --out`` layout from a result, with :func:`summary_json_dict`
(here) and :func:`gdlesion.outputs.lesions_table_csv`, which the batch runner
also uses for its own layout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from . import io
from ._memory import release_freed_memory
from .errors import InputError, RegistrationError, SegmentationError
from .io import Volume
from .params import AUTO, DetectionParams, auto_preset, load_params

if TYPE_CHECKING:
    import pandas as pd

    from .outputs import lesions_table_csv, write_study_outputs
    from .registration import RegistrationResult

# The modules of the numeric stages are imported by _prepare while the scans load
# (scipy, ~0.25 s) and while the registration runs (pandas, scikit-image, ~0.5 s),
# not before the first file is even read.
_DETECTION_MODULES = ("anatomy", "blob", "measure", "rules", "segment")

__all__ = [
    "StudyResult",
    "run_study",
    "write_study_outputs",
    "lesions_table_csv",
    "summary_json_dict",
    "package_versions",
    "STAGES",
]

SHAPE_REASONS = ("too_small", "faint", "vessel")

#: Below this correlation of the registered pre scan with the post scan (and above
#: ``DetectionParams.min_similarity``), ``run_study`` warns: pre/post pairs of one session give
#: 0.65-0.90, a pre scan of another (simulated) head 0.49.
SIMILARITY_WARNING = 0.5

#: Below this correlation of the registered FLAIR with the post scan, ``run_study`` warns: the
#: FLAIR rule would then judge candidates on a FLAIR that does not match the post scan. The
#: three real Lesjak FLAIRs give 0.40-0.50 with their own post scan (another patient's FLAIR
#: 0.18-0.35, a noise image 0.00), the simulator's 0.64-0.76. A warning, not a refusal: the
#: correlation of two contrasts depends on the sequences, and three real pairs are few.
FLAIR_SIMILARITY_WARNING = 0.25

#: Stage names reported to ``progress`` and used as keys of ``StudyResult.timings``.
STAGES = ("load", "brain_mask", "registration", "normalisation", "detection", "measures")

Progress = Callable[[str], None]
VolumeLike = Volume | str | os.PathLike


def __getattr__(name: str) -> Any:
    # re-exported from gdlesion.outputs, imported on first use
    if name in ("lesions_table_csv", "write_study_outputs"):
        from . import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _import_detection_modules() -> None:
    from importlib import import_module

    for name in _DETECTION_MODULES:
        import_module(f".{name}", __package__)


@dataclass(eq=False)
class StudyResult:
    """Everything :func:`run_study` found for one pre/post pair (all on the post grid)."""

    post: Volume
    pre_registered: Volume
    enhancement: Volume
    brain_mask: np.ndarray
    labels: np.ndarray
    lesions: pd.DataFrame
    rejected: pd.DataFrame
    rejected_labels: np.ndarray
    registration: RegistrationResult
    params: DetectionParams
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    pipeline: str = "custom"
    inputs: dict[str, str] = field(default_factory=dict)
    #: QC numbers of the FLAIR's registration onto the post scan (``qc_dict``); None without FLAIR
    flair_registration: dict[str, Any] | None = None

    @property
    def lesion_count(self) -> int:
        """Number of reported lesions (0 is a valid answer)."""
        return int(len(self.lesions))

    @property
    def total_volume_mm3(self) -> float:
        """Summed lesion volume in mm3 (0.0 without lesions)."""
        return float(self.lesions["volume_mm3"].sum()) if len(self.lesions) else 0.0

    def summary_dict(self) -> dict[str, Any]:
        """JSON-ready summary (see :func:`summary_json_dict`)."""
        return summary_json_dict(self)


class _Deferred:
    """A job run when its result is first asked for (``threads=1``: the plain sequential order)."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self._call: tuple | None = (fn, args, kwargs)
        self._value: Any = None
        self._error: Exception | None = None

    def result(self) -> Any:
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self._value = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - re-raised below, as a Future would
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> bool:
        self._call = None
        return True


class _InOrder:
    """Executor stand-in for ``threads=1``: each job runs when its result is asked for."""

    def __enter__(self) -> _InOrder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _Deferred:
        return _Deferred(fn, args, kwargs)


def _executor(threads: int) -> ThreadPoolExecutor | _InOrder:
    return ThreadPoolExecutor(max_workers=min(int(threads), 2)) if threads > 1 else _InOrder()


def _as_volume(obj: VolumeLike, role: str) -> Volume:
    if isinstance(obj, Volume):
        return obj
    return io.load_volume(obj, role=role)


def run_study(
    pre: VolumeLike,
    post: VolumeLike,
    *,
    flair: VolumeLike | None = None,
    brain_mask: np.ndarray | str | os.PathLike | None = None,
    params: DetectionParams | str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> StudyResult:
    """Detect and measure gadolinium-enhancing lesions in one pre/post T1 pair.

    Parameters
    ----------
    pre, post : Volume or path
        Pre-contrast and post-gadolinium T1 scans. The post scan's grid is the
        output space; the pre scan is rigidly registered onto it.
    flair : Volume or path, optional
        FLAIR scan (any grid; registered rigidly onto the post scan). Enables
        the rule that rejects candidates without FLAIR hyperintensity.
    brain_mask : array or path, optional
        Brain mask on the post grid; estimated classically when omitted.
    params : DetectionParams, preset name or JSON path, optional
        Detection parameters. ``None`` or ``"auto"`` (the default) picks the
        preset from the data (:func:`gdlesion.params.auto_preset`:
        ``flair`` with a FLAIR, ``default`` otherwise); the name used is
        ``result.pipeline``.
    overrides : dict, optional
        Parameter values that replace those of ``params`` (e.g.
        ``{"high_threshold": 5.0}``), applied after the preset is chosen.
    progress : callable, optional
        Called with each stage name of :data:`STAGES` as it starts.
    threads : int, optional
        Threads for the independent stages: the registrations run beside the
        brain mask and the anatomy maps beside candidate finding (about 1.5x
        faster on two cores). ``1`` runs them one after the other (batch
        workers do: the batch's parallelism is its worker processes). Results
        are identical either way. Default: 2, or 1 on a one-core machine.

    Returns
    -------
    StudyResult
        Everything on the post scan's grid. Post voxel edges of 2 mm or more
        (e.g. 3 mm slices) are split into ~1 mm working voxels for the
        analysis (``DetectionParams.work_voxel_mm``; ``result.stats`` then holds
        ``work_factor_i/j/k``) and the maps brought back block by block. Axes
        of half the working size or less are merged first (0.45 x 0.45 x 5 mm
        -> 0.9 x 0.9 x 1.0 mm working voxels, 0.5 x 0.5 x 1 mm -> 1 mm;
        ``merge_factor_i/j/k``; :func:`gdlesion.workgrid.merge_factors`).

    Raises
    ------
    InputError
        Unreadable or invalid input files, a mask on another grid.
    RegistrationError
        Pre and post do not overlap after registration.
    SegmentationError
        No brain found in the post scan.

    Examples
    --------
    >>> result = run_study("pre.nii.gz", "post.nii.gz")  # doctest: +SKIP
    >>> result.lesion_count, result.total_volume_mm3  # doctest: +SKIP
    (2, 131.0)
    """
    timings: dict[str, float] = {}
    current: dict[str, Any] = {"name": None, "t": 0.0}

    def stage(name: str | None) -> None:
        release_freed_memory()  # what the threaded stages freed (see gdlesion._memory)
        now = time.perf_counter()
        if current["name"] is not None:
            timings[current["name"]] = round(now - current["t"], 3)
        current.update(name=name, t=now)
        if progress is not None and name is not None:
            progress(name)

    if threads is None:
        threads = 2 if (os.cpu_count() or 1) > 1 else 1
    prep = _prepare(
        pre, post, flair=flair, brain_mask=brain_mask, params=params, overrides=overrides,
        threads=threads, stage=stage,
    )
    result = _detect(prep, threads=threads, stage=stage)
    stage(None)
    result.timings = timings
    return result


@dataclass(eq=False)
class _Prepared:
    """A study registered, masked and normalised: the input of :func:`_detect`.

    The ``*_c`` arrays are cropped to ``box`` (the brain's bounding box).
    """

    post: Volume
    pre: Volume
    flair: Volume | None
    registration: RegistrationResult
    mask: np.ndarray
    box: tuple[slice, ...]
    post_c: np.ndarray
    pre_mapped: np.ndarray
    mask_c: np.ndarray
    flair_c: np.ndarray | None
    params: DetectionParams
    pipeline: str
    warnings: list[str] = field(default_factory=list)
    post_grid: Volume | None = None  # the post scan as given (``post`` is finer when split)
    factors: tuple[int, int, int] = (1, 1, 1)  # split of post_grid's voxels into post's
    merged: tuple[int, int, int] = (1, 1, 1)  # merge of post_grid's fine axes before the split
    flair_qc: dict[str, Any] | None = None  # the FLAIR registration's ``qc_dict``


def _prepare(
    pre: VolumeLike,
    post: VolumeLike,
    *,
    flair: VolumeLike | None,
    brain_mask: np.ndarray | str | os.PathLike | None,
    params: DetectionParams | str | os.PathLike | None,
    overrides: dict[str, Any] | None,
    threads: int,
    stage: Callable[[str], None],
) -> _Prepared:
    """Load, choose the parameters, register, mask the brain and normalise the pre scan."""
    stage("load")
    # decompression releases the GIL: the scans load side by side while the registration
    # module (SimpleITK and numpy only) is imported; a bad post scan is still the error
    # reported first
    with _executor(threads) as pool:
        post_job = pool.submit(_as_volume, post, "post-contrast scan")
        pre_job = pool.submit(_as_volume, pre, "pre-contrast scan")
        flair_job = pool.submit(_as_volume, flair, "FLAIR") if flair is not None else None
        from .registration import register_rigid

        post_v = post_job.result()
        pre_v = pre_job.result()
        flair_v = flair_job.result() if flair_job is not None else None
    if isinstance(params, DetectionParams):
        pipeline_name = "custom"
        p = params
    else:
        pipeline_name = str(params) if params is not None else AUTO
        if pipeline_name == AUTO:
            pipeline_name = auto_preset(post_v.zooms, has_flair=flair_v is not None)
        p = load_params(pipeline_name)
    if overrides:
        p = p.replace(**overrides)
    if brain_mask is not None and not isinstance(brain_mask, np.ndarray):
        brain_mask = io.load_mask(brain_mask, reference=post_v, role="brain mask")
    elif brain_mask is not None and brain_mask.shape != post_v.shape:
        raise InputError(
            f"brain mask: shape {brain_mask.shape} differs from the post scan {post_v.shape}"
        )
    post_grid = post_v
    factors = merged = (1, 1, 1)
    if p.work_voxel_mm > 0:
        from .workgrid import merge, merge_factors, subdivide, subdivision_factors

        merged = merge_factors(post_v.zooms, p.work_voxel_mm)
        if merged != (1, 1, 1):
            post_v = merge(post_v, merged)
        factors = subdivision_factors(post_v.zooms, p.work_voxel_mm)
        if factors != (1, 1, 1):
            post_v = subdivide(post_v, factors)
        if brain_mask is not None:
            brain_mask = _mask_to_work_grid(brain_mask, post_grid, merged, factors)

    # The rigid registrations (SimpleITK, single-threaded each, GIL released) run in
    # background threads while the brain mask is estimated: same results, less wall time.
    with _executor(threads) as pool:
        reg_job = pool.submit(register_rigid, pre_v, post_v, min_overlap=0.0)
        flair_job = (
            pool.submit(register_rigid, flair_v, post_v, min_overlap=p.min_overlap)
            if flair_v is not None else None
        )
        stage("brain_mask")
        # scipy and scikit-image are imported here, while the registrations run
        from .preprocess import (
            bounding_box,
            conditional_median_mapping,
            estimate_brain_mask,
            n4_bias_field,
        )

        if brain_mask is None:
            try:
                # on the post scan's own grid, neither merged nor split: the mask's
                # opening and shape tests were chosen on acquired voxels (on 0.45 mm
                # in-plane voxels with 5 mm slices the merged grid's mask let through
                # more edge foci: benchmarks/README.md, twenty-second session)
                mask = estimate_brain_mask(
                    post_grid.data, post_grid.affine, opening_mm=p.brain_opening_mm,
                    min_volume_ml=p.min_brain_volume_ml,
                    name=f"post-contrast scan {post_v.name}".strip(),
                )
                mask = _mask_to_work_grid(mask, post_grid, merged, factors)
            except BaseException:
                for job in (reg_job, flair_job):
                    if job is not None:
                        job.cancel()
                raise
        else:
            mask = np.asarray(brain_mask, dtype=bool)

        stage("registration")  # the time still spent waiting for the registrations
        if threads > 1:
            _import_detection_modules()  # meanwhile
        # the overlap that matters here is the brain's: checked below on the brain mask
        reg = reg_job.result()
        covered = float(np.count_nonzero(reg.registered.data[mask])) / max(int(mask.sum()), 1)
        if covered < p.min_overlap:
            raise RegistrationError(
                f"pre-contrast scan {pre_v.name}: covers only {covered:.0%} of the post scan's "
                f"brain after registration (minimum {p.min_overlap:.0%}); are these scans of the "
                "same head?"
            )
        if not reg.similarity_after >= p.min_similarity:
            raise RegistrationError(
                f"pre-contrast scan {pre_v.name}: correlation with the post scan only "
                f"{reg.similarity_after:.2f} after registration (minimum {p.min_similarity:.2f}; "
                "a pre/post pair of one session gives 0.65-0.90); are these scans of the same "
                "head, and did the registration fail?"
            )
        warnings = []
        if reg.similarity_after < SIMILARITY_WARNING:
            warnings.append(
                f"pre and post scans correlate only {reg.similarity_after:.2f} after registration "
                "(a pre/post pair of one session gives 0.65-0.90): check that they are of the "
                "same head and that the registration (qc.png, report.html) is right"
            )
        flair_res = flair_job.result() if flair_job is not None else None
        flair_reg = flair_res.registered.data if flair_res is not None else None
        flair_qc = flair_res.qc_dict() if flair_res is not None else None
        if flair_res is not None and not flair_res.similarity_after >= FLAIR_SIMILARITY_WARNING:
            warnings.append(
                f"FLAIR {flair_v.name} correlates only {flair_res.similarity_after:.2f} with the "
                "post scan after registration (real FLAIRs of the same session give about "
                "0.4-0.5): check that it is this head's FLAIR and that its registration is "
                "right, or run without it; its lesion rule may otherwise reject real lesions"
            )
        del flair_res

    stage("normalisation")
    box = bounding_box(mask, margin=2)
    post_c = post_v.data[box]
    pre_c = reg.registered.data[box]
    mask_c = mask[box] & (pre_c != 0)
    if not mask_c.any():
        raise SegmentationError(
            f"post-contrast scan {post_v.name}: the pre scan does not cover the brain"
        )
    if p.bias_correction == "n4":
        field_c = n4_bias_field(post_c, mask_c, post_v.zooms)
        post_c = post_c / field_c
        pre_c = pre_c / field_c
        del field_c
    return _Prepared(
        post=post_v, pre=pre_v, flair=flair_v, registration=reg, mask=mask, box=box,
        post_c=post_c, pre_mapped=conditional_median_mapping(pre_c, post_c, mask_c),
        mask_c=mask_c, flair_c=flair_reg[box] if flair_reg is not None else None,
        params=p, pipeline=pipeline_name, warnings=warnings, post_grid=post_grid,
        factors=factors, merged=merged, flair_qc=flair_qc,
    )


def _mask_to_work_grid(
    mask: np.ndarray,
    post_grid: Volume,
    merged: tuple[int, int, int],
    factors: tuple[int, int, int],
) -> np.ndarray:
    """Bring a mask of the post scan's grid to the working grid (merged by majority, then split)."""
    from .workgrid import merge, repeat_blocks

    mask = np.asarray(mask, dtype=bool)
    if merged != (1, 1, 1):
        mask = np.asarray(merge(post_grid.with_data(mask), merged, labels=True).data)
    return repeat_blocks(mask, factors) if factors != (1, 1, 1) else mask


def _detect(
    prep: _Prepared,
    *,
    params: DetectionParams | None = None,
    threads: int = 1,
    stage: Callable[[str], None] = lambda name: None,
) -> StudyResult:
    """Find, measure and judge the candidates of a prepared study (``params`` overrides)."""
    from .anatomy import Context, anatomical_context, anatomy_maps, edge_margin, ventricle_zooms
    from .blob import carve_thick_cores, split_round_peaks
    from .measure import CONTEXT_COLUMNS, context_features, empty_table, lesion_features
    from .preprocess import tissue_thresholds
    from .rules import apply_rules
    from .segment import enhancement_map, find_candidates, residual_fwhm, robust_sigma

    p = prep.params if params is None else params
    post_v, box, mask, mask_c = prep.post, prep.box, prep.mask, prep.mask_c
    post_c, pre_mapped = prep.post_c, prep.pre_mapped
    zooms = post_v.zooms

    stage("detection")
    csf_gm, gm_wm = tissue_thresholds(post_c, mask_c)
    # the candidate-independent anatomy (scipy, GIL released) is mapped in a background
    # thread while the candidates are found: same results, less wall time
    with _executor(threads) as pool:
        maps_job = pool.submit(
            anatomy_maps, mask=mask_c, post=post_c, pre_mapped=pre_mapped, zooms=zooms,
            csf_threshold=csf_gm, ventricle_margin_mm=p.ventricle_margin_mm,
        )
        z, resid_s, sigma = enhancement_map(post_c, pre_mapped, mask_c, zooms, params=p)
        residual = post_c - pre_mapped
        fwhm_job = pool.submit(residual_fwhm, residual, mask_c, zooms)
        candidates, n_cand = find_candidates(
            z, resid_s, residual, mask_c, zooms, params=p
        )
        del resid_s
        stage("measures")
        maps = maps_job.result()
        fwhm = fwhm_job.result()
    flair_z = None
    if prep.flair_c is not None:
        med, sd = robust_sigma(prep.flair_c[mask_c])
        flair_z = ((prep.flair_c - med) / sd).astype(np.float32)

    edge_mm = edge_margin(
        zooms, prep.factors, margin_mm=p.edge_margin_mm, slice_fraction=p.edge_slice_fraction
    )
    vzooms = ventricle_zooms(
        zooms, prep.factors, margin_mm=p.ventricle_margin_mm,
        slice_fraction=p.ventricle_slice_fraction,
    )

    def judge(
        cand: np.ndarray, n: int, nawm_level: float | None = None,
        kin: np.ndarray | None = None,
    ) -> tuple[pd.DataFrame, np.ndarray, float]:
        if nawm_level is None:
            nawm = mask_c & (post_c >= gm_wm) & (cand == 0)
            nawm_level = float(np.median(post_c[nawm] if nawm.any() else post_c[mask_c]))
        kw = dict(
            affine=_crop_affine(post_v.affine, box), z=z, residual=residual,
            nawm_level=nawm_level, edge_margin_mm=edge_mm,
            ventricle_margin_mm=p.ventricle_margin_mm, flair_z=flair_z,
            factors=prep.factors,
        )
        # first pass without the costly per-candidate distances (most candidates are
        # vessels, taken by the shape rules); then those measures for the others only
        flat = np.flatnonzero(cand)
        blank = np.full(flat.size, np.nan)
        light = Context(maps.depth_mm.ravel()[flat], blank, blank)
        table = lesion_features(cand, n, context=light, **kw)
        # the context columns need per-candidate distance maps: measured only for candidates
        # that pass the size, strength and shape rules (NaN for the others in the rejected table)
        table[list(CONTEXT_COLUMNS)] = np.nan
        reasons = apply_rules(table, p)
        live = ~np.isin(reasons, SHAPE_REASONS)
        if live.any():
            ids = table["lesion_id"].to_numpy()[live]
            lut = np.zeros(n + 1, dtype=np.int32)
            lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
            sub = lut[cand]
            context = anatomical_context(sub, zooms=zooms, maps=maps, ventricle_zooms=vzooms)
            lazy = context_features(
                sub, int(ids.size), affine=kw["affine"], z=z, mask=mask_c, context=context,
                ventricle_margin_mm=p.ventricle_margin_mm, kin=kin,
            )
            for col in CONTEXT_COLUMNS:
                table.loc[live, col] = lazy[col]
            reasons = apply_rules(table, p)
        return table, reasons, nawm_level

    table, reasons, nawm_level = judge(candidates, n_cand)
    original = candidates
    # a lesion touching a vein: judge the thick part and the thin part separately (a
    # vessel no thicker than the opening ball has no thick part and is left as it is)
    carve = (reasons == "vessel") & (table["thickness_mm"].to_numpy() > 2 * p.vessel_carve_mm)
    if p.vessel_carve_mm > 0 and carve.any():
        carved, n_carved, changed = carve_thick_cores(
            candidates, table["lesion_id"].to_numpy()[carve], zooms, radius_mm=p.vessel_carve_mm
        )
        if changed:
            table, reasons = _rejudge(
                judge, table, candidates, n_cand, carved, n_carved, nawm_level, p,
                original=original,
            )
            candidates, n_cand = carved, n_carved
    # then a lesion beside a vein that is brighter, or too thin to carve: its round peak
    # is cut out
    vessels = table["lesion_id"].to_numpy()[reasons == "vessel"]
    if p.vessel_split_blob_ratio > 0 and vessels.size:
        cut, n_cut, changed = split_round_peaks(
            candidates, vessels, z, residual, zooms,
            min_blob_ratio=p.vessel_split_blob_ratio, min_z=p.vessel_split_min_z,
        )
        if changed:
            table, reasons = _rejudge(
                judge, table, candidates, n_cand, cut, n_cut, nawm_level, p, original=original
            )
            candidates, n_cand = cut, n_cut
    kept_c, lesions = _select(candidates, table, reasons == "", box)
    rej_c, rejected = _select(candidates, table, reasons != "", box)
    if len(rejected):
        order = rejected.pop("_old").to_numpy()
        rejected.insert(len(rejected.columns), "reason", reasons[order - 1])
    else:
        rejected = empty_table(("reason",))
    lesions = lesions.drop(columns="_old") if "_old" in lesions else lesions

    labels = np.zeros(post_v.shape, dtype=np.int32)
    labels[box] = kept_c
    rejected_labels = np.zeros(post_v.shape, dtype=np.int32)
    rejected_labels[box] = rej_c
    enh = np.zeros(post_v.shape, dtype=np.float32)
    enh[box] = z
    warnings = prep.warnings + _swap_warning(z, mask_c, p)
    result = StudyResult(
        post=post_v,
        pre_registered=prep.registration.registered,
        enhancement=post_v.with_data(enh, name="enhancement"),
        brain_mask=mask,
        labels=labels,
        lesions=lesions,
        rejected=rejected,
        rejected_labels=rejected_labels,
        registration=prep.registration,
        params=p,
        pipeline=prep.pipeline,
        warnings=warnings,
        stats={
            "noise_sigma": round(float(sigma), 6),
            "nawm_level": round(nawm_level, 6),
            "brain_volume_ml": round(float(mask.sum()) * post_v.voxel_volume_mm3 / 1000.0, 3),
            "candidate_count": int(n_cand),
            **{
                f"residual_fwhm_mm_{a}": round(float(f), 3)
                for a, f in zip("ijk", fwhm, strict=True)
            },
        },
        inputs={
            "pre": prep.pre.name, "post": post_v.name,
            "flair": prep.flair.name if prep.flair is not None else "",
        },
        flair_registration=prep.flair_qc,
    )
    if prep.factors != (1, 1, 1) or prep.merged != (1, 1, 1):
        result = _to_post_grid(result, prep)
    return result


def _to_post_grid(result: StudyResult, prep: _Prepared) -> StudyResult:
    """Bring a result found on the working grid (merged and/or split) back to the post grid."""
    from .registration import resample_volume
    from .workgrid import block_any, block_labels, block_mean, table_to_post_grid, unmerge

    native, k, m = prep.post_grid, prep.factors, prep.merged
    assert native is not None

    def back(array: np.ndarray) -> np.ndarray:
        return unmerge(array, m, native.shape) if m != (1, 1, 1) else array

    labels = back(block_labels(result.labels, k))
    rejected_labels = back(block_labels(result.rejected_labels, k))
    registered = resample_volume(prep.pre, native, prep.registration.matrix_ras)
    result.stats.update({f"work_factor_{a}": float(f) for a, f in zip("ijk", k, strict=True)})
    if m != (1, 1, 1):
        result.stats.update({f"merge_factor_{a}": float(f) for a, f in zip("ijk", m, strict=True)})
    return replace(
        result,
        post=native,
        pre_registered=registered,
        registration=replace(prep.registration, registered=registered),
        enhancement=native.with_data(
            back(block_mean(result.enhancement.data, k)), name="enhancement"
        ),
        brain_mask=back(block_any(result.brain_mask, k)),
        labels=labels,
        lesions=table_to_post_grid(result.lesions, labels, k, m),
        rejected_labels=rejected_labels,
        rejected=table_to_post_grid(result.rejected, rejected_labels, k, m),
    )


def _rejudge(
    judge: Callable[..., tuple[pd.DataFrame, np.ndarray, float]],
    table: pd.DataFrame,
    before: np.ndarray,
    n_before: int,
    after: np.ndarray,
    n_after: int,
    nawm_level: float,
    p: DetectionParams,
    *,
    original: np.ndarray,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Judge again only the candidates that carving or splitting changed or created.

    Carving keeps every label ``1..n_before`` (a carved candidate keeps its thin
    part) and numbers the new pieces after them; a candidate's measures depend
    on its own voxels only, and the union of candidates (hence the NAWM level)
    is unchanged, so the rows of untouched candidates stay as they were.
    """
    import pandas as pd

    from .rules import apply_rules

    touched = np.unique(before[before != after])
    redo = np.concatenate([touched[touched > 0], np.arange(n_before + 1, n_after + 1)])
    lut = np.zeros(n_after + 1, dtype=np.int32)
    lut[redo] = np.arange(1, redo.size + 1, dtype=np.int32)
    fresh, _, _ = judge(lut[after], int(redo.size), nawm_level, kinship(original, after))
    fresh["lesion_id"] = redo
    merged = pd.concat(
        [table[~table["lesion_id"].isin(redo)], fresh], ignore_index=True
    ).sort_values("lesion_id", ignore_index=True)
    return merged, apply_rules(merged, p)


def kinship(original: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Family map of the candidates cut into pieces (by carving or splitting).

    ``original`` is the candidate map before any cutting and ``after`` the map
    now (cutting relabels voxels, it never drops them). Each voxel of a
    candidate that has been cut carries that candidate's original label, 0
    elsewhere: the pieces and the rest of one candidate share it, so that the
    conspicuity shell of a piece leaves out the vein it was cut from.
    """
    parents = np.unique(original[original != after])
    return np.where(np.isin(original, parents), original, 0).astype(np.int32)


def _crop_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    return affine @ shift


def _select(
    candidates: np.ndarray, table: pd.DataFrame, keep: np.ndarray, box: tuple[slice, ...]
) -> tuple[np.ndarray, pd.DataFrame]:
    """Keep some candidates, renumbered 1..N by decreasing volume (ties: centroid x, y, z)."""
    sub = table[keep].copy()
    sub = sub.sort_values(
        ["n_voxels", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm"],
        ascending=[False, True, True, True], kind="mergesort",
    )
    lut = np.zeros(len(table) + 1, dtype=np.int32)
    lut[sub["lesion_id"].to_numpy()] = np.arange(1, len(sub) + 1, dtype=np.int32)
    sub.insert(0, "_old", sub["lesion_id"].to_numpy())
    sub["lesion_id"] = np.arange(1, len(sub) + 1, dtype=np.int64)
    for col in ("bbox_i_min", "bbox_i_max"):
        sub[col] += box[0].start
    for col in ("bbox_j_min", "bbox_j_max"):
        sub[col] += box[1].start
    for col in ("bbox_k_min", "bbox_k_max"):
        sub[col] += box[2].start
    return lut[candidates], sub.reset_index(drop=True)


def _swap_warning(z: np.ndarray, mask: np.ndarray, p: DetectionParams) -> list[str]:
    """Warn when strong negative 'enhancement' outweighs positive: pre and post look swapped."""
    values = z[mask]
    pos = int(np.count_nonzero(values >= p.high_threshold))
    neg = int(np.count_nonzero(values <= -p.high_threshold))
    if neg > 2 * pos and neg >= 50:
        return [
            f"pre and post scans look swapped: {neg} voxels darken after contrast for {pos} that "
            "brighten; check which file is the post-gadolinium scan"
        ]
    return []


def package_versions() -> dict[str, str]:
    """Versions of gdlesion, the numeric libraries that decide the results, and the figures'."""
    from importlib.metadata import version

    import nibabel
    import pandas as pd
    import scipy
    import SimpleITK
    import skimage

    from . import __version__

    return {
        "gdlesion": __version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "nibabel": nibabel.__version__,
        "pandas": pd.__version__,
        # the figures' libraries, read without importing them
        "matplotlib": version("matplotlib"),
        "pillow": version("pillow"),
    }


def summary_json_dict(result: StudyResult) -> dict[str, Any]:
    """Build the ``summary.json`` content: counts, registration QC, parameters, versions."""
    return {
        "lesion_count": result.lesion_count,
        "total_volume_mm3": round(result.total_volume_mm3, 3),
        "rejected_count": int(len(result.rejected)),
        "registration": result.registration.qc_dict(),
        "flair_registration": result.flair_registration,
        "pipeline": result.pipeline,
        "parameters": result.params.to_dict(),
        "statistics": result.stats,
        "inputs": result.inputs,
        "grid": {
            "shape": list(result.post.shape),
            "voxel_mm": [round(float(z), 6) for z in result.post.zooms],
            "affine": np.round(result.post.affine, 6).tolist(),
        },
        "warnings": list(result.warnings),
        "versions": package_versions(),
        "timings_s": dict(result.timings),
    }
