"""Find the pre/post(/FLAIR) scan pairs of a study: BIDS, plain folders or a manifest.

Three input layouts are understood (:func:`discover_sessions` picks one):

* **BIDS** — ``sub-<s>[/ses-<t>]/anat/``: the pre scan is ``..._T1w.nii[.gz]``
  without a ``ce-`` entity, the post scan ``..._ce-<agent>_T1w.nii[.gz]``
  (``ce-gadolinium``, ``ce-Gd``...), FLAIR optional. Acquisition dates come from
  ``scans.tsv`` (the post scan's ``acq_time``) or ``sessions.tsv``.
  ``derivatives/`` and ``sourcedata/`` are never searched.
* **plain tree** — ``INPUT/<subject>/<session>/`` (or ``INPUT/<subject>/``
  holding the scans directly) with the scans matched by glob patterns.
* **manifest** — a CSV file with columns ``subject,session,pre,post[,flair][,date]``;
  relative paths are relative to the manifest's folder.

Problems (two candidate post scans, a pre without a post...) are never guessed
away: each becomes a :class:`Session` with an ``error``, which the batch records
as a failed session. Only layout-wide problems raise :class:`~gdlesion.errors.BatchError`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import BatchError

__all__ = [
    "Session",
    "discover_sessions",
    "discover_bids",
    "discover_plain",
    "discover_manifest",
    "DEFAULT_PRE_PATTERNS",
    "DEFAULT_POST_PATTERNS",
    "DEFAULT_FLAIR_PATTERNS",
]

#: Default plain-tree globs (case-insensitive; a file matching post patterns is never a pre).
DEFAULT_PRE_PATTERNS = ("*pre*.nii*", "t1.nii*", "t1w.nii*")
DEFAULT_POST_PATTERNS = ("*post*.nii*", "*gad*.nii*", "*_gd*.nii*", "t1ce.nii*", "t1gd.nii*")
DEFAULT_FLAIR_PATTERNS = ("*flair*.nii*",)

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_LABEL = re.compile(r"[^A-Za-z0-9]")
_SKIP_DIRS = ("derivatives", "sourcedata", "code", "stimuli")


@dataclass(frozen=True)
class Session:
    """One imaging session to process.

    Attributes
    ----------
    subject, session : str
        Identifiers as found (``sub-01``/``ses-01`` for BIDS; free text for the
        plain tree and manifest; ``session`` may be empty).
    pre, post, flair : pathlib.Path or None
        Scans; ``None`` when absent.
    acq_date : str
        ISO date ``YYYY-MM-DD`` when known, else empty.
    error : str
        Why the session cannot run (ambiguity, missing scan); empty when runnable.
    status_if_error : str
        ``"failed"`` or ``"skipped"`` (a session without any T1 scan).
    """

    subject: str
    session: str
    pre: Path | None = None
    post: Path | None = None
    flair: Path | None = None
    acq_date: str = ""
    error: str = ""
    status_if_error: str = "failed"

    @property
    def sub_label(self) -> str:
        """BIDS subject label (alphanumeric, no ``sub-`` prefix)."""
        return bids_label(self.subject, "sub")

    @property
    def ses_label(self) -> str:
        """BIDS session label (alphanumeric, no ``ses-`` prefix); empty when no session."""
        return bids_label(self.session, "ses") if self.session else ""

    @property
    def key(self) -> str:
        """Stable identifier ``sub-X[_ses-Y]`` used for output names."""
        return f"sub-{self.sub_label}" + (f"_ses-{self.ses_label}" if self.session else "")

    @property
    def relative_dir(self) -> Path:
        """Output folder ``sub-X[/ses-Y]/anat`` relative to the batch output."""
        base = Path(f"sub-{self.sub_label}")
        if self.session:
            base = base / f"ses-{self.ses_label}"
        return base / "anat"


def bids_label(text: str, entity: str) -> str:
    """Turn an identifier into a BIDS label: drop an ``entity-`` prefix and non-alphanumerics.

    Raises
    ------
    BatchError
        Nothing alphanumeric is left.
    """
    stripped = text[len(entity) + 1 :] if text.lower().startswith(f"{entity}-") else text
    label = _LABEL.sub("", stripped)
    if not label:
        raise BatchError(f"{entity} identifier {text!r}: has no letters or digits to name outputs")
    return label


def _normalise_filter(values: list[str] | tuple[str, ...] | None, entity: str) -> set[str] | None:
    if not values:
        return None
    return {bids_label(v, entity) for v in values}


def discover_sessions(
    input_path: str | Path,
    *,
    layout: str = "auto",
    participant_labels: list[str] | tuple[str, ...] | None = None,
    session_labels: list[str] | tuple[str, ...] | None = None,
    pre_patterns: tuple[str, ...] = DEFAULT_PRE_PATTERNS,
    post_patterns: tuple[str, ...] = DEFAULT_POST_PATTERNS,
    flair_patterns: tuple[str, ...] = DEFAULT_FLAIR_PATTERNS,
) -> list[Session]:
    """Find every session under ``input_path``, sorted by output key.

    Parameters
    ----------
    input_path : str or pathlib.Path
        A BIDS dataset, a plain folder tree, or a manifest ``.csv``/``.tsv`` file.
    layout : {"auto", "bids", "plain", "manifest"}
        ``"auto"``: a file is a manifest; a folder with ``sub-*`` children or a
        ``dataset_description.json`` is BIDS; any other folder is a plain tree.
    participant_labels, session_labels : sequence of str, optional
        Keep only these subjects/sessions (with or without ``sub-``/``ses-``).
    pre_patterns, post_patterns, flair_patterns : tuple of str
        Case-insensitive globs for the plain tree.

    Returns
    -------
    list of Session
        Runnable sessions and sessions carrying an ``error``.

    Raises
    ------
    BatchError
        Input missing, unknown layout, no session found, or two sessions mapping
        to the same output name.
    """
    path = Path(input_path)
    if not path.exists():
        raise BatchError(f"input {path}: not found")
    if layout == "auto":
        if path.is_file():
            layout = "manifest"
        elif (path / "dataset_description.json").exists() or any(path.glob("sub-*")):
            layout = "bids"
        else:
            layout = "plain"
    if layout == "manifest":
        sessions = discover_manifest(path)
    elif layout == "bids":
        sessions = discover_bids(path)
    elif layout == "plain":
        sessions = discover_plain(
            path, pre_patterns=pre_patterns, post_patterns=post_patterns,
            flair_patterns=flair_patterns,
        )
    else:
        raise BatchError(f"layout {layout!r}: expected auto, bids, plain or manifest")
    subs = _normalise_filter(participant_labels, "sub")
    sess = _normalise_filter(session_labels, "ses")
    sessions = [
        s for s in sessions
        if (subs is None or s.sub_label in subs) and (sess is None or s.ses_label in sess)
    ]
    if not sessions:
        raise BatchError(f"input {path}: no {layout} session found (after label filters)")
    seen: dict[str, Session] = {}
    for s in sessions:
        other = seen.setdefault(s.key, s)
        if other is not s:
            raise BatchError(
                f"input {path}: sessions ({other.subject!r}, {other.session!r}) and "
                f"({s.subject!r}, {s.session!r}) both map to output name {s.key}; rename one"
            )
    return sorted(sessions, key=lambda s: s.key)


# --- BIDS -----------------------------------------------------------------------------


def _niftis(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and _NIFTI.search(p.name))


def _entities(name: str) -> tuple[dict[str, str], str]:
    stem = _NIFTI.sub("", name)
    parts = stem.split("_")
    suffix = parts[-1]
    ents = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    return ents, suffix


def discover_bids(root: str | Path) -> list[Session]:
    """Sessions of a BIDS dataset (see the module docstring for the matching rules)."""
    root = Path(root)
    sessions: list[Session] = []
    for sub_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        ses_dirs = sorted(p for p in sub_dir.glob("ses-*") if p.is_dir())
        dates = _sessions_tsv_dates(sub_dir / f"{sub_dir.name}_sessions.tsv")
        if ses_dirs:
            for ses_dir in ses_dirs:
                sessions.append(_bids_session(sub_dir.name, ses_dir.name, ses_dir, dates))
        else:
            sessions.append(_bids_session(sub_dir.name, "", sub_dir, dates))
    return sessions


def _bids_session(subject: str, session: str, folder: Path, dates: dict[str, str]) -> Session:
    pres, posts, flairs = [], [], []
    for f in _niftis(folder / "anat"):
        ents, suffix = _entities(f.name)
        if suffix == "T1w":
            (posts if "ce" in ents else pres).append(f)
        elif suffix == "FLAIR" and "ce" not in ents:
            flairs.append(f)
    where = f"{subject}" + (f"/{session}" if session else "")
    error, status = _pair_error(where, pres, posts, flairs, "_T1w without ce-", "_ce-<agent>_T1w")
    post = posts[0] if len(posts) == 1 else None
    date = ""
    if post is not None:
        prefix = f"{subject}_{session}" if session else subject
        scans = _scans_tsv_dates(folder / f"{prefix}_scans.tsv")
        date = scans.get(f"anat/{post.name}", "")
    date = date or dates.get(session, "")
    return Session(
        subject, session,
        pre=pres[0] if len(pres) == 1 else None, post=post,
        flair=flairs[0] if len(flairs) == 1 else None,
        acq_date=date, error=error, status_if_error=status,
    )


def _pair_error(
    where: str, pres: list[Path], posts: list[Path], flairs: list[Path], pre_desc: str,
    post_desc: str,
) -> tuple[str, str]:
    def names(files: list[Path]) -> str:
        return ", ".join(f.name for f in files)

    if not pres and not posts:
        return f"{where}: no pre ({pre_desc}) or post ({post_desc}) scan", "skipped"
    if len(posts) > 1:
        return f"{where}: {len(posts)} candidate post scans ({names(posts)}); keep one", "failed"
    if len(pres) > 1:
        return f"{where}: {len(pres)} candidate pre scans ({names(pres)}); keep one", "failed"
    if len(flairs) > 1:
        return f"{where}: {len(flairs)} candidate FLAIR scans ({names(flairs)}); keep one", "failed"
    if not posts:
        return f"{where}: pre scan {pres[0].name} has no post scan ({post_desc})", "failed"
    if not pres:
        return f"{where}: post scan {posts[0].name} has no pre scan ({pre_desc})", "failed"
    return "", "failed"


def _read_tsv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise BatchError(f"{path}: unreadable TSV ({exc})") from None


def _iso_date(text: str) -> str:
    text = str(text).strip()
    if not text or text.lower() == "n/a":
        return ""
    stamp = pd.to_datetime(text, errors="coerce")
    return "" if pd.isna(stamp) else stamp.strftime("%Y-%m-%d")


def _sessions_tsv_dates(path: Path) -> dict[str, str]:
    table = _read_tsv(path)
    if table is None or not {"session_id", "acq_time"} <= set(table.columns):
        return {}
    pairs = zip(table["session_id"], table["acq_time"], strict=True)
    return {str(s): _iso_date(t) for s, t in pairs}


def _scans_tsv_dates(path: Path) -> dict[str, str]:
    table = _read_tsv(path)
    if table is None or not {"filename", "acq_time"} <= set(table.columns):
        return {}
    return {str(f): _iso_date(t) for f, t in zip(table["filename"], table["acq_time"], strict=True)}


# --- plain tree -----------------------------------------------------------------------


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def discover_plain(
    root: str | Path,
    *,
    pre_patterns: tuple[str, ...] = DEFAULT_PRE_PATTERNS,
    post_patterns: tuple[str, ...] = DEFAULT_POST_PATTERNS,
    flair_patterns: tuple[str, ...] = DEFAULT_FLAIR_PATTERNS,
) -> list[Session]:
    """Sessions of ``root/<subject>/<session>/`` (or ``root/<subject>/`` holding scans)."""
    root = Path(root)
    sessions: list[Session] = []
    for sub_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub_dir.name in _SKIP_DIRS:
            continue
        if _niftis(sub_dir):
            folders = [(sub_dir, "")]
        else:
            folders = [
                (d, d.name) for d in sorted(sub_dir.iterdir())
                if d.is_dir() and not d.name.startswith(".")
            ]
        for folder, ses in folders:
            files = _niftis(folder)
            posts = [f for f in files if _match(f.name, post_patterns)]
            flairs = [f for f in files if f not in posts and _match(f.name, flair_patterns)]
            pres = [
                f for f in files
                if f not in posts and f not in flairs and _match(f.name, pre_patterns)
            ]
            where = f"{sub_dir.name}" + (f"/{ses}" if ses else "")
            error, status = _pair_error(
                where, pres, posts, flairs, "|".join(pre_patterns), "|".join(post_patterns)
            )
            sessions.append(Session(
                sub_dir.name, ses,
                pre=pres[0] if len(pres) == 1 else None,
                post=posts[0] if len(posts) == 1 else None,
                flair=flairs[0] if len(flairs) == 1 else None,
                error=error, status_if_error=status,
            ))
    return sessions


# --- manifest -------------------------------------------------------------------------

_MANIFEST_REQUIRED = ("subject", "session", "pre", "post")


def discover_manifest(path: str | Path) -> list[Session]:
    """Sessions listed in a manifest CSV (or ``.tsv``): ``subject,session,pre,post[,flair][,date]``.

    Raises
    ------
    BatchError
        Unreadable file or a missing required column.
    """
    path = Path(path)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatchError(f"manifest {path}: unreadable ({str(exc).strip()[:120]})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in _MANIFEST_REQUIRED if c not in table.columns]
    if missing:
        raise BatchError(
            f"manifest {path}: missing column(s) {', '.join(missing)} "
            f"(needs subject,session,pre,post[,flair][,date])"
        )
    base = path.parent
    sessions = []
    for row_no, row in enumerate(table.to_dict("records"), start=2):
        subject, session = row["subject"].strip(), row["session"].strip()
        if not subject:
            raise BatchError(f"manifest {path}: line {row_no} has an empty subject")

        def resolve(col: str, row: dict = row) -> Path | None:
            text = str(row.get(col, "")).strip()
            return (base / text) if text else None

        pre, post, flair = resolve("pre"), resolve("post"), resolve("flair")
        where = f"{subject}" + (f"/{session}" if session else "")
        error = ""
        for role, p in (("pre", pre), ("post", post), ("flair", flair)):
            if role != "flair" and p is None:
                error = error or f"{where}: manifest line {row_no} has no {role} scan"
            elif p is not None and not p.is_file():
                error = error or f"{where}: {role} scan {p} not found"
        date_text = str(row.get("date", "")).strip()
        date = _iso_date(date_text)
        if date_text and not date:
            error = error or f"{where}: manifest date {date_text!r} is not a date"
        sessions.append(Session(
            subject, session, pre=pre, post=post, flair=flair, acq_date=date, error=error
        ))
    return sessions
