"""Command-line interface: thin typer commands that call the public API.

Exit codes: 0 success; 1 a :class:`~gdlesion.errors.GdLesionError` (bad input,
registration failure, locked output...), printed as one red line without a
traceback; 2 command-line usage error (typer); 3 a batch finished but some
sessions failed. Unexpected exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from . import __version__
from .errors import GdLesionError

EXIT_ERROR = 1
EXIT_SESSIONS_FAILED = 3

app = typer.Typer(
    name="gdlesion",
    help="Quantify gadolinium-enhancing lesions in pre/post-contrast T1 MRI.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

#: Set when ``inspect`` has written and printed everything: the console script then ends the
#: process without the interpreter's teardown (see :func:`main`).
_done: dict[str, bool] = {"inspect": False}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a GdLesionError into one red line on stderr and exit code 1."""
    try:
        yield
    except GdLesionError as exc:
        # Text, not markup: file names may contain "[...]" that rich would eat.
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one study.

    A study leaves few reference cycles (~10,000 objects, a few MB), but its
    imports (pandas, scikit-image, matplotlib: a million objects) trigger
    collections that each walk all of them: ~0.4 s of CPU for nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _version(value: bool) -> None:
    if value:
        console.print(f"gdlesion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Quantify gadolinium-enhancing lesions in pre/post-contrast T1 MRI."""


# --- simulate -------------------------------------------------------------------------


@app.command("simulate")
def simulate_command(
    out: str = typer.Argument(..., metavar="OUT", help="Output folder (must be empty)."),
    resolution: str = typer.Option(
        "1mm", "--resolution", help="1mm (3-D isotropic) or 2d (thick slices)."
    ),
    lesions: int = typer.Option(5, "--lesions", help="Enhancing lesions (single study)."),
    lesion_range: str = typer.Option(
        "1-6", "--lesion-range", help="Enhancing lesions per session in a BIDS dataset, MIN-MAX."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
    subjects: int = typer.Option(0, "--subjects", help="Write a BIDS dataset of N subjects."),
    sessions: int = typer.Option(2, "--sessions", help="Sessions per subject (BIDS dataset)."),
    voxel_size: float = typer.Option(None, "--voxel-size", help="Isotropic voxel override (mm)."),
    zero_background: bool = typer.Option(
        False, "--zero-background", help="Zero the air (smaller files)."
    ),
    no_flair: bool = typer.Option(False, "--no-flair", help="Do not write FLAIR images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow a non-empty OUT."),
    cohort: str = typer.Option(
        None, "--cohort", help="Write a demo cohort with clinical data: 'rescue' (10 patients, "
        "IFNB -> 3 monthly MX -> IFNB, 7 stable / 3 worsening; --subjects resizes it)."
    ),
) -> None:
    """Write simulated pre/post-Gd T1 (+FLAIR) with ground truth: one study, or a BIDS dataset."""
    from .io import ensure_writable_dir
    from .simulate import simulate_study, write_bids_dataset, write_study

    with user_errors():
        ensure_writable_dir(out, overwrite=overwrite)
        if cohort is not None:
            _simulate_cohort(out, cohort, n_subjects=subjects or 10, resolution=resolution,
                             voxel_size=voxel_size, seed=seed, with_flair=not no_flair,
                             overwrite=overwrite)
        elif subjects > 0:
            try:
                lo, hi = (int(v) for v in lesion_range.split("-", 1))
            except ValueError:
                raise typer.BadParameter(f"--lesion-range {lesion_range!r}: use MIN-MAX") from None
            records = write_bids_dataset(
                out, n_subjects=subjects, n_sessions=sessions, resolution=resolution, seed=seed,
                n_lesions=(lo, hi), voxel_size=voxel_size, zero_background=zero_background,
                with_flair=not no_flair, overwrite=overwrite,
                progress=lambda sub, ses: err_console.print(f"wrote {sub} {ses}", highlight=False),
            )
            n = sum(r["n_lesions"] for r in records)
            console.print(f"BIDS dataset {out}: {len(records)} sessions, {n} enhancing lesions")
        else:
            study = simulate_study(
                resolution=resolution, n_lesions=lesions, seed=seed, voxel_size=voxel_size,
                zero_background=zero_background, with_flair=not no_flair,
            )
            paths = write_study(study, out, stem="sim", overwrite=overwrite)
            names = ", ".join(p.name for p in paths.values())
            console.print(f"study {out}: {len(study.lesions)} enhancing lesions, files {names}",
                          highlight=False)


def _simulate_cohort(out: str, design: str, **options) -> None:  # noqa: ANN003 - cohort options
    from .cohort import write_rescue_cohort

    if design != "rescue":
        raise typer.BadParameter(f"--cohort {design!r}: the only design is 'rescue'")
    n = options.pop("n_subjects")
    truth = write_rescue_cohort(
        out, n_subjects=n, n_worsening=round(0.3 * n), **options,
        progress=lambda sub, ses: err_console.print(f"wrote sub-{sub} ses-{ses}", highlight=False),
    )
    outcomes = truth.groupby("subject")["outcome"].first().value_counts()
    console.print(
        f"rescue cohort {out}: {truth['subject'].nunique()} subjects, {len(truth)} visits "
        f"({int(outcomes.get('stable', 0))} stable, {int(outcomes.get('worsening', 0))} "
        f"worsening); clinical data in sub-*/sub-*_sessions.tsv and clinical.tsv",
        highlight=False, markup=False, soft_wrap=True,
    )


# --- inspect --------------------------------------------------------------------------

_STAGE_LABELS = {
    "load": "loading scans",
    "brain_mask": "brain mask",
    "registration": "registering pre onto post",
    "normalisation": "intensity normalisation",
    "detection": "detecting enhancing lesions",
    "measures": "measuring and filtering candidates",
}


@app.command("inspect")
def inspect_command(
    pre: str = typer.Argument(..., metavar="PRE", help="Pre-contrast T1 (NIfTI)."),
    post: str = typer.Argument(
        ..., metavar="POST", help="Post-gadolinium T1 (NIfTI); output grid."
    ),
    out: str = typer.Option(
        None, "--out", help="Write label maps, tables, summary and qc.png here."
    ),
    flair: str = typer.Option(
        None, "--flair", help="FLAIR scan: reject candidates without a FLAIR lesion."
    ),
    brain_mask: str = typer.Option(None, "--brain-mask", help="Brain mask on the post grid."),
    pipeline: str = typer.Option(
        "auto", "--pipeline", help="Preset (auto, default, clinical-2d, flair, high-sensitivity) "
        "or JSON file; auto picks by slice thickness and FLAIR."
    ),
    high: float = typer.Option(None, "--high-threshold", help="Seed level (noise units)."),
    low: float = typer.Option(None, "--low-threshold", help="Growing level (noise units)."),
    min_volume: float = typer.Option(
        None, "--min-volume", help="Smallest lesion, mm3 (inclusive)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow a non-empty --out folder."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the QC page report.html."),
) -> None:
    """Detect, count and measure enhancing lesions in one pre/post T1 pair."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .params import AUTO, load_params

    with user_errors(), _cyclic_gc_paused():
        from .pipeline import run_study

        params = pipeline if pipeline == AUTO else load_params(pipeline)
        overrides = {"high_threshold": high, "low_threshold": low, "min_volume_mm3": min_volume}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if not isinstance(params, str):
            params = params.replace(**overrides)
        if out is not None:
            from .io import ensure_writable_dir

            ensure_writable_dir(out, overwrite=overwrite, inputs=(pre, post, flair, brain_mask))
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=err_console, transient=True,
        ) as bar:
            task = bar.add_task("starting", total=None)

            def on_stage(stage: str) -> None:
                bar.update(task, description=_STAGE_LABELS.get(stage, stage))

            result = run_study(
                pre, post, flair=flair, brain_mask=brain_mask, params=params,
                overrides=overrides if isinstance(params, str) else None, progress=on_stage,
            )
            if out is not None:
                # written before anything is printed: a closed stdout (``| head``) must not
                # cost the files
                from .outputs import write_study_outputs

                bar.update(task, description="writing outputs")
                write_study_outputs(
                    result, out, overwrite=overwrite, inputs=(pre, post, flair, brain_mask),
                    report=not no_report,
                )
        for message in result.warnings:
            err_console.print(Text.assemble(("warning: ", "bold yellow"), message), soft_wrap=True)
        reg = result.registration
        console.print(
            Text(
                f"{result.lesion_count} enhancing lesion(s), "
                f"total {result.total_volume_mm3:.1f} mm3 "
                f"({len(result.rejected)} candidate(s) rejected as normal enhancement)\n"
                + _registration_line("registration", reg.qc_dict())
                + _registration_line("FLAIR registration", result.flair_registration)
                + _smoothness_line(result.stats, result.post.zooms)
                + f"pipeline: {result.pipeline}"
                + (" (chosen from slice thickness and FLAIR)" if pipeline == AUTO else "")
                + _work_grid_note(result.stats)
            )
        )
        if result.lesion_count:
            table = Table(title="lesions (post-scan RAS mm)")
            for col in ("id", "voxels", "volume mm3", "x", "y", "z", "max enh %", "pattern",
                        "surface mm"):
                table.add_column(col, justify="left" if col == "pattern" else "right")
            for row in result.lesions.itertuples(index=False):
                table.add_row(
                    str(row.lesion_id), str(row.n_voxels), f"{row.volume_mm3:.1f}",
                    f"{row.centroid_x_mm:.1f}",
                    f"{row.centroid_y_mm:.1f}",
                    f"{row.centroid_z_mm:.1f}",
                    f"{row.max_enhancement_pct:.0f}",
                    row.pattern,
                    f"{row.distance_to_surface_mm:.1f}",
                )
            console.print(table)
        if out is not None:
            console.print(Text(f"wrote {out}"))
    _done["inspect"] = True

# --- batch ----------------------------------------------------------------------------


def _batch_progress_bar():  # noqa: ANN202 - rich types stay local to this command
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]sessions"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}  reused {task.fields[reused]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


@app.command("batch")
def batch_command(
    input_path: str = typer.Argument(
        ..., metavar="INPUT", help="BIDS dataset, plain INPUT/<subject>/<session>/ tree, "
        "or manifest CSV (subject,session,pre,post[,flair][,date])."
    ),
    output: str = typer.Argument(..., metavar="OUTPUT", help="Results folder (BIDS derivative)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Parallel sessions (0 = all cores)."),
    pipeline: str = typer.Option(
        "auto", "--pipeline", help="Preset name (auto, default, clinical-2d, flair, "
        "high-sensitivity) or a JSON file of detection parameters; auto picks per session."
    ),
    fmt: str = typer.Option("csv", "--format", help="Table format: csv or tsv (BIDS style)."),
    force: bool = typer.Option(False, "--force", help="Redo sessions already complete."),
    participant_label: list[str] = typer.Option(  # noqa: B008 - typer idiom
        None, "--participant-label", help="Only these subjects (repeatable; sub- optional)."
    ),
    session_label: list[str] = typer.Option(  # noqa: B008 - typer idiom
        None, "--session-label", help="Only these sessions (repeatable; ses- optional)."
    ),
    layout: str = typer.Option("auto", "--layout", help="auto, bids, plain or manifest."),
    pre_pattern: str = typer.Option(
        None, "--pre-pattern", help="Plain tree: comma-separated globs of the pre scan."
    ),
    post_pattern: str = typer.Option(
        None, "--post-pattern", help="Plain tree: comma-separated globs of the post scan."
    ),
    flair_pattern: str = typer.Option(
        None, "--flair-pattern", help="Plain tree: comma-separated globs of the FLAIR scan."
    ),
    executor: str = typer.Option(
        "auto", "--executor", help="auto, serial, processes or dask (a local Dask cluster)."
    ),
    dask_scheduler: str = typer.Option(
        None, "--dask-scheduler", help="Send sessions to a running Dask scheduler tcp://HOST:PORT."
    ),
    no_report: bool = typer.Option(
        False, "--no-report", help="Skip the QC pages (OUTPUT/report.html and one per session)."
    ),
    clinical: str = typer.Option(
        None, "--clinical", help="Clinical visits table: chain the longitudinal analysis into "
        "OUTPUT/longitudinal (automatic when a BIDS INPUT's sessions.tsv holds EDSS/relapses/"
        "treatment columns)."
    ),
    no_longitudinal: bool = typer.Option(
        False, "--no-longitudinal", help="Do not chain the longitudinal analysis."
    ),
) -> None:
    """Process every session of a study; rerun to resume (exit 3 if a session failed)."""
    from .batch import run_batch
    from .clinical import has_clinical_columns
    from .params import AUTO, load_params

    options: dict = {"layout": layout}
    for key, value in (("pre_patterns", pre_pattern), ("post_patterns", post_pattern),
                       ("flair_patterns", flair_pattern)):
        if value:
            options[key] = tuple(p.strip() for p in value.split(",") if p.strip())
    with user_errors():
        params = None if pipeline == AUTO else load_params(pipeline)
        with _batch_progress_bar() as bar:
            task = bar.add_task("batch", total=None, failed=0, reused=0)

            def on_progress(event) -> None:  # noqa: ANN001 - BatchProgress
                bar.update(task, total=event.total, completed=event.done, failed=event.failed,
                           reused=event.reused)

            result = run_batch(
                input_path, output, params=params, pipeline=pipeline,
                workers=workers or None, executor=executor, scheduler=dask_scheduler,
                force=force, fmt=fmt, participant_labels=participant_label or None,
                session_labels=session_label or None, discover_options=options,
                progress=on_progress, report=not no_report,
            )
    for rec in result.records:
        if rec["status"] == "failed":
            err_console.print(Text.assemble(("failed: ", "bold red"), rec["error"]),
                              soft_wrap=True)
    console.print(
        f"{result.n_ok} ok, {result.n_failed} failed, {result.n_skipped} skipped "
        f"({result.ran} run, {result.reused} reused) in {result.elapsed_s:.1f} s; "
        f"tables: {result.counts_path}, {result.lesions_path}",
        highlight=False, soft_wrap=True, markup=False,
    )
    if clinical is None and Path(input_path).is_dir() and has_clinical_columns(input_path):
        clinical = input_path
    if clinical is not None and not no_longitudinal:
        _chain_longitudinal(result.counts_path, clinical, output, input_path)
    if result.n_failed:
        raise typer.Exit(EXIT_SESSIONS_FAILED)


def _chain_longitudinal(counts: Path, clinical: str, output: str, input_path: str) -> None:
    """Run the longitudinal analysis on a finished batch (its folder is rebuilt every run)."""
    from .longitudinal import run_longitudinal

    raw = input_path if Path(input_path).is_dir() else None
    with user_errors():
        res = run_longitudinal(counts, clinical, out_dir=Path(output) / "longitudinal",
                               derivatives=output, raw=raw, overwrite=True)
    console.print(res.summary_text(), highlight=False, soft_wrap=True, markup=False)
    console.print(f"longitudinal analysis: {Path(output) / 'longitudinal'}", highlight=False,
                  soft_wrap=True, markup=False)


# --- longitudinal ---------------------------------------------------------------------


def _column_options(column_map: str | None, columns: list[str] | None) -> dict[str, str]:
    from .clinical import read_column_map
    from .errors import ClinicalDataError

    mapping = read_column_map(column_map) if column_map else {}
    for item in columns or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ClinicalDataError(
                f"--column {item!r}: expected CANONICAL=NAME, e.g. edss=EDSS_score"
            )
        mapping[key.strip()] = value.strip()
    return mapping


@app.command("longitudinal")
def longitudinal_command(
    counts: str = typer.Argument(
        ..., metavar="COUNTS", help="lesion_counts.csv from gdlesion batch."
    ),
    clinical: str = typer.Argument(
        ..., metavar="CLINICAL", help="Clinical CSV/TSV, a sub-XX_sessions.tsv, or a BIDS dataset."
    ),
    out: str = typer.Option(..., "--out", help="Output folder."),
    max_days: float = typer.Option(
        30, "--max-days", min=0, help="Largest visit-scan date gap for a date match (inclusive)."
    ),
    column_map: str = typer.Option(
        None, "--column-map", help='JSON file {"edss": "EDSS_score", ...} naming clinical columns.'
    ),
    column: list[str] = typer.Option(  # noqa: B008 - typer idiom
        None, "--column", help="CANONICAL=NAME, e.g. --column edss=EDSS (repeatable)."
    ),
    relapses: str = typer.Option(
        None, "--relapses", help="Table of relapse dates (subject,date), one row per relapse."
    ),
    derivatives: str = typer.Option(
        None, "--derivatives", help="Batch output folder with label maps: enables lesion tracking."
    ),
    raw: str = typer.Option(
        None, "--raw", help="Raw dataset with the post scans (registered between visits)."
    ),
    confirm_months: int = typer.Option(
        3, "--confirm-months", min=1, help="Months to the visit confirming EDSS worsening."
    ),
    relapse_criterion: bool = typer.Option(
        True, "--relapse-criterion/--no-relapse-criterion",
        help="Also call worsening a higher relapse rate after return than before rescue.",
    ),
    family: str = typer.Option("poisson", "--family", help="Count model: poisson or negbin."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write the figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap confidence intervals."),
) -> None:
    """Join counts with clinical data; phases, outcome after rescue, statistics, tracking."""
    from .longitudinal import run_longitudinal
    from .outcome import OutcomeRule

    if family not in ("poisson", "negbin"):
        raise typer.BadParameter(f"--family {family!r}: use poisson or negbin")
    with user_errors():
        result = run_longitudinal(
            counts, clinical, out_dir=out, max_days=max_days,
            column_map=_column_options(column_map, column), relapse_table=relapses,
            derivatives=derivatives, raw=raw, family=family, figures=figures,
            overwrite=overwrite, seed=seed,
            rule=OutcomeRule(confirm_months=confirm_months, use_relapse_rate=relapse_criterion),
        )
    console.print(result.summary_text(), highlight=False, soft_wrap=True, markup=False)
    console.print(f"outputs: {out}", highlight=False, markup=False)


# --- report ---------------------------------------------------------------------------


@app.command("report")
def report_command(
    output: str = typer.Argument(
        ..., metavar="OUTPUT", help="An inspect --out folder or a gdlesion batch output folder."
    ),
    post: str = typer.Option(
        None, "--post", help="Inspect folder only: the post scan, if it moved since inspect ran."
    ),
) -> None:
    """Rebuild the QC pages (report.html) from existing outputs."""
    from .report import rebuild_reports

    with user_errors():
        pages, problems = rebuild_reports(output, post=post)
    for message in problems:
        err_console.print(Text.assemble(("not rebuilt: ", "bold yellow"), message), soft_wrap=True)
    console.print(Text(f"wrote {len(pages)} page(s); open {pages[-1]}"), soft_wrap=True)


def _registration_line(label: str, qc: dict | None) -> str:
    """One summary line on a registration onto the post scan, from its ``qc_dict`` ("" if None)."""
    if qc is None:
        return ""
    shift = math.hypot(*qc["translation_mm"])
    return (
        f"{label}: correlation {qc['similarity_before']:.3f} -> "
        f"{qc['similarity_after']:.3f}, overlap {qc['overlap_fraction']:.0%}, "
        f"translation {shift:.1f} mm, rotation {max(abs(a) for a in qc['rotation_deg']):.1f} deg\n"
    )


def _smoothness_line(stats: dict[str, float], zooms: Iterable[float]) -> str:
    """Give the residual's smoothness beside the voxel size (gdlesion.segment.residual_fwhm)."""
    fwhm = [float(stats.get(f"residual_fwhm_mm_{a}", 0.0)) for a in "ijk"]
    if not any(fwhm):
        return ""
    smooth = " x ".join(f"{f:.1f}" for f in fwhm)
    voxel = " x ".join(f"{z:.2g}" for z in zooms)
    return f"smoothness: residual FWHM {smooth} mm (voxels {voxel} mm)\n"


def _work_grid_note(stats: dict[str, float]) -> str:
    """Say so when the post scan's voxels were split for the analysis (gdlesion.workgrid)."""
    factors = [int(stats.get(f"work_factor_{a}", 1)) for a in "ijk"]
    merged = [int(stats.get(f"merge_factor_{a}", 1)) for a in "ijk"]
    if factors == [1, 1, 1] and merged == [1, 1, 1]:
        return ""
    how = []
    if merged != [1, 1, 1]:
        how.append("merged " + "x".join(map(str, merged)))
    if factors != [1, 1, 1]:
        how.append("split " + "x".join(map(str, factors)))
    return f"; voxels {' then '.join(how)} for the analysis, reported on the post grid"


def main() -> None:
    """Entry point of the ``gdlesion`` console script."""
    _done["inspect"] = False
    # A study allocates and frees ~0.5 GB of short-lived volume-sized arrays. Where the kernel's
    # transparent huge pages are in "madvise" mode, numpy asks for huge pages for every array of
    # 4 MB or more, and a first touch can then wait for the kernel to compact memory into a 2 MB
    # page. numpy's documented switch (read when numpy is imported, which has not happened yet:
    # importing gdlesion.cli does not import it) turns that off for this process and its
    # workers; a value the user set is kept. Measured on the Lesjak pairs: the same outputs,
    # system time 0.83-0.95 -> 0.60-0.67 s, whole inspect -0.12 to -0.18 s (18 pairs of runs).
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    # and one malloc arena for all threads, without trimming between stages (see gdlesion._memory)
    from ._memory import use_one_arena

    use_one_arena()
    try:
        app()
    except SystemExit as exc:
        if not _done["inspect"]:
            raise
        # a finished inspect: its files are written and closed, no thread or child process
        # is left, nothing was registered to run at exit; ending here skips the teardown of
        # the imported libraries' modules and objects (~0.05 s on the Lesjak pairs)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    finally:
        # the process ends here: spare the interpreter's final garbage collections over the
        # objects of every imported library (~0.5 s after an inspect, for nothing)
        gc.freeze()
