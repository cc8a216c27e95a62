"""Reading and validating clinical tables and the batch lesion-count table.

A clinical table has one row per visit. Accepted forms:

* a CSV or TSV file with a subject column (``subject`` / ``participant_id``);
* a BIDS ``sub-XX_sessions.tsv`` file (the subject comes from the file name);
* a BIDS dataset directory: every ``sub-*/sub-*_sessions.tsv`` inside it.

Columns are found under their canonical names or common aliases
(:data:`COLUMN_ALIASES`), or named explicitly with a column map
``{"edss": "EDSS_score", ...}``. Dates are parsed strictly: ISO 8601
``YYYY-MM-DD`` or BIDS ``acq_time`` ``YYYY-MM-DDThh:mm:ss``; only the day is
kept. Missing values (empty, ``n/a``, ``NA``) stay missing: nothing is imputed.
Every problem raises :class:`~gdlesion.errors.ClinicalDataError` with one line
naming the file, the line/column and the problem.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ClinicalDataError, InputError

__all__ = [
    "CLINICAL_COLUMNS",
    "COLUMN_ALIASES",
    "has_clinical_columns",
    "COUNT_COLUMNS",
    "parse_date",
    "read_clinical",
    "read_column_map",
    "read_counts",
    "read_relapse_dates",
    "normalise_label",
]

#: Canonical clinical columns, in output order.
CLINICAL_COLUMNS = ("subject", "session", "date", "edss", "relapses", "treatment")

#: Accepted spellings of each canonical column (case-insensitive), first match wins.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "subject": ("subject", "participant_id", "sub", "patient", "patient_id"),
    "session": ("session", "session_id", "ses", "visit"),
    "date": ("date", "acq_time", "acq_date", "visit_date", "scan_date"),
    "edss": ("edss", "edss_score"),
    "relapses": ("relapses", "n_relapses", "relapse_count", "relapses_since_last"),
    "treatment": ("treatment", "therapy", "dmt", "drug"),
}

#: Columns read from ``lesion_counts.csv`` (the first four are required).
COUNT_COLUMNS = (
    "subject", "session", "lesion_count", "status", "acq_date", "total_volume_mm3", "error",
)

_MISSING = {"", "n/a", "na", "nan", "none", "null"}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?$")
_EDSS_MAX = 10.0


def normalise_label(value: str, prefix: str) -> str:
    """Strip a BIDS prefix (``sub-``/``ses-``) and surrounding blanks from a label.

    >>> normalise_label("sub-03", "sub-")
    '03'
    """
    text = str(value).strip()
    return text[len(prefix):] if text.startswith(prefix) else text


def parse_date(value: str, *, where: str) -> pd.Timestamp:
    """Parse an ISO 8601 date strictly, keeping the day.

    Parameters
    ----------
    value : str
        ``YYYY-MM-DD`` or ``YYYY-MM-DDThh:mm[:ss[.ffffff]]``; empty/``n/a`` is missing.
    where : str
        File, line and column, used in the error message.

    Returns
    -------
    pandas.Timestamp
        Midnight of that day, or ``pd.NaT`` when missing.

    Raises
    ------
    ClinicalDataError
        The text is not such a date or not a real calendar day.

    Examples
    --------
    >>> parse_date("2021-03-04T10:15:00", where="x")
    Timestamp('2021-03-04 00:00:00')
    """
    text = str(value).strip()
    if text.lower() in _MISSING:
        return pd.NaT
    if not _DATE_RE.match(text):
        raise ClinicalDataError(
            f"{where}: cannot parse date {text!r} (expected YYYY-MM-DD or YYYY-MM-DDThh:mm:ss)"
        )
    try:
        day = _dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise ClinicalDataError(f"{where}: {text!r} is not a valid calendar date") from None
    return pd.Timestamp(day)


def read_column_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a JSON column map ``{"canonical": "name in the file"}``.

    Raises
    ------
    ClinicalDataError
        Unreadable JSON, not an object of strings, or an unknown canonical name.
    """
    path = Path(path)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ClinicalDataError(f"column map {path}: not readable JSON ({exc})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ClinicalDataError(f"column map {path}: expected an object of strings")
    _check_map(mapping, str(path))
    return dict(mapping)


def _check_map(mapping: Mapping[str, str], who: str) -> None:
    unknown = sorted(set(mapping) - set(CLINICAL_COLUMNS))
    if unknown:
        raise ClinicalDataError(
            f"column map {who}: unknown key {unknown[0]!r} (known: {', '.join(CLINICAL_COLUMNS)})"
        )


def _read_table(path: Path, who: str) -> pd.DataFrame:
    if not path.exists():
        raise ClinicalDataError(f"{who} {path}: file not found")
    sep = "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip()[:120]
        raise ClinicalDataError(f"{who} {path}: not a readable table ({reason})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _resolve_columns(
    df: pd.DataFrame, path: Path, column_map: Mapping[str, str], *, implicit_subject: bool
) -> dict[str, str]:
    """Return canonical -> actual column name for the columns present."""
    lower = {c.lower(): c for c in df.columns}
    found: dict[str, str] = {}
    for canon in CLINICAL_COLUMNS:
        if canon in column_map:
            actual = column_map[canon]
            if actual not in df.columns:
                raise ClinicalDataError(
                    f"{path}: missing column {actual!r} (mapped to {canon!r}); "
                    f"columns are {', '.join(df.columns)}"
                )
            found[canon] = actual
            continue
        for alias in COLUMN_ALIASES[canon]:
            if alias in lower:
                found[canon] = lower[alias]
                break
    if "subject" not in found and not implicit_subject:
        raise ClinicalDataError(
            f"{path}: missing column 'subject' (looked for {', '.join(COLUMN_ALIASES['subject'])}; "
            "name it with a column map)"
        )
    if "session" not in found and "date" not in found:
        raise ClinicalDataError(
            f"{path}: missing column 'session' or 'date' (needed to match visits to scans)"
        )
    return found


def _numeric(series: pd.Series, path: Path, column: str, *, low: float, high: float,
             integer: bool) -> pd.Series:
    text = series.str.strip()
    missing = text.str.lower().isin(_MISSING)
    values = pd.to_numeric(text.where(~missing), errors="coerce")
    bad = values.isna() & ~missing
    if integer:
        bad |= values.notna() & (values != np.round(values))
    bad |= values.notna() & ((values < low) | (values > high))
    if bad.any():
        idx = int(np.flatnonzero(bad.to_numpy())[0])
        kind = "a whole number" if integer else "a number"
        raise ClinicalDataError(
            f"{path}: line {idx + 2}, column {column!r}: {text.iloc[idx]!r} is not {kind} "
            f"in [{low:g}, {high:g}]"
        )
    return values.astype("float64")


def _parse_one(path: Path, column_map: Mapping[str, str]) -> pd.DataFrame:
    df = _read_table(path, "clinical table")
    bids_sub = re.match(r"^sub-([A-Za-z0-9]+)_sessions\.tsv$", path.name)
    cols = _resolve_columns(df, path, column_map, implicit_subject=bids_sub is not None)
    out = pd.DataFrame(index=df.index)
    out["subject"] = (
        df[cols["subject"]].map(lambda v: normalise_label(v, "sub-"))
        if "subject" in cols else bids_sub.group(1)  # type: ignore[union-attr]
    )
    out["session"] = (
        df[cols["session"]].map(lambda v: normalise_label(v, "ses-")) if "session" in cols else ""
    )
    empty_sub = out["subject"] == ""
    if empty_sub.any():
        line = int(np.flatnonzero(empty_sub.to_numpy())[0]) + 2
        raise ClinicalDataError(
            f"{path}: line {line}, column {cols.get('subject')!r}: empty subject"
        )
    if "date" in cols:
        name = cols["date"]
        out["date"] = [
            parse_date(v, where=f"{path}: line {i + 2}, column {name!r}")
            for i, v in enumerate(df[name].tolist())
        ]
    else:
        out["date"] = pd.NaT
    out["date"] = pd.to_datetime(out["date"])
    no_key = (out["session"] == "") & out["date"].isna()
    if no_key.any():
        line = int(np.flatnonzero(no_key.to_numpy())[0]) + 2
        raise ClinicalDataError(f"{path}: line {line}: visit has neither a session nor a date")
    out["edss"] = (
        _numeric(df[cols["edss"]], path, cols["edss"], low=0, high=_EDSS_MAX, integer=False)
        if "edss" in cols else np.nan
    )
    out["relapses"] = (
        _numeric(df[cols["relapses"]], path, cols["relapses"], low=0, high=1e6, integer=True)
        if "relapses" in cols else np.nan
    )
    if "treatment" in cols:
        treat = df[cols["treatment"]].str.strip()
        out["treatment"] = treat.where(~treat.str.lower().isin(_MISSING), "")
    else:
        out["treatment"] = ""
    out["source"] = [f"{path.name}:{i + 2}" for i in range(len(df))]
    return out


def _check_duplicates(df: pd.DataFrame) -> None:
    """Reject two rows of one visit (same subject and session, or date without session)."""
    for key, rows in (
        ("session", df[df["session"] != ""]),
        ("date", df[(df["session"] == "") & df["date"].notna()]),
    ):
        dup = rows[rows.duplicated(["subject", key], keep=False)]
        if len(dup):
            first = dup.iloc[0]
            dup = dup[(dup["subject"] == first["subject"]) & (dup[key] == first[key])]
            value = first[key]
            value = value.date().isoformat() if key == "date" else value
            raise ClinicalDataError(
                f"{dup['source'].iloc[1]}: duplicate visit (subject {dup['subject'].iloc[0]!r}, "
                f"{key} {value!r}) already at {dup['source'].iloc[0]}"
            )


def read_clinical(
    path: str | os.PathLike[str], *, column_map: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Read a clinical visit table (CSV/TSV, BIDS sessions.tsv, or a BIDS dataset).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.csv``/``.tsv`` file, a ``sub-XX_sessions.tsv`` file or a BIDS root directory.
    column_map : mapping, optional
        Canonical name (see :data:`CLINICAL_COLUMNS`) -> column name in the file.

    Returns
    -------
    pandas.DataFrame
        Columns ``subject, session, date, edss, relapses, treatment, source``, sorted by
        subject, date, session. ``source`` is ``file:line``. Missing values are NaN/NaT/"".

    Raises
    ------
    ClinicalDataError
        Missing file or column, unparseable date, non-numeric EDSS/relapses, empty
        subject, a visit without session and date, or a duplicate visit.
    """
    path = Path(path)
    column_map = dict(column_map or {})
    _check_map(column_map, "option")
    if path.is_dir():
        files = sorted(path.glob("sub-*/sub-*_sessions.tsv"))
        if not files:
            raise ClinicalDataError(
                f"clinical data {path}: directory holds no sub-*/sub-*_sessions.tsv"
            )
    else:
        files = [path]
    frames = [_parse_one(f, column_map) for f in files]
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise ClinicalDataError(f"clinical data {path}: no visits")
    _check_duplicates(df)
    return df.sort_values(["subject", "date", "session"], kind="stable").reset_index(drop=True)


def has_clinical_columns(path: str | os.PathLike[str]) -> bool:
    """Tell whether a table or a BIDS dataset's ``sessions.tsv`` files hold clinical data.

    True when a header names an EDSS, relapse or treatment column (see
    :data:`COLUMN_ALIASES`); used to chain ``gdlesion batch`` into the longitudinal
    analysis automatically. Unreadable files count as False.
    """
    path = Path(path)
    files = sorted(path.glob("sub-*/sub-*_sessions.tsv")) if path.is_dir() else [path]
    wanted = {a for key in ("edss", "relapses", "treatment") for a in COLUMN_ALIASES[key]}
    for f in files:
        try:
            header = f.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError):
            continue
        sep = "\t" if "\t" in header else ","
        if wanted & {c.strip().lower() for c in header.split(sep)}:
            return True
    return False


def read_relapse_dates(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a relapse table with one row per relapse: ``subject`` and ``date`` columns.

    Raises
    ------
    ClinicalDataError
        Missing file/column, empty subject, or an unparseable or missing date.
    """
    path = Path(path)
    df = _read_table(path, "relapse table")
    cols = _resolve_columns(df, path, {}, implicit_subject=False)
    if "date" not in cols:
        raise ClinicalDataError(f"{path}: missing column 'date' (one row per relapse)")
    dates = [
        parse_date(v, where=f"{path}: line {i + 2}, column {cols['date']!r}")
        for i, v in enumerate(df[cols["date"]].tolist())
    ]
    out = pd.DataFrame({
        "subject": df[cols["subject"]].map(lambda v: normalise_label(v, "sub-")),
        "date": pd.to_datetime(pd.Series(dates, dtype="datetime64[ns]")),
    })
    if out["date"].isna().any():
        line = int(np.flatnonzero(out["date"].isna().to_numpy())[0]) + 2
        raise ClinicalDataError(
            f"{path}: line {line}, column {cols['date']!r}: missing relapse date"
        )
    return out.sort_values(["subject", "date"]).reset_index(drop=True)


def read_counts(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``lesion_counts.csv`` from ``gdlesion batch``.

    Returns
    -------
    pandas.DataFrame
        ``subject, session, scan_date, status, lesion_count, total_volume_mm3, error``.
        ``lesion_count`` is a float column: 0 for a scan without lesions, NaN only
        for a session that did not succeed (status other than ``ok``).

    Raises
    ------
    InputError
        Missing file or column, a bad date, or an ok session without a count.
    """
    path = Path(path)
    try:
        df = _read_table(path, "lesion counts")
    except ClinicalDataError as exc:
        raise InputError(str(exc)) from None
    missing = [c for c in COUNT_COLUMNS[:4] if c not in df.columns]
    if missing:
        raise InputError(f"lesion counts {path}: missing column {missing[0]!r}")
    out = pd.DataFrame({
        "subject": df["subject"].map(lambda v: normalise_label(v, "sub-")),
        "session": df["session"].map(lambda v: normalise_label(v, "ses-")),
        "status": df["status"].str.strip(),
    })
    try:
        out["scan_date"] = pd.to_datetime(pd.Series([
            parse_date(v, where=f"lesion counts {path}: line {i + 2}, column 'acq_date'")
            for i, v in enumerate(df.get("acq_date", pd.Series([""] * len(df))).tolist())
        ], dtype="datetime64[ns]"))
    except ClinicalDataError as exc:
        raise InputError(str(exc)) from None
    ok = out["status"] == "ok"
    for col in ("lesion_count", "total_volume_mm3"):
        raw = df[col].str.strip() if col in df.columns else pd.Series([""] * len(df))
        values = pd.to_numeric(raw.where(raw != ""), errors="coerce")
        bad = ok & values.isna() if col == "lesion_count" else pd.Series(False, index=df.index)
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise InputError(f"lesion counts {path}: line {line}: status ok but no {col}")
        out[col] = values.where(ok)
    out["error"] = df["error"] if "error" in df.columns else ""
    dup = out.duplicated(["subject", "session"], keep=False)
    if dup.any():
        line = int(np.flatnonzero(dup.to_numpy())[1]) + 2
        raise InputError(f"lesion counts {path}: line {line}: duplicate subject/session")
    return out.sort_values(["subject", "session"]).reset_index(drop=True)
