"""Batch QC report: per-session pages in the BIDS-derivative layout and ``OUTPUT/report.html``.

The batch page lists every session (count, volume, registration QC, status) in
a sortable table, flags the sessions that need a look, links each session's
page and plots lesion counts per subject over time when acquisition dates are
known. Flags (each documented by its constant):

* ``failed`` / ``skipped``: the session did not produce results;
* ``registration``: similarity after registration below :data:`MIN_SIMILARITY_AFTER`,
  lower than before registration by more than :data:`MAX_SIMILARITY_DROP`, or
  overlap below :data:`MIN_OVERLAP_FRACTION` (exclusive bounds: the values
  themselves pass), or a robust z-score (median/MAD over the batch's ``ok``
  sessions) of the similarity below ``-ROBUST_Z`` or of the final metric above
  ``ROBUST_Z`` when the batch has at least :data:`MIN_SESSIONS_FOR_OUTLIERS` sessions;
* ``count jump``: between consecutive ``ok`` visits of a subject (by date, else
  by session label) the count changes by at least ``max(JUMP_MIN, JUMP_RELATIVE *
  smaller count)`` (inclusive);
* ``warning``: the pipeline warned (e.g. pre and post look swapped).
"""

from __future__ import annotations

import base64
import io as _io
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from . import io
from .errors import GdLesionError, InputError
from .report import SessionView, _fmt, _load_labels, render_template, write_session_report

__all__ = [
    "BATCH_PAGE",
    "session_page_relpath",
    "session_flags",
    "session_flag_details",
    "write_batch_session_files",
    "load_batch_session_view",
    "render_batch_page",
    "write_batch_report",
    "rebuild_batch_reports",
    "MIN_SIMILARITY_AFTER",
    "MAX_SIMILARITY_DROP",
    "MIN_OVERLAP_FRACTION",
    "ROBUST_Z",
    "MIN_SESSIONS_FOR_OUTLIERS",
    "JUMP_MIN",
    "JUMP_RELATIVE",
]

#: The batch page, directly under OUTPUT.
BATCH_PAGE = "report.html"
#: Similarity (Pearson correlation over the head) after registration below this is flagged.
#: Pre/post T1 pairs differ in contrast: correctly registered skull-stripped MS scans
#: (Lesjak 2018, patient07) reach only 0.62, so the absolute bound is loose; the robust
#: z-score catches sessions that are poor relative to the rest of the batch.
MIN_SIMILARITY_AFTER = 0.5
#: Registration that lowers the similarity by more than this is flagged.
MAX_SIMILARITY_DROP = 0.05
#: Fraction of the post head covered by the registered pre scan below this is flagged.
MIN_OVERLAP_FRACTION = 0.9
#: Robust z-score (median/MAD) beyond which a registration number is an outlier.
ROBUST_Z = 3.5
#: Fewest ``ok`` sessions for the robust outlier flags.
MIN_SESSIONS_FOR_OUTLIERS = 5
#: Smallest count change between consecutive visits that is flagged (inclusive).
JUMP_MIN = 5
#: A jump must also reach this multiple of the smaller of the two counts (inclusive).
JUMP_RELATIVE = 1.0


def _names(key: str) -> dict[str, str]:
    space = f"{key}_space-individual"
    return {
        "pre": f"{space}_desc-registered_T1w.nii.gz",
        "dseg": f"{space}_desc-lesion_dseg.nii.gz",
        "enhancement": f"{space}_desc-enhancement_zmap.nii.gz",
        "brain_mask": f"{space}_desc-brain_mask.nii.gz",
        "rejected_dseg": f"{space}_desc-rejected_dseg.nii.gz",
        "rejected": f"{space}_desc-rejected_lesions.tsv",
        "summary": f"{key}_report.json",
        "page": f"{key}_report.html",
    }


def session_page_relpath(record: dict[str, Any]) -> str | None:
    """POSIX path of a session's page relative to OUTPUT (``None`` without results)."""
    rel = record.get("lesions_file")
    if record.get("status") != "ok" or not rel:
        return None
    return str(PurePosixPath(rel).parent / _names(record["key"])["page"])


def _back_link(page_rel: str) -> str:
    depth = len(PurePosixPath(page_rel).parts) - 1
    return "../" * depth + BATCH_PAGE


def write_batch_session_files(result: Any, folder: str | os.PathLike, session: Any) -> Path:
    """Write what a batch session page needs beyond the batch outputs, then the page.

    Writes (when the result has them) the enhancement map, brain mask, rejected
    label map and table, a ``<key>_report.json`` (summary: registration QC,
    parameters, versions, timings; paths of the input scans) and the page
    ``<key>_report.html``. These files are not part of the session's checksums,
    so rebuilding the page never invalidates a session.
    """
    from .report import view_from_result

    folder = Path(folder)
    names = _names(session.key)
    affine = result.post.affine
    enh = getattr(result, "enhancement", None)
    if enh is not None:
        io.save_volume(folder / names["enhancement"], getattr(enh, "data", enh), affine)
    if getattr(result, "brain_mask", None) is not None:
        io.save_volume(folder / names["brain_mask"], result.brain_mask, affine, dtype=np.uint8)
    if getattr(result, "rejected_labels", None) is not None:
        io.save_volume(folder / names["rejected_dseg"], result.rejected_labels, affine,
                       dtype=np.int32)
        io.write_text_atomic(folder / names["rejected"], pd.DataFrame(result.rejected).to_csv(
            sep="\t", index=False, na_rep="n/a", float_format="%.6f", lineterminator="\n"))
    view = view_from_result(result, title=_title(session.subject, session.session))
    summary = dict(view.summary)
    summary["sources"] = {role: str(Path(p).resolve()) for role in ("pre", "post", "flair")
                          if (p := getattr(session, role, None))}
    io.write_json_atomic(folder / names["summary"], summary)
    rel = PurePosixPath(session.relative_dir.as_posix()) / names["page"]
    return write_session_report(view, folder / names["page"], back_link=_back_link(str(rel)))


def _title(subject: str, session: str) -> str:
    return " ".join(p for p in (subject, session) if p) or "session"


def load_batch_session_view(output: str | os.PathLike, record: dict[str, Any]) -> SessionView:
    """Read an ``ok`` batch session's files back into a :class:`~gdlesion.report.SessionView`.

    Raises
    ------
    InputError
        The record has no results, or the post scan recorded in ``<key>_report.json``
        is missing (older batches did not record it).
    """
    rel = session_page_relpath(record)
    if rel is None:
        raise InputError(f"session {record.get('key')}: no results to report")
    folder = Path(output) / PurePosixPath(rel).parent
    names = _names(record["key"])
    try:
        summary = json.loads((folder / names["summary"]).read_text(encoding="utf-8"))
        post_path = summary["sources"]["post"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"session {record['key']}: {names['summary']} does not name the post scan; "
            "rerun the session with gdlesion batch --force"
        ) from None
    post = io.load_volume(post_path, role="post-contrast scan")
    pre_path = folder / names["pre"]
    dseg = _load_labels(folder / names["dseg"], post)
    enh_path = folder / names["enhancement"]
    mask = _load_labels(folder / names["brain_mask"], post)
    rejected_path = folder / names["rejected"]
    return SessionView(
        title=_title(record.get("subject", ""), record.get("session", "")),
        post=post,
        pre_registered=io.load_volume(pre_path, role="registered pre scan")
        if pre_path.is_file() else None,
        labels=dseg if dseg is not None else np.zeros(post.shape, np.int32),
        lesions=pd.read_csv(Path(output) / record["lesions_file"], sep="\t", na_values=["n/a"],
                            keep_default_na=False),
        enhancement=io.load_volume(enh_path, role="enhancement map").data
        if enh_path.is_file() else None,
        brain_mask=None if mask is None else mask > 0,
        rejected_labels=_load_labels(folder / names["rejected_dseg"], post),
        rejected=pd.read_csv(rejected_path, sep="\t", na_values=["n/a"], keep_default_na=False)
        if rejected_path.is_file() else pd.DataFrame(),
        summary=summary,
    )


# --- batch page -----------------------------------------------------------------------


def _robust_z(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size < MIN_SESSIONS_FOR_OUTLIERS:
        return np.zeros_like(values)
    med = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - med))
    if mad <= 0:
        return np.zeros_like(values)
    return (values - med) / mad


def _qc(record: dict[str, Any], key: str) -> float:
    value = (record.get("registration") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else float("nan")


def session_flags(records: list[dict[str, Any]]) -> list[list[str]]:
    """Return the flag names of each record (same order), as in the module docstring."""
    return [[name for name, _ in fl] for fl in session_flag_details(records)]


def session_flag_details(records: list[dict[str, Any]]) -> list[list[tuple[str, str]]]:
    """Return ``(flag, why)`` pairs for each record (same order)."""
    flags: list[list[tuple[str, str]]] = [[] for _ in records]
    ok = [n for n, r in enumerate(records) if r.get("status") == "ok"]
    sim = np.array([_qc(records[n], "similarity_after") for n in ok])
    # QC numbers are stored with 4 decimals: round the difference so the bound is exact
    drop = np.round(np.array([_qc(records[n], "similarity_before") for n in ok]) - sim, 6)
    metric = np.array([_qc(records[n], "metric_final") for n in ok])
    overlap = np.array([_qc(records[n], "overlap_fraction") for n in ok])
    z_sim, z_metric = _robust_z(sim), _robust_z(metric)
    for m, n in enumerate(ok):
        why = [text for bad, text in (
            (sim[m] < MIN_SIMILARITY_AFTER, f"similarity {sim[m]:.3f} < {MIN_SIMILARITY_AFTER}"),
            (drop[m] > MAX_SIMILARITY_DROP, f"similarity fell by {drop[m]:.3f}"),
            (overlap[m] < MIN_OVERLAP_FRACTION,
             f"overlap {overlap[m]:.3f} < {MIN_OVERLAP_FRACTION}"),
            (z_sim[m] < -ROBUST_Z, f"similarity {sim[m]:.3f} is a batch outlier "
                                   f"(robust z {z_sim[m]:.1f})"),
            (z_metric[m] > ROBUST_Z, f"MI metric {metric[m]:.3f} is a batch outlier "
                                     f"(robust z {z_metric[m]:.1f})"),
        ) if bad]
        if why:
            flags[n].append(("registration", "; ".join(why)))
    for n, rec in enumerate(records):
        if rec.get("status") != "ok":
            flags[n].append((str(rec.get("status", "failed")), str(rec.get("error", ""))))
        if rec.get("warnings"):
            flags[n].append(("warning", "; ".join(str(w) for w in rec["warnings"])))
    by_subject: dict[str, list[int]] = {}
    for n in ok:
        by_subject.setdefault(str(records[n].get("subject", "")), []).append(n)
    for visits in by_subject.values():
        dated = all(records[n].get("acq_date") for n in visits)
        visits.sort(key=lambda n: (records[n].get("acq_date", "") if dated else "",
                                   str(records[n].get("session", ""))))
        for prev, cur in zip(visits, visits[1:], strict=False):
            a, b = int(records[prev]["lesion_count"]), int(records[cur]["lesion_count"])
            if abs(b - a) >= max(JUMP_MIN, JUMP_RELATIVE * min(a, b)):
                flags[cur].append(("count jump", f"{a} -> {b} lesions since "
                                                 f"{records[prev].get('session', '')}"))
    return flags


def _counts_plot(records: list[dict[str, Any]]) -> str:
    """PNG data URI of lesion counts per subject over time ('' without dates)."""
    rows = [(r.get("subject", ""), r.get("acq_date", ""), r.get("lesion_count"))
            for r in records if r.get("status") == "ok" and r.get("acq_date")]
    if not rows:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame(rows, columns=["subject", "date", "count"])
    table["date"] = pd.to_datetime(table["date"], errors="coerce")
    table = table.dropna(subset=["date"]).sort_values(["subject", "date"])
    if table.empty:
        return ""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=80)
    for subject, part in table.groupby("subject", sort=True):
        ax.plot(part["date"], part["count"], marker="o", ms=3, lw=1, label=str(subject))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("enhancing lesions")
    ax.set_xlabel("acquisition date")
    ax.grid(alpha=0.3)
    if table["subject"].nunique() <= 12:
        ax.legend(fontsize=7, ncol=2, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def batch_context(output: str | os.PathLike, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Template context of the batch page."""
    out = Path(output)
    flags = session_flag_details(records)
    rows = []
    for rec, fl in zip(records, flags, strict=True):
        page = session_page_relpath(rec)
        ok = rec.get("status") == "ok"
        cells = [
            (rec.get("lesion_count") if ok else None),
            (rec.get("total_volume_mm3") if ok else None),
            _qc(rec, "similarity_after"), _qc(rec, "metric_final"), _qc(rec, "overlap_fraction"),
        ]
        rows.append({
            "subject": str(rec.get("subject", "")), "session": str(rec.get("session", "")),
            "date": str(rec.get("acq_date", "")), "status": str(rec.get("status", "")),
            "numbers": [("" if v is None or (isinstance(v, float) and np.isnan(v)) else _fmt(v),
                         "" if v is None or (isinstance(v, float) and np.isnan(v)) else repr(v))
                        for v in cells],
            "flags": fl, "error": str(rec.get("error", "")),
            "link": quote(page) if page and (out / page).is_file() else "",
        })
    return {
        "title": out.resolve().name,
        "rows": rows,
        "n_sessions": len(records),
        "n_ok": sum(r["status"] == "ok" for r in rows),
        "n_flagged": sum(bool(r["flags"]) for r in rows),
        "counts_plot": _counts_plot(records),
        "thresholds": [
            ("similarity after registration below", _fmt(MIN_SIMILARITY_AFTER)),
            ("similarity lowered by registration by more than", _fmt(MAX_SIMILARITY_DROP)),
            ("overlap fraction below", _fmt(MIN_OVERLAP_FRACTION)),
            ("robust z-score beyond", _fmt(ROBUST_Z)),
            ("count jump at least", f"max({JUMP_MIN}, {_fmt(JUMP_RELATIVE)} × smaller count)"),
        ],
    }


def render_batch_page(output: str | os.PathLike, records: list[dict[str, Any]]) -> str:
    """HTML text of the batch page for ``records`` (sorted by key)."""
    return render_template("batch.html.j2", **batch_context(output, records))


def write_batch_report(output: str | os.PathLike, records: list[dict[str, Any]] | None = None
                       ) -> Path:
    """Write ``OUTPUT/report.html`` atomically (records read from OUTPUT when not given)."""
    if records is None:
        from .batch import _all_records

        records = _all_records(Path(output))
    return io.write_text_atomic(Path(output) / BATCH_PAGE, render_batch_page(output, records))


def rebuild_batch_reports(output: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """Rebuild every ``ok`` session page of a batch output, then the batch page.

    Returns
    -------
    tuple
        Pages written, and one message per session whose files could not be
        read (a :class:`~gdlesion.errors.GdLesionError`; its old page is kept).
    """
    from .batch import _all_records

    out = Path(output)
    records = _all_records(out)
    pages, problems = [], []
    for rec in records:
        rel = session_page_relpath(rec)
        if rel is None:
            continue
        try:
            view = load_batch_session_view(out, rec)
        except GdLesionError as exc:
            problems.append(str(exc))
            continue
        pages.append(write_session_report(view, out / rel, back_link=_back_link(rel)))
    pages.append(write_batch_report(out, records))
    return pages, problems
