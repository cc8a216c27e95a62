"""Enhancing-lesion detection: sensitivity, false positives, Dice, time and memory per study.

Run from the repository root (needs ../shared/data; elastix from the ``benchmark`` extra)::

    .venv/bin/python benchmarks/detection.py [--sims 2] [--lesions 10] [--seed 0] [--ovoid]
        [--cases PREFIX] [--overrides JSON] [--zero-background] [--slices MM] [--inplane K]
        [--half-voxel]
        [--pipeline NAME] [--lesion-fwhm MM]

Cases (each study runs in its own fresh process, so its peak RSS is measured alone):

* ``sim-1mm-*`` / ``sim-2d-*``: ``gdlesion.simulate.simulate_study`` (full heads, moved pre scan,
  veins, sinuses, choroid plexus, dura), 1 mm 3-D (default pipeline) and 0.9x0.9x5.5 mm 2-D
  (``--pipeline clinical-2d``).
  With ``--zero-background`` the heads' air is set to zero, as in ``sample_data/`` (names end
  in ``z``).
* ``*+flair``: the same study with its FLAIR (auto preset: ``flair`` on 3-D grids). Simulator
  FLAIR has its own lesion contrast; on ``lesjak-pNN+ins+flair`` each inserted lesion gets a FLAIR
  hyperintensity calibrated on the expert-outlined real FLAIR lesions of the same patients (mean
  robust z 0.9-2.5, see :func:`insert_flair_lesions`).
* ``lesjak-pNN+ins``: the real Lesjak pair with ``--lesions`` synthetic lesions inserted in deep
  white matter (nodular and ring, 2-14 mm, enhancement 20-60 % of white matter, partial volume by
  3x3x3 supersampling, slightly T1-hypointense on both scans) and the pre scan moved by a random
  rigid transform (<= 3 deg, <= 3 mm, resampled). ``--lesion-fwhm MM`` blurs the planted
  lesions by a Gaussian of that FWHM (a softer scan's point-spread function; see
  ``benchmarks/sharpness.py`` for how sharp the Lesjak scans are).
* ``lesjak-pNN``: the unmodified real pair (no known enhancing lesion; every detection is listed);
  ``lesjak-pNN+flair``: the same with ``--flair``.
* ``tcga-atlas``: the glioma; Dice of the main (largest) lesion against label 4.
* ``tcga-native``: the same glioma on the scanner's own thick-slice pair (0.9x0.9x5.5 mm, skull on,
  pre and post not co-registered; auto preset ``clinical-2d``); label 4 is brought onto the native
  post grid by registering the atlas post scan onto it (:func:`atlas_label_on_native`).

Baseline measured in the same run: elastix's default rigid registration (itk-elastix) on the first
Lesjak pair (five interleaved rounds; the other two pairs three rounds each), against the whole
``gdlesion inspect --out`` process and ``run_study`` (registration + detection) on the same pair.
A truth lesion is detected when a reported lesion overlaps it; a false positive is a reported
lesion that overlaps no truth lesion (dilated by one voxel). On a Lesjak pair with inserted
lesions, the false positives that the same pair without insertions also reports (centroid within
``OWN_MM``, same FLAIR setting) are counted, and also shown apart: they are the patient's own
enhancing foci, already counted under "detections per unmodified real scan". Dice is voxel-wise
over all lesions (simulator ring truth includes the core, so ring Dice is lower by construction).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LESJAK = DATA / "lesjak2018_ms"
SIZE_BINS = [(0, 3), (3, 5), (5, 10), (10, 100)]
CONTRAST_BINS = [(0.2, 0.3), (0.3, 0.4), (0.4, 0.6)]  # insert_lesions draws 0.2-0.6
#: A false positive on an inserted-lesion pair within this distance (mm, centroids) of a
#: detection on the same unmodified pair is the patient's own focus (the post grid is the same).
OWN_MM = 3.0


# --- lesion insertion into a real pair ------------------------------------------------------


def insert_flair_lesions(flair, post, truth, rng):
    """FLAIR hyperintensity at each planted lesion (grown by one voxel, partial volume).

    Calibrated on the real FLAIR lesions of the Lesjak patients (expert masks): their mean
    robust brain z is 0.9 / 1.2-1.7 / 1.5-2.1 at the 5th / 25th / 50th percentile, so each
    planted lesion gets a mean FLAIR z drawn uniformly in [0.9, 2.5] (never brighter than that).
    """
    from gdlesion.preprocess import estimate_brain_mask
    from gdlesion.segment import robust_sigma

    data = flair.data.astype(np.float32).copy()
    med, sd = robust_sigma(data[estimate_brain_mask(post.data, post.affine)])
    for k in range(1, int(truth.max()) + 1):
        grown = ndi.binary_dilation(truth == k, iterations=1)
        pv = ndi.gaussian_filter(grown.astype(np.float32), 0.7)
        target = med + rng.uniform(0.9, 2.5) * sd
        data += max(target - float(data[grown].mean()), 0.0) * pv * (pv > 0.05)
    return flair.with_data(data)


def insert_lesions(pre, post, n, rng, shape_rng=None, psf_fwhm_mm=0.0):
    """Return (pre, post, truth_labels, enhancing_truth, diameters) with ``n`` planted lesions.

    Lesions are balls unless ``shape_rng`` is given: then each is an ovoid of the
    same volume (long axis 1-2x the short ones, random orientation; MS lesions are
    ovoid), drawn from ``shape_rng`` so that positions and contrasts stay those of
    the balls.

    With ``psf_fwhm_mm`` > 0 (mm; one value or one per voxel axis) the lesion
    (its enhancement and its T1 darkening) is blurred by a Gaussian of that
    FWHM, as a softer scan's point-spread function would blur a real lesion;
    the truth stays the sharp shape. 0 (the default) plants sharp lesions,
    which is how the floors were measured and fits the Lesjak scans: their
    tissue edges are as sharp as a ~0.5-0.7 mm blur (``benchmarks/README.md``,
    eighteenth session), although their residual noise is ~2 mm FWHM.
    """
    from gdlesion.preprocess import estimate_brain_mask, tissue_thresholds

    mask = estimate_brain_mask(post.data, post.affine)
    _, gm_wm = tissue_thresholds(post.data, mask)
    psf = np.broadcast_to(np.asarray(psf_fwhm_mm, dtype=float), (3,))
    wm = ndi.binary_erosion(mask & (ndi.gaussian_filter(post.data, 1.0) > gm_wm), iterations=2)
    depth = ndi.distance_transform_edt(mask)
    nawm = float(np.median(post.data[wm]))
    pre_d, post_d = pre.data.copy(), post.data.copy()
    truth = np.zeros(post.shape, np.int32)
    enh_truth = np.zeros(post.shape, bool)
    diameters = [2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 14.0]
    placed, specs = [], []
    candidates = np.argwhere(wm & (depth >= 12))
    for k in range(n):
        d = diameters[k % len(diameters)]
        ring = d >= 6 and k % 2 == 1
        for _ in range(500):
            c = candidates[rng.integers(len(candidates))].astype(float)
            r = d / 2
            if all(np.linalg.norm(c - p) >= r + q + 4 for p, q in placed):
                # whole lesion inside white matter
                lo, hi = np.floor(c - r - 1).astype(int), np.ceil(c + r + 2).astype(int)
                if wm[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].mean() > 0.7:
                    break
        placed.append((c, r))
        reach = r * (1.6 if shape_rng is not None else 1.0) + 1.5 * psf.max()
        lo, hi = np.floor(c - reach - 1).astype(int), np.ceil(c + reach + 2).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        sub = (np.arange(3) - 1) / 3.0
        grid = np.stack(
            np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
        ).astype(float)
        off = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(27, 3)
        pts = grid[..., None, :] + off
        if shape_rng is None:
            dist = np.linalg.norm(pts - c, axis=-1)
        else:  # ovoid: distance in the lesion's frame, scaled to keep the volume of the ball
            ratio = shape_rng.uniform(1.0, 2.0)
            scale = np.array([ratio ** (2 / 3), ratio ** (-1 / 3), ratio ** (-1 / 3)])
            rot, _ = np.linalg.qr(shape_rng.normal(size=(3, 3)))
            dist = np.linalg.norm(((pts - c) @ rot) / scale, axis=-1)
        whole = (dist <= r).mean(-1)
        rim = (
            whole if not ring else ((dist <= r) & (dist >= r - np.clip(0.18 * d, 1, 2.5))).mean(-1)
        )
        truth[box][whole >= 0.25] = k + 1
        enh_truth[box] |= rim >= 0.5
        if psf.max() > 0:  # the scan's point-spread function: a real lesion is no sharper
            zooms = np.sqrt((post.affine[:3, :3] ** 2).sum(0))
            sig = psf / 2.3548 / zooms
            whole = ndi.gaussian_filter(whole, sig, mode="constant")
            rim = ndi.gaussian_filter(rim, sig, mode="constant")
        contrast = rng.uniform(0.2, 0.6)
        drop = rng.uniform(0.0, 0.15)
        pre_d[box] *= 1 - drop * whole
        post_d[box] = post_d[box] * (1 - drop * whole) + contrast * nawm * rim
        specs.append((k + 1, d, "ring" if ring else "nodular", round(contrast, 2)))
    return pre.with_data(pre_d), post.with_data(post_d), truth, enh_truth, specs


def move(volume, rng):
    from gdlesion.registration import resample_volume, rigid_matrix

    m = rigid_matrix(
        rotation_deg=tuple(rng.uniform(-3, 3, 3)),
        translation_mm=tuple(rng.uniform(-3, 3, 3)),
        center_mm=tuple(volume.voxel_to_world((np.asarray(volume.shape) - 1) / 2)),
    )
    return resample_volume(volume, volume, m)


def acquire_slices(volume, mm: int, *, labels: bool = False):
    """``volume`` (1 mm slices) as a 2-D acquisition of ``mm`` mm slices would store it.

    Every ``mm`` consecutive slices along the voxel axis closest to S are averaged into one
    (labels: their largest value, so a lesion keeps every thick voxel it touches); the affine
    keeps the world position of each thick slice's centre. A model of thick-slice partial
    volume, not of a spin-echo sequence's contrast.
    """
    from gdlesion.io import Volume

    data = np.asarray(volume.data)
    ax = int(np.argmax(np.abs(volume.affine[2, :3])))
    n = data.shape[ax] // mm * mm
    data = np.take(data, np.arange(n), axis=ax)
    shape = list(data.shape)
    shape[ax] //= mm
    shape.insert(ax + 1, mm)
    data = data.reshape(shape)
    data = data.max(axis=ax + 1) if labels else data.mean(axis=ax + 1, dtype=np.float32)
    scale = np.ones(3)
    scale[ax] = mm
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * scale
    affine[:3, 3] = volume.affine[:3, :3] @ ((scale - 1) / 2) + volume.affine[:3, 3]
    return Volume(data, affine, volume.name)


def refine_inplane(volume, factor: float, *, labels: bool = False):
    """``volume`` on a grid ``factor`` times finer along its two in-plane axes (linear).

    What a scanner's 512-matrix reconstruction of a 256-matrix 2-D acquisition stores
    (0.45 x 0.45 x 5 mm): no new detail, more voxels. The slice axis is the one closest to
    S, as in :func:`acquire_slices`; labels are repeated (an integer factor) or taken from
    the nearest voxel (any other factor, e.g. 1.6 for 0.625 mm voxels).
    """
    from gdlesion.io import Volume
    from gdlesion.workgrid import repeat_blocks, subdivide

    ax = int(np.argmax(np.abs(volume.affine[2, :3])))
    if float(factor) != int(factor):
        shape = np.asarray(volume.shape)
        new = np.round(shape * float(factor)).astype(int)
        new[ax] = shape[ax]
        kk = new / shape
        data = ndi.zoom(np.asarray(volume.data, dtype=np.int32 if labels else np.float32), kk,
                        order=0 if labels else 1, mode="nearest", grid_mode=True)
        affine = volume.affine.copy()
        affine[:3, :3] = volume.affine[:3, :3] / kk
        affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, :3] @ (0.5 / kk - 0.5)
        return Volume(data, affine, volume.name)
    k = [int(factor)] * 3
    k[ax] = 1
    k = tuple(k)
    if labels:
        fine = subdivide(volume.with_data(np.zeros(volume.shape, np.float32)), k)
        return Volume(repeat_blocks(np.asarray(volume.data), k), fine.affine, volume.name)
    return subdivide(volume, k)


def shift_half_voxel(volume, *, labels: bool = False):
    """``volume`` resampled on its own grid moved by half a voxel along each axis (linear).

    What a reorientation or a resampling onto another 1 mm grid does to a scan: the same
    resolution, one more interpolation (labels: nearest neighbour).
    """
    from gdlesion.io import Volume

    data = np.asarray(volume.data)
    coords = np.indices(data.shape, dtype=np.float32) + np.float32(0.5)
    out = ndi.map_coordinates(data.astype(np.float32), coords, order=0 if labels else 1,
                              mode="nearest")
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, :3] @ np.full(3, 0.5)
    return Volume(out.astype(data.dtype) if labels else out, affine, volume.name)


# --- one study in a fresh process -------------------------------------------------------------


def _study(case: dict) -> dict:
    from gdlesion.io import load_volume
    from gdlesion.pipeline import run_study

    rng = np.random.default_rng(case["seed"])
    truth = enh = None
    specs = []
    flair = None
    kind = case["kind"]
    if kind in ("sim", "sim+flair"):
        from gdlesion.io import Volume

        with np.load(case["npz"], allow_pickle=False) as z:
            pre = Volume(z["pre"], z["pre_affine"], "pre")
            post = Volume(z["post"], z["post_affine"], "post")
            if kind == "sim+flair":
                flair = Volume(z["flair"], z["flair_affine"], "flair")
            truth = z["labels"]
            specs = [tuple(row) for row in z["specs"].tolist()]
        enh = truth > 0
    elif kind in ("lesjak", "lesjak+ins", "lesjak+flair", "lesjak+ins+flair"):
        folder = LESJAK / case["patient"]
        pre = load_volume(folder / "T1.nii.gz")
        post = load_volume(folder / "T1POST.nii.gz")
        if kind.startswith("lesjak+ins"):
            shape_rng = np.random.default_rng(case["seed"] + 7919) if case.get("ovoid") else None
            pre, post, truth, enh, specs = insert_lesions(
                pre, post, case["n"], rng, shape_rng, case.get("lesion_fwhm", 0.0)
            )
            pre = move(pre, rng)
        if kind == "lesjak+flair":
            flair = folder / "FLAIR.nii.gz"
        if kind == "lesjak+ins+flair":  # Lesjak's FLAIR shares the T1POST grid
            flair = insert_flair_lesions(load_volume(folder / "FLAIR.nii.gz"), post, truth, rng)
    elif kind == "tcga-native":  # the scanner's thick-slice pair, skull on, not co-registered
        native = DATA / "tcga_fg_6692" / "native"
        pre = load_volume(native / "T1w_pre.nii.gz")
        post = load_volume(native / "T1w_post_gad.nii.gz")
    else:  # tcga atlas
        atlas = DATA / "tcga_fg_6692" / "atlas"
        pre = load_volume(atlas / "T1w_pre_brain.nii.gz")
        post = load_volume(atlas / "T1w_post_gad_brain.nii.gz")
    if case.get("half_voxel") and (kind.startswith("lesjak") or case.get("res") == "1mm"):
        if truth is not None:
            truth = np.asarray(shift_half_voxel(post.with_data(truth), labels=True).data)
            enh = np.asarray(shift_half_voxel(post.with_data(enh), labels=True).data)
        pre, post = shift_half_voxel(pre), shift_half_voxel(post)
        if flair is not None:
            flair = shift_half_voxel(load_volume(flair) if isinstance(flair, Path) else flair)
    mm = case.get("slices") or 0
    if mm and (kind.startswith("lesjak") or case.get("res") == "1mm"):
        if truth is not None:
            truth = np.asarray(acquire_slices(post.with_data(truth), mm, labels=True).data)
            enh = np.asarray(acquire_slices(post.with_data(enh), mm, labels=True).data)
        pre, post = acquire_slices(pre, mm), acquire_slices(post, mm)
        if flair is not None:
            flair = acquire_slices(
                load_volume(flair) if isinstance(flair, Path) else flair, mm
            )
    fine = case.get("inplane") or 0
    if fine > 1 and (kind.startswith("lesjak") or case.get("res") == "1mm"):
        if truth is not None:
            truth = np.asarray(refine_inplane(post.with_data(truth), fine, labels=True).data)
            enh = np.asarray(refine_inplane(post.with_data(enh), fine, labels=True).data)
        pre, post = refine_inplane(pre, fine), refine_inplane(post, fine)
        if flair is not None:
            flair = refine_inplane(load_volume(flair) if isinstance(flair, Path) else flair, fine)
    start = time.perf_counter()
    result = run_study(
        pre, post, flair=flair, params=case.get("pipeline"), overrides=case.get("overrides")
    )
    elapsed = time.perf_counter() - start
    out = {
        "case": case["name"],
        "time_s": elapsed,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "detections": result.lesion_count,
        "pipeline": result.pipeline,
        "timings": result.timings,
        "lesions": result.lesions[
            [
                "lesion_id",
                "volume_mm3",
                "centroid_x_mm",
                "centroid_y_mm",
                "centroid_z_mm",
                "max_enhancement_pct",
                "pattern",
            ]
        ]
        .round(1)
        .to_dict("records"),
    }
    if kind in ("tcga", "tcga-native"):
        label4 = (
            np.asarray(
                load_volume(DATA / "tcga_fg_6692" / "atlas" / "tumor_labels_fused_auto.nii.gz").data
            )
            == 4
        )
        if kind == "tcga-native":
            label4 = atlas_label_on_native(label4, post)
        main = result.labels == 1  # lesions are numbered by decreasing volume
        inter = float((main & label4).sum())
        out["dice_main"] = 2 * inter / float(main.sum() + label4.sum())
        out["precision_main"] = inter / max(float(main.sum()), 1.0)
        out["recall_main"] = inter / float(label4.sum())
    if truth is not None:
        out.update(score(result.labels, truth, enh, specs))
    return out


def atlas_label_on_native(label: np.ndarray, native_post) -> np.ndarray:
    """A TCGA atlas-grid mask on the native post grid (rigid registration of the atlas post scan).

    The atlas scans are the native ones skull-stripped and moved onto a 1 mm grid; registering
    the atlas post scan onto the native post scan (``register_rigid``, moving = atlas) gives the
    native-to-atlas world map, and the mask is resampled linearly and thresholded at 0.5.
    """
    from gdlesion.io import load_volume
    from gdlesion.registration import register_rigid, resample_volume

    atlas = load_volume(DATA / "tcga_fg_6692" / "atlas" / "T1w_post_gad_brain.nii.gz")
    reg = register_rigid(atlas, native_post)
    mapped = resample_volume(atlas.with_data(label.astype(np.float32)), native_post,
                             reg.matrix_ras)
    return np.asarray(mapped.data) >= 0.5


def _simulate(case: dict) -> None:
    """Simulate in its own process (the simulator's memory is not the pipeline's)."""
    from gdlesion.simulate import simulate_study

    s = simulate_study(resolution=case["res"], n_lesions=case["n"], seed=case["seed"],
                       zero_background=case.get("zero_background", False))
    specs = np.array([(le.lesion_id, le.diameter_mm, 0, le.contrast) for le in s.lesions])
    np.savez(case["npz"], pre=s.pre.data, pre_affine=s.pre.affine, post=s.post.data,
             post_affine=s.post.affine, flair=s.flair.data, flair_affine=s.flair.affine,
             labels=s.labels, specs=specs)


def score(labels, truth, enh, specs):
    found = {}
    contrast = {}
    for tid, diameter, _, lesion_contrast in specs:
        found[int(tid)] = (float(diameter), bool((labels[truth == int(tid)] > 0).any()))
        contrast[int(tid)] = float(lesion_contrast)
    grown = ndi.binary_dilation(truth > 0, iterations=1)
    n_det = int(labels.max())
    hit = np.zeros(n_det + 1, bool)
    hit[np.unique(labels[grown])] = True
    fp = int((~hit[1:]).sum())
    fp_ids = [int(i) for i in np.flatnonzero(~hit[1:]) + 1]
    det = labels > 0
    dice = float(2 * (det & enh).sum() / max(det.sum() + enh.sum(), 1))
    n_true = sum(1 for d, _ in found.values() if d >= 3)
    return {
        "found": found,
        "contrast": contrast,
        "fp": fp,
        "fp_ids": fp_ids,
        "dice": dice,
        "count_true_ge3": n_true,
        "count_detected": n_det,
    }


def elastix_rigid_seconds(patient: str) -> float:
    try:
        import itk
    except ImportError:
        return float("nan")
    fixed = itk.imread(str(LESJAK / patient / "T1POST.nii.gz"), itk.F)
    moving = itk.imread(str(LESJAK / patient / "T1.nii.gz"), itk.F)
    params = itk.ParameterObject.New()
    params.AddParameterMap(params.GetDefaultParameterMap("rigid"))
    start = time.perf_counter()
    itk.elastix_registration_method(fixed, moving, parameter_object=params, log_to_console=False)
    return time.perf_counter() - start


def elastix_seconds_in_subprocess(patient: str) -> float:
    """:func:`elastix_rigid_seconds` in a fresh process that has ended when this returns.

    (A pool worker would be replaced by a new one starting up beside the next
    timed command, slowing it by ~0.5 s.)
    """
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"from detection import elastix_rigid_seconds; "
            f"print(elastix_rigid_seconds({patient!r}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def inspect_cli_seconds(patient: str) -> float:
    """Wall time of the whole ``gdlesion inspect PRE POST --out DIR`` in a fresh process.

    Everything a user waits for: interpreter start, imports, loading, the study,
    writing every output (NIfTI, tables, qc.png, report.html).
    """
    folder = LESJAK / patient
    with tempfile.TemporaryDirectory(prefix="gdlesion-inspect-") as tmp:
        cmd = [sys.executable, "-c", "import sys; from gdlesion.cli import main; "
               "sys.argv[0] = 'gdlesion'; main()", "inspect", str(folder / "T1.nii.gz"),
               str(folder / "T1POST.nii.gz"), "--out", f"{tmp}/out"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2, help="simulated studies per resolution")
    ap.add_argument("--lesions", type=int, default=10, help="lesions inserted per Lesjak pair")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", default="", help="only cases whose name starts with this")
    ap.add_argument("--overrides", type=json.loads, default=None, metavar="JSON",
                    help='detection parameters replacing those of every preset, e.g. '
                         '\'{"regrow_radius_mm": 0}\' (measure a change against the same cases)')
    ap.add_argument("--zero-background", action="store_true",
                    help="simulated heads with the air set to zero (as sample_data/; case names "
                         "end in 'z')")
    ap.add_argument("--ovoid", action="store_true",
                    help="plant ovoid lesions (axes 1-2:1, random orientation, same positions, "
                         "volumes and contrasts) instead of balls in the Lesjak pairs")
    ap.add_argument("--slices", type=int, default=0, metavar="MM",
                    help="average every MM slices of the 1 mm cases (Lesjak pairs and their "
                         "FLAIR, 1 mm simulated heads) into one, as a 2-D acquisition of MM mm "
                         "slices; truth and scores on that grid")
    ap.add_argument("--inplane", type=float, default=0, metavar="K",
                    help="after --slices, interpolate the 1 mm cases onto K times finer in-plane "
                         "voxels (K=2: 0.5 x 0.5 x MM mm, as a 512-matrix reconstruction); truth "
                         "on that grid")
    ap.add_argument("--half-voxel", action="store_true",
                    help="resample the 1 mm cases (Lesjak pairs and their FLAIR, 1 mm simulated "
                         "heads) on their grid moved by half a voxel (linear), as a reorientation "
                         "would: same resolution, one more interpolation; truth on that grid")
    ap.add_argument("--pipeline", default=None,
                    help="preset for every case instead of the automatic choice")
    ap.add_argument("--lesion-fwhm", type=float, default=0.0, metavar="MM",
                    help="blur the lesions planted in the Lesjak pairs by a Gaussian of this FWHM "
                         "(a softer scan's point-spread function; 0: sharp lesions)")
    ap.add_argument("--skip-speed", action="store_true",
                    help="detection quality only: no elastix / CLI timing rounds (A/B of a "
                         "parameter; the speed columns print nan)")
    args = ap.parse_args()
    patients = sorted(p.name for p in LESJAK.glob("patient*") if p.is_dir())
    cases = []
    for res in ("1mm", "2d"):
        for i in range(args.sims):
            cases.append(
                {
                    "name": f"sim-{res}-{i}" + ("z" if args.zero_background else ""),
                    "kind": "sim",
                    "res": res,
                    "n": 6,
                    "seed": 1000 + args.seed + i,
                    "pipeline": None,  # auto: clinical-2d on the 2-D grid
                    "zero_background": args.zero_background,
                }
            )
            cases.append(dict(cases[-1], name=cases[-1]["name"] + "+flair", kind="sim+flair"))
    for i, p in enumerate(patients):
        cases.append(
            {
                "name": f"lesjak-{p[-2:]}+ins",
                "kind": "lesjak+ins",
                "patient": p,
                "n": args.lesions,
                "seed": 2000 + args.seed + i,
            }
        )
        cases.append(
            {
                "name": f"lesjak-{p[-2:]}+ins+flair",
                "kind": "lesjak+ins+flair",
                "patient": p,
                "n": args.lesions,
                "seed": 2000 + args.seed + i,
            }
        )
        cases.append({"name": f"lesjak-{p[-2:]}", "kind": "lesjak", "patient": p, "seed": 0})
        cases.append(
            {"name": f"lesjak-{p[-2:]}+flair", "kind": "lesjak+flair", "patient": p, "seed": 0}
        )
    cases.append({"name": "tcga-atlas", "kind": "tcga", "seed": 0})
    cases.append({"name": "tcga-native", "kind": "tcga-native", "seed": 0})
    cases = [c for c in cases if c["name"].startswith(args.cases)]
    for c in cases:
        c["ovoid"] = args.ovoid
        c["overrides"] = args.overrides
        c["slices"] = args.slices
        c["half_voxel"] = args.half_voxel
        c["inplane"] = args.inplane
        c["lesion_fwhm"] = args.lesion_fwhm
        if args.pipeline:
            c["pipeline"] = args.pipeline
    ctx = mp.get_context("spawn")
    rows = []
    # baseline and the whole CLI, interleaved (median of 5 each: single runs of either vary by
    # +-0.3 s on the shared VM), each in a fresh process with nothing else running
    elastix_runs, cli_runs = [], []
    if not patients:
        print(f"  no Lesjak pairs under {LESJAK}: their cases and the speed rounds are skipped",
              flush=True)
    for _ in range(0 if args.skip_speed or not patients else 5):
        elastix_runs.append(elastix_seconds_in_subprocess(patients[0]))
        cli_runs.append(inspect_cli_seconds(patients[0]))
    elastix_s = float(np.median(elastix_runs)) if elastix_runs else float("nan")
    cli_s = float(np.median(cli_runs)) if cli_runs else float("nan")
    print(f"  elastix rigid {[round(v, 2) for v in elastix_runs]} s; "
          f"inspect CLI {[round(v, 2) for v in cli_runs]} s", flush=True)
    # the other real pairs too (three rounds each): their vessel trees make the study slower
    others = {}
    for patient in [] if args.skip_speed else patients[1:]:
        runs = [(elastix_seconds_in_subprocess(patient), inspect_cli_seconds(patient))
                for _ in range(3)]
        others[patient] = tuple(float(np.median(v)) for v in zip(*runs, strict=True))
    # simulated studies go through a scratch folder (one .npz each), removed at the end
    with tempfile.TemporaryDirectory(prefix="gdlesion-bench-") as tmp, \
            ctx.Pool(1, maxtasksperchild=1) as pool:
        for case in cases:
            if case["kind"].startswith("sim"):
                case["npz"] = f"{tmp}/{case['name'].removesuffix('+flair')}.npz"
                if not Path(case["npz"]).exists():
                    pool.apply(_simulate, (case,))
            try:
                row = pool.apply(_study, (case,))
            except Exception as exc:  # a failed study is reported, the benchmark goes on
                print(f"  FAILED {case['name']}: {type(exc).__name__}: {exc}", flush=True)
                continue
            rows.append(row)
            print(
                f"  done {row['case']}: {row['detections']} detections, {row['time_s']:.1f} s",
                flush=True,
            )
    report(rows, elastix_s, patients[0] if patients else "(no Lesjak pair)", cli_s, others)


def _own_foci(row, unmodified):
    """False positives of an inserted-lesion row that its unmodified pair also reports."""
    if "+ins" not in row["case"] or not row.get("fp_ids"):
        return 0
    base = unmodified.get(row["case"].replace("+ins", ""))
    if base is None or not base["lesions"]:
        return 0
    keys = ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")
    theirs = np.array([[les[k] for k in keys] for les in base["lesions"]])
    ours = {les["lesion_id"]: np.array([les[k] for k in keys]) for les in row["lesions"]}
    return sum(
        1 for i in row["fp_ids"]
        if np.min(np.linalg.norm(theirs - ours[i], axis=1)) <= OWN_MM
    )


def report(rows, elastix_s, patient, cli_s=float("nan"), others=None):
    from statsmodels.stats.proportion import proportion_confint

    print(
        f"\n{'case':20} {'det':>4} {'FP':>3} {'sens>=3mm':>10} {'Dice':>5} {'count t/d':>9} "
        f"{'time s':>6} {'peak MiB':>8}"
    )
    groups = {"without FLAIR": {}, "with FLAIR": {}}
    unmodified = {r["case"]: r for r in rows
                  if r["case"].startswith("lesjak") and "+ins" not in r["case"]}
    tumour = []
    for r in rows:
        sens = dice = count = fp = ""
        if "found" in r:
            g = groups["with FLAIR" if r["case"].endswith("+flair") else "without FLAIR"]
            ge3 = [f for d, f in r["found"].values() if d >= 3]
            sens = f"{sum(ge3)}/{len(ge3)}"
            dice = f"{r['dice']:.2f}"
            count = f"{r['count_true_ge3']}/{r['count_detected']}"
            fp = str(r["fp"])
            g.setdefault("fp", []).append(r["fp"])
            g.setdefault("fp_own", []).append(_own_foci(r, unmodified))
            by_bin = g.setdefault("bins", {b: [0, 0] for b in SIZE_BINS})
            for d, f in r["found"].values():
                for b in SIZE_BINS:
                    if b[0] <= d < b[1]:
                        by_bin[b][0] += f
                        by_bin[b][1] += 1
            if "+ins" in r["case"]:  # inserted contrast = added signal / NAWM level
                by_c = g.setdefault("contrast", {b: [0, 0] for b in CONTRAST_BINS})
                for tid, (d, f) in r["found"].items():
                    c = r["contrast"][tid]
                    for b in CONTRAST_BINS:  # the last bin holds its upper edge
                        top = b[1] + (1e-9 if b == CONTRAST_BINS[-1] else 0.0)
                        if d >= 3 and b[0] <= c < top:
                            by_c[b][0] += f
                            by_c[b][1] += 1
        if "dice_main" in r:
            dice = f"{r['dice_main']:.2f}"
            tumour.append(f"{r['case']}: main lesion {r['dice_main']:.3f} Dice, "
                          f"{r['precision_main']:.2f} of it in label 4, "
                          f"{r['recall_main']:.2f} of label 4 in it")
        print(
            f"{r['case']:20} {r['detections']:>4} {fp:>3} {sens:>10} {dice:>5} {count:>9} "
            f"{r['time_s']:>6.1f} {r['peak_mib']:>8.0f}  {r.get('pipeline', '')}"
        )
    for name, g in groups.items():
        if not g:
            continue
        print(f"\n{name}: sensitivity by diameter")
        for b, (hit, tot) in g["bins"].items():
            if tot:
                print(f"  {b[0]:>2}-{b[1]:<3} mm: {hit}/{tot} = {hit / tot:.2f}")
        ge3 = [(h, t) for b, (h, t) in g["bins"].items() if b[0] >= 3]
        h, t = sum(x for x, _ in ge3), sum(y for _, y in ge3)
        lo, hi = proportion_confint(h, max(t, 1), alpha=0.05, method="wilson")
        print(f"  >= 3 mm: {h}/{t} = {h / max(t, 1):.3f} (95% Wilson CI {lo:.2f}-{hi:.2f})")
        print(f"  false positives per scan: {np.mean(g['fp']):.2f} over {len(g['fp'])} scans")
        own = sum(g["fp_own"])
        if own:
            rest = np.mean(np.subtract(g["fp"], g["fp_own"]))
            print(f"    of which the patients' own foci (also found in the unmodified pair): "
                  f"{own}; the others: {rest:.2f} per scan")
        if "contrast" in g:
            print("  lesions >= 3 mm inserted into the Lesjak pairs, by enhancement (% of NAWM):")
            for b, (hit, tot) in g["contrast"].items():
                if tot:
                    lo_pct, hi_pct = round(100 * b[0]), round(100 * b[1])
                    print(f"    {lo_pct}-{hi_pct} %: {hit}/{tot} = {hit / tot:.2f}")
    for line in tumour:
        print(line)
    real = [r for r in rows if r["case"].startswith("lesjak") and "+" not in r["case"]]
    if real:
        mean_real = np.mean([r["detections"] for r in real])
        print(f"detections per unmodified real scan: {mean_real:.2f}")
    flair = [r for r in rows if r["case"].startswith("lesjak") and r["case"].endswith("+flair")
             and "+ins" not in r["case"]]
    if flair:
        print(f"  ... with --flair: {np.mean([r['detections'] for r in flair]):.2f}")
    for r in real + flair:
        for les in r["lesions"]:
            print(f"  {r['case']}: {les}")
    print(
        f"\nelastix default rigid on {patient} (registration call only): {elastix_s:.1f} s; "
        f"whole `gdlesion inspect --out` CLI process: {cli_s:.1f} s "
        f"(ratio {cli_s / elastix_s:.2f})"
    )
    for other, (e_s, c_s) in (others or {}).items():
        print(f"  {other} (median of 3): elastix {e_s:.2f} s, CLI {c_s:.2f} s "
              f"(ratio {c_s / e_s:.2f})")
    same = next((r for r in rows if r["case"] == f"lesjak-{patient[-2:]}"), None)
    if same is not None:  # --cases without the baseline pair
        print(
            f"run_study alone on the same pair: {same['time_s']:.1f} s "
            f"(ratio {same['time_s'] / elastix_s:.2f})"
        )
    print(f"peak memory max over studies: {max(r['peak_mib'] for r in rows):.0f} MiB")


if __name__ == "__main__":
    main()
