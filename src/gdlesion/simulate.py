"""Simulated pre/post-gadolinium T1 studies (plus FLAIR) whose truth is known.

One study renders a subject's procedural anatomy (:mod:`gdlesion.phantom`) and
its lesions (:mod:`gdlesion.lesions_sim`) three times: the post-contrast T1 on
the post grid, the pre-contrast T1 on the *same* grid but with the head moved
by a random rigid transform (the anatomy is sampled through the inverse
motion, as when a patient moves between scans), and a FLAIR aligned with the
post scan. Pre and post use different tissue contrasts (different
sequences); the post scan adds normal enhancement of veins, dural sinuses,
choroid plexus, dura and scalp, and lesion enhancement (nodular or ring).
All three share one smooth multiplicative bias field (fixed to the scanner,
not the head), get Rician noise and are stored as int16.

Truth: ``labels`` holds each enhancing lesion's id on the post grid (voxels
more than half covered, at least the most covered voxel per lesion; ring
lesions are labelled whole, core included); ``matrix_ras`` maps a post RAS
point to the same anatomy in the pre scan (the convention of
:attr:`gdlesion.registration.RegistrationResult.matrix_ras`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from . import __version__
from .errors import InputError
from .io import Volume
from .lesions_sim import LesionSpec, chronic_lesions, lesion_fractions, random_lesions, with_ids
from .phantom import HEAD_CENTER_MM, TISSUES, build_anatomy
from .registration import rigid_matrix

__all__ = [
    "LesionSpec",
    "SimulatedStudy",
    "simulate_study",
    "random_lesions",
    "chronic_lesions",
    "RESOLUTIONS",
    "study_grid",
    "truth_brain_mask",
    "write_study",
    "write_bids_dataset",
]

#: Output protocols: voxel size (mm), slice thickness (mm), shape.
RESOLUTIONS = {
    "1mm": {"zooms": (1.0, 1.0, 1.0), "thickness": 1.0, "shape": (172, 214, 176)},
    "2d": {"zooms": (0.9, 0.9, 5.5), "thickness": 5.0, "shape": (208, 240, 26)},
}
_FOV_CENTER = np.array([0.0, -17.0, 6.0])

# fmt: off
# Tissue signal relative to white matter. Pre and post are different sequences; "enh" is the
# normal enhancement added on the post scan (also relative to white matter).
_CONTRASTS = {
    "1mm": {
        "pre": dict(wm=1.0, gm=0.62, deep_gm=0.80, csf=0.18, choroid=0.55, vein=0.50, sinus=0.45,
                    dura=0.45, bone=0.06, marrow=0.90, fat=1.30, skin=0.55),
        "post": dict(wm=1.0, gm=0.67, deep_gm=0.83, csf=0.23, choroid=0.58, vein=0.55, sinus=0.5,
                     dura=0.48, bone=0.07, marrow=0.92, fat=1.25, skin=0.58),
        "enh": dict(vein=1.1, sinus=1.35, choroid=1.0, dura=0.55, skin=0.25, marrow=0.06, gm=0.03),
    },
    "2d": {
        "pre": dict(wm=1.0, gm=0.74, deep_gm=0.86, csf=0.26, choroid=0.62, vein=0.20, sinus=0.30,
                    dura=0.50, bone=0.05, marrow=0.95, fat=1.30, skin=0.60),
        "post": dict(wm=1.0, gm=0.76, deep_gm=0.87, csf=0.28, choroid=0.64, vein=0.22, sinus=0.32,
                     dura=0.52, bone=0.05, marrow=0.95, fat=1.28, skin=0.62),
        "enh": dict(vein=0.8, sinus=1.0, choroid=0.9, dura=0.6, skin=0.25, marrow=0.05, gm=0.03),
    },
}
_FLAIR = dict(wm=1.0, gm=1.3, deep_gm=1.15, csf=0.12, choroid=0.5, vein=0.5, sinus=0.3, dura=0.7,
              bone=0.05, marrow=0.8, fat=1.0, skin=0.6)

# fmt: on


@dataclass(frozen=True, eq=False)
class SimulatedStudy:
    """A simulated session with its ground truth.

    Attributes
    ----------
    pre, post : Volume
        Pre- and post-contrast T1 (int16 values held as float32) on the same grid.
    flair : Volume or None
        FLAIR aligned with the post scan, or ``None`` if not requested.
    labels : numpy.ndarray
        int32 lesion ids on the post grid (0 = background).
    lesions : list of LesionSpec
        The enhancing lesions (ids set), in id order.
    matrix_ras : numpy.ndarray
        4x4 RAS map from a post point to the same anatomy in the pre scan.
    truth : dict
        JSON-ready truth (lesions with realised voxel counts, transform, settings).
    chronic : list of LesionSpec
        The subject's non-enhancing FLAIR lesions (not in ``labels``).
    """

    pre: Volume
    post: Volume
    flair: Volume | None
    labels: np.ndarray
    lesions: list[LesionSpec]
    matrix_ras: np.ndarray
    truth: dict = field(repr=False)
    chronic: list[LesionSpec] = field(default_factory=list)


def study_grid(resolution: str, voxel_size: float | None = None) -> tuple[np.ndarray, tuple, float]:
    """Return ``(affine, shape, slice_thickness)`` of a protocol's grid (LAS-stored, axial slices).

    ``voxel_size`` replaces the protocol's voxel size by an isotropic one over
    the same field of view (small matrices for fast tests).
    """
    if resolution not in RESOLUTIONS:
        raise InputError(f"resolution {resolution!r} is not one of {', '.join(RESOLUTIONS)}")
    proto = RESOLUTIONS[resolution]
    zooms, shape, thick = np.asarray(proto["zooms"]), np.asarray(proto["shape"]), proto["thickness"]
    if voxel_size is not None:
        if not 0.5 <= float(voxel_size) <= 8.0:
            raise InputError(f"voxel size {voxel_size} mm is outside 0.5-8 mm")
        fov = zooms * shape
        zooms = np.full(3, float(voxel_size))
        shape = np.ceil(fov / zooms).astype(int)
        thick = float(voxel_size)
    affine = np.diag([-zooms[0], zooms[1], zooms[2], 1.0])
    affine[:3, 3] = _FOV_CENTER - affine[:3, :3] @ ((shape - 1) / 2.0)
    return affine, tuple(int(s) for s in shape), float(thick)


def _jitter(table: dict, rng: np.random.Generator, amount: float) -> dict:
    return {
        k: (v if k == "wm" else v * float(1 + rng.uniform(-amount, amount)))
        for k, v in table.items()
    }


def _bias_field(rng: np.random.Generator, affine: np.ndarray, shape: tuple) -> np.ndarray:
    axes = [
        (affine[d, d] * np.arange(shape[d]) + affine[d, 3] - _FOV_CENTER[d]) / 100.0
        for d in range(3)
    ]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(0.0, 0.08, 9)
    log = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    log = log + c[6] * x * y + c[7] * x * z + c[8] * y * z
    return np.exp(np.clip(log, -0.35, 0.35)).astype(np.float32)


def _render(anat, values, *, affine, shape, thickness, to_world, lesions, lesion_values):
    """Sample the anatomy composite onto the grid (slice profile), then mix in lesions."""
    comp = np.zeros(anat.fractions["wm"].shape, np.float32)
    for t in TISSUES:
        comp += anat.fractions[t] * np.float32(values[t] / 255.0)
    full = np.linalg.inv(anat.affine) @ np.asarray(to_world) @ affine
    zooms = np.abs(np.diag(affine)[:3])
    extent = np.array([1.0, 1.0, thickness / zooms[2]])
    n_sub = np.maximum(np.round(zooms * extent / anat.spacing).astype(int), 1)
    offs = [((np.arange(n) + 0.5) / n - 0.5) * e for n, e in zip(n_sub, extent, strict=True)]
    img = np.zeros(shape, np.float32)
    for o in np.stack(np.meshgrid(*offs, indexing="ij"), -1).reshape(-1, 3):
        img += ndimage.affine_transform(
            comp,
            full[:3, :3],
            offset=full[:3, :3] @ o + full[:3, 3],
            output_shape=shape,
            order=1,
            mode="constant",
            cval=0.0,
        )
    img /= n_sub.prod()
    lsub = tuple(int(v) for v in np.clip(np.ceil(zooms * extent / 0.6), 2, [4, 4, 9]))
    fracs = []
    for spec, (v_out, v_core) in zip(lesions, lesion_values, strict=True):
        got = lesion_fractions(
            spec,
            grid_affine=affine,
            shape=shape,
            to_world=to_world,
            subsamples=lsub,
            extent=tuple(extent),
        )
        fracs.append(got)
        if got is None:
            continue
        box, outer, core = got
        img[box] = img[box] * (1 - outer) + (outer - core) * v_out + core * v_core
    return img, fracs


def _noisy(img, rng, sigma, bias):
    """Apply the bias field and Rician noise; return int16-rounded float32."""
    signal = img * bias
    real = signal + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, 32767).astype(np.float32)


def _lesion_values(spec: LesionSpec, scan: str, wm: float) -> tuple[float, float]:
    """(outer/rim, core) signal of a lesion on one scan, in absolute units."""
    drop = spec.t1_drop if spec.hypointense else 0.03
    core_drop = max(drop, 0.3)
    if scan == "pre":
        return wm * (1 - drop), wm * (1 - core_drop)
    if scan == "post":
        return wm * (1 - drop + spec.contrast), wm * (1 - core_drop + 0.1 * spec.contrast)
    return wm * spec.flair_gain, wm * spec.flair_gain * 1.1


def simulate_study(
    *,
    resolution: str = "1mm",
    n_lesions: int = 5,
    seed: int = 0,
    subject_seed: int | None = None,
    lesions: list[LesionSpec] | None = None,
    max_rotation_deg: float = 4.0,
    max_translation_mm: float = 5.0,
    with_flair: bool = True,
    voxel_size: float | None = None,
    noise: bool = True,
    zero_background: bool = False,
) -> SimulatedStudy:
    """Simulate one pre/post-gadolinium T1 session (and FLAIR) with known truth.

    Parameters
    ----------
    resolution : {"1mm", "2d"}
        1 mm isotropic 3-D (172x214x176), or thick-slice 2-D axial spin echo
        (0.9x0.9 mm, 5 mm slices every 5.5 mm, 208x240x26).
    n_lesions : int
        Number of random enhancing lesions (ignored when ``lesions`` is given).
    seed : int
        Session seed: noise, bias field, misalignment, contrast jitter, random lesions.
    subject_seed : int, optional
        Anatomy seed (defaults to ``seed``); the same value gives identical
        anatomy (and chronic lesions) in every call.
    lesions : list of LesionSpec, optional
        Explicit enhancing lesions (e.g. persistent across visits).
    max_rotation_deg, max_translation_mm : float
        Bounds of the uniform random rotation angles (about x, y, z) and
        translations (along x, y, z) of the pre scan's head.
    with_flair : bool
        Also simulate a FLAIR (lesions hyperintense, aligned with the post scan).
    voxel_size : float, optional
        Isotropic voxel size overriding the protocol's (same field of view);
        e.g. 4.0 gives a ~43x54x44 grid that simulates in well under a second.
    noise : bool
        Add Rician noise (``False`` for geometry tests).
    zero_background : bool
        Set the air outside the head to 0 (smaller files).

    Returns
    -------
    SimulatedStudy
        Images, labels, lesions and truth.

    Raises
    ------
    InputError
        Unknown resolution, negative lesion count, bad bounds, lesions off the grid.

    Examples
    --------
    >>> study = simulate_study(resolution="1mm", n_lesions=3, seed=1, voxel_size=4.0)
    >>> sorted(np.unique(study.labels).tolist())
    [0, 1, 2, 3]
    """
    affine, shape, thickness = study_grid(resolution, voxel_size)
    if n_lesions < 0:
        raise InputError(f"number of lesions {n_lesions} is negative")
    if not (0 <= max_rotation_deg <= 30 and 0 <= max_translation_mm <= 50):
        raise InputError(
            f"misalignment bounds {max_rotation_deg} deg / {max_translation_mm} mm out of range"
        )
    subject_seed = int(seed if subject_seed is None else subject_seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), subject_seed, 7003]))
    spacing = float(max(1.0, min(np.abs(np.diag(affine)[:3])) / 2.0))
    anat = build_anatomy(subject_seed, spacing)
    chronic = chronic_lesions(subject_seed=subject_seed)
    if lesions is None:
        lesions = random_lesions(subject_seed=subject_seed, n=n_lesions, rng=rng, avoid=chronic)
    lesions = with_ids(list(lesions))

    euler = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    trans = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    center = np.asarray(HEAD_CENTER_MM) + rng.normal(0.0, 10.0, 3)
    matrix = rigid_matrix(
        rotation_deg=tuple(euler), translation_mm=tuple(trans), center_mm=tuple(center)
    )

    tables = _CONTRASTS[resolution]
    wm = {
        "pre": float(rng.uniform(330, 430)),
        "post": float(rng.uniform(330, 430)),
        "flair": float(rng.uniform(300, 400)),
    }
    pre_vals = {k: v * wm["pre"] for k, v in _jitter(tables["pre"], rng, 0.04).items()}
    post_tab = _jitter(tables["post"], rng, 0.04)
    enh = _jitter(tables["enh"], rng, 0.15)
    post_vals = {k: (v + enh.get(k, 0.0)) * wm["post"] for k, v in post_tab.items()}
    flair_vals = {k: v * wm["flair"] for k, v in _jitter(_FLAIR, rng, 0.04).items()}
    snr = {"pre": rng.uniform(20, 28), "post": rng.uniform(20, 28), "flair": rng.uniform(16, 24)}
    if resolution == "2d":
        snr = {k: v * 1.3 for k, v in snr.items()}
    bias = _bias_field(rng, affine, shape)

    every = lesions + chronic
    kw = dict(affine=affine, shape=shape, thickness=thickness, lesions=every)
    post_img, post_fracs = _render(
        anat,
        post_vals,
        to_world=np.eye(4),
        lesion_values=[_lesion_values(s, "post", wm["post"]) for s in every],
        **kw,
    )
    pre_img, _ = _render(
        anat,
        pre_vals,
        to_world=np.linalg.inv(matrix),
        lesion_values=[_lesion_values(s, "pre", wm["pre"]) for s in every],
        **kw,
    )
    flair_img = None
    if with_flair:
        flair_img, _ = _render(
            anat,
            flair_vals,
            to_world=np.eye(4),
            lesion_values=[_lesion_values(s, "flair", wm["flair"]) for s in every],
            **kw,
        )
    labels, counts = _labels(lesions, post_fracs[: len(lesions)], shape)

    images = {"pre": pre_img, "post": post_img, "flair": flair_img}
    out = {}
    for name, img in images.items():
        if img is None:
            out[name] = None
            continue
        head = ndimage.binary_dilation(img > 0.02 * wm[name], iterations=2)
        res = _noisy(img, rng, wm[name] / snr[name], bias) if noise else np.rint(img * bias)
        if zero_background:
            res[~head] = 0
        out[name] = Volume(res.astype(np.float32), affine, name)

    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    truth = _truth(
        lesions,
        chronic,
        counts,
        labels,
        affine,
        voxel_mm3,
        matrix,
        euler,
        trans,
        center,
        anat,
        settings=dict(
            resolution=resolution,
            seed=int(seed),
            subject_seed=subject_seed,
            n_lesions=len(lesions),
            voxel_size=voxel_size,
            noise=bool(noise),
            zero_background=bool(zero_background),
            with_flair=bool(with_flair),
            max_rotation_deg=float(max_rotation_deg),
            max_translation_mm=float(max_translation_mm),
        ),
        extra=dict(
            white_matter_signal={k: round(v, 3) for k, v in wm.items()},
            snr_white_matter={k: round(float(v), 3) for k, v in snr.items()},
            shape=list(shape),
            affine=np.round(affine, 6).tolist(),
            slice_thickness_mm=thickness,
        ),
    )
    return SimulatedStudy(
        out["pre"], out["post"], out["flair"], labels, lesions, matrix, truth, chronic
    )


def _labels(lesions, fracs, shape):
    """Label map: voxels more than half covered (>= 0.5), at least each lesion's best voxel."""
    labels = np.zeros(shape, np.int32)
    best = np.zeros(shape, np.float32)
    counts = {}
    for spec, got in zip(lesions, fracs, strict=True):
        if got is None or got[1].max() <= 0:
            raise InputError(
                f"lesion {spec.lesion_id} at {spec.center_mm} mm lies outside the image grid"
            )
        box, outer, _ = got
        take = (outer >= 0.5) & (outer > best[box])
        if not take.any():
            take = outer == outer.max()
        labels[box][take] = spec.lesion_id
        best[box][take] = outer[take]
    for spec in lesions:
        counts[spec.lesion_id] = int(np.count_nonzero(labels == spec.lesion_id))
        if counts[spec.lesion_id] == 0:
            raise InputError(
                f"lesion {spec.lesion_id} at {spec.center_mm} mm is hidden by an overlapping lesion"
            )
    return labels, counts


def _truth(
    lesions,
    chronic,
    counts,
    labels,
    affine,
    voxel_mm3,
    matrix,
    euler,
    trans,
    center,
    anat,
    *,
    settings,
    extra,
):
    entries = []
    for spec in lesions:
        ijk = np.argwhere(labels == spec.lesion_id)
        centroid = ijk.mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]
        d = spec.to_dict()
        d.update(
            n_voxels=counts[spec.lesion_id],
            volume_mm3=round(counts[spec.lesion_id] * voxel_mm3, 3),
            label_centroid_mm=[round(float(v), 3) for v in centroid],
        )
        entries.append(d)
    brain = np.argwhere((anat.fractions["wm"] > 128) | (anat.fractions["gm"] > 128))[::50]
    pts = brain @ anat.affine[:3, :3].T + anat.affine[:3, 3]
    disp = np.linalg.norm(pts @ matrix[:3, :3].T + matrix[:3, 3] - pts, axis=1)
    angle = float(np.degrees(np.arccos(np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1, 1))))
    return {
        "generator": f"gdlesion.simulate {__version__}",
        "space": "post scan RAS mm (labels on the post grid)",
        "label_rule": "voxels whose supersampled lesion fraction is >= 0.5 (ring lesions whole, "
        "core "
        "included); a lesion covering no voxel by half keeps its most covered voxel",
        "settings": settings,
        **extra,
        "n_lesions": len(lesions),
        "lesions": entries,
        "chronic_lesions": [c.to_dict() for c in chronic],
        "matrix_ras": np.round(matrix, 9).tolist(),
        "matrix_convention": "maps a post-scan RAS point to the same anatomy in the pre scan "
        "(as registration.RegistrationResult.matrix_ras)",
        "misalignment": {
            "rotation_deg_xyz": [round(float(v), 4) for v in euler],
            "translation_mm": [round(float(v), 4) for v in trans],
            "center_mm": [round(float(v), 4) for v in center],
            "rotation_angle_deg": round(angle, 4),
            "brain_displacement_mm_mean": round(float(disp.mean()), 4),
            "brain_displacement_mm_max": round(float(disp.max()), 4),
        },
        "flair_matrix_ras": np.eye(4).tolist(),
    }


# Writers live in their own module (file layout, BIDS); re-exported as part of this API.
from .simulate_write import write_bids_dataset, write_study  # noqa: E402

#: Tissues that make up the brain (inside the dura) in :func:`truth_brain_mask`.
BRAIN_TISSUES = ("wm", "gm", "deep_gm", "csf", "choroid")


def truth_brain_mask(study: SimulatedStudy) -> np.ndarray:
    """Return the simulator's brain on the post grid: partial-volume brain tissue >= 0.5.

    White and grey matter, deep grey matter, choroid plexus and CSF inside the
    dura (:data:`BRAIN_TISSUES`), rendered with the study's slice profile:
    the reference for brain-mask accuracy.
    """
    s = study.truth["settings"]
    affine, shape = study.post.affine, study.post.shape
    spacing = float(max(1.0, min(np.abs(np.diag(affine)[:3])) / 2.0))
    anat = build_anatomy(s["subject_seed"], spacing)
    values = {t: (255.0 if t in BRAIN_TISSUES else 0.0) for t in TISSUES}
    img, _ = _render(anat, values, affine=affine, shape=shape,
                     thickness=study.truth["slice_thickness_mm"], to_world=np.eye(4),
                     lesions=[], lesion_values=[])
    return img / 255.0 >= 0.5
