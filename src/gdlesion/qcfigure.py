"""The ``qc.png`` of one study: axial slices through every lesion with outlines.

Kept deliberately simple (matplotlib Agg, no interactivity); the HTML report
builds its own pages from the written outputs.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from . import io

if TYPE_CHECKING:
    from .pipeline import StudyResult

__all__ = ["save_qc_png", "preload_matplotlib", "MAX_PANELS"]

#: Most lesions shown (largest first; ids are sorted by volume); the rest are listed in lesions.csv.
MAX_PANELS = 48


def _import_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def preload_matplotlib() -> threading.Thread:
    """Import matplotlib (Agg) in a background thread; returns the started thread.

    The CLI calls this before a study runs when it will draw figures: the
    ~0.3 s import then overlaps the numeric work (which releases the GIL)
    instead of adding to the wall time.
    """
    thread = threading.Thread(target=_import_matplotlib, name="gdlesion-preload", daemon=True)
    thread.start()
    return thread


def _axial_axis(affine: np.ndarray) -> int:
    directions = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return int(np.argmax(np.abs(directions[2])))


def save_qc_png(result: StudyResult, path: str | os.PathLike) -> None:
    """Draw slices through every lesion (or three default slices) and save atomically.

    Lesions are outlined in red with their id, rejected candidates in yellow.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    post = result.post.data
    axis = _axial_axis(result.post.affine)
    mask_idx = np.nonzero(result.brain_mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    lo, hi = (int(mask_idx[0]), int(mask_idx[-1])) if mask_idx.size else (0, post.shape[axis] - 1)
    if result.lesion_count:
        table = result.lesions.head(MAX_PANELS)
        col = ("bbox_i", "bbox_j", "bbox_k")[axis]
        slices = ((table[f"{col}_min"] + table[f"{col}_max"]) // 2).astype(int).tolist()
        titles = [
            f"lesion {i} ({v:.0f} mm³)"
            for i, v in zip(table["lesion_id"], table["volume_mm3"], strict=True)
        ]
    else:
        slices = [int(lo + f * (hi - lo)) for f in (0.3, 0.5, 0.7)]
        titles = [f"slice {k} (no lesion)" for k in slices]
    vals = post[result.brain_mask] if result.brain_mask.any() else post.ravel()
    vmin, vmax = np.percentile(vals[:: max(1, vals.size // 200_000)], [1, 99.5])
    ncol = min(4, len(slices))
    nrow = int(np.ceil(len(slices) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k, title in zip(axes.ravel(), slices, titles, strict=False):
        def take(a: np.ndarray, k: int = k) -> np.ndarray:
            return np.take(a, k, axis=axis).T

        ax.imshow(
            take(post), cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest"
        )
        les = take(result.labels)
        rej = take(result.rejected_labels)
        if (rej > 0).any():
            ax.contour(rej > 0, levels=[0.5], colors="yellow", linewidths=0.6)
        if (les > 0).any():
            ax.contour(les > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(title, fontsize=8)
    fig.suptitle(
        f"{result.lesion_count} lesion(s), {result.total_volume_mm3:.0f} mm³ "
        "(red: lesions, yellow: rejected candidates)",
        fontsize=9, y=1 - 0.12 / (3.4 * nrow), va="top",
    )
    # fixed margins (in inches: room for the titles) instead of tight_layout, which
    # measures every text's extent and took ~0.1-0.3 s per figure
    height = 3.4 * nrow
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height,
                        wspace=0.04, hspace=0.25 / 3.4)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png", metadata={"Software": None})
    plt.close(fig)
