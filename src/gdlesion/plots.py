"""Figures of the longitudinal analysis: one timeline per subject and a cohort figure.

Figures are drawn with matplotlib's Agg backend on a fresh ``Figure`` (no pyplot
state) and written atomically as PNG without a timestamp, so that reruns give the
same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .io import atomic_path

__all__ = ["PHASE_COLOURS", "plot_timeline", "plot_cohort", "save_figure"]

#: Shading of treatment phases.
PHASE_COLOURS = {"baseline": "#dbe9f6", "rescue": "#fde2c8", "return": "#dff2d8",
                 "retreatment": "#f6d5e5", "all": "#eeeeee", "unknown": "#f5f5f5"}
_OUTCOME_COLOURS = {"stable": "#2b7bba", "worsening": "#d62728", "undetermined": "#7f7f7f"}


def _phase_colour(phase: str) -> str:
    return PHASE_COLOURS.get(phase.split("_")[0], "#eeeeee")


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically, without time-stamp metadata."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path


def plot_timeline(
    visits: pd.DataFrame, subject: str, *, outcome: str = "", reason: str = ""
) -> Figure:
    """Timeline of one subject.

    Gd+ lesion counts are bars (new lesions from tracking drawn over them in a darker
    colour), EDSS a line on the right axis, relapses triangles above the bars, and the
    treatment phases shaded. Failed scans are marked with a cross at zero.
    """
    sub = visits[(visits["subject"] == subject) & visits["date"].notna()].sort_values("date")
    fig = Figure(figsize=(8.0, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    months = sub["months"].to_numpy(float)
    counts = sub["lesion_count"].to_numpy(float)
    top = max(np.nanmax(counts) if np.isfinite(counts).any() else 0, 1) * 1.35 + 1
    phase = sub["phase"].tolist()
    starts = [k for k in range(len(phase)) if k == 0 or phase[k] != phase[k - 1]]
    handles = []
    for j, k in enumerate(starts):
        end = months[starts[j + 1]] if j + 1 < len(starts) else months[-1] + 0.5
        left = months[k] - (0.5 if k == 0 else 0)
        ax.axvspan(left, end, color=_phase_colour(phase[k]), zorder=0, lw=0)
        label = f"{phase[k]} ({sub['treatment'].iloc[k] or '?'})"
        ax.text((left + end) / 2, top * 0.97, label, ha="center", va="top", fontsize=7)
    ok = np.isfinite(counts)
    ax.bar(months[ok], counts[ok], width=0.6, color="#6b8fb3", zorder=2)
    handles.append(Patch(color="#6b8fb3", label="Gd+ lesions"))
    if "new_lesions" in sub and sub["new_lesions"].notna().any():
        new = sub["new_lesions"].to_numpy(float)
        has = np.isfinite(new)
        ax.bar(months[has], new[has], width=0.6, color="#1f3b5a", zorder=3)
        handles.append(Patch(color="#1f3b5a", label="new Gd+ lesions"))
    failed = sub["status"].isin(["failed", "skipped"]).to_numpy()
    if failed.any():
        ax.plot(months[failed], np.zeros(failed.sum()), "x", color="k", zorder=4)
        handles.append(Line2D([], [], marker="x", ls="", color="k", label="scan failed"))
    rel = sub["relapses"].to_numpy(float)
    hit = np.isfinite(rel) & (rel > 0)
    if hit.any():
        ax.plot(months[hit], np.full(hit.sum(), top * 0.82), "v", color="#d62728", ms=7, zorder=4)
        for m, r in zip(months[hit], rel[hit], strict=True):
            if r > 1:
                ax.text(m + 0.25, top * 0.82, f"x{int(r)}", fontsize=7, va="center")
        handles.append(Line2D([], [], marker="v", ls="", color="#d62728", label="relapse"))
    ax.set_ylim(0, top)
    ax.set_xlabel("months since first visit")
    ax.set_ylabel("Gd+ lesions per scan")
    ax2 = ax.twinx()
    edss = sub["edss"].to_numpy(float)
    e_ok = np.isfinite(edss)
    ax2.plot(months[e_ok], edss[e_ok], "-o", color="#2ca02c", ms=3, zorder=5)
    ax2.set_ylim(0, 10)
    ax2.set_ylabel("EDSS")
    handles.append(Line2D([], [], marker="o", color="#2ca02c", ms=3, label="EDSS"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=7,
              frameon=False)
    title = f"sub-{subject}" + (f": {outcome}" if outcome else "")
    ax.set_title(title, fontsize=10, loc="left")
    if reason:
        fig.text(0.01, 0.01, reason[:150], fontsize=6, color="#444444")
    fig.subplots_adjust(left=0.08, right=0.76, bottom=0.2, top=0.9)
    return fig


def plot_cohort(phases: pd.DataFrame, outcomes: pd.DataFrame) -> Figure:
    """Cohort figure: per-subject mean Gd+ per scan and EDSS by phase, stable vs worsening."""
    fig = Figure(figsize=(9.0, 3.6))
    axes = [fig.add_subplot(1, 2, k) for k in (1, 2)]
    present = set(phases["phase"])
    order = [p for p in ("baseline", "rescue", "return", "retreatment") if p in present]
    outcome_of = outcomes.set_index("subject")["outcome"].to_dict()
    for ax, value, label in ((axes[0], "mean_gd_per_scan", "mean Gd+ lesions per scan"),
                             (axes[1], "edss_end", "EDSS at end of phase")):
        for subject, sub in phases.groupby("subject", sort=True):
            sub = sub.set_index("phase").reindex(order)
            colour = _OUTCOME_COLOURS.get(outcome_of.get(subject, ""), "#7f7f7f")
            ax.plot(range(len(order)), sub[value].to_numpy(float), "-o", color=colour, alpha=0.7,
                    ms=4)
        ax.set_xticks(range(len(order)), order)
        ax.set_ylabel(label)
        ax.set_xlim(-0.3, len(order) - 0.7)
    counts = outcomes["outcome"].value_counts()
    handles = [Line2D([], [], color=c, marker="o", label=f"{k} (n={int(counts.get(k, 0))})")
               for k, c in _OUTCOME_COLOURS.items() if counts.get(k, 0)]
    axes[1].legend(handles=handles, fontsize=8, frameon=False)
    fig.suptitle("Gd+ activity and disability by treatment phase", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.88, wspace=0.3)
    return fig
