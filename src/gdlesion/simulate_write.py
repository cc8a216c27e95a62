"""Writing simulated studies: one flat study folder, or a multi-subject multi-session BIDS dataset.

BIDS layout written by :func:`write_bids_dataset`::

    root/dataset_description.json            (BIDSVersion, DatasetType raw)
    root/participants.tsv
    root/sub-01/sub-01_sessions.tsv          (session_id, acq_time)
    root/sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz
    root/sub-01/ses-01/anat/sub-01_ses-01_ce-gadolinium_T1w.nii.gz
    root/sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz
    root/derivatives/truth/dataset_description.json   (DatasetType derivative)
    root/derivatives/truth/sub-01/ses-01/anat/sub-01_ses-01_space-individual_label-lesion_dseg.nii.gz
    root/derivatives/truth/sub-01/ses-01/anat/sub-01_ses-01_truth.json
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .io import ensure_writable_dir, save_volume, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from .simulate import SimulatedStudy

__all__ = ["write_study", "write_bids_dataset", "session_seed"]

_BIDS_VERSION = "1.9.0"
_FIRST_VISIT = _dt.datetime(2021, 1, 11, 9, 0, 0)


def _write_images(study: SimulatedStudy, raw_dir: Path, stem: str) -> dict[str, Path]:
    paths = {
        "pre": save_volume(
            raw_dir / f"{stem}_T1w.nii.gz", study.pre.data, study.pre.affine, dtype=np.int16
        ),
        "post": save_volume(
            raw_dir / f"{stem}_ce-gadolinium_T1w.nii.gz",
            study.post.data,
            study.post.affine,
            dtype=np.int16,
        ),
    }
    if study.flair is not None:
        paths["flair"] = save_volume(
            raw_dir / f"{stem}_FLAIR.nii.gz", study.flair.data, study.flair.affine, dtype=np.int16
        )
    return paths


def write_study(
    study: SimulatedStudy,
    out_dir: str | os.PathLike[str],
    *,
    stem: str = "sim",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one simulated study into a flat folder.

    Files: ``{stem}_T1w.nii.gz`` (pre), ``{stem}_ce-gadolinium_T1w.nii.gz``
    (post), ``{stem}_FLAIR.nii.gz``, ``{stem}_label-lesion_dseg.nii.gz``
    (int16 lesion ids on the post grid) and ``{stem}_truth.json``.

    Parameters
    ----------
    study : SimulatedStudy
        Result of :func:`gdlesion.simulate.simulate_study`.
    out_dir : str or os.PathLike
        Destination folder (created).
    stem : str
        File-name prefix.
    overwrite : bool
        Allow writing into a non-empty folder.

    Returns
    -------
    dict of str to pathlib.Path
        Written files by role (pre, post, flair, labels, truth).

    Raises
    ------
    OutputError
        ``out_dir`` is non-empty and ``overwrite`` is false, or is a file.
    """
    out = ensure_writable_dir(out_dir, overwrite=overwrite)
    paths = _write_images(study, out, stem)
    paths["labels"] = save_volume(
        out / f"{stem}_label-lesion_dseg.nii.gz", study.labels, study.post.affine, dtype=np.int16
    )
    paths["truth"] = write_json_atomic(out / f"{stem}_truth.json", study.truth)
    return paths


def session_seed(seed: int, subject: int, session: int) -> int:
    """Deterministic per-session seed derived from the dataset seed."""
    return int(
        np.random.SeedSequence([int(seed), int(subject), int(session), 7010]).generate_state(1)[0]
    )


def write_bids_dataset(
    root: str | os.PathLike[str],
    *,
    n_subjects: int = 2,
    n_sessions: int = 2,
    resolution: str = "1mm",
    seed: int = 0,
    n_lesions: int | tuple[int, int] = (1, 6),
    voxel_size: float | None = None,
    zero_background: bool = False,
    with_flair: bool = True,
    overwrite: bool = False,
    visit_interval_days: int = 91,
    progress=None,
) -> list[dict]:
    """Write a small multi-subject, multi-session BIDS dataset of simulated studies.

    Each subject has its own anatomy (``subject_seed`` derived from ``seed``)
    identical across its sessions; each session draws its own noise,
    misalignment and enhancing lesions. Truth goes to ``derivatives/truth``.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root (created; must be empty unless ``overwrite``).
    n_subjects, n_sessions : int
        Dataset size (1-99 each).
    resolution : {"1mm", "2d"}
        Protocol of every session.
    seed : int
        Dataset seed.
    n_lesions : int or (int, int)
        Enhancing lesions per session, or an inclusive range drawn per session.
    voxel_size : float, optional
        Isotropic voxel override (see :func:`~gdlesion.simulate.simulate_study`).
    zero_background : bool
        Zero the air outside the head (smaller files).
    with_flair : bool
        Also write ``_FLAIR`` images.
    overwrite : bool
        Allow writing into a non-empty ``root``.
    visit_interval_days : int
        Days between sessions in ``sessions.tsv``.
    progress : callable, optional
        Called as ``progress(subject_label, session_label)`` after each session.

    Returns
    -------
    list of dict
        One record per session: subject, session, subject_seed, seed, files, n_lesions.

    Raises
    ------
    InputError
        Bad sizes or simulation options.
    OutputError
        ``root`` is non-empty and ``overwrite`` is false.
    """
    from .errors import InputError
    from .simulate import simulate_study

    if not (1 <= n_subjects <= 99 and 1 <= n_sessions <= 99):
        raise InputError(
            f"dataset size {n_subjects} subjects x {n_sessions} sessions must be 1-99 each"
        )
    lo, hi = (
        (n_lesions, n_lesions)
        if isinstance(n_lesions, int)
        else (int(n_lesions[0]), int(n_lesions[1]))
    )
    if not 0 <= lo <= hi:
        raise InputError(f"lesion count range {n_lesions} is invalid")
    out = ensure_writable_dir(root, overwrite=overwrite)
    deriv = out / "derivatives" / "truth"
    generated = [{"Name": "gdlesion simulate", "Version": __version__}]
    write_json_atomic(
        out / "dataset_description.json",
        {
            "Name": "gdlesion simulated Gd-enhancing lesion dataset",
            "BIDSVersion": _BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": generated,
            "License": "CC0",
        },
    )
    write_json_atomic(
        deriv / "dataset_description.json",
        {
            "Name": "gdlesion simulation ground truth",
            "BIDSVersion": _BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": generated,
        },
    )
    records, participants = [], ["participant_id\tsubject_seed\tresolution"]
    for sub in range(1, n_subjects + 1):
        sub_label = f"sub-{sub:02d}"
        subject_seed = session_seed(seed, sub, 0)
        participants.append(f"{sub_label}\t{subject_seed}\t{resolution}")
        start = _FIRST_VISIT + _dt.timedelta(days=7 * (sub - 1))
        sessions = ["session_id\tacq_time"]
        for ses in range(1, n_sessions + 1):
            ses_label = f"ses-{ses:02d}"
            sseed = session_seed(seed, sub, ses)
            count = int(np.random.default_rng(sseed).integers(lo, hi + 1))
            study = simulate_study(
                resolution=resolution,
                n_lesions=count,
                seed=sseed,
                subject_seed=subject_seed,
                with_flair=with_flair,
                voxel_size=voxel_size,
                zero_background=zero_background,
            )
            stem = f"{sub_label}_{ses_label}"
            files = _write_images(study, out / sub_label / ses_label / "anat", stem)
            tdir = deriv / sub_label / ses_label / "anat"
            files["labels"] = save_volume(
                tdir / f"{stem}_space-individual_label-lesion_dseg.nii.gz",
                study.labels,
                study.post.affine,
                dtype=np.int16,
            )
            files["truth"] = write_json_atomic(tdir / f"{stem}_truth.json", study.truth)
            when = start + _dt.timedelta(days=visit_interval_days * (ses - 1))
            sessions.append(f"{ses_label}\t{when.isoformat()}")
            records.append(
                {
                    "subject": sub_label,
                    "session": ses_label,
                    "subject_seed": subject_seed,
                    "seed": sseed,
                    "n_lesions": len(study.lesions),
                    "files": files,
                }
            )
            if progress is not None:
                progress(sub_label, ses_label)
        write_text_atomic(out / sub_label / f"{sub_label}_sessions.tsv", "\n".join(sessions) + "\n")
    write_text_atomic(out / "participants.tsv", "\n".join(participants) + "\n")
    write_text_atomic(
        out / "README",
        "Simulated pre/post-gadolinium T1 and FLAIR sessions written by "
        "`gdlesion simulate`; ground truth in derivatives/truth.\n",
    )
    return records
