"""Helpers for the batch tests: tiny scans on disk and a substitute study function.

``fake_study`` stands in for ``pipeline.run_study`` in the unit tests of discovery,
locking, resume and executors: it thresholds post - pre and labels the blobs, so
its lesion counts are known from the planted blobs. It lives in an importable
module (not a test file) so spawned worker processes can unpickle it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from gdlesion.errors import SegmentationError
from gdlesion.io import Volume

SHAPE = (12, 13, 14)


@dataclass
class FakeRegistration:
    similarity_after: float

    def qc_dict(self) -> dict:
        return {"similarity_before": 0.9, "similarity_after": self.similarity_after,
                "metric_final": -0.5, "overlap_fraction": 1.0}


@dataclass
class FakeResult:
    post: Volume
    pre_registered: Volume
    labels: np.ndarray
    lesions: pd.DataFrame
    registration: FakeRegistration
    lesion_count: int
    total_volume_mm3: float
    warnings: list = field(default_factory=list)


def fake_study(pre, post, *, flair=None, params=None, progress=None):
    """Threshold post - pre >= 50 and label the blobs (one lesion per planted blob)."""
    delay = float((params or {}).get("delay_s", 0.0))
    if delay:
        time.sleep(delay)
    diff = post.data - pre.data
    if (params or {}).get("fail_on") and post.name.startswith(params["fail_on"]):
        raise SegmentationError(f"{post.name}: no brain found")
    labels, n = ndimage.label(diff >= 50)
    vox = post.voxel_volume_mm3
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    lesions = pd.DataFrame({"label": np.arange(1, n + 1), "volume_mm3": sizes * vox})
    return FakeResult(post, pre, labels.astype(np.int32), lesions,
                      FakeRegistration(round(float(np.corrcoef(pre.data.ravel(),
                                                               post.data.ravel())[0, 1]), 6)),
                      int(n), float(sizes.sum() * vox))


def write_pair(folder: Path, pre_name: str, post_name: str, *, n_blobs: int, seed: int,
               flair_name: str | None = None) -> None:
    """Write a pre scan and a post scan with ``n_blobs`` separate bright cubes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pre = 100 + rng.normal(0, 2, SHAPE).astype(np.float32)
    post = pre.copy()
    for b in range(n_blobs):
        i = 1 + 4 * b
        post[i:i + 2, 2:4, 2:5] += 200
    aff = np.diag([1.0, 1.1, 1.2, 1.0])
    nib.save(nib.Nifti1Image(pre, aff), str(folder / pre_name))
    nib.save(nib.Nifti1Image(post, aff), str(folder / post_name))
    if flair_name:
        nib.save(nib.Nifti1Image(pre * 1.5, aff), str(folder / flair_name))


def write_bids(root: Path, layout: dict[str, dict[str, int]], *, sessions: bool = True) -> Path:
    """BIDS tree: ``layout[subject][session] = n_blobs`` (session keys ignored if not sessions)."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    seed = 0
    for sub, ses_map in layout.items():
        for ses, n in ses_map.items():
            seed += 1
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if sessions else "") / "anat"
            stem = f"sub-{sub}" + (f"_ses-{ses}" if sessions else "")
            write_pair(folder, f"{stem}_T1w.nii.gz", f"{stem}_ce-gadolinium_T1w.nii.gz",
                       n_blobs=n, seed=seed)
            if not sessions:
                break
    return root
