"""The ``qc.png`` of one study: axial slices through every lesion with outlines.

Kept deliberately simple: each panel is composed as an RGB array (vectorised
numpy, the helpers of :mod:`gdlesion.report_figures`) and the sheet is encoded
with Pillow. Same display convention as the HTML report: the closest RAS
orientation, patient left on image left, anterior up, square pixels.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from . import io
from . import report_figures as rf

if TYPE_CHECKING:
    from .pipeline import StudyResult

__all__ = ["save_qc_png", "MAX_PANELS", "PANEL_PIXELS"]

#: Most lesions shown (largest first; ids are sorted by volume); the rest are listed in lesions.csv.
MAX_PANELS = 48
#: Longest side of one panel's slice, in pixels.
PANEL_PIXELS = 256
#: Panels per row.
COLUMNS = 4

_TITLE = 18  # pixels of a panel's title band
_HEADER = 24  # pixels of the sheet's header band
_GAP = 4
_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)


def panel_slices(result: StudyResult) -> tuple[np.ndarray, list[str]]:
    """Centres (RAS-reordered voxel indices, ``(n, 3)``) and titles of the panels.

    One panel per lesion (the axial slice through the middle of its bounding
    box, at most :data:`MAX_PANELS`), or three slices at 30, 50 and 70 % of the
    brain's axial extent when there is none (centred in-plane).
    """
    canon = rf.canonical(result.post.affine)
    if result.lesion_count:
        table = result.lesions.head(MAX_PANELS)
        centre = np.stack([
            (table[f"bbox_{a}_min"].to_numpy() + table[f"bbox_{a}_max"].to_numpy()) / 2.0
            for a in "ijk"
        ], axis=-1)
        titles = [
            f"lesion {i} ({v:.0f} mm3)"
            for i, v in zip(table["lesion_id"], table["volume_mm3"], strict=True)
        ]
        return canon.index(centre, result.post.shape), titles
    mask = canon.view(result.brain_mask)
    idx = np.nonzero(mask.any(axis=(0, 1)))[0]
    lo, hi = (int(idx[0]), int(idx[-1])) if idx.size else (0, mask.shape[2] - 1)
    slices = [int(lo + f * (hi - lo)) for f in (0.3, 0.5, 0.7)]
    centres = [[(mask.shape[0] - 1) / 2, (mask.shape[1] - 1) / 2, k] for k in slices]
    return np.array(centres, dtype=float), [f"slice {k} (no lesion)" for k in slices]


def _panel(
    post: np.ndarray, lesions: np.ndarray, rejected: np.ndarray, zooms: np.ndarray, k: int,
    window: tuple[float, float],
) -> np.ndarray:
    """RGB axial slice ``k`` with rejected candidates outlined yellow and lesions red."""
    zz = rf._plane_zooms(zooms, "axial")
    img = rf._square(rf._plane(post, "axial", k).astype(np.float32), zz,
                     pixels=PANEL_PIXELS, order=1)
    rgb = rf.to_rgb(img, *window)
    for labels, color in ((rejected, rf.YELLOW), (lesions, rf.RED)):
        plane = rf._plane(labels, "axial", k) > 0
        if plane.any():
            up = rf._square(plane.astype(np.uint8), zz, pixels=PANEL_PIXELS, order=0) > 0
            rgb[rf._boundary(up)] = color
    return rgb


def qc_sheet(result: StudyResult) -> np.ndarray:
    """Compose the ``qc.png`` image as an RGB uint8 array (see :func:`save_qc_png`)."""
    from PIL import Image, ImageDraw, ImageFont

    canon = rf.canonical(result.post.affine)
    post = canon.view(result.post.data)
    mask = canon.view(result.brain_mask)
    lesions = canon.view(result.labels)
    rejected = canon.view(result.rejected_labels)
    window = rf.window(post, mask)
    centres, titles = panel_slices(result)
    slices = np.clip(np.floor(centres[:, 2]), 0, post.shape[2] - 1).astype(int)
    panels = [_panel(post, lesions, rejected, canon.zooms, int(k), window) for k in slices]
    small, large = ImageFont.load_default(size=12), ImageFont.load_default(size=14)
    header = (f"{result.lesion_count} lesion(s), {result.total_volume_mm3:.0f} mm3 "
              "(red: lesions, yellow: rejected candidates)")
    cell_h = max(p.shape[0] for p in panels) + _TITLE
    cell_w = max(p.shape[1] for p in panels)
    ncol = min(COLUMNS, len(panels))
    nrow = -(-len(panels) // ncol)
    width = max(ncol * (cell_w + _GAP) + _GAP, int(large.getlength(header)) + 2 * _GAP)
    sheet = np.empty((_HEADER + nrow * (cell_h + _GAP), width, 3), dtype=np.uint8)
    sheet[...] = _BACKGROUND
    # pixels per voxel of the displayed slices (rows: y reversed, columns: x)
    plane_shape = np.array([post.shape[1], post.shape[0]], dtype=float)
    origins = []
    for n, panel in enumerate(panels):
        top = _HEADER + (n // ncol) * (cell_h + _GAP) + _TITLE
        left = _GAP + (n % ncol) * (cell_w + _GAP) + (cell_w - panel.shape[1]) // 2
        sheet[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
        scale = np.array(panel.shape[:2], dtype=float) / plane_shape
        row = (plane_shape[0] - 1 - centres[n, 1] + 0.5) * scale[0] - 0.5
        col = (centres[n, 0] + 0.5) * scale[1] - 0.5
        origins.append((left, top, top + row, left + col))
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    draw.text((_GAP, 4), header, font=large, fill=_TEXT)
    for (left, top, _, _), title in zip(origins, titles, strict=True):
        draw.text((left, top - _TITLE + 2), title, font=small, fill=_TEXT)
    if result.lesion_count:
        # a ring around each panel's own lesion, so that a small one is easy to find
        mm_per_px = max(p * s for p, s in zip(plane_shape[::-1], canon.zooms[:2], strict=True)
                        ) / PANEL_PIXELS
        volumes = result.lesions["volume_mm3"].to_numpy()[: len(origins)]
        for (_, _, row, col), vol in zip(origins, volumes, strict=True):
            r = (3.0 * vol / (4.0 * np.pi)) ** (1 / 3) / mm_per_px + 8.0
            draw.ellipse((col - r, row - r, col + r, row + r), outline=rf.RED, width=1)
    return np.asarray(image)


def save_qc_png(result: StudyResult, path: str | os.PathLike) -> None:
    """Draw slices through every lesion (or three default slices) and save atomically.

    Lesions are outlined in red with their id and volume above the panel,
    rejected candidates in yellow. At most :data:`MAX_PANELS` lesions (the
    largest) are shown.
    """
    from PIL import Image

    sheet = qc_sheet(result)
    with io.atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="png", compress_level=1)
