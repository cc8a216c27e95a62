"""Helpers of the report tests: a small simulated study with lesions and rejected candidates.

Lives in an importable module (not a test file) so the session-page and browser
tests can share it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from gdlesion.params import DetectionParams
from gdlesion.pipeline import run_study
from gdlesion.simulate import simulate_study

#: A post scan file name that must be escaped in the page.
NASTY_POST = "<script>&post.nii.gz"


def simulated_result(folder: Path, post_name: str = NASTY_POST):
    """Write a 3 mm phantom with 3 large planted lesions and run the pipeline on the files.

    Returns ``(result, pre_path, post_path)``; takes about 5 s.
    """
    base = simulate_study(n_lesions=3, seed=3, voxel_size=3.0, with_flair=False)
    specs = [dataclasses.replace(les, diameter_mm=12.0, contrast=0.8, kind="nodular")
             for les in base.lesions]
    study = simulate_study(lesions=specs, seed=3, voxel_size=3.0, with_flair=False)
    folder.mkdir(parents=True, exist_ok=True)
    pre, post = folder / "pre.nii.gz", folder / post_name
    nib.save(nib.Nifti1Image(study.pre.data, study.pre.affine), str(pre))
    nib.save(nib.Nifti1Image(study.post.data, study.post.affine), str(post))
    return run_study(pre, post, params=DetectionParams()), pre, post


def image_sources(html: str) -> list[str]:
    """The ``src`` of every ``<img>`` of a page."""
    return re.findall(r'<img[^>]*\bsrc="([^"]*)"', html)


def lesion_ids(html: str, kind: str) -> list[int]:
    """Ids of the ``<div class="lesion" id="KIND-N">`` blocks of a session page."""
    return sorted(int(m) for m in re.findall(rf'<div class="lesion" id="{kind}-(\d+)"', html))


def assert_self_contained(html: str) -> None:
    """No URL leaves the file: images are data URIs, no remote script/style/link."""
    assert not re.search(r'(src|href)="(https?:)?//', html)
    srcs = image_sources(html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert np.all([len(s) > 100 for s in srcs])
