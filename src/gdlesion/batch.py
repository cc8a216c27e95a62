"""Run the single-study pipeline over a whole study: discover, lock, resume, run, tabulate.

:func:`run_batch` is the API behind ``gdlesion batch``. Sessions are found by
:mod:`gdlesion.discover`, run by :func:`gdlesion.batch_session.process_session`
on an executor (in-process, a local process pool, or a Dask cluster), and the
combined tables (:mod:`gdlesion.batch_tables`) are rebuilt from the per-session
records at the end of every run, so a batch killed at any moment and rerun
gives exactly the tables of an uninterrupted run.

Concurrency: an OS-level lock (``fcntl.flock`` on ``OUTPUT/.gdlesion.lock``)
refuses a second batch on the same output; the kernel releases it when the
process dies, so a killed batch never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from . import __version__
from .batch_session import (
    STATE_DIR,
    SessionTask,
    failure_record,
    params_hash,
    process_session,
    read_lesions,
    record_path,
    valid_record,
)
from .batch_tables import counts_table, lesions_table, write_table
from .discover import Session, discover_sessions
from .errors import BatchError
from .io import write_json_atomic

try:  # POSIX; Windows falls back to an exclusive lock file (see _lock)
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = ["BatchProgress", "BatchResult", "run_batch", "rebuild_tables", "LOCK_NAME"]

LOCK_NAME = ".gdlesion.lock"
#: How long to wait for a Dask scheduler to answer.
DASK_CONNECT_TIMEOUT = "20s"


@dataclass(frozen=True)
class BatchProgress:
    """Progress event passed to the ``progress`` callback after each session.

    ``done`` counts finished sessions of this run (ok, failed or reused),
    ``failed`` those that failed, ``reused`` those skipped because their outputs
    were complete; ``record`` is the session record just finished.
    """

    total: int
    done: int
    failed: int
    reused: int
    record: dict[str, Any]


@dataclass
class BatchResult:
    """Outcome of :func:`run_batch`.

    Attributes
    ----------
    output : pathlib.Path
        Batch output folder.
    records : list of dict
        One record per session in the combined tables, sorted by key.
    ran, reused : int
        Sessions processed in this run / skipped because already complete.
    counts_path, lesions_path : pathlib.Path
        The combined tables.
    elapsed_s : float
        Wall time of the run.
    """

    output: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    reused: int = 0
    counts_path: Path | None = None
    lesions_path: Path | None = None
    elapsed_s: float = 0.0

    @property
    def n_ok(self) -> int:
        """Sessions with status ``ok``."""
        return sum(r["status"] == "ok" for r in self.records)

    @property
    def n_failed(self) -> int:
        """Sessions with status ``failed``."""
        return sum(r["status"] == "failed" for r in self.records)

    @property
    def n_skipped(self) -> int:
        """Sessions with status ``skipped`` (no T1 scan at all)."""
        return sum(r["status"] == "skipped" for r in self.records)


def _check_paths(input_path: Path, output: Path) -> None:
    inp, out = input_path.resolve(), output.resolve()
    if out == inp or (inp.is_file() and out == inp.parent):
        raise BatchError(f"output {output}: is the input; write results to another folder")
    if inp.is_dir() and inp in out.parents:
        rel = out.relative_to(inp)
        if rel.parts[0] != "derivatives":
            raise BatchError(
                f"output {output}: lies inside the input {input_path}; use another folder "
                f"or {input_path}/derivatives/gdlesion"
            )
    if out.exists() and not out.is_dir():
        raise BatchError(f"output {output}: exists and is not a folder")
    if out.is_dir() and not (out / STATE_DIR).is_dir():
        foreign = [p.name for p in out.iterdir() if p.name != LOCK_NAME]
        if foreign:
            raise BatchError(
                f"output {output}: folder is not empty and holds no gdlesion batch "
                f"(found {foreign[0]}); choose an empty or new folder"
            )


@contextlib.contextmanager
def _lock(output: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on ``OUTPUT/.gdlesion.lock`` or raise BatchError."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / LOCK_NAME
    fh = open(path, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BatchError(
                    f"output {output}: another gdlesion batch is running on it "
                    f"(lock {path} is held); wait for it or choose another folder"
                ) from None
        yield
    finally:
        fh.close()


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _run_serial(tasks: list[SessionTask]) -> Iterator[dict[str, Any]]:
    for task in tasks:
        yield process_session(task)


def _run_processes(tasks: list[SessionTask], workers: int) -> Iterator[dict[str, Any]]:
    # spawn: no fork of a process holding ITK threads; tasks kept in key order.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(process_session, t): t for t in tasks}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=lambda f: pending[f].session.key):
                task = pending.pop(fut)
                exc = fut.exception()
                if exc is None:
                    yield fut.result()
                else:  # the worker process died (out of memory, killed): record, go on
                    rec = failure_record(
                        task.session, f"worker process died ({type(exc).__name__}: {exc})",
                        task=task,
                    )
                    write_json_atomic(record_path(task.output, task.session.key), rec)
                    yield rec


def _run_dask(
    tasks: list[SessionTask], *, scheduler: str | None, workers: int
) -> Iterator[dict[str, Any]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BatchError(
            "the Dask executor needs the optional extra: pip install 'gdlesion[dask]'"
        ) from None
    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout=DASK_CONNECT_TIMEOUT))
            except (OSError, TimeoutError) as exc:
                raise BatchError(f"dask scheduler {scheduler}: cannot connect ({exc})") from None
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=None,
            ))
            client = stack.enter_context(Client(cluster))
        futures = [
            client.submit(process_session, t, key=f"gdlesion-{t.session.key}", pure=False)
            for t in tasks
        ]
        by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        for fut in as_completed(futures):
            task = by_key[fut.key]
            if fut.status == "finished":
                yield fut.result()
            else:
                rec = failure_record(
                    task.session, f"dask task failed ({type(fut.exception()).__name__}: "
                    f"{fut.exception()})", task=task,
                )
                write_json_atomic(record_path(task.output, task.session.key), rec)
                yield rec


def _all_records(output: Path) -> list[dict[str, Any]]:
    import json

    records = []
    for path in sorted((output / STATE_DIR / "sessions").glob("*.json")):
        if path.name.startswith("."):
            # a record being written atomically (".KEY.json.XXXX.part.json"); a killed run
            # can leave one behind, a copy of a session that has its own record
            continue
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text(encoding="utf-8")))
    return sorted(records, key=lambda r: r.get("key", ""))


def rebuild_tables(output: str | Path, *, fmt: str = "csv") -> tuple[Path, Path]:
    """Rewrite ``lesion_counts`` and ``lesions`` tables from every session record in ``output``.

    Returns
    -------
    tuple of pathlib.Path
        Paths of the counts table and of the per-lesion table.
    """
    output = Path(output)
    records = _all_records(output)
    ext = "csv" if fmt == "csv" else "tsv"
    counts = write_table(counts_table(records), output / f"lesion_counts.{ext}", fmt=fmt)
    lesions = write_table(
        lesions_table((r, read_lesions(output, r)) for r in records if r["status"] == "ok"),
        output / f"lesions.{ext}", fmt=fmt,
    )
    return counts, lesions


def _dataset_description(output: Path) -> None:
    write_json_atomic(output / "dataset_description.json", {
        "Name": "gdlesion: gadolinium-enhancing lesion segmentation",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "gdlesion", "Version": __version__,
            "CodeURL": "https://github.com/gdlesion/gdlesion",
        }],
    })


def run_batch(
    input_path: str | Path,
    output: str | Path,
    *,
    sessions: Iterable[Session] | None = None,
    params: Any = None,
    pipeline: str = "",
    workers: int | None = None,
    executor: str = "auto",
    scheduler: str | None = None,
    force: bool = False,
    fmt: str = "csv",
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    discover_options: dict[str, Any] | None = None,
    study_fn: Callable[..., Any] | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    on_complete: Callable[[BatchResult], None] | None = None,
    report: bool = True,
) -> BatchResult:
    """Process every session of a study; resumable, locked, one failure never stops it.

    Parameters
    ----------
    input_path : str or pathlib.Path
        BIDS dataset, plain tree or manifest CSV (see :func:`discover_sessions`).
    output : str or pathlib.Path
        Results folder (BIDS derivative). Must not be the input nor inside it
        (``INPUT/derivatives/...`` is allowed).
    sessions : iterable of Session, optional
        Use these instead of discovering them.
    params : object, optional
        Detection parameters handed to the study function and recorded.
    pipeline : str
        Preset name (or file) recorded with the outputs.
    workers : int, optional
        Parallel sessions; default all available cores.
    executor : {"auto", "serial", "processes", "dask"}
        ``auto``: Dask when ``scheduler`` is given, else processes when
        ``workers > 1``, else in-process.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:port``).
    force : bool
        Redo sessions whose outputs are already complete.
    fmt : {"csv", "tsv"}
        Format of the combined tables.
    participant_labels, session_labels : list of str, optional
        Discovery filters (with or without ``sub-``/``ses-``).
    discover_options : dict, optional
        Extra keyword arguments of :func:`discover_sessions` (layout, patterns).
    study_fn : callable, optional
        Replaces :func:`gdlesion.pipeline.run_study` (tests, custom pipelines);
        must be picklable for process/Dask executors.
    progress : callable, optional
        Called with a :class:`BatchProgress` after each session.
    on_complete : callable, optional
        Called with the :class:`BatchResult` once the tables are written, while
        the output is still locked (e.g. to chain a longitudinal analysis).
    report : bool
        Write each session's QC page and ``OUTPUT/report.html`` (:mod:`gdlesion.report_batch`).

    Returns
    -------
    BatchResult

    Raises
    ------
    BatchError
        Bad input/output, no session, output locked by another batch, unknown executor.
    """
    start = time.perf_counter()
    write_report = report  # the name ``report`` is reused below for the progress callback
    input_path, output = Path(input_path), Path(output)
    if fmt not in ("csv", "tsv"):
        raise BatchError(f"format {fmt!r}: expected csv or tsv")
    if executor not in ("auto", "serial", "processes", "dask"):
        raise BatchError(f"executor {executor!r}: expected auto, serial, processes or dask")
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise BatchError(f"workers {workers}: must be at least 1")
    _check_paths(input_path, output)
    if sessions is None:
        sessions = discover_sessions(
            input_path, participant_labels=participant_labels, session_labels=session_labels,
            **(discover_options or {}),
        )
    sessions = sorted(sessions, key=lambda s: s.key)
    with _lock(output):
        (output / STATE_DIR / "sessions").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(output / STATE_DIR / "tmp", ignore_errors=True)  # leftovers of a kill
        _dataset_description(output)
        result = BatchResult(output=output)
        phash = params_hash(params, pipeline)
        if executor == "auto":
            executor = "dask" if scheduler else ("processes" if workers > 1 else "serial")
        threads = max(1, _default_workers() // workers) if executor != "dask" else 1
        tasks, done, failed = [], 0, 0

        def report(rec: dict[str, Any]) -> None:
            nonlocal done, failed
            done += 1
            failed += rec["status"] == "failed"
            if progress is not None:
                progress(BatchProgress(len(sessions), done, failed, result.reused, rec))

        for s in sessions:
            task = SessionTask(s, str(output), params, pipeline, threads, study_fn, write_report)
            if s.error:
                rec = failure_record(s, s.error, status=s.status_if_error, task=task)
                write_json_atomic(record_path(output, s.key), rec)
                report(rec)
                continue
            rec = None if force else valid_record(output, s, phash)
            if rec is not None:
                if rec.get("acq_date") != s.acq_date:  # dates may be fixed without new images
                    rec["acq_date"] = s.acq_date
                    write_json_atomic(record_path(output, s.key), rec)
                result.reused += 1
                report(rec)
            else:
                tasks.append(task)
        if executor == "dask":
            stream = _run_dask(tasks, scheduler=scheduler, workers=workers)
        elif executor == "processes" and len(tasks) > 1:
            stream = _run_processes(tasks, min(workers, len(tasks)))
        else:
            stream = _run_serial(tasks)
        for rec in stream:
            result.ran += 1
            report(rec)
        result.counts_path, result.lesions_path = rebuild_tables(output, fmt=fmt)
        if write_report:
            from .report_batch import write_batch_report

            write_batch_report(output)
        result.records = _all_records(output)
        result.elapsed_s = time.perf_counter() - start
        if on_complete is not None:
            on_complete(result)
    return result
