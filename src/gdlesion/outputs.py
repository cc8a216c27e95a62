"""Files of one study: the ``gdlesion inspect --out`` layout written from a :class:`StudyResult`.

:func:`write_study_outputs` writes every file atomically; :func:`lesions_table_csv`
is the one CSV rendering of lesion tables, also used by the batch runner.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import io
from .measure import LESION_COLUMNS

if TYPE_CHECKING:
    from .pipeline import StudyResult

__all__ = ["lesions_table_csv", "write_study_outputs"]


def lesions_table_csv(table: pd.DataFrame) -> str:
    """Render a lesion (or rejected) table as CSV text: fixed float format, LF line ends.

    A table without rows gives the header line only.
    """
    return table.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def write_study_outputs(
    result: StudyResult,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: tuple = (),
    report: bool = True,
) -> Path:
    """Write the ``inspect --out`` files atomically into ``out_dir``.

    Files: ``lesion_labels.nii.gz`` (int16/int32 0..N), ``lesion_mask.nii.gz``
    (uint8 0/1), ``pre_registered.nii.gz``, ``enhancement.nii.gz`` (float32
    noise units), ``brain_mask.nii.gz``, ``rejected_labels.nii.gz``,
    ``lesions.csv``, ``rejected.csv``, ``summary.json`` and ``qc.png``, all on
    the post scan's grid. With ``report`` (default), also the QC page
    ``report.html`` (see :func:`gdlesion.report.write_inspect_report`).
    ``summary.json`` is written last, so a folder that holds it is complete.

    Raises
    ------
    OutputError
        ``out_dir`` is not empty and ``overwrite`` is false, or holds an input.
    """
    from .qcfigure import save_qc_png

    out = io.ensure_writable_dir(out_dir, overwrite=overwrite, inputs=inputs)
    out.mkdir(parents=True, exist_ok=True)
    aff = result.post.affine
    label_dtype = np.int16 if max(result.lesion_count, len(result.rejected)) < 32767 else np.int32
    volumes = (
        ("lesion_labels.nii.gz", result.labels, label_dtype),
        ("lesion_mask.nii.gz", result.labels > 0, np.uint8),
        ("rejected_labels.nii.gz", result.rejected_labels, label_dtype),
        ("brain_mask.nii.gz", result.brain_mask, np.uint8),
        ("pre_registered.nii.gz", result.pre_registered.data, np.float32),
        ("enhancement.nii.gz", result.enhancement.data, np.float32),
    )
    # gzip compression (GIL released) in background threads while the figures are drawn
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [
            pool.submit(io.save_volume, out / name, data, aff, dtype=dtype)
            for name, data, dtype in volumes
        ]
        io.write_text_atomic(
            out / "lesions.csv", lesions_table_csv(result.lesions[LESION_COLUMNS])
        )
        io.write_text_atomic(out / "rejected.csv", lesions_table_csv(result.rejected))
        save_qc_png(result, out / "qc.png")
        if report:
            from .report import write_inspect_report

            write_inspect_report(result, out, inputs=inputs)
        for job in jobs:
            job.result()
    # last: a folder holding summary.json is complete (a run stopped while writing leaves
    # whole files but no summary)
    io.write_json_atomic(out / "summary.json", result.summary_dict())
    return out
