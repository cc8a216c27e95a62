"""How sharp are the scans? Edge sharpness and residual smoothness of real and simulated pairs.

Run from the repository root (needs ../shared/data)::

    .venv/bin/python benchmarks/sharpness.py

Two numbers per case, both as the FWHM (mm) of a Gaussian:

* ``edge PSF``: how blurred the post scan's tissue edges are. The 2 % of brain voxels with the
  steepest gradient (4 voxels or more inside the brain mask, so that the skull-stripping cut does
  not count) are compared with the same scan blurred by a known Gaussian (sigma ``BLUR_MM``): a
  step edge blurred by sigma ``s`` has a peak gradient proportional to ``1 / s``, so the median
  ratio ``q`` of the two gradients gives ``s**2 = BLUR_MM**2 / (q**2 - 1) - GRAD_MM**2`` (the
  gradient's own Gaussian derivative, sigma ``GRAD_MM``, removed). Real edges are not perfect
  steps, so this is an upper bound of the point-spread function.
* ``residual FWHM``: ``summary.json`` ``residual_fwhm_mm_i/j/k`` of ``run_study`` (the smoothness
  of the pre/post residual, :func:`gdlesion.segment.residual_fwhm`), in-plane mean / across.

Cases: the three Lesjak pairs as given, moved by half a voxel (one more linear resampling,
``detection.py --half-voxel``) and blurred as a 1.5 mm acquisition would be; one simulated 1 mm
head as simulated and moved by half a voxel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection as D  # noqa: E402

BLUR_MM = 0.85
GRAD_MM = 0.5


def _gradient(data: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    orders = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    return np.sqrt(sum(ndi.gaussian_filter(data, sigma_vox, order=o) ** 2 for o in orders))


def edge_psf_fwhm(volume) -> float:
    """Upper bound of the post scan's point-spread function (FWHM, mm) from its steepest edges."""
    from gdlesion.preprocess import estimate_brain_mask

    data = np.asarray(volume.data, dtype=np.float32)
    zooms = np.asarray(volume.zooms, dtype=float)
    inner = ndi.binary_erosion(estimate_brain_mask(data, volume.affine), iterations=4)
    g0 = _gradient(data, GRAD_MM / zooms)
    g1 = _gradient(ndi.gaussian_filter(data, BLUR_MM / zooms), GRAD_MM / zooms)
    edges = inner & (g0 >= np.percentile(g0[inner], 98))
    q = float(np.median(g0[edges] / np.maximum(g1[edges], 1e-6)))
    s2 = BLUR_MM**2 / (q**2 - 1.0) - GRAD_MM**2 if q > 1 else np.inf
    return 2.3548 * float(np.sqrt(max(s2, 0.0)))


def blur_acquisition(volume, mm: float):
    """The blur of an ``mm`` acquisition on the 1 mm grid (as in the seventeenth session)."""
    data = ndi.gaussian_filter(np.asarray(volume.data, np.float32), np.sqrt(mm**2 - 1) / 2.3548)
    return volume.with_data(data)


def main() -> None:
    from gdlesion.io import Volume, load_volume
    from gdlesion.pipeline import run_study
    from gdlesion.simulate import simulate_study

    cases = []
    for p in sorted(q.name for q in D.LESJAK.glob("patient*") if q.is_dir()):
        pre = load_volume(D.LESJAK / p / "T1.nii.gz")
        post = load_volume(D.LESJAK / p / "T1POST.nii.gz")
        cases += [
            (f"lesjak-{p[-2:]}", pre, post),
            (f"lesjak-{p[-2:]} half-voxel", D.shift_half_voxel(pre), D.shift_half_voxel(post)),
            (f"lesjak-{p[-2:]} 1.5 mm blur", blur_acquisition(pre, 1.5),
             blur_acquisition(post, 1.5)),
        ]
    s = simulate_study(resolution="1mm", n_lesions=6, seed=1040)
    pre = Volume(s.pre.data, s.pre.affine, "pre")
    post = Volume(s.post.data, s.post.affine, "post")
    cases += [("sim-1mm 1040", pre, post),
              ("sim-1mm 1040 half-voxel", D.shift_half_voxel(pre), D.shift_half_voxel(post))]
    print(f"{'case':28} {'edge PSF mm':>11} {'residual FWHM mm (in-plane / across)':>38}")
    for name, pre, post in cases:
        stats = run_study(pre, post, threads=1).stats
        fwhm = [stats[f"residual_fwhm_mm_{a}"] for a in "ijk"]
        print(f"{name:28} {edge_psf_fwhm(post):11.2f} "
              f"{(fwhm[0] + fwhm[1]) / 2:30.2f} / {fwhm[2]:.2f}", flush=True)


if __name__ == "__main__":
    main()
