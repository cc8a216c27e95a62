"""QC report: one self-contained HTML page per session (and a batch page, :mod:`report_batch`).

Following the nipreps convention (MRIQC, fMRIPrep), each session page assembles
small figures per step: the registration check (post and registered pre
flickering, pre edges over post, in three planes, with the QC numbers), the
brain mask and the enhancement map, every lesion zoomed (pre, post,
enhancement, outlined) with its row of measures, every rejected candidate with
the rule that removed it, and the parameters, versions and timings.

Pages are rendered from Jinja2 templates (``templates/*.html.j2``, autoescaped:
file names and table cells are never trusted) with images embedded as PNG data
URIs, so a page opens from the file system with no server and no network.
NIfTI header free text is never read into a page.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import io
from . import report_figures as rf
from .errors import InputError, OutputError
from .io import Volume

__all__ = [
    "SessionView",
    "view_from_result",
    "load_inspect_view",
    "session_context",
    "render_session_page",
    "write_session_report",
    "write_inspect_report",
    "rebuild_reports",
    "render_template",
    "REPORT_NAME",
    "SOURCES_NAME",
]

#: File name of the session page in an ``inspect --out`` folder.
REPORT_NAME = "report.html"
#: Small JSON beside an ``inspect --out`` layout naming the post scan, so pages can be rebuilt.
SOURCES_NAME = "report_sources.json"
#: Rejected candidates drawn (largest first); the others are listed with their measures only.
MAX_REJECTED_IMAGES = 50
#: Whole-brain figures of a session page (template keys).
_FIGURES = ("post", "pre", "edges", "mask", "enhancement")
#: Columns of the lesion table not shown in the per-lesion row (voxel bounding boxes).
_HIDDEN = {"bbox_i_min", "bbox_j_min", "bbox_k_min", "bbox_i_max", "bbox_j_max", "bbox_k_max"}


@dataclass(eq=False)
class SessionView:
    """What a session page shows; arrays on the post grid.

    Attributes
    ----------
    title : str
        Page title (subject/session or the post scan's file name).
    post, pre_registered : Volume or None
        Post scan and pre scan registered onto it (``None`` when unavailable).
    labels : numpy.ndarray
        Lesion label map (ids match the lesion table).
    lesions : pandas.DataFrame
        One row per lesion (``lesion_id`` or ``label`` column names the label).
    enhancement, brain_mask, rejected_labels : numpy.ndarray or None
        Enhancement z-map, brain mask, rejected-candidate label map.
    rejected : pandas.DataFrame
        One row per rejected candidate with a ``reason`` column.
    summary : dict
        ``summary.json``-like content: registration QC, parameters, versions,
        timings, statistics, warnings, input file names.
    """

    title: str
    post: Volume | None
    pre_registered: Volume | None
    labels: np.ndarray
    lesions: pd.DataFrame
    enhancement: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    rejected_labels: np.ndarray | None = None
    rejected: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: dict[str, Any] = field(default_factory=dict)


def view_from_result(
    result: Any, *, title: str, summary: dict[str, Any] | None = None
) -> SessionView:
    """Build a :class:`SessionView` from a :class:`~gdlesion.pipeline.StudyResult` in memory.

    Attributes a result lacks (e.g. a custom study function's) are left out of the page.
    """
    if summary is None:
        summary = result.summary_dict() if hasattr(result, "summary_dict") else {}
        if not summary and getattr(result, "registration", None) is not None:
            summary = {"registration": dict(result.registration.qc_dict())}
    enh = getattr(result, "enhancement", None)
    return SessionView(
        title=title,
        post=result.post,
        pre_registered=getattr(result, "pre_registered", None),
        labels=np.asarray(result.labels),
        lesions=pd.DataFrame(result.lesions),
        enhancement=enh.data if isinstance(enh, Volume) else enh,
        brain_mask=getattr(result, "brain_mask", None),
        rejected_labels=getattr(result, "rejected_labels", None),
        rejected=pd.DataFrame(getattr(result, "rejected", pd.DataFrame())),
        summary=summary,
    )


def _read_table(path: Path, *, sep: str = ",") -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path, sep=sep, na_values=["n/a"], keep_default_na=False)


def _load_labels(path: Path, post: Volume) -> np.ndarray | None:
    """Read an integer label map or mask on the post grid (may be all zero); ``None`` if absent."""
    if not path.is_file():
        return None
    return io.load_labels(path, reference=post).data


def load_inspect_view(
    out_dir: str | os.PathLike, *, post: str | os.PathLike | None = None
) -> SessionView:
    """Read an ``inspect --out`` folder back into a :class:`SessionView`.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder written by :func:`gdlesion.pipeline.write_study_outputs`.
    post : path, optional
        The post-contrast scan; default the path recorded in ``report_sources.json``.

    Raises
    ------
    InputError
        No ``summary.json``, or the post scan cannot be found.
    """
    out = Path(out_dir)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise InputError(f"{out}: no summary.json; not an inspect output folder")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    post_path = Path(post) if post is not None else _recorded_post(out)
    post_v = io.load_volume(post_path, role="post-contrast scan")
    pre = io.load_volume(out / "pre_registered.nii.gz", role="registered pre scan")
    labels = _load_labels(out / "lesion_labels.nii.gz", post_v)
    enh_path = out / "enhancement.nii.gz"
    mask = _load_labels(out / "brain_mask.nii.gz", post_v)
    return SessionView(
        title=post_v.name,
        post=post_v,
        pre_registered=pre,
        labels=labels if labels is not None else np.zeros(post_v.shape, np.int32),
        lesions=_read_table(out / "lesions.csv"),
        enhancement=io.load_volume(enh_path, role="enhancement map").data
        if enh_path.is_file() else None,
        brain_mask=None if mask is None else mask > 0,
        rejected_labels=_load_labels(out / "rejected_labels.nii.gz", post_v),
        rejected=_read_table(out / "rejected.csv"),
        summary=summary,
    )


def _recorded_post(out: Path) -> Path:
    src = out / SOURCES_NAME
    try:
        path = json.loads(src.read_text(encoding="utf-8"))["post"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{out}: the post scan is not recorded; pass it with --post") from None
    if not Path(path).is_file():
        raise InputError(f"{out}: recorded post scan {path} is missing; pass it with --post")
    return Path(path)


# --- page content ---------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value) if value is not None and value != "" else "n/a"


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key in sorted(d):
        val = d[key]
        if isinstance(val, dict):
            rows += _flatten(val, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", _fmt(val)))
    return rows


def _id_column(table: pd.DataFrame) -> str | None:
    return next((c for c in ("lesion_id", "label") if c in table.columns), None)


#: Encodes an RGB image as a PNG data URI, now or later (a future of the URI).
_Encode = Callable[[np.ndarray], "str | Future[str]"]


@dataclass(frozen=True, eq=False)
class _Canonical:
    """A session's arrays reoriented once to RAS axes (see :func:`rf.canonical`)."""

    canon: rf.Canonical
    post: np.ndarray
    pre: np.ndarray | None
    mask: np.ndarray | None
    enhancement: np.ndarray | None
    labels: np.ndarray


def _mean_index(mask: np.ndarray) -> np.ndarray:
    """Return the mean of ``np.nonzero(mask)`` per axis, from per-axis counts (same values)."""
    total = int(np.count_nonzero(mask))
    centre = np.empty(mask.ndim)
    for axis in range(mask.ndim):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
        # integer sums, then one correctly rounded division: the float mean of the indices
        centre[axis] = int(np.dot(np.arange(counts.size, dtype=np.int64),
                                  counts.astype(np.int64))) / total
    return centre


def _registration_figures(
    c: _Canonical, encode: _Encode, *, post_w: tuple[float, float],
    pre_w: tuple[float, float] | None,
) -> dict[str, Any]:
    canon, mask_c, post_c = c.canon, c.mask, c.post
    center = (_mean_index(mask_c) if mask_c is not None and mask_c.any()
              else (np.array(post_c.shape) - 1) / 2.0)
    post_planes = rf.plane_slices(post_c, canon.zooms, center)
    figs: dict[str, Any] = dict.fromkeys(_FIGURES, "")
    figs["post"] = encode(rf.hstack([rf.to_rgb(p, *post_w) for p in post_planes]))
    if c.pre is not None and pre_w is not None:
        pre_planes = rf.plane_slices(c.pre, canon.zooms, center)
        figs["pre"] = encode(rf.hstack([rf.to_rgb(p, *pre_w) for p in pre_planes]))
        figs["edges"] = encode(rf.hstack([
            rf.overlay_edges(rf.to_rgb(p, *post_w), q, rf.MAGENTA)
            for p, q in zip(post_planes, pre_planes, strict=True)
        ]))
    if mask_c is not None:
        mask_planes = rf.plane_slices(mask_c.astype(np.uint8), canon.zooms, center, order=0)
        figs["mask"] = encode(rf.hstack([
            rf.overlay_outline(rf.to_rgb(p, *post_w), m > 0, rf.CYAN)
            for p, m in zip(post_planes, mask_planes, strict=True)
        ]))
    if c.enhancement is not None:
        planes = rf.plane_slices(c.enhancement, canon.zooms, center)
        les = rf.plane_slices((c.labels > 0).astype(np.uint8), canon.zooms, center, order=0)
        rgbs = [rf.enhancement_rgb(p) for p in planes]
        if mask_c is not None:
            rgbs = [rf.overlay_outline(r, m > 0, (0, 0, 0)) for r, m in zip(rgbs, mask_planes,
                                                                             strict=True)]
        rgbs = [rf.overlay_outline(r, m > 0, (0, 150, 0)) for r, m in zip(rgbs, les, strict=True)]
        figs["enhancement"] = encode(rf.hstack(rgbs))
    return figs


def _lesion_entries(canon: rf.Canonical, table: pd.DataFrame, labels_c: np.ndarray | None,
                    layers: list, windows: list, color: tuple[int, int, int], encode: _Encode,
                    max_images: int | None = None) -> list[dict[str, Any]]:
    if labels_c is None or table.empty:
        return []
    idcol = _id_column(table)
    from scipy import ndimage as ndi

    boxes = ndi.find_objects(np.maximum(labels_c, 0))  # one pass for every label
    entries = []
    for n, row in enumerate(table.to_dict("records")):
        lid = int(row[idcol]) if idcol else n + 1
        entry = {"id": lid, "reason": str(row.get("reason", "")), "image": "", "slice": None,
                 "measures": [(k, _fmt(v)) for k, v in row.items() if k not in _HIDDEN]}
        box = boxes[lid - 1] if 0 < lid <= len(boxes) else None
        if box is not None and (max_images is None or n < max_images):
            rgb, k = rf.lesion_tile(layers, labels_c, lid, canon.zooms, windows, color=color,
                                    box=box)
            entry.update(image=encode(rgb), slice=k)
        entries.append(entry)
    return entries


def session_context(view: SessionView) -> dict[str, Any]:
    """Template context of a session page (figures encoded, numbers formatted)."""
    s = view.summary
    context: dict[str, Any] = {
        "title": view.title,
        "lesion_count": int(len(view.lesions)),
        "total_volume": _fmt(float(view.lesions["volume_mm3"].sum()) if "volume_mm3" in
                             view.lesions and len(view.lesions) else 0.0),
        "rejected_count": int(len(view.rejected)),
        "warnings": [str(w) for w in s.get("warnings", [])],
        "registration": [(k, v) for k, v in _flatten(s.get("registration", {}))
                         if not k.startswith("matrix_ras")]
        + [(f"FLAIR {k}", v) for k, v in _flatten(s.get("flair_registration") or {})
           if not k.startswith("matrix_ras")],
        "parameters": _flatten(s.get("parameters", {})),
        "versions": _flatten(s.get("versions", {})),
        "timings": _flatten(s.get("timings_s", {})),
        "statistics": _flatten(s.get("statistics", {})),
        "inputs": [(k, v) for k, v in _flatten(s.get("inputs", {})) if v],
        "figures": dict.fromkeys(_FIGURES, ""), "lesions": [], "rejected": [], "panels": [],
        "max_rejected_images": MAX_REJECTED_IMAGES,
    }
    if view.post is None:
        return context
    canon = rf.canonical(view.post.affine)
    # views, not copies: only slices and small crops of the volumes are drawn
    c = _Canonical(
        canon=canon,
        post=canon.view(view.post.data),
        pre=canon.view(view.pre_registered.data) if view.pre_registered is not None else None,
        mask=canon.view(view.brain_mask) > 0 if view.brain_mask is not None else None,
        enhancement=canon.view(view.enhancement) if view.enhancement is not None else None,
        labels=canon.view(view.labels),
    )
    # display windows, shared by the registration figures and the lesion tiles
    pre_w = rf.window(c.pre, c.mask) if c.pre is not None else None
    post_w = rf.window(c.post, c.mask)
    layers, windows, names = [], [], []
    if pre_w is not None:
        layers.append((c.pre, "gray"))
        windows.append(pre_w)
        names.append("pre (registered)")
    layers.append((c.post, "gray"))
    windows.append(post_w)
    names.append("post")
    if c.enhancement is not None:
        layers.append((c.enhancement, "z"))
        windows.append((0.0, 1.0))
        names.append("enhancement (z)")
    context["panels"] = names
    rejected_c = canon.view(view.rejected_labels) if view.rejected_labels is not None else None
    # the PNGs are compressed (zlib releases the GIL) in worker threads while the next
    # images are drawn
    with ThreadPoolExecutor(max_workers=2) as pool:
        def encode(rgb: np.ndarray) -> Future[str]:
            return pool.submit(rf.png_data_uri, rgb)

        figures = _registration_figures(c, encode, post_w=post_w, pre_w=pre_w)
        lesions = _lesion_entries(canon, view.lesions, c.labels, layers, windows, rf.RED, encode)
        rejected = _lesion_entries(canon, view.rejected, rejected_c, layers, windows, rf.YELLOW,
                                   encode, max_images=MAX_REJECTED_IMAGES)
    context["figures"] = {k: _done(v) for k, v in figures.items()}
    for entry in lesions + rejected:
        entry["image"] = _done(entry["image"])
    context["lesions"], context["rejected"] = lesions, rejected
    return context


def _done(value: str | Future[str]) -> str:
    return value.result() if isinstance(value, Future) else value


def render_template(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with autoescaping and strict undefined variables."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gdlesion", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(name).render(**context)


def render_session_page(view: SessionView, *, back_link: str = "") -> str:
    """HTML text of a session page; ``back_link`` is a relative URL of the batch page."""
    return render_template("session.html.j2", back_link=back_link, **session_context(view))


def write_session_report(
    view: SessionView, path: str | os.PathLike, *, back_link: str = ""
) -> Path:
    """Render and write a session page atomically; return its path."""
    return io.write_text_atomic(path, render_session_page(view, back_link=back_link))


def write_inspect_report(result: Any, out_dir: str | os.PathLike, *, inputs: tuple = ()) -> Path:
    """Write ``report.html`` (and ``report_sources.json``) into an ``inspect --out`` folder.

    ``inputs`` are the input paths given to :func:`~gdlesion.pipeline.write_study_outputs`;
    the one whose file name is the post scan's is recorded so that
    ``gdlesion report`` can rebuild the page later.
    """
    out = Path(out_dir)
    post_name = result.post.name
    for p in inputs:
        if p is not None and Path(p).name == post_name and Path(p).is_file():
            io.write_json_atomic(out / SOURCES_NAME, {"post": str(Path(p).resolve())})
            break
    view = view_from_result(result, title=post_name or "gdlesion session")
    return write_session_report(view, out / REPORT_NAME)


def rebuild_reports(
    output: str | os.PathLike, *, post: str | os.PathLike | None = None
) -> tuple[list[Path], list[str]]:
    """Rebuild the pages of an ``inspect --out`` folder or of a batch output folder.

    Parameters
    ----------
    output : str or os.PathLike
        An ``inspect --out`` folder or a ``gdlesion batch`` output folder.
    post : path, optional
        Post scan of an inspect folder (default: the recorded one).

    Returns
    -------
    tuple
        Pages written (for a batch: every rebuildable session page, then
        ``report.html``) and one message per batch session that could not be rebuilt.

    Raises
    ------
    OutputError
        ``output`` is neither an inspect nor a batch output folder.
    """
    out = Path(output)
    if (out / "summary.json").is_file():
        return [write_session_report(load_inspect_view(out, post=post), out / REPORT_NAME)], []
    from .batch_session import STATE_DIR

    if (out / STATE_DIR / "sessions").is_dir():
        from .report_batch import rebuild_batch_reports

        return rebuild_batch_reports(out)
    raise OutputError(f"{out}: neither an inspect output (summary.json) nor a batch output")
