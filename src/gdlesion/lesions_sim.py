"""Simulated MS lesions: specification, random placement in white matter, and rasterisation.

Lesions are analytic ellipsoids in the post scan's world (RAS mm). They are
evaluated exactly at supersampled points of any output grid (through the
misalignment for the pre scan), which gives partial volume and a label map
whose voxels are those more than half covered by a lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import InputError
from .phantom import build_anatomy
from .registration import rigid_matrix

__all__ = ["LesionSpec", "random_lesions", "chronic_lesions", "lesion_fractions"]

#: Spacing of the anatomy used to place random lesions (independent of the output resolution,
#: so that a subject's lesion positions do not depend on the protocol).
_PLACEMENT_SPACING = 2.0
_KINDS = ("nodular", "ring")


@dataclass(frozen=True)
class LesionSpec:
    """One simulated lesion, in the post scan's world (RAS mm).

    Parameters
    ----------
    center_mm : tuple of float
        Centre in RAS mm (post/world space).
    diameter_mm : float
        Diameter of the sphere of equal volume, in mm.
    kind : {"nodular", "ring"}
        Solid enhancement, or an enhancing rim around a non-enhancing core.
    contrast : float
        Enhancement added on the post scan, as a fraction of the white-matter
        signal (0 = not enhancing, e.g. a chronic lesion).
    hypointense : bool
        Whether the lesion is darker than white matter on the pre scan.
    lesion_id : int, optional
        Label value in the truth map; ``None`` lets the simulator number it.
    t1_drop : float
        Relative T1 signal drop of a hypointense lesion (ignored otherwise).
    flair_gain : float
        FLAIR signal relative to white matter.
    axes_scale : tuple of float
        Relative semi-axes (normalised to unit product, so volume is kept).
    orientation_deg : tuple of float
        Rotation of the ellipsoid about x, y, z in degrees.
    """

    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str = "nodular"
    contrast: float = 0.5
    hypointense: bool = False
    lesion_id: int | None = None
    t1_drop: float = 0.3
    flair_gain: float = 1.8
    axes_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InputError(f"lesion kind {self.kind!r} is not one of {', '.join(_KINDS)}")
        if not 0.5 <= float(self.diameter_mm) <= 60.0:
            raise InputError(f"lesion diameter {self.diameter_mm} mm is outside 0.5-60 mm")
        if len(self.center_mm) != 3 or not np.all(np.isfinite(self.center_mm)):
            raise InputError(f"lesion center {self.center_mm} is not three finite RAS mm values")
        if self.contrast < 0 or not 0 <= self.t1_drop < 1:
            raise InputError(
                f"lesion contrast {self.contrast} / t1_drop {self.t1_drop} out of range"
            )
        if self.lesion_id is not None and not 0 < int(self.lesion_id) < 32768:
            raise InputError(f"lesion_id {self.lesion_id} must be within 1-32767")

    @property
    def semi_axes_mm(self) -> np.ndarray:
        """Semi-axes (mm) of the ellipsoid, whose product is ``(diameter/2)**3``."""
        scale = np.asarray(self.axes_scale, dtype=np.float64)
        return self.diameter_mm / 2.0 * scale / np.cbrt(np.prod(scale))

    @property
    def rim_mm(self) -> float:
        """Thickness of the enhancing rim of a ring lesion (mm)."""
        return float(np.clip(0.18 * self.diameter_mm, 1.0, 2.5))

    def to_dict(self) -> dict:
        """JSON-ready description (rounded)."""
        return {
            "id": self.lesion_id,
            "center_mm": [round(float(v), 3) for v in self.center_mm],
            "diameter_mm": round(float(self.diameter_mm), 3),
            "kind": self.kind,
            "contrast": round(float(self.contrast), 4),
            "hypointense": bool(self.hypointense),
            "t1_drop": round(float(self.t1_drop if self.hypointense else 0.0), 4),
            "flair_gain": round(float(self.flair_gain), 4),
            "axes_scale": [round(float(v), 4) for v in self.axes_scale],
            "orientation_deg": [round(float(v), 3) for v in self.orientation_deg],
            "nominal_volume_mm3": round(float(np.pi / 6 * self.diameter_mm**3), 3),
        }


def random_lesions(
    *,
    subject_seed: int,
    n: int,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    min_diameter_mm: float = 2.0,
    max_diameter_mm: float = 15.0,
    ring_fraction: float = 0.4,
    hypointense_fraction: float = 0.4,
    enhancing: bool = True,
    avoid: tuple[LesionSpec, ...] | list[LesionSpec] | None = None,
) -> list[LesionSpec]:
    """Draw lesions at random valid positions in the cerebral white matter of a subject.

    Diameters are log-uniform in ``[min_diameter_mm, max_diameter_mm]``; each
    centre lies in white matter at least ``max(1.5, 0.6 * radius)`` mm from grey
    matter or CSF, and lesions keep a 2 mm gap from each other and from
    ``avoid`` (by default the subject's chronic lesions).

    Parameters
    ----------
    subject_seed : int
        The subject whose anatomy hosts the lesions.
    n : int
        Number of lesions.
    seed : int, optional
        Seed of the draw (ignored when ``rng`` is given).
    rng : numpy.random.Generator, optional
        Generator to draw from.
    min_diameter_mm, max_diameter_mm : float
        Diameter range (inclusive).
    ring_fraction : float
        Probability that a lesion of 5 mm or more is ring-enhancing.
    hypointense_fraction : float
        Probability that a lesion is T1-hypointense on the pre scan.
    enhancing : bool
        ``False`` draws non-enhancing (chronic) lesions: contrast 0.
    avoid : sequence of LesionSpec, optional
        Lesions to keep clear of; ``None`` means the subject's chronic lesions.

    Returns
    -------
    list of LesionSpec
        ``n`` lesions with ``lesion_id=None``.

    Raises
    ------
    InputError
        ``n`` is negative, the diameter range is invalid, or the lesions do not fit.
    """
    if n < 0:
        raise InputError(f"number of lesions {n} is negative")
    if not 0.5 <= min_diameter_mm <= max_diameter_mm <= 40:
        raise InputError(f"lesion diameter range {min_diameter_mm}-{max_diameter_mm} mm is invalid")
    rng = rng if rng is not None else np.random.default_rng(seed)
    if avoid is None:
        avoid = chronic_lesions(subject_seed=subject_seed)
    anat = build_anatomy(int(subject_seed), _PLACEMENT_SPACING)
    depth = anat.wm_depth_mm
    cand = np.flatnonzero(depth >= 1.5)
    cand_depth = depth.ravel()[cand]
    placed = [(np.asarray(a.center_mm), float(a.semi_axes_mm.max())) for a in avoid]
    out: list[LesionSpec] = []
    for _ in range(n):
        diam = float(np.exp(rng.uniform(np.log(min_diameter_mm), np.log(max_diameter_mm))))
        for _attempt in range(20):
            scale = tuple(float(v) for v in np.clip(1 + 0.18 * rng.standard_normal(3), 0.7, 1.4))
            spec_r = diam / 2 * max(scale) / np.cbrt(np.prod(scale))
            ok = cand[cand_depth >= max(1.5, 0.6 * spec_r)]
            if ok.size == 0:
                diam *= 0.8
                continue
            idx = rng.choice(ok, size=min(64, ok.size))
            ijk = np.stack(np.unravel_index(idx, depth.shape), axis=1).astype(np.float64)
            ijk += rng.uniform(-0.5, 0.5, ijk.shape)
            centers = ijk @ anat.affine[:3, :3].T + anat.affine[:3, 3]
            good = np.ones(len(centers), bool)
            for c, r in placed:
                good &= np.linalg.norm(centers - c, axis=1) >= r + spec_r + 2.0
            if good.any():
                center = centers[np.argmax(good)]
                break
            diam *= 0.9
        else:
            raise InputError(
                f"could not place {n} lesions in the white matter of subject {subject_seed}"
            )
        big = diam >= 5.0
        ring = bool(enhancing and big and rng.random() < ring_fraction)
        spec = LesionSpec(
            center_mm=tuple(float(round(v, 3)) for v in center),
            diameter_mm=round(diam, 3),
            kind="ring" if ring else "nodular",
            contrast=float(rng.uniform(0.3, 1.0) if ring else rng.uniform(0.15, 0.9))
            if enhancing
            else 0.0,
            hypointense=bool(rng.random() < hypointense_fraction),
            t1_drop=float(rng.uniform(0.15, 0.4)),
            flair_gain=float(rng.uniform(1.5, 2.1)),
            axes_scale=scale,
            orientation_deg=tuple(float(v) for v in rng.uniform(-90, 90, 3)),
        )
        placed.append((center, spec_r))
        out.append(spec)
    return out


def chronic_lesions(*, subject_seed: int) -> list[LesionSpec]:
    """Return the persistent non-enhancing (FLAIR) lesions of a subject, the same every session."""
    rng = np.random.default_rng(np.random.SeedSequence([int(subject_seed), 7002]))
    n = int(rng.integers(3, 9))
    return random_lesions(
        subject_seed=subject_seed,
        n=n,
        rng=rng,
        min_diameter_mm=3.0,
        max_diameter_mm=10.0,
        enhancing=False,
        hypointense_fraction=0.5,
        avoid=(),
    )


def _rotation(spec: LesionSpec) -> np.ndarray:
    return rigid_matrix(rotation_deg=spec.orientation_deg)[:3, :3]


def lesion_fractions(
    spec: LesionSpec,
    *,
    grid_affine: np.ndarray,
    shape: tuple[int, int, int],
    to_world: np.ndarray,
    subsamples: tuple[int, int, int],
    extent: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Fractions of each voxel covered by a lesion and by its core, within the lesion's box.

    Parameters
    ----------
    spec : LesionSpec
        The lesion (world coordinates).
    grid_affine : numpy.ndarray
        Voxel-to-RAS affine of the output grid.
    shape : tuple of int
        Output grid shape.
    to_world : numpy.ndarray
        4x4 map from a grid point to the anatomy (world) point it shows
        (identity for the post scan, the inverse misalignment for the pre scan).
    subsamples : tuple of int
        Sub-samples per voxel along i, j, k.
    extent : tuple of float
        Sampled extent of a voxel along i, j, k in voxel units (slice thickness / spacing).

    Returns
    -------
    tuple or None
        ``(box, outer, core)`` with float32 fractions over ``box``; ``None``
        when the lesion does not touch the grid. ``core`` is zero for nodular lesions.
    """
    full = np.asarray(to_world, float) @ np.asarray(grid_affine, float)
    inv = np.linalg.inv(full)
    axes = spec.semi_axes_mm
    zooms = np.sqrt((full[:3, :3] ** 2).sum(axis=0))
    c_vox = inv[:3, :3] @ np.asarray(spec.center_mm, float) + inv[:3, 3]
    half = axes.max() / zooms + np.asarray(extent) / 2 + 1
    lo = np.maximum(np.floor(c_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(c_vox + half).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    offs = [((np.arange(n) + 0.5) / n - 0.5) * e for n, e in zip(subsamples, extent, strict=True)]
    sub = np.stack(np.meshgrid(*offs, indexing="ij"), -1).reshape(-1, 3)
    ijk = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    )
    pts = (ijk.reshape(-1, 1, 3) + sub[None]).reshape(-1, 3)
    world = pts @ full[:3, :3].T + full[:3, 3]
    local = (world - np.asarray(spec.center_mm)) @ _rotation(spec)
    rho = np.sqrt(((local / axes) ** 2).sum(axis=1)).reshape(-1, sub.shape[0])
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    outer = (rho <= 1.0).mean(axis=1).reshape(box_shape).astype(np.float32)
    if spec.kind == "ring":
        core_rho = max(1.0 - spec.rim_mm / (spec.diameter_mm / 2), 0.0)
        core = (rho <= core_rho).mean(axis=1).reshape(box_shape).astype(np.float32)
    else:
        core = np.zeros(box_shape, np.float32)
    return box, outer, core


def with_ids(lesions: list[LesionSpec]) -> list[LesionSpec]:
    """Give ids to lesions lacking one (after the largest given id); reject duplicates."""
    given = [int(s.lesion_id) for s in lesions if s.lesion_id is not None]
    if len(set(given)) != len(given):
        raise InputError(f"duplicate lesion ids in {sorted(given)}")
    nxt = max(given, default=0) + 1
    out = []
    for s in lesions:
        if s.lesion_id is None:
            s = replace(s, lesion_id=nxt)
            nxt += 1
        out.append(s)
    return out
