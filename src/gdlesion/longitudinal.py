"""Longitudinal analysis: Gd+ lesion counts over time against clinical data.

:func:`analyse` is the in-memory analysis (join, phases, tracking counts, phase and
subject summaries, outcome rule, statistics); :func:`run_longitudinal` reads the
inputs, optionally tracks lesions from the batch outputs, and writes

``visits.csv``, ``phase_summary.csv``, ``subject_summary.csv``, ``tracking.csv``,
``statistics.json`` and ``figures/`` (``sub-<s>_timeline.png``, ``cohort.png``).

Conventions are documented in :mod:`gdlesion.visits` (join, phases, exposure),
:mod:`gdlesion.outcome` (stable/worsening rule), :mod:`gdlesion.stats` and
:mod:`gdlesion.tracking`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .clinical import read_clinical, read_counts, read_relapse_dates
from .io import ensure_writable_dir, write_json_atomic, write_text_atomic
from .outcome import OutcomeRule, classify_outcomes
from .plots import plot_cohort, plot_timeline, save_figure
from .stats import cohort_statistics
from .tracking import TRACK_COLUMNS, per_visit, track_from_files
from .visits import derive_phases, join_visits, phase_summary

__all__ = ["LongitudinalResult", "analyse", "assign_relapse_dates", "run_longitudinal",
           "OutcomeRule"]


@dataclass
class LongitudinalResult:
    """Tables and statistics of one longitudinal analysis."""

    visits: pd.DataFrame
    phases: pd.DataFrame
    subjects: pd.DataFrame
    tracking: pd.DataFrame
    statistics: dict
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def summary_text(self) -> str:
        """Return a short human-readable summary (a few lines)."""
        v, st = self.visits, self.statistics
        m = v["match"].value_counts()
        lines = [
            f"{v['subject'].nunique()} subjects, {len(v)} visits/scans: "
            f"{int(m.get('session', 0))} joined by session, {int(m.get('date', 0))} by date, "
            f"{int(m.get('clinical_only', 0))} visits without scan, "
            f"{int(m.get('scan_only', 0))} scans without visit",
        ]
        oc = self.subjects["outcome"].value_counts()
        ps = st["proportion_stable"]
        kinds = ("stable", "worsening", "undetermined")
        text = ", ".join(f"{int(oc.get(k, 0))} {k}" for k in kinds)
        if ps["effect"] is not None:
            text += (f"; proportion stable {ps['effect']:.2f} "
                     f"(95% CI {ps['ci'][0]:.2f}-{ps['ci'][1]:.2f})")
        lines.append(f"outcome after rescue: {text}")
        cm = st["gd_count_model"].get("mean_per_scan", {})
        if cm:
            lines.append("mean Gd+ lesions per scan: " + ", ".join(
                f"{k} {val:.2f}" for k, val in sorted(cm.items(), key=lambda kv: _order(kv[0]))))
        w = st["gd_baseline_vs_rescue"]
        if w["p"] is not None:
            lines.append(f"rescue vs baseline (Wilcoxon, n={w['n']}): median difference "
                         f"{w['effect']:.2f}, p={w['p']:.3g}")
        for key, label in (("gd_edss_visits", "Gd+ vs EDSS, all visits"),
                           ("gd_edss_within", "Gd+ vs EDSS, within subject")):
            r = st[key]
            if r["effect"] is not None:
                lines.append(f"{label}: {r['effect_name']} {r['effect']:.2f}, p={r['p']:.3g}")
        for kind in ("clinical_only", "scan_only"):
            rows = v[v["match"] == kind]
            if len(rows):
                who = ", ".join(f"sub-{r.subject} {r.session or _iso(r.date)}"
                                for r in rows.head(6).itertuples())
                more = f" (+{len(rows) - 6} more)" if len(rows) > 6 else ""
                lines.append(f"unmatched {kind.replace('_', ' ')}: {who}{more}")
        lines += [f"warning: {w}" for w in self.warnings[:5]]
        return "\n".join(lines)


def _order(phase: str) -> tuple[int, str]:
    base = phase.split("_")[0]
    rank = {"baseline": 0, "rescue": 1, "return": 2, "retreatment": 3}.get(base, 9)
    return rank, phase


def _iso(ts: object) -> str:
    return pd.Timestamp(ts).date().isoformat() if pd.notna(ts) else ""


def assign_relapse_dates(visits: pd.DataFrame, relapses: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """Count dated relapses per visit interval ``(previous visit, visit]``.

    Relapses up to a subject's first visit are counted at that visit (they are not
    used for rates); relapses after the last visit are reported as warnings.
    """
    out = visits.copy()
    warnings = []
    out["relapses"] = np.where(out["date"].notna(), 0.0, np.nan)
    for subject, sub in out[out["date"].notna()].groupby("subject"):
        sub = sub.sort_values("date")
        dates = relapses.loc[relapses["subject"] == subject, "date"].to_numpy("datetime64[ns]")
        idx = np.searchsorted(sub["date"].to_numpy("datetime64[ns]"), dates, side="left")
        late = int((idx >= len(sub)).sum())
        if late:
            warnings.append(f"sub-{subject}: {late} relapse(s) after the last visit ignored")
        counts = np.bincount(idx[idx < len(sub)], minlength=len(sub))
        out.loc[sub.index, "relapses"] = counts.astype(float)
    return out, warnings


def _subject_summary(visits: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    ok = visits[visits["status"] == "ok"]
    g = visits[visits["date"].notna()].groupby("subject")
    summary = pd.DataFrame({
        "n_visits": g["match"].apply(lambda m: int((m != "scan_only").sum())),
        "n_scans": ok.groupby("subject").size(),
        "first_date": g["date"].min(), "last_date": g["date"].max(),
        "months_followed": g["months"].max(),
        "mean_gd_per_scan": ok.groupby("subject")["lesion_count"].mean(),
        "total_gd": ok.groupby("subject")["lesion_count"].sum(),
        "new_gd": ok.groupby("subject")["new_lesions"].sum(min_count=1),
        "edss_first": g["edss"].apply(lambda e: e.dropna().iloc[0] if e.notna().any() else np.nan),
        "edss_last": g["edss"].apply(lambda e: e.dropna().iloc[-1] if e.notna().any() else np.nan),
        "phases": g["phase"].apply(lambda p: " > ".join(dict.fromkeys(p))),
    })
    summary["n_scans"] = summary["n_scans"].fillna(0).astype(int)
    summary = summary.reset_index().merge(outcomes, on="subject", how="left")
    summary["outcome"] = summary["outcome"].fillna("undetermined")
    summary["reason"] = summary["reason"].fillna("no dated clinical visits")
    return summary.sort_values("subject").reset_index(drop=True)


def analyse(
    counts: pd.DataFrame, clinical: pd.DataFrame, *, max_days: float = 30,
    rule: OutcomeRule | None = None, tracking: pd.DataFrame | None = None,
    relapse_dates: pd.DataFrame | None = None, family: str = "poisson", seed: int = 0,
) -> LongitudinalResult:
    """Run the longitudinal analysis on tables already in memory.

    Parameters
    ----------
    counts, clinical : pandas.DataFrame
        From :func:`gdlesion.clinical.read_counts` and :func:`~gdlesion.clinical.read_clinical`.
    max_days : float
        Date-matching tolerance in days (inclusive).
    rule : OutcomeRule, optional
        Outcome rule; default ``OutcomeRule()``.
    tracking : pandas.DataFrame, optional
        From :func:`gdlesion.tracking.track_lesions`; gives ``new_lesions`` per visit.
    relapse_dates : pandas.DataFrame, optional
        One row per relapse (``subject, date``); replaces the ``relapses`` column.
    family : {"poisson", "negbin"}
        Count model family.
    seed : int
        Seed of the bootstrap confidence intervals.
    """
    warnings: list[str] = []
    visits = join_visits(counts, clinical, max_days=max_days)
    if relapse_dates is not None:
        visits, extra = assign_relapse_dates(visits, relapse_dates)
        warnings += extra
    tracking = tracking if tracking is not None else pd.DataFrame(columns=list(TRACK_COLUMNS))
    if not tracking.empty:
        pv = per_visit(tracking)
        visits = visits.drop(columns="new_lesions").merge(
            pv[["subject", "session", "new_lesions"]], on=["subject", "session"], how="left")
    visits = derive_phases(visits)
    phases = phase_summary(visits)
    outcomes = classify_outcomes(visits, phases, rule=rule)
    stats = cohort_statistics(visits, phases, outcomes, seed=seed, family=family)
    stats["outcome_rule"] = (rule or OutcomeRule()).to_dict()
    stats["unmatched"] = {
        kind: [f"sub-{r.subject} " + (f"ses-{r.session}" if r.session else _iso(r.date))
               for r in visits[visits["match"] == kind].itertuples()]
        for kind in ("clinical_only", "scan_only")
    }
    return LongitudinalResult(visits=visits, phases=phases,
                              subjects=_subject_summary(visits, outcomes),
                              tracking=tracking, statistics=stats, warnings=warnings)


def _csv(df: pd.DataFrame) -> str:
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = out[col].dt.strftime("%Y-%m-%d")
    return out.to_csv(index=False, float_format="%.4f", na_rep="", lineterminator="\n")


def run_longitudinal(
    counts_csv: str | os.PathLike[str],
    clinical: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    max_days: float = 30,
    column_map: Mapping[str, str] | None = None,
    relapse_table: str | os.PathLike[str] | None = None,
    derivatives: str | os.PathLike[str] | None = None,
    raw: str | os.PathLike[str] | None = None,
    rule: OutcomeRule | None = None,
    family: str = "poisson",
    figures: bool = True,
    overwrite: bool = False,
    seed: int = 0,
) -> LongitudinalResult:
    """Read the inputs, analyse, and write every output into ``out_dir``.

    Parameters
    ----------
    counts_csv : path
        ``lesion_counts.csv`` written by ``gdlesion batch``.
    clinical : path
        Clinical CSV/TSV, a BIDS ``sub-XX_sessions.tsv`` or a BIDS dataset folder.
    out_dir : path
        Output folder (must be empty unless ``overwrite``).
    max_days : float
        Date-matching tolerance (inclusive), days.
    column_map : mapping, optional
        Canonical clinical column -> name in the file.
    relapse_table : path, optional
        Table of relapse dates (``subject, date``), replacing a relapse-count column.
    derivatives : path, optional
        Batch output folder with the per-session label maps; enables lesion tracking.
    raw : path, optional
        Raw dataset holding the post scans, registered between visits for tracking.
    rule : OutcomeRule, optional
        Outcome rule (default ``OutcomeRule()``).
    family : {"poisson", "negbin"}
        Count model family.
    figures : bool
        Write the per-subject timelines and the cohort figure.
    overwrite : bool
        Allow writing into a non-empty ``out_dir``.
    seed : int
        Seed of the bootstrap confidence intervals.

    Returns
    -------
    LongitudinalResult
        With ``files`` listing what was written.
    """
    out = ensure_writable_dir(out_dir, overwrite=overwrite, inputs=(counts_csv, clinical))
    counts = read_counts(counts_csv)
    clin = read_clinical(clinical, column_map=column_map)
    relapses = read_relapse_dates(relapse_table) if relapse_table is not None else None
    tracking, warnings = None, []
    if derivatives is not None:
        pre = join_visits(counts, clin, max_days=max_days)
        tracking, warnings = track_from_files(pre, derivatives, raw=raw)
    result = analyse(counts, clin, max_days=max_days, rule=rule, tracking=tracking,
                     relapse_dates=relapses, family=family, seed=seed)
    result.warnings = warnings + result.warnings
    result.statistics["warnings"] = result.warnings
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_text_atomic(out / "visits.csv", _csv(result.visits)),
        write_text_atomic(out / "phase_summary.csv", _csv(result.phases)),
        write_text_atomic(out / "subject_summary.csv", _csv(result.subjects)),
        write_text_atomic(out / "tracking.csv", _csv(
            result.tracking.sort_values(["subject", "session", "status", "lesion"]))),
        write_json_atomic(out / "statistics.json", result.statistics),
    ]
    if figures:
        reasons = result.subjects.set_index("subject")
        for subject in sorted(result.visits["subject"].unique()):
            fig = plot_timeline(result.visits, subject,
                                outcome=str(reasons.at[subject, "outcome"]),
                                reason=str(reasons.at[subject, "reason"]))
            files.append(save_figure(fig, out / "figures" / f"sub-{subject}_timeline.png"))
        files.append(save_figure(plot_cohort(result.phases, result.subjects),
                                 out / "figures" / "cohort.png"))
    result.files = files
    return result
