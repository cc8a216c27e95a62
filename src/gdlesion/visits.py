"""Joining scans to clinical visits, treatment phases and per-phase summaries.

Conventions (documented once, used by the outcome rule and the statistics):

* **Join.** A clinical visit with a session label is joined to the scan of the same
  subject and session. Remaining visits and scans are paired by nearest date within
  ``max_days`` (inclusive), one-to-one, closest pairs first. Nothing is dropped: a
  visit without scan is kept with ``match == "clinical_only"``, a scan without visit
  with ``match == "scan_only"``.
* **Phases.** Consecutive visits of a subject with the same treatment form a run. The
  first run is ``baseline``, the second ``rescue``; a later run of the baseline
  treatment is ``return``, any other later run ``retreatment`` (repeats get ``_2``,
  ``_3``...). A visit without a treatment (or a scan without visit) carries the
  previous visit's treatment forward (therapy continues until changed); this is
  flagged in ``treatment_carried``.
* **Exposure.** What is observed at visit *v* (relapses since the previous visit,
  Gd+ lesions, which enhance for a few weeks) reflects the interval since visit *v-1*,
  so it is attributed to the phase in effect then: ``exposure_phase`` is the phase of
  the previous visit (the subject's first visit keeps its own phase). Relapse counts
  reported at the first visit cover an unknown period before the study and are not
  used for rates.
* **Months** are days / 30.4375.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "DAYS_PER_MONTH",
    "VISIT_COLUMNS",
    "PHASE_COLUMNS",
    "join_visits",
    "derive_phases",
    "phase_summary",
]

DAYS_PER_MONTH = 30.4375

#: Columns of the merged visit table, in order.
VISIT_COLUMNS = (
    "subject", "session", "date", "visit_date", "scan_date", "days_apart", "match", "status",
    "lesion_count", "total_volume_mm3", "new_lesions", "edss", "relapses", "treatment",
    "treatment_carried", "phase", "exposure_phase", "months", "source",
)

#: Columns of the phase summary, in order.
PHASE_COLUMNS = (
    "subject", "phase", "treatment", "start_date", "end_date", "months", "n_visits", "n_scans",
    "mean_gd_per_scan", "total_gd", "new_gd", "relapses", "annualised_relapse_rate",
    "edss_start", "edss_end", "edss_change",
)


def _pair_by_date(
    clin: pd.DataFrame, scans: pd.DataFrame, max_days: float
) -> list[tuple[int, int]]:
    """One-to-one nearest-date pairs (clinical index, scan index), closest first."""
    left = clin[clin["date"].notna()].reset_index().rename(columns={"index": "ci"})
    right = scans[scans["scan_date"].notna()].reset_index().rename(columns={"index": "si"})
    cand = left[["ci", "subject", "date"]].merge(
        right[["si", "subject", "scan_date"]], on="subject"
    )
    if cand.empty:
        return []
    cand["gap"] = (cand["date"] - cand["scan_date"]).abs().dt.days
    cand = cand[cand["gap"] <= max_days].sort_values(["gap", "subject", "date", "scan_date"])
    used_c: set[int] = set()
    used_s: set[int] = set()
    pairs = []
    for ci, si in zip(cand["ci"].tolist(), cand["si"].tolist(), strict=True):
        if ci not in used_c and si not in used_s:
            used_c.add(ci)
            used_s.add(si)
            pairs.append((ci, si))
    return pairs


def join_visits(
    counts: pd.DataFrame, clinical: pd.DataFrame, *, max_days: float = 30
) -> pd.DataFrame:
    """Merge the batch counts with the clinical visits.

    Parameters
    ----------
    counts : pandas.DataFrame
        From :func:`gdlesion.clinical.read_counts`.
    clinical : pandas.DataFrame
        From :func:`gdlesion.clinical.read_clinical`.
    max_days : float, optional
        Largest gap (inclusive) between visit and scan dates for a date match.

    Returns
    -------
    pandas.DataFrame
        One row per visit and/or scan, columns :data:`VISIT_COLUMNS` (phases filled by
        :func:`derive_phases`), sorted by subject, date, session. ``match`` is
        ``session``, ``date``, ``clinical_only`` or ``scan_only``.
    """
    if max_days < 0:
        raise ValueError(f"max_days must be >= 0, got {max_days}")
    clin = clinical.reset_index(drop=True)
    scans = counts.reset_index(drop=True)
    by_session = clin[clin["session"] != ""].reset_index().merge(
        scans.reset_index(), on=["subject", "session"], suffixes=("_c", "_s")
    )
    pairs = [
        (int(c), int(s), "session")
        for c, s in zip(by_session["index_c"], by_session["index_s"], strict=True)
    ]
    rest_c = clin.drop(index=[p[0] for p in pairs])
    rest_s = scans.drop(index=[p[1] for p in pairs])
    pairs += [(c, s, "date") for c, s in _pair_by_date(rest_c, rest_s, max_days)]
    rows = []
    for c, s, how in pairs:
        rows.append({**_clin_part(clin.loc[c]), **_scan_part(scans.loc[s]), "match": how,
                     "session": scans.at[s, "session"]})
    matched_c = {p[0] for p in pairs}
    matched_s = {p[1] for p in pairs}
    for c in clin.index.difference(sorted(matched_c)):
        rows.append({**_clin_part(clin.loc[c]), "session": clin.at[c, "session"],
                     "match": "clinical_only", "status": "no scan"})
    for s in scans.index.difference(sorted(matched_s)):
        rows.append({**_scan_part(scans.loc[s]), "session": scans.at[s, "session"],
                     "match": "scan_only", "treatment": ""})
    df = pd.DataFrame(rows)
    for col in VISIT_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    df["subject"] = df["subject"].astype(str)
    df["treatment"] = df["treatment"].fillna("").astype(str)
    df["visit_date"] = pd.to_datetime(df["visit_date"])
    df["scan_date"] = pd.to_datetime(df["scan_date"])
    df["date"] = df["visit_date"].fillna(df["scan_date"])
    df["days_apart"] = (df["visit_date"] - df["scan_date"]).dt.days
    df["source"] = df["source"].fillna("")
    df = df.sort_values(["subject", "date", "session"], kind="stable", na_position="last")
    return df.reset_index(drop=True)[list(VISIT_COLUMNS)]


def _clin_part(row: pd.Series) -> dict:
    return {"subject": row["subject"], "visit_date": row["date"], "edss": row["edss"],
            "relapses": row["relapses"], "treatment": row["treatment"], "source": row["source"]}


def _scan_part(row: pd.Series) -> dict:
    return {"subject": row["subject"], "scan_date": row["scan_date"], "status": row["status"],
            "lesion_count": row["lesion_count"], "total_volume_mm3": row["total_volume_mm3"]}


def _label_runs(treatments: list[str]) -> list[str]:
    """Phase label of each run of identical treatments (see module docstring)."""
    labels: list[str] = []
    seen: dict[str, int] = {}
    for k, treat in enumerate(treatments):
        if k == 0:
            base = "baseline"
        elif k == 1:
            base = "rescue"
        else:
            base = "return" if treat == treatments[0] else "retreatment"
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return labels


def derive_phases(visits: pd.DataFrame) -> pd.DataFrame:
    """Fill ``treatment_carried``, ``phase``, ``exposure_phase`` and ``months`` per subject.

    Visits are taken in date order; rows without a date (never expected after a join)
    are left with an empty phase. Subjects without any treatment get phase ``all``.

    Returns
    -------
    pandas.DataFrame
        A copy of ``visits`` with those columns filled.
    """
    out = visits.copy()
    out["treatment_carried"] = False
    out["phase"] = ""
    out["exposure_phase"] = ""
    out["months"] = np.nan
    for _, idx in out[out["date"].notna()].groupby("subject", sort=True).groups.items():
        sub = out.loc[idx].sort_values(["date", "session"], kind="stable")
        treat = sub["treatment"].replace("", np.nan)
        filled = treat.ffill()
        out.loc[sub.index, "treatment_carried"] = (treat.isna() & filled.notna()).to_numpy()
        if filled.isna().all():
            phases = pd.Series("all", index=sub.index)
        else:
            filled = filled.fillna("")
            run = (filled != filled.shift()).cumsum()
            run_treat = filled.groupby(run, sort=True).first()
            names = dict(zip(run_treat.index, _label_runs(run_treat.tolist()), strict=True))
            phases = run.map(names)
            phases[filled == ""] = "unknown"
            out.loc[sub.index, "treatment"] = filled.to_numpy()
        out.loc[sub.index, "phase"] = phases.to_numpy()
        exposure = phases.shift(1)
        exposure.iloc[0] = phases.iloc[0]
        out.loc[sub.index, "exposure_phase"] = exposure.to_numpy()
        days = (sub["date"] - sub["date"].iloc[0]).dt.days
        out.loc[sub.index, "months"] = (days / DAYS_PER_MONTH).to_numpy()
    return out


def phase_summary(visits: pd.DataFrame) -> pd.DataFrame:
    """Summarise each subject's phases.

    Parameters
    ----------
    visits : pandas.DataFrame
        Output of :func:`derive_phases` (optionally with ``new_lesions`` from tracking).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PHASE_COLUMNS`, one row per subject and phase in time order.
        A phase runs from its first visit to the first visit of the next phase (the
        last phase to the subject's last visit). Scans, Gd+ counts, new lesions and
        relapses are those attributed to the phase by ``exposure_phase``; ``relapses``
        is NaN if any of those visits lacks a relapse count, and the annualised rate
        is NaN for a phase of zero length. EDSS start/end are the first/last
        non-missing EDSS among the phase's own visits.
    """
    rows = []
    dated = visits[visits["date"].notna() & (visits["phase"] != "")]
    for subject, sub in dated.groupby("subject", sort=True):
        sub = sub.sort_values(["date", "session"], kind="stable")
        first_row = sub.index[0]
        order = list(dict.fromkeys(sub["phase"]))
        starts = {p: sub.loc[sub["phase"] == p, "date"].min() for p in order}
        for k, phase in enumerate(order):
            own = sub[sub["phase"] == phase]
            end = starts[order[k + 1]] if k + 1 < len(order) else sub["date"].max()
            months = (end - starts[phase]).days / DAYS_PER_MONTH
            exposed = sub[sub["exposure_phase"] == phase]
            scans = exposed[exposed["status"] == "ok"]
            counts = scans["lesion_count"].astype(float)
            new = scans["new_lesions"].astype(float)
            rel = exposed.loc[exposed.index != first_row, "relapses"].astype(float)
            relapses = float(rel.sum()) if len(rel) and rel.notna().all() else np.nan
            edss = own["edss"].dropna()
            rows.append({
                "subject": subject,
                "phase": phase,
                "treatment": own["treatment"].iloc[0],
                "start_date": starts[phase],
                "end_date": end,
                "months": months,
                "n_visits": int(own["match"].ne("scan_only").sum()),
                "n_scans": len(scans),
                "mean_gd_per_scan": float(counts.mean()) if len(counts) else np.nan,
                "total_gd": float(counts.sum()) if len(counts) else np.nan,
                "new_gd": float(new.sum()) if new.notna().any() else np.nan,
                "relapses": relapses,
                "annualised_relapse_rate": relapses / (months / 12) if months > 0 else np.nan,
                "edss_start": float(edss.iloc[0]) if len(edss) else np.nan,
                "edss_end": float(edss.iloc[-1]) if len(edss) else np.nan,
            })
    df = pd.DataFrame(rows, columns=[c for c in PHASE_COLUMNS if c != "edss_change"])
    df["edss_change"] = df["edss_end"] - df["edss_start"]
    return df[list(PHASE_COLUMNS)]
