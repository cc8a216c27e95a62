"""Rigid registration: gdlesion vs itk-elastix (default rigid map) vs ANTs QuickRigid.

Run from the repository root (needs ../shared/data; competitors from the ``benchmark`` extra)::

    .venv/bin/python benchmarks/registration.py [--repeats 3]

Cases, all in one run so ratios compare like with like:

* ``lesjak <patient> 8deg/8mm``: the real pre-contrast T1 moved by a known rigid transform (applied
  to the affine, no resampling, like nibabel's ``make_moved_anat.py``) registered onto the real
  post-contrast T1 (182x218x182, 1 mm). Error = max over brain voxels of |M_est x - M_true x|.
* ``tcga native``: the real clinical 2-D pair (0.9x0.9x5.5 mm, not pre-aligned, same header).
  No ground truth: error is measured against a careful slow gdlesion registration (full
  resolution, many samples) and the head correlation after registration is reported.

A competitor that is not installed is skipped with a message. Times are wall-clock seconds of the
registration call only (images already in memory), median over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gdlesion.io import Volume, load_volume, matrix_from_sitk_transform, save_volume
from gdlesion.registration import register_rigid, resample_volume, rigid_matrix

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def max_error(estimated: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    diff = points @ (estimated[:3, :3] - truth[:3, :3]).T + (estimated[:3, 3] - truth[:3, 3])
    return float(np.sqrt((diff**2).sum(axis=1)).max())


def head_correlation(moving: Volume, fixed: Volume, matrix: np.ndarray, head: np.ndarray) -> float:
    moved = resample_volume(moving, fixed, matrix).data[head].astype(np.float64)
    return float(np.corrcoef(moved, fixed.data[head].astype(np.float64))[0, 1])


# --- methods: each takes (moving path, fixed path, moving, fixed) and returns a RAS matrix -----


def run_gdlesion(moving_path, fixed_path, moving, fixed) -> np.ndarray:
    return register_rigid(moving, fixed).matrix_ras


def make_elastix() -> Callable | None:
    try:
        import itk  # noqa: F401  (itk-elastix)
    except ImportError:
        print("itk-elastix not installed: skipping elastix (pip install 'gdlesion[benchmark]')")
        return None
    import itk

    params = itk.ParameterObject.New()
    params.AddParameterMap(params.GetDefaultParameterMap("rigid"))

    def run(moving_path, fixed_path, moving, fixed) -> np.ndarray:
        f = itk.imread(str(fixed_path), itk.F)
        m = itk.imread(str(moving_path), itk.F)
        _, tparams = itk.elastix_registration_method(f, m, parameter_object=params,
                                                      log_to_console=False)
        tmap = tparams.GetParameterMap(0)
        euler = sitk.Euler3DTransform()  # ITK Euler3D, ComputeZYX false, as elastix uses
        euler.SetCenter([float(v) for v in tmap["CenterOfRotationPoint"]])
        euler.SetParameters([float(v) for v in tmap["TransformParameters"]])
        return matrix_from_sitk_transform(euler)

    return run


def make_ants() -> Callable | None:
    try:
        import ants
    except ImportError:
        print("antspyx not installed: skipping ANTs QuickRigid (pip install 'gdlesion[benchmark]')")
        return None

    def run(moving_path, fixed_path, moving, fixed) -> np.ndarray:
        f = ants.image_read(str(fixed_path))
        m = ants.image_read(str(moving_path))
        reg = ants.registration(f, m, type_of_transform="QuickRigid")
        tx = ants.read_transform(reg["fwdtransforms"][0])
        p = np.asarray(tx.parameters, dtype=np.float64)
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(p[:9].tolist())
        affine.SetTranslation(p[9:12].tolist())
        affine.SetCenter(np.asarray(tx.fixed_parameters, dtype=np.float64).tolist())
        return matrix_from_sitk_transform(affine)  # ANTs maps fixed -> moving points, LPS

    return run


def timed(fn: Callable, *args, repeats: int) -> tuple[float, np.ndarray]:
    times, matrix = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        matrix = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--patient", default="patient07")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"real data not found at {DATA}")
    methods = {"gdlesion": run_gdlesion, "elastix rigid": make_elastix(),
               "ANTs QuickRigid": make_ants()}
    methods = {k: v for k, v in methods.items() if v is not None}

    cases = []
    pre = load_volume(DATA / "lesjak2018_ms" / args.patient / "T1.nii.gz")
    post = load_volume(DATA / "lesjak2018_ms" / args.patient / "T1POST.nii.gz")
    brain = post.data > 0
    points = post.voxel_to_world(np.argwhere(brain))
    truth = rigid_matrix(rotation_deg=(8.0, -8.0, 8.0), translation_mm=(8.0, -8.0, 8.0),
                         center_mm=tuple(points.mean(axis=0)))
    cases.append((f"lesjak {args.patient} 8deg/8mm", Volume(pre.data, truth @ pre.affine, "moved"),
                  post, truth, points, brain))
    tcga_pre = load_volume(DATA / "tcga_fg_6692" / "native" / "T1w_pre.nii.gz")
    tcga_post = load_volume(DATA / "tcga_fg_6692" / "native" / "T1w_post_gad.nii.gz")
    careful = register_rigid(tcga_pre, tcga_post, levels_mm=(4.0, 2.0, 1.0),
                             samples_per_level=150_000).matrix_ras
    head = tcga_post.data > np.percentile(tcga_post.data, 60)
    cases.append(("tcga native 2-D (vs careful)", tcga_pre, tcga_post, careful,
                  tcga_post.voxel_to_world(np.argwhere(head)), head))

    print(f"date {time.strftime('%Y-%m-%d %H:%M')}  machine {platform.machine()} "
          f"{os.cpu_count()} cores  load {os.getloadavg()[0]:.1f}  repeats {args.repeats}")
    header = (f"{'case':32} {'method':16} {'time s':>7} {'x elastix':>9} {'max err mm':>10} "
              f"{'corr':>6}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name, moving, fixed, reference, pts, head_mask in cases:
            moving_path = save_volume(Path(tmp) / "moving.nii.gz", moving.data, moving.affine)
            fixed_path = save_volume(Path(tmp) / "fixed.nii.gz", fixed.data, fixed.affine)
            rows = {}
            for label, fn in methods.items():
                rows[label] = timed(fn, moving_path, fixed_path, moving, fixed,
                                    repeats=args.repeats)
            base = rows.get("elastix rigid", (float("nan"), None))[0]
            for label, (seconds, matrix) in rows.items():
                err = max_error(matrix, reference, pts)
                corr = head_correlation(moving, fixed, matrix, head_mask)
                print(f"{name:32} {label:16} {seconds:7.2f} {seconds / base:9.2f} {err:10.2f} "
                      f"{corr:6.3f}")


if __name__ == "__main__":
    main()
