"""Combined batch tables, rebuilt from the per-session records.

Both tables are derived only from the records on disk, sorted by subject then
session, with fixed float formatting, so an interrupted-and-resumed batch writes
byte-identical files to an uninterrupted one. Text cells are made safe for
spreadsheets: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading apostrophe (OWASP CSV-injection advice), and
line breaks/tabs inside a cell become spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .io import write_text_atomic

__all__ = [
    "COUNT_COLUMNS",
    "REGISTRATION_QC_COLUMNS",
    "escape_cell",
    "escape_text_columns",
    "counts_table",
    "lesions_table",
    "write_table",
]

#: Registration QC numbers copied into ``lesion_counts`` (column -> key of ``qc_dict()``).
REGISTRATION_QC_COLUMNS = {
    "reg_similarity_before": "similarity_before",
    "reg_similarity_after": "similarity_after",
    "reg_metric_final": "metric_final",
    "reg_overlap_fraction": "overlap_fraction",
}

#: Columns of ``lesion_counts.csv``, in order.
COUNT_COLUMNS = (
    "subject", "session", "acq_date", "status", "lesion_count", "total_volume_mm3",
    *REGISTRATION_QC_COLUMNS, "pipeline", "warnings", "error",
)

_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
_FLOAT_FORMAT = "%.4f"


def escape_cell(value: Any) -> Any:
    r"""Neutralise one text cell for spreadsheets; non-strings pass through.

    Examples
    --------
    >>> escape_cell('=HYPERLINK("http://x")')
    '\'=HYPERLINK("http://x")'
    >>> escape_cell("sub-01")
    'sub-01'
    >>> escape_cell(3.5)
    3.5
    """
    if not isinstance(value, str):
        return value
    if value.startswith(_DANGEROUS):
        value = "'" + value
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\t", " ")


def escape_text_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with :func:`escape_cell` applied to every text (object/string) column."""
    out = table.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(escape_cell)
    return out


def _sort(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["subject", "session"] + [c for c in ("lesion_id", "label") if c in table.columns]
    return table.sort_values(keys, kind="mergesort").reset_index(drop=True)


def counts_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per session record (columns :data:`COUNT_COLUMNS`), sorted."""
    rows = []
    for rec in records:
        qc = rec.get("registration") or {}
        ok = rec.get("status") == "ok"
        row = {
            "subject": rec["subject"],
            "session": rec["session"],
            "acq_date": rec.get("acq_date", ""),
            "status": rec["status"],
            "lesion_count": rec.get("lesion_count") if ok else None,
            "total_volume_mm3": rec.get("total_volume_mm3") if ok else None,
            "pipeline": rec.get("pipeline", ""),
            "warnings": "; ".join(rec.get("warnings") or []),
            "error": rec.get("error", ""),
        }
        for col, key in REGISTRATION_QC_COLUMNS.items():
            row[col] = qc.get(key) if ok else None
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COUNT_COLUMNS))
    table["lesion_count"] = table["lesion_count"].astype("Int64")
    for col in ("total_volume_mm3", *REGISTRATION_QC_COLUMNS):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
    for col in ("subject", "session", "acq_date", "status", "pipeline", "warnings", "error"):
        table[col] = table[col].fillna("").astype(str).astype(object)
    return _sort(table)


def lesions_table(per_session: Iterable[tuple[Mapping[str, Any], pd.DataFrame]]) -> pd.DataFrame:
    """Concatenate per-session lesion tables, prefixed by subject, session and date, sorted."""
    frames = []
    for rec, lesions in per_session:
        frame = lesions.copy()
        frame.insert(0, "acq_date", rec.get("acq_date", ""))
        frame.insert(0, "session", rec["session"])
        frame.insert(0, "subject", rec["subject"])
        frames.append(frame)
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["subject", "session", "acq_date"])
    return _sort(pd.concat(frames, ignore_index=True, sort=False))


def write_table(table: pd.DataFrame, path: str | Path, *, fmt: str = "csv") -> Path:
    """Write ``table`` atomically as CSV (empty cells for missing) or BIDS TSV (``n/a``).

    Floats use a fixed ``%.4f`` format so reruns give identical bytes.
    """
    if fmt not in ("csv", "tsv"):
        raise ValueError(f"format must be csv or tsv, got {fmt!r}")
    text = escape_text_columns(table).to_csv(
        index=False,
        sep="," if fmt == "csv" else "\t",
        na_rep="" if fmt == "csv" else "n/a",
        float_format=_FLOAT_FORMAT,
        lineterminator="\n",
    )
    return write_text_atomic(path, text)
