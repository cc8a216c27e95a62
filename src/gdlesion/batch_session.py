"""One batch session: run the study pipeline, write its BIDS-derivative outputs and record.

This module holds what a worker process (local or Dask) executes. Outputs are
written into a private temporary folder and moved into ``OUTPUT/sub-X[/ses-Y]/anat``
with a rename; the session's *record* (``OUTPUT/.gdlesion/sessions/<key>.json``)
is written last. A record with ``status == "ok"`` whose file checksums, inputs and
parameter hash still match is what makes a session "complete and valid" on a
rerun; anything else (no record, failed record, changed input or parameters,
a missing or modified file) is run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .discover import Session
from .errors import GdLesionError
from .io import load_volume, save_volume, write_json_atomic, write_text_atomic

__all__ = [
    "SessionTask",
    "process_session",
    "failure_record",
    "valid_record",
    "read_lesions",
    "params_to_dict",
    "params_hash",
    "STATE_DIR",
    "RECORD_VERSION",
]

#: Hidden folder of batch state under OUTPUT (records, temporary folders, lock).
STATE_DIR = ".gdlesion"
#: Bumped when the record layout changes, which invalidates older records.
RECORD_VERSION = 1

StudyFn = Callable[..., Any]


@dataclass(frozen=True)
class SessionTask:
    """Everything a worker needs to process one session (picklable).

    Attributes
    ----------
    session : Session
        The scans to process.
    output : str
        Batch output folder (shared with the workers' file system).
    params : Any
        Detection parameters passed to the study function.
    pipeline : str
        Preset name or file recorded in the outputs.
    threads : int
        ITK/BLAS threads this worker may use.
    study_fn : callable or None
        ``study_fn(pre, post, *, flair, params) -> StudyResult``; ``None`` uses
        :func:`gdlesion.pipeline.run_study`. Injected by tests.
    report : bool
        Also write the session's QC page (:func:`gdlesion.report_batch.write_batch_session_files`).
    """

    session: Session
    output: str
    params: Any = None
    pipeline: str = ""
    threads: int = 1
    study_fn: StudyFn | None = None
    report: bool = True


def params_to_dict(params: Any) -> dict[str, Any]:
    """JSON-ready dict of detection parameters (dataclass, mapping, ``to_dict()`` or None)."""
    if params is None:
        return {}
    if hasattr(params, "to_dict"):
        return dict(params.to_dict())
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return dataclasses.asdict(params)
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"cannot record parameters of type {type(params).__name__}")


def params_hash(params: Any, pipeline: str = "") -> str:
    """Stable hash of the parameters, preset name and gdlesion version.

    A change of any of them reruns every session: a resumed batch never mixes
    results of two versions (a new version may detect differently with the same
    parameters) in one table.
    """
    from . import __version__

    text = json.dumps(
        {"params": params_to_dict(params), "pipeline": pipeline, "record": RECORD_VERSION,
         "gdlesion": __version__},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(output: str | Path, key: str) -> Path:
    """Where the record of session ``key`` lives."""
    return Path(output) / STATE_DIR / "sessions" / f"{key}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _input_signature(session: Session) -> dict[str, Any]:
    sig = {}
    for role in ("pre", "post", "flair"):
        p = getattr(session, role)
        if p is not None:
            with contextlib.suppress(OSError):
                st = Path(p).stat()
                sig[role] = {"name": Path(p).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return sig


def _base_record(session: Session, task: SessionTask | None, phash: str) -> dict[str, Any]:
    return {
        "record_version": RECORD_VERSION,
        "key": session.key,
        "subject": session.subject,
        "session": session.session,
        "acq_date": session.acq_date,
        "pipeline": task.pipeline if task else "",
        "params_hash": phash,
        "inputs": _input_signature(session),
        "gdlesion_version": __version__,
    }


def failure_record(
    session: Session, error: str, *, status: str = "failed", task: SessionTask | None = None
) -> dict[str, Any]:
    """Build the record of a session that could not be processed."""
    phash = params_hash(task.params, task.pipeline) if task else ""
    rec = _base_record(session, task, phash)
    rec.update(status=status, error=error, warnings=[], files={})
    return rec


def valid_record(output: str | Path, session: Session, phash: str) -> dict[str, Any] | None:
    """Return the session's record if its outputs are complete and valid for ``phash``."""
    path = record_path(output, session.key)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        rec.get("record_version") != RECORD_VERSION
        or rec.get("status") != "ok"
        or rec.get("params_hash") != phash
        or rec.get("inputs") != _input_signature(session)
        or (rec.get("subject"), rec.get("session")) != (session.subject, session.session)
    ):
        return None
    out = Path(output)
    for rel, digest in rec.get("files", {}).items():
        f = out / rel
        if not f.is_file() or _sha256(f) != digest:
            return None
    return rec


def read_lesions(output: str | Path, record: Mapping[str, Any]) -> pd.DataFrame:
    """Read the per-lesion table of an ``ok`` record (empty frame otherwise)."""
    rel = record.get("lesions_file")
    if record.get("status") != "ok" or not rel:
        return pd.DataFrame()
    return pd.read_csv(Path(output) / rel, sep="\t", na_values=["n/a"], keep_default_na=False)


def limit_threads(threads: int) -> None:
    """Cap ITK and BLAS/OpenMP threads of this process (workers share the cores)."""
    threads = max(1, int(threads))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = str(threads)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _default_study_fn() -> StudyFn:
    from .pipeline import run_study

    return run_study


def process_session(task: SessionTask) -> dict[str, Any]:
    """Run one session end to end and return its record (also written to disk).

    Never raises for a session problem: a :class:`~gdlesion.errors.GdLesionError`
    becomes a failed record with its one-line message; any other exception (a
    bug) becomes a failed record naming the exception type and where it happened.
    """
    limit_threads(task.threads)
    session = task.session
    try:
        record = _run(task)
    except GdLesionError as exc:
        record = failure_record(session, str(exc), task=task)
    except Exception as exc:  # noqa: BLE001 - one bad session must not stop the batch
        where = traceback.extract_tb(exc.__traceback__)[-1]
        record = failure_record(
            session,
            f"internal error {type(exc).__name__}: {exc} "
            f"(at {Path(where.filename).name}:{where.lineno}; please report)",
            task=task,
        )
    write_json_atomic(record_path(task.output, session.key), record)
    return record


def _run(task: SessionTask) -> dict[str, Any]:
    session = task.session
    pre = load_volume(session.pre, role="pre-contrast scan")
    post = load_volume(session.post, role="post-contrast scan")
    flair = load_volume(session.flair, role="FLAIR") if session.flair else None
    if task.study_fn is None:
        # stages in order: the batch's parallelism is its worker processes (threads
        # inside each would only compete with the other workers for the cores)
        result = _default_study_fn()(pre, post, flair=flair, params=task.params, threads=1)
    else:
        result = task.study_fn(pre, post, flair=flair, params=task.params)
    out = Path(task.output)
    tmp_root = out / STATE_DIR / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{session.key}.", dir=tmp_root))
    try:
        files, lesions_rel, qc = _write_outputs(result, task, staging)
        dest = out / session.relative_dir
        _swap_into_place(staging, dest, tmp_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rec = _base_record(session, task, params_hash(task.params, task.pipeline))
    rel_dir = session.relative_dir.as_posix()
    rec.update(
        status="ok",
        error="",
        warnings=[str(w) for w in (getattr(result, "warnings", None) or [])],
        lesion_count=int(result.lesion_count),
        total_volume_mm3=float(result.total_volume_mm3),
        registration=qc,
        files={f"{rel_dir}/{name}": digest for name, digest in sorted(files.items())},
        lesions_file=f"{rel_dir}/{lesions_rel}",
        pipeline=_resolved_pipeline(result, task),
    )
    return rec


def _resolved_pipeline(result: Any, task: SessionTask) -> str:
    """Return the preset a session ran with (the one chosen from the data for ``auto``)."""
    if task.pipeline in ("", "auto"):
        return getattr(result, "pipeline", None) or task.pipeline
    return task.pipeline


def _swap_into_place(staging: Path, dest: Path, tmp_root: Path) -> None:
    """Replace ``dest`` by ``staging`` with renames (old folder removed afterwards)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix="old.", dir=tmp_root)) / "anat"
        os.replace(dest, old)
    os.replace(staging, dest)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def _write_outputs(
    result: Any, task: SessionTask, folder: Path
) -> tuple[dict[str, str], str, dict[str, Any]]:
    """Write the BIDS-derivative files of one session into ``folder``; return checksums."""
    key = task.session.key
    space = f"{key}_space-individual"
    labels = np.asarray(result.labels).astype(np.int32)
    affine = result.post.affine
    names = {
        "mask": f"{space}_label-lesion_desc-enhancing_mask.nii.gz",
        "dseg": f"{space}_desc-lesion_dseg.nii.gz",
        "dseg_tsv": f"{space}_desc-lesion_dseg.tsv",
        "pre": f"{space}_desc-registered_T1w.nii.gz",
        "lesions": f"{space}_desc-enhancing_lesions.tsv",
        "sidecar": f"{space}_label-lesion_desc-enhancing_mask.json",
    }
    save_volume(folder / names["mask"], labels > 0, affine, dtype=np.uint8)
    save_volume(folder / names["dseg"], labels, affine, dtype=np.int32)
    save_volume(folder / names["pre"], result.pre_registered.data, affine, dtype=np.float32)
    n = int(labels.max()) if labels.size else 0
    dseg = pd.DataFrame({"index": np.arange(1, n + 1), "name": [f"lesion-{i:03d}" for i in
                                                               range(1, n + 1)]})
    write_text_atomic(folder / names["dseg_tsv"], dseg.to_csv(sep="\t", index=False,
                                                              lineterminator="\n"))
    lesions = pd.DataFrame(result.lesions)
    write_text_atomic(folder / names["lesions"], lesions.to_csv(
        sep="\t", index=False, na_rep="n/a", float_format="%.6f", lineterminator="\n"))
    qc = dict(result.registration.qc_dict()) if getattr(result, "registration", None) else {}
    session = task.session
    sidecar = {
        "Description": "Gadolinium-enhancing lesions detected by gdlesion (post-contrast grid).",
        "Sources": sorted(Path(p).name for p in (session.pre, session.post, session.flair) if p),
        "Pipeline": _resolved_pipeline(result, task),
        "Parameters": params_to_dict(getattr(result, "params", None) or task.params),
        "RegistrationQC": qc,
        "LesionCount": int(result.lesion_count),
        "TotalVolume_mm3": float(result.total_volume_mm3),
        "Warnings": [str(w) for w in (getattr(result, "warnings", None) or [])],
        "GeneratedBy": {"Name": "gdlesion", "Version": __version__},
    }
    write_json_atomic(folder / names["sidecar"], sidecar)
    files = {name: _sha256(folder / name) for name in names.values()}
    if task.report:  # report files stay out of the checksums: rebuilding a page keeps the session
        from .report_batch import write_batch_session_files

        write_batch_session_files(result, folder, task.session)
    return files, names["lesions"], qc
