"""Demo cohort in the image of the rescue study (``gdlesion simulate --cohort rescue``).

Design (:func:`design_rescue_cohort`), all seeded:

* 10 RRMS patients on interferon-beta (``IFNB``) with active disease; monthly scans
  at months -2, -1 and 0, three monthly mitoxantrone (``MX``) infusions at months 0, 1
  and 2 (scans monthly), back on IFNB from month 3 with scans every 3 months (3, 6, 9,
  12, 15): 10 visits each.
* 7 patients stay stable after the return; 3 worsen (EDSS +1.0 from month 9,
  confirmed at month 12, relapses and renewed Gd+ activity) and are re-treated with
  MX every 3 months from month 12.
* New Gd+ lesions per visit are Poisson with a mean set by the therapy in effect
  during the interval before the scan (baseline 3, rescue 0.3, return 0.3 stable /
  2.5 worsening, re-treatment 0.5) times the patient's activity (0.6-1.4, higher with
  a higher baseline EDSS, 1.5-4.0); a lesion seen on a monthly scan still enhances on
  the next monthly scan with probability 0.35. Relapses come with activity: one at
  month 0 (the rescue trigger) for everyone, one at month -1 for every other patient,
  and in the worsening patients one at months 9 and 12. EDSS rises by 0.5 transiently
  with the month-0 relapse or a burst of >= 4 enhancing lesions.

The clinical table is written in BIDS form (``sub-XX/sub-XX_sessions.tsv`` with
``acq_time, edss, relapses, treatment``) and as a top-level ``clinical.tsv`` whose
visit dates differ from the scan dates by up to a week (to exercise the date join).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from . import __version__
from .io import ensure_writable_dir, save_volume, write_json_atomic, write_text_atomic

__all__ = ["CohortVisit", "CohortLesion", "design_rescue_cohort", "clinical_tables",
           "write_rescue_cohort", "VISIT_MONTHS"]

#: Months of the scheduled visits relative to the first mitoxantrone infusion.
VISIT_MONTHS = (-2, -1, 0, 1, 2, 3, 6, 9, 12, 15)
_RATES = {"baseline": 3.0, "rescue": 0.3, "return": 0.3, "return_worse": 2.5, "retreatment": 0.5}
_PERSIST = 0.35
_START = pd.Timestamp("2021-01-04")


@dataclass(frozen=True)
class CohortLesion:
    """One enhancing lesion: index within the subject and the visits where it enhances."""

    index: int
    visits: tuple[int, ...]


@dataclass
class CohortVisit:
    """One designed visit with its clinical data and the lesions enhancing on its scan."""

    subject: str
    session: str
    date: pd.Timestamp
    month: int
    treatment: str
    edss: float
    relapses: int
    outcome: str
    visit_index: int = 0
    lesions: list[int] = field(default_factory=list)
    new_lesions: int = 0


def _treatment(month: int, worsening: bool) -> str:
    if month < 0:
        return "IFNB"
    if month <= 2:
        return "MX"
    if worsening and month >= 12:
        return "MX"
    return "IFNB"


def _exposure(prev_month: int, worsening: bool) -> str:
    treat = _treatment(prev_month, worsening)
    if prev_month < 0:
        return "baseline"
    if prev_month <= 2:
        return "rescue"
    if treat == "MX":
        return "retreatment"
    return "return_worse" if worsening else "return"


def design_rescue_cohort(
    *, n_subjects: int = 10, n_worsening: int = 3, seed: int = 2024
) -> tuple[list[CohortVisit], dict[str, list[CohortLesion]]]:
    """Design the demo cohort (see module docstring).

    Parameters
    ----------
    n_subjects, n_worsening : int
        Cohort size and how many worsen after the return (the last ``n_worsening``
        subjects in a seeded order).
    seed : int
        Seed of the lesion activity.

    Returns
    -------
    (list of CohortVisit, dict)
        Visits in subject/date order, and each subject's lesions.
    """
    if not 0 <= n_worsening <= n_subjects:
        raise ValueError(f"n_worsening must be within 0..{n_subjects}, got {n_worsening}")
    rng = np.random.default_rng(seed)
    worse_set = set(rng.permutation(n_subjects)[:n_worsening].tolist())
    visits: list[CohortVisit] = []
    lesions: dict[str, list[CohortLesion]] = {}
    for s in range(n_subjects):
        subject = f"{s + 1:02d}"
        worsening = s in worse_set
        # more active patients carry more disability: activity 0.6..1.4, EDSS 1.5..4.0
        activity = 0.6 + 0.8 * (s % 6) / 5
        base_edss = 1.5 + 0.5 * (s % 6)
        active: list[int] = []  # lesions enhancing on the previous scan
        subj_lesions: list[list[int]] = []
        for v, month in enumerate(VISIT_MONTHS):
            prev = VISIT_MONTHS[v - 1] if v else month - 1
            rate = activity * _RATES[_exposure(prev, worsening)]
            monthly = month - prev == 1
            kept = [k for k in active if monthly and rng.random() < _PERSIST
                    and len(subj_lesions[k]) == 1]
            n_new = int(rng.poisson(rate))
            new_ids = list(range(len(subj_lesions), len(subj_lesions) + n_new))
            subj_lesions += [[v] for _ in new_ids]
            for k in kept:
                subj_lesions[k].append(v)
            active = kept + new_ids
            # transient +0.5 with a relapse or a burst of >= 4 enhancing lesions
            edss = base_edss + (0.5 if month == 0 or len(active) >= 4 else 0.0)
            if worsening and month >= 9:
                edss = base_edss + 1.0 + (0.5 if month >= 15 or len(active) >= 4 else 0.0)
            relapses = int(month == 0) + int(month == -1 and s % 2 == 0)
            relapses += int(worsening and month in (9, 12))
            visits.append(CohortVisit(
                subject=subject, session=f"{v + 1:02d}",
                date=_START + pd.DateOffset(months=month - VISIT_MONTHS[0], days=7 * (s % 4)),
                month=month, visit_index=v, treatment=_treatment(month, worsening), edss=edss,
                relapses=relapses, outcome="worsening" if worsening else "stable",
                lesions=sorted(active), new_lesions=n_new,
            ))
        lesions[subject] = [CohortLesion(k, tuple(vs)) for k, vs in enumerate(subj_lesions)]
    return visits, lesions


def clinical_tables(visits: list[CohortVisit], *, seed: int = 2024) -> dict[str, pd.DataFrame]:
    """Clinical tables of the design: per-subject BIDS sessions and a top-level table.

    Returns
    -------
    dict
        ``"sub-XX"`` -> sessions table (``session_id, acq_time, edss, relapses,
        treatment``), ``"clinical"`` -> top-level table (``participant_id, date, edss,
        relapses, treatment``; dates jittered by up to +-7 days, no session column),
        ``"truth"`` -> one row per visit with the designed counts and outcome.
    """
    rng = np.random.default_rng(seed + 1)
    rows = pd.DataFrame([{
        "subject": v.subject, "session": v.session, "date": v.date, "month": v.month,
        "treatment": v.treatment, "edss": v.edss, "relapses": v.relapses, "outcome": v.outcome,
        "lesion_count": len(v.lesions), "new_lesions": v.new_lesions,
    } for v in visits])
    out: dict[str, pd.DataFrame] = {}
    for subject, sub in rows.groupby("subject", sort=True):
        out[f"sub-{subject}"] = pd.DataFrame({
            "session_id": "ses-" + sub["session"],
            "acq_time": sub["date"].dt.strftime("%Y-%m-%dT09:00:00"),
            "edss": sub["edss"].map(lambda e: f"{e:.1f}"),
            "relapses": sub["relapses"], "treatment": sub["treatment"],
        })
    jitter = pd.to_timedelta(rng.integers(-7, 8, size=len(rows)), unit="D")
    out["clinical"] = pd.DataFrame({
        "participant_id": "sub-" + rows["subject"],
        "date": (rows["date"] + jitter).dt.strftime("%Y-%m-%d"),
        "edss": rows["edss"].map(lambda e: f"{e:.1f}"), "relapses": rows["relapses"],
        "treatment": rows["treatment"],
    })
    out["truth"] = rows.assign(date=rows["date"].dt.strftime("%Y-%m-%d"))
    return out


def write_rescue_cohort(
    root: str | os.PathLike[str],
    *,
    n_subjects: int = 10,
    n_worsening: int = 3,
    resolution: str = "1mm",
    voxel_size: float | None = None,
    seed: int = 2024,
    with_flair: bool = True,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> pd.DataFrame:
    """Write the demo cohort: phantoms for every visit, clinical tables and truth.

    Layout (BIDS raw, as :func:`gdlesion.simulate.write_bids_dataset`)::

        root/sub-01/sub-01_sessions.tsv   session_id, acq_time, edss, relapses, treatment
        root/sub-01/ses-01/anat/sub-01_ses-01_{T1w,ce-gadolinium_T1w,FLAIR}.nii.gz
        root/clinical.tsv                 top-level table, dates only (+-7 days)
        root/derivatives/truth/cohort_truth.csv and per-session truth label maps

    Each subject keeps one anatomy; every enhancing lesion has one position (drawn
    with :func:`gdlesion.lesions_sim.random_lesions`) and enhances on the visits of
    the design, fading to 75 % contrast on its second visit.

    Returns
    -------
    pandas.DataFrame
        The truth table (one row per visit), also written to ``cohort_truth.csv``.
    """
    from .lesions_sim import random_lesions
    from .simulate import simulate_study

    visits, lesions = design_rescue_cohort(n_subjects=n_subjects, n_worsening=n_worsening,
                                           seed=seed)
    tables = clinical_tables(visits, seed=seed)
    out = ensure_writable_dir(root, overwrite=overwrite)
    deriv = out / "derivatives" / "truth"
    generated = [{"Name": "gdlesion simulate --cohort rescue", "Version": __version__}]
    write_json_atomic(out / "dataset_description.json", {
        "Name": "gdlesion simulated rescue-therapy cohort", "BIDSVersion": "1.9.0",
        "DatasetType": "raw", "GeneratedBy": generated, "License": "CC0"})
    write_json_atomic(deriv / "dataset_description.json", {
        "Name": "gdlesion rescue cohort ground truth", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": generated})
    scale = 1.0 if voxel_size is None else float(voxel_size)
    by_subject: dict[str, list[CohortVisit]] = {}
    for v in visits:
        by_subject.setdefault(v.subject, []).append(v)
    for subject, sub_visits in by_subject.items():
        subject_seed = seed * 100 + int(subject)
        specs = random_lesions(subject_seed=subject_seed, n=len(lesions[subject]),
                               seed=subject_seed + 1, min_diameter_mm=max(4.0, 2.5 * scale),
                               max_diameter_mm=max(10.0, 4.0 * scale), ring_fraction=0.2)
        specs = [replace(s, lesion_id=k + 1, contrast=max(s.contrast, 0.4))
                 for k, s in enumerate(specs)]
        for v in sub_visits:
            on_scan = [specs[k] if lesions[subject][k].visits[0] == v.visit_index else
                       replace(specs[k], contrast=0.75 * specs[k].contrast) for k in v.lesions]
            study = simulate_study(resolution=resolution, seed=subject_seed * 100 + int(v.session),
                                   subject_seed=subject_seed, lesions=on_scan,
                                   with_flair=with_flair, voxel_size=voxel_size)
            stem = f"sub-{subject}_ses-{v.session}"
            anat = out / f"sub-{subject}" / f"ses-{v.session}" / "anat"
            save_volume(anat / f"{stem}_T1w.nii.gz", study.pre.data, study.pre.affine,
                        dtype=np.int16)
            save_volume(anat / f"{stem}_ce-gadolinium_T1w.nii.gz", study.post.data,
                        study.post.affine, dtype=np.int16)
            if study.flair is not None:
                save_volume(anat / f"{stem}_FLAIR.nii.gz", study.flair.data, study.flair.affine,
                            dtype=np.int16)
            tdir = deriv / f"sub-{subject}" / f"ses-{v.session}" / "anat"
            save_volume(tdir / f"{stem}_space-individual_label-lesion_dseg.nii.gz", study.labels,
                        study.post.affine, dtype=np.int16)
            if progress is not None:
                progress(subject, v.session)
        write_text_atomic(out / f"sub-{subject}" / f"sub-{subject}_sessions.tsv",
                          tables[f"sub-{subject}"].to_csv(sep="\t", index=False,
                                                          lineterminator="\n"))
    participants = pd.DataFrame({"participant_id": [f"sub-{s}" for s in by_subject],
                                 "outcome_designed": [vs[0].outcome for vs in by_subject.values()]})
    write_text_atomic(out / "participants.tsv",
                      participants.to_csv(sep="\t", index=False, lineterminator="\n"))
    write_text_atomic(out / "clinical.tsv",
                      tables["clinical"].to_csv(sep="\t", index=False, lineterminator="\n"))
    write_text_atomic(deriv / "cohort_truth.csv",
                      tables["truth"].to_csv(index=False, lineterminator="\n"))
    write_text_atomic(out / "README", "Simulated rescue-therapy cohort written by `gdlesion "
                      "simulate --cohort rescue`; design in gdlesion.cohort, truth in "
                      "derivatives/truth.\n")
    return tables["truth"]
