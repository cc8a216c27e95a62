"""Lesion tracking across a subject's visits: new, persistent and resolved Gd+ lesions.

Each visit's label map (int 0..N on that visit's post-contrast grid) is compared with
the previous available visit of the same subject. The previous map is brought onto
the current grid with the rigid transform from registering the previous post scan
(moving) to the current one (fixed), nearest-neighbour interpolation. Then:

* a current lesion overlapping a previous lesion by ``>= min_overlap_voxels`` voxels
  (inclusive) is **persistent**, otherwise **new**;
* a previous lesion overlapping no current lesion that much is **resolved**;
* lesions of a subject's first visit are ``baseline`` (newness is unknown);
* a visit with nothing to report gets one row with status ``none`` (lesion 0), so
  that "tracked, zero new lesions" differs from "not tracked".

New Gd+ lesions per visit are the standard trial endpoint; they are reported next to
the raw counts. :func:`track_lesions` is the pure core (arrays + matrices);
:func:`track_from_files` finds the batch outputs and raw post scans and registers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .io import Volume, load_labels, load_volume
from .registration import register_rigid, resample_volume

__all__ = ["TRACK_COLUMNS", "match_lesions", "track_lesions", "per_visit", "track_from_files",
           "label_map_path"]

#: Columns of ``tracking.csv`` (one row per lesion per visit, resolved lesions included).
TRACK_COLUMNS = ("subject", "session", "compared_to", "lesion", "status", "matched",
                 "overlap_voxels", "volume_mm3")


def match_lesions(
    previous_on_current: np.ndarray, current: np.ndarray, *, min_overlap_voxels: int = 1
) -> tuple[dict[int, list[tuple[int, int]]], dict[int, list[tuple[int, int]]]]:
    """Overlaps between two label maps on the same grid.

    Parameters
    ----------
    previous_on_current, current : numpy.ndarray
        Integer label maps (0 = background) of equal shape.
    min_overlap_voxels : int
        Smallest overlap (inclusive) that links two lesions.

    Returns
    -------
    (dict, dict)
        For each current label, the linked previous labels with their overlap in voxels;
        for each previous label, the linked current labels. Unlinked labels map to ``[]``.
    """
    if previous_on_current.shape != current.shape:
        raise ValueError(f"shapes differ: {previous_on_current.shape} vs {current.shape}")
    prev = np.asarray(previous_on_current, dtype=np.int64).ravel()
    cur = np.asarray(current, dtype=np.int64).ravel()
    both = (prev > 0) & (cur > 0)
    pairs, counts = np.unique(np.stack([cur[both], prev[both]]), axis=1, return_counts=True)
    keep = counts >= min_overlap_voxels
    cur_links: dict[int, list[tuple[int, int]]] = {int(v): [] for v in np.unique(cur[cur > 0])}
    prev_links: dict[int, list[tuple[int, int]]] = {int(v): [] for v in np.unique(prev[prev > 0])}
    for (c, p), n in zip(pairs.T[keep].tolist(), counts[keep].tolist(), strict=True):
        cur_links[c].append((p, n))
        prev_links[p].append((c, n))
    return cur_links, prev_links


def _volumes(labels: np.ndarray, voxel_mm3: float) -> dict[int, float]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel())
    return {int(k): float(counts[k] * voxel_mm3) for k in np.flatnonzero(counts) if k > 0}


def track_lesions(
    label_maps: Sequence[Volume],
    matrices: Sequence[np.ndarray | None],
    *,
    sessions: Sequence[str],
    subject: str = "",
    min_overlap_voxels: int = 1,
) -> pd.DataFrame:
    """Classify every lesion of a subject's visits as baseline, new, persistent or resolved.

    Parameters
    ----------
    label_maps : sequence of Volume
        Integer label maps in visit order, each on its own post-scan grid.
    matrices : sequence of (4, 4) arrays or None
        ``matrices[t]`` maps RAS points of visit ``t``'s grid to the same anatomy in
        visit ``t-1``'s grid (``register_rigid(moving=post[t-1], fixed=post[t]).matrix_ras``);
        ``None`` means identity. ``matrices[0]`` is ignored.
    sessions : sequence of str
        Session labels, same order.
    subject : str
        Written in the ``subject`` column.
    min_overlap_voxels : int
        Overlap needed (inclusive) to call a lesion persistent.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TRACK_COLUMNS`; resolved lesions are rows of the visit where
        they disappeared, with their label and volume from the previous visit.
    """
    if not (len(label_maps) == len(matrices) == len(sessions)):
        raise ValueError("label_maps, matrices and sessions must have the same length")
    rows = []
    for t, labels in enumerate(label_maps):
        lab = np.asarray(labels.data).astype(np.int64)
        vols = _volumes(lab, labels.voxel_volume_mm3)
        first = len(rows)
        if t == 0:
            rows += [(sessions[0], "", k, "baseline", "", 0, v) for k, v in vols.items()]
            if len(rows) == first:
                rows.append((sessions[0], "", 0, "none", "", 0, 0.0))
            continue
        prev = label_maps[t - 1]
        moved = resample_volume(prev, labels, matrices[t], interpolation="nearest")
        cur_links, prev_links = match_lesions(
            np.asarray(moved.data), lab, min_overlap_voxels=min_overlap_voxels
        )
        for k, v in vols.items():
            links = cur_links.get(k, [])
            status = "persistent" if links else "new"
            rows.append((sessions[t], sessions[t - 1], k, status,
                         ";".join(str(p) for p, _ in links), sum(n for _, n in links), v))
        prev_vols = _volumes(np.asarray(prev.data), prev.voxel_volume_mm3)
        for k, v in prev_vols.items():
            if not prev_links.get(k):
                rows.append((sessions[t], sessions[t - 1], k, "resolved", "", 0, v))
        if len(rows) == first:
            rows.append((sessions[t], sessions[t - 1], 0, "none", "", 0, 0.0))
    df = pd.DataFrame(rows, columns=list(TRACK_COLUMNS[1:])).astype(
        {"lesion": "int64", "overlap_voxels": "int64", "volume_mm3": "float64"})
    df.insert(0, "subject", subject)
    return df


def per_visit(tracking: pd.DataFrame) -> pd.DataFrame:
    """Count lesions per visit and status.

    Returns
    -------
    pandas.DataFrame
        ``subject, session, new_lesions, persistent_lesions, resolved_lesions``;
        ``new_lesions`` etc. are NaN on a subject's first tracked visit.
    """
    if tracking.empty:
        return pd.DataFrame(columns=["subject", "session", "new_lesions", "persistent_lesions",
                                     "resolved_lesions"])
    table = pd.crosstab([tracking["subject"], tracking["session"]], tracking["status"])
    for col in ("baseline", "new", "persistent", "resolved", "none"):
        if col not in table.columns:
            table[col] = 0
    first = tracking.groupby(["subject", "session"])["compared_to"].first().eq("")
    out = pd.DataFrame({
        "new_lesions": table["new"], "persistent_lesions": table["persistent"],
        "resolved_lesions": table["resolved"],
    }).astype(float)
    out.loc[first.reindex(out.index).to_numpy()] = np.nan
    return out.reset_index()


def label_map_path(derivatives: str | os.PathLike[str], subject: str, session: str) -> Path | None:
    """Return the lesion label map of one session in a batch output folder, or None.

    Accepts ``*_space-individual*_dseg.nii.gz`` in ``sub-<s>/ses-<t>/anat/``.
    """
    folder = Path(derivatives) / f"sub-{subject}" / f"ses-{session}" / "anat"
    found = sorted(folder.glob(f"sub-{subject}_ses-{session}_space-individual*lesion*dseg.nii*"))
    return found[0] if found else None


def track_from_files(
    visits: pd.DataFrame,
    derivatives: str | os.PathLike[str],
    *,
    raw: str | os.PathLike[str] | None = None,
    min_overlap_voxels: int = 1,
    register_kwargs: dict | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Track lesions for every subject from batch outputs.

    Parameters
    ----------
    visits : pandas.DataFrame
        Merged visits (``subject, session, date, status``); ok scans are used in date order.
    derivatives : path
        ``gdlesion batch`` output folder holding the label maps.
    raw : path, optional
        The raw dataset (BIDS, plain or manifest, see :func:`gdlesion.discover.discover_sessions`);
        each post scan is registered rigidly to the subject's previous one. Without it the
        label maps are compared in world coordinates (identity transform).
    min_overlap_voxels : int
        See :func:`track_lesions`.
    register_kwargs : dict, optional
        Passed to :func:`gdlesion.registration.register_rigid`.

    Returns
    -------
    (pandas.DataFrame, list of str)
        The tracking table and warnings (missing label maps, identity transforms).
    """
    from .discover import discover_sessions

    warnings: list[str] = []
    posts: dict[tuple[str, str], Path] = {}
    if raw is not None:
        posts = {(s.sub_label, s.ses_label): s.post for s in discover_sessions(raw)
                 if s.post is not None}
    else:
        warnings.append("no raw dataset given: visits compared without registration")
    frames = []
    ok = visits[(visits["status"] == "ok") & visits["date"].notna()]
    for subject, sub in ok.groupby("subject", sort=True):
        sessions, maps, scans = [], [], []
        for session in sub.sort_values(["date", "session"])["session"]:
            path = label_map_path(derivatives, subject, session)
            if path is None:
                warnings.append(f"sub-{subject} ses-{session}: no lesion label map; not tracked")
                continue
            sessions.append(session)
            maps.append(load_labels(path))
            scans.append(posts.get((subject, session)))
        matrices: list[np.ndarray | None] = [None]
        for t in range(1, len(maps)):
            if scans[t] is None or scans[t - 1] is None:
                if raw is not None:
                    warnings.append(f"sub-{subject} ses-{sessions[t]}: post scan not found; "
                                    "compared without registration")
                matrices.append(None)
                continue
            reg = register_rigid(load_volume(scans[t - 1], role="previous post scan"),
                                 load_volume(scans[t], role="post scan"),
                                 **(register_kwargs or {}))
            matrices.append(reg.matrix_ras)
        if maps:
            frames.append(track_lesions(maps, matrices, sessions=sessions, subject=subject,
                                        min_overlap_voxels=min_overlap_voxels))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=list(TRACK_COLUMNS))
    return table, warnings
