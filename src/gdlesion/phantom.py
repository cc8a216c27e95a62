"""Procedural head anatomy for the simulator: tissue partial-volume maps of one subject.

A subject is defined by ``subject_seed`` alone: head size, skull and scalp,
cortex with sulci, cerebellum, brainstem, deep grey matter, ventricles,
choroid plexus, dura (with falx and tentorium), dural sinuses and cortical
veins. Every structure is a continuous function of RAS millimetres (smooth
random fields, ellipsoids, tubes around spline curves), rasterised on a
world-aligned *anatomy grid* as partial-volume fractions (a voxel-wide
linear ramp across each boundary). The simulator samples these maps onto the
post grid directly and onto the pre grid through the misalignment, so the
same subject seed gives identical anatomy whatever the session.

The anatomy space is the post scan's world (RAS mm); the brain centre lies
near the origin, as in MNI space.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

__all__ = ["TISSUES", "HEAD_CENTER_MM", "Anatomy", "build_anatomy", "anatomy_grid"]

# fmt: off
#: Tissue classes of the anatomy, in storage order.
TISSUES = (
    "wm", "gm", "deep_gm", "csf", "choroid", "vein", "sinus", "dura", "bone", "marrow", "fat",
    "skin",
)
# fmt: on
#: Centre of the head (RAS mm); misalignments rotate about points near it.
HEAD_CENTER_MM = (0.0, -17.0, 8.0)
#: World box covered by the anatomy grid (RAS mm), large enough for the biggest head.
_BOX = (np.array([-90.0, -128.0, -84.0]), np.array([90.0, 96.0, 98.0]))


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Partial-volume tissue maps of one subject on the anatomy grid.

    Attributes
    ----------
    subject_seed : int
        Seed that fully determines the anatomy.
    spacing : float
        Isotropic spacing of the anatomy grid in mm.
    affine : numpy.ndarray
        Voxel-to-RAS affine of the anatomy grid (axis aligned).
    fractions : dict of str to numpy.ndarray
        uint8 maps (0..255 = fraction 0..1) for each name of :data:`TISSUES`;
        their sum never exceeds 255 (the rest is air).
    cerebrum : numpy.ndarray
        Boolean map of the cerebral hemispheres (where random lesions may go).
    """

    subject_seed: int
    spacing: float
    affine: np.ndarray
    fractions: dict[str, np.ndarray]
    cerebrum: np.ndarray

    def fraction(self, tissue: str) -> np.ndarray:
        """Return the float32 fraction map (0..1) of ``tissue``."""
        return self.fractions[tissue].astype(np.float32) / np.float32(255.0)

    @functools.cached_property
    def wm_depth_mm(self) -> np.ndarray:
        """Distance (mm) from each cerebral white-matter voxel to the nearest non-WM voxel."""
        wm = (self.fractions["wm"] >= 128) & self.cerebrum
        return (ndimage.distance_transform_edt(wm) * self.spacing).astype(np.float32)


def anatomy_grid(spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the world-aligned anatomy grid at ``spacing`` mm."""
    lo, hi = _BOX
    shape = tuple(int(np.floor((h - lo_) / spacing)) + 1 for lo_, h in zip(lo, hi, strict=True))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    return shape, affine  # type: ignore[return-value]


class _Field:
    """Smooth zero-mean unit-variance random field on a coarse world grid (trilinear)."""

    def __init__(self, rng: np.random.Generator, *, sigma_mm: float, cell_mm: float) -> None:
        lo, hi = _BOX[0] - 4 * sigma_mm, _BOX[1] + 4 * sigma_mm
        shape = tuple(int(np.ceil((h - lo_) / cell_mm)) + 1 for lo_, h in zip(lo, hi, strict=True))
        data = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_mm / cell_mm, mode="wrap")
        self.data = ((data - data.mean()) / data.std()).astype(np.float32)
        self.lo, self.cell = lo, cell_mm
        grads = np.gradient(self.data, cell_mm)
        #: mean gradient magnitude per mm, to turn |field| into an approximate distance
        self.grad = float(np.mean(np.sqrt(sum(g.astype(np.float64) ** 2 for g in grads))))

    def grid(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Evaluate on the outer product of three world axes (separable trilinear)."""
        out = self.data
        for dim, coords in enumerate(axes):
            pos = (coords - self.lo[dim]) / self.cell
            i0 = np.clip(np.floor(pos).astype(int), 0, self.data.shape[dim] - 2)
            w = (pos - i0).astype(np.float32)
            weights = np.zeros((coords.size, self.data.shape[dim]), np.float32)
            rows = np.arange(coords.size)
            weights[rows, i0] = 1 - w
            weights[rows, i0 + 1] = w
            out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, dim, 0), axes=1), 0, dim)
        return out

    def points(self, pts: np.ndarray) -> np.ndarray:
        """Evaluate at ``(N, 3)`` world points."""
        idx = ((np.asarray(pts, np.float64) - self.lo) / self.cell).T
        return ndimage.map_coordinates(self.data, idx, order=1, mode="nearest").astype(np.float32)


def _frac(dist: np.ndarray, spacing: float) -> np.ndarray:
    """Partial-volume fraction inside a boundary from a signed distance (negative inside)."""
    return np.clip(0.5 - dist / np.float32(spacing), 0.0, 1.0).astype(np.float32)


def _ellipsoid_sdf(x, y, z, center, axes, pert=None):
    """Approximate signed distance (mm, along the ray from the centre) to a perturbed ellipsoid."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    q = np.sqrt((dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2)
    r = np.sqrt(dx**2 + dy**2 + dz**2)
    radius = np.where(q > 1e-6, r / np.maximum(q, 1e-6), float(min(axes)))
    if pert is not None:
        radius = radius * (1.0 + pert)
    return (r - radius).astype(np.float32)


def _paint_ellipsoid(out, axes_world, center, axes, spacing):
    """Paint (max) the partial-volume fraction of an axis-aligned ellipsoid into ``out``."""
    sl = []
    for d in range(3):
        ax = axes_world[d]
        sl.append(
            slice(
                int(np.searchsorted(ax, center[d] - axes[d] - 2 * spacing)),
                int(np.searchsorted(ax, center[d] + axes[d] + 2 * spacing)),
            )
        )
    sub = [axes_world[d][sl[d]] for d in range(3)]
    frac = _frac(
        _ellipsoid_sdf(
            sub[0][:, None, None], sub[1][None, :, None], sub[2][None, None, :], center, axes
        ),
        spacing,
    )
    np.maximum(out[tuple(sl)], frac, out=out[tuple(sl)])


def _segment_sdf(x, y, z, a, b, radius):
    """Signed distance to a capsule (segment a-b of given radius)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    d = np.sqrt(
        (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
    )
    return (d - radius).astype(np.float32)


def _curve(points, radii, step=0.4):
    """Densely sample a cubic spline through control points; radii interpolated linearly."""
    points = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    fine = np.linspace(0.0, s[-1], max(int(s[-1] / step), 2))
    return CubicSpline(s, points, axis=0)(fine), np.interp(fine, s, np.asarray(radii, float))


def _tube_fraction(curves, grid_axes, spacing):
    """Partial-volume fraction of a union of tubes (each a sampled curve with radii)."""
    shape = tuple(a.size for a in grid_axes)
    out = np.zeros(shape, np.float32)
    for pts, radii in curves:
        rmax = float(radii.max()) + spacing
        lo_idx = [
            int(np.searchsorted(ax, pts[:, d].min() - rmax)) for d, ax in enumerate(grid_axes)
        ]
        hi_idx = [
            int(np.searchsorted(ax, pts[:, d].max() + rmax)) for d, ax in enumerate(grid_axes)
        ]
        if any(h <= lo_ for lo_, h in zip(lo_idx, hi_idx, strict=True)):
            continue
        sub = [ax[lo_:h] for ax, lo_, h in zip(grid_axes, lo_idx, hi_idx, strict=True)]
        mesh = np.stack(np.meshgrid(*sub, indexing="ij"), axis=-1).reshape(-1, 3)
        dist, nearest = cKDTree(pts).query(mesh, distance_upper_bound=rmax, workers=-1)
        hit = np.isfinite(dist)
        frac = np.zeros(mesh.shape[0], np.float32)
        frac[hit] = np.clip(0.5 + (radii[nearest[hit]] - dist[hit]) / spacing, 0.0, 1.0)
        view = out[tuple(slice(lo_, h) for lo_, h in zip(lo_idx, hi_idx, strict=True))]
        np.maximum(view, frac.reshape(view.shape), out=view)
    return out


def _project(sdf, center, dirs, target, n_iter=6):
    """Points along rays ``center + t u`` where ``sdf`` equals ``target`` (approximate SDFs)."""
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    t = np.full(dirs.shape[0], 60.0)
    for _ in range(n_iter):
        pts = center + t[:, None] * dirs
        t = np.clip(t - (sdf(pts) - target), 5.0, 150.0)
    return center + t[:, None] * dirs


@functools.lru_cache(maxsize=4)
def build_anatomy(subject_seed: int, spacing: float = 1.0) -> Anatomy:
    """Build (or return the cached) anatomy of one subject.

    Parameters
    ----------
    subject_seed : int
        Determines every anatomical random choice; the same seed and spacing
        always give identical maps.
    spacing : float
        Isotropic spacing of the anatomy grid in mm (1 mm for full-resolution
        studies; coarser for fast, small test studies).

    Returns
    -------
    Anatomy
        Tissue fractions of the subject on the anatomy grid.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(subject_seed), 7001]))
    s = float(spacing)
    shape, affine = anatomy_grid(s)
    world = [affine[d, 3] + s * np.arange(shape[d]) for d in range(3)]
    hc = np.asarray(HEAD_CENTER_MM)
    scale = rng.uniform(0.93, 1.05, 3) * rng.uniform(0.97, 1.03)
    # canonical coordinates: the subject's head scaled to a standard size
    canon = [(hc[d] + (world[d] - hc[d]) / scale[d]).astype(np.float32) for d in range(3)]
    x, y, z = canon[0][:, None, None], canon[1][None, :, None], canon[2][None, None, :]
    atrophy = rng.uniform(0.0, 1.0)
    t_skull, t_scalp = rng.uniform(5.0, 7.5), rng.uniform(4.5, 7.0)
    gap = 1.5 + 2.0 * atrophy
    t_gm = rng.uniform(2.3, 2.9)
    vent = 0.75 + 0.8 * atrophy + rng.uniform(-0.1, 0.1)
    f_shape = _Field(rng, sigma_mm=14.0, cell_mm=4.0)
    f_sulc = _Field(rng, sigma_mm=4.0, cell_mm=2.0)
    f_depth = _Field(rng, sigma_mm=10.0, cell_mm=4.0)
    f_folia = _Field(rng, sigma_mm=3.0, cell_mm=1.5)

    def shape_pert(pts):
        return 0.03 * f_shape.points(pts)

    cer_c, cer_a = (0.0, -17.0, 10.0), (66.0, 84.0, 62.0)
    cbl_c, cbl_a = (0.0, -62.0, -30.0), (50.0, 32.0, 21.0)
    ic_c, ic_a = (0.0, -18.0, 8.0), (67.0 + gap, 86.0 + gap, 64.0 + gap)
    pert_grid = 0.03 * f_shape.grid(tuple(canon))

    d_ic = _ellipsoid_sdf(x, y, z, ic_c, ic_a, 0.6 * pert_grid)
    d_cbl = _ellipsoid_sdf(x, y, z, cbl_c, cbl_a, pert_grid)
    d_cer = np.maximum(_ellipsoid_sdf(x, y, z, cer_c, cer_a, pert_grid), -(d_cbl - 2.5))
    d_bs = np.minimum(
        _segment_sdf(x, y, z, (0, -20, 0), (0, -30, -45), 11.0),
        _segment_sdf(x, y, z, (0, -30, -45), (0, -34, -95), 9.0),
    )
    d_brain = np.maximum(np.minimum(np.minimum(d_cer, d_cbl), d_bs), d_ic + 1.0)
    region = np.argmin(np.stack([d_cer, d_cbl, d_bs]), axis=0)  # 0 cerebrum, 1 cerebellum, 2 stem
    del pert_grid

    # cortex: sulci are thin CSF sheets (zero set of a random field) down to a varying depth
    depth = -d_cer
    sulc_depth = 11.0 + 4.0 * f_depth.grid(tuple(canon))
    width = (0.8 + 2.0 * atrophy) * np.clip(1.0 - depth / sulc_depth, 0.2, 1.0)
    ds = np.maximum(np.abs(f_sulc.grid(tuple(canon))) / f_sulc.grad - width / 2, depth - sulc_depth)
    cc_top = np.where(np.abs(y + 8.0) < 40.0, 16.0 + 9.0 * (1 - ((y + 8.0) / 40.0) ** 2), -200.0)
    fissure = np.maximum(np.abs(x) - (0.8 + atrophy), cc_top - z)
    ds = np.minimum(ds, fissure)
    e_cer = np.minimum(depth, ds)
    # cerebellum: thick cortex, shallow folia, white-matter core
    depth_c = -d_cbl
    ds_c = np.maximum(np.abs(f_folia.grid(tuple(canon))) / f_folia.grad - 0.3, depth_c - 10.0)
    e_cbl = np.minimum(depth_c, ds_c)

    brain = _frac(d_brain, s)
    sulcal = np.where(region == 0, _frac(ds, s), np.where(region == 1, _frac(ds_c, s), 0.0))
    tissue = brain * (1.0 - sulcal)
    wm_f = np.where(
        region == 0, _frac(t_gm - e_cer, s), np.where(region == 1, _frac(4.0 - e_cbl, s), 1.0)
    )
    wm, gm = tissue * wm_f, tissue * (1.0 - wm_f)
    del ds, ds_c, e_cer, e_cbl, depth, depth_c, wm_f, sulc_depth, width, d_bs

    # deep grey matter (removed from white matter)
    deep = np.zeros(shape, np.float32)
    for sx in (-1.0, 1.0):
        for c, a in (
            ((11, -18, 6), (8, 14, 9)),
            ((13, 12, 12), (5.5, 9, 9)),
            ((24, 3, 1), (5.5, 13, 10)),
        ):
            _paint_ellipsoid(deep, canon, (sx * c[0], c[1], c[2]), a, s)
    deep = np.minimum(deep, wm)
    wm -= deep

    # ventricles: tubes along C-shaped curves, plus the third ventricle
    canon_axes = tuple(canon)
    vent_curves, plexus = [], []
    for sx in (-1.0, 1.0):
        v = vent * rng.uniform(0.9, 1.1)
        main = [(5, 30, 10), (7, 18, 16), (10, 0, 20), (13, -20, 20), (21, -36, 13)]
        horns = (
            [(21, -36, 13), (20, -52, 9), (15, -66, 6)],
            [(21, -36, 13), (29, -36, 0), (32, -26, -12), (30, -12, -20)],
        )
        for pts, radii in (
            (main, [2.5, 3.8, 3.5, 3.5, 5.5]),
            (horns[0], [5.5, 2.5, 1.5]),
            (horns[1], [5.0, 2.5, 2.0, 1.5]),
        ):
            p = np.asarray(pts, float) * [sx, 1, 1]
            vent_curves.append(_curve(p, np.asarray(radii) * v))
        p = np.asarray(
            [(10, -4, 19), (14, -22, 18), (21, -36, 11), (29, -34, -1), (31, -24, -12)], float
        )
        plexus.append(
            _curve(
                p * [sx, 1, 1] - [0, 0, 0.6 * v],
                np.asarray([1.2, 1.5, 3.2, 1.5, 1.1]) * min(v, 1.2),
            )
        )
    ventricles = _tube_fraction(vent_curves, canon_axes, s)
    _paint_ellipsoid(ventricles, canon, (0.0, -10.0, 4.0), (1.3 * vent, 12.0, 8.0), s)
    ventricles = ventricles * (region == 0) * brain
    choroid = np.minimum(_tube_fraction(plexus, canon_axes, s), ventricles)
    keep = 1.0 - ventricles
    wm, gm, deep = wm * keep, gm * keep, deep * keep

    # coverings: dura under the skull (plus falx and tentorium), skull with diploe, scalp
    inside = _frac(d_ic, s)
    dura = inside - _frac(d_ic + 1.0, s)
    csf = np.clip(inside - dura - (wm + gm + deep) - choroid, 0.0, 1.0)
    falx = _frac(np.maximum(np.abs(x) - 0.5, cc_top + 10.0 - z), s)
    sheets = np.minimum(
        np.maximum(falx, _frac(np.abs(d_cbl - 1.5) - 0.5, s) * (y < -30) * (z > -40)), csf
    )
    dura, csf = dura + sheets, csf - sheets
    skull = _frac(d_ic - t_skull, s) - inside
    marrow = np.clip(_frac(d_ic - (t_skull - 1.8), s) - _frac(d_ic - 1.8, s), 0.0, None)
    neck = _frac(np.maximum(_ellipsoid_sdf(x, y, z, (0, -25, -70), (52, 48, 1e4)), z + 45.0), s)
    head = np.maximum(_frac(d_ic - (t_skull + t_scalp), s), neck) - np.maximum(skull + inside, 0)
    fat = np.clip(
        _frac(d_ic - (t_skull + t_scalp - 1.5), s) - _frac(d_ic - (t_skull + 1.0), s), 0.0, None
    )
    fat = np.minimum(fat, head)
    maps = {
        "wm": wm,
        "gm": gm,
        "deep_gm": deep,
        "csf": csf,
        "choroid": choroid,
        "dura": dura,
        "bone": skull - marrow,
        "marrow": marrow,
        "fat": fat,
        "skin": np.clip(head - fat, 0, 1),
    }
    cerebrum = (region == 0) & (brain > 0.5)
    del d_ic, inside, region, brain

    # vessels: dural sinuses hugging the inner table, deep veins, cortical veins on the surface
    def ic_sdf(p):
        return _ellipsoid_sdf(p[:, 0], p[:, 1], p[:, 2], ic_c, ic_a, 0.6 * shape_pert(p))

    def cer_sdf(p):
        return _ellipsoid_sdf(p[:, 0], p[:, 1], p[:, 2], cer_c, cer_a, shape_pert(p))

    alpha = np.deg2rad(np.linspace(15, 187, 40))
    sss_r = np.linspace(1.8, 4.2, alpha.size)
    sss = _project(
        ic_sdf,
        np.asarray(ic_c),
        np.stack([0 * alpha, np.cos(alpha), np.sin(alpha)], 1),
        -(sss_r + 0.3),
    )
    sinuses = [(sss, sss_r)]
    torcular = sss[-1]
    for sx in (-1.0, 1.0):
        beta = np.deg2rad(np.linspace(0, 95, 30))
        elev = np.concatenate([np.linspace(-0.26, -0.35, 22), np.linspace(-0.4, -0.8, 8)])
        radii = np.linspace(3.8, 3.2, beta.size)
        pts = _project(
            ic_sdf,
            np.asarray(ic_c),
            np.stack([sx * np.sin(beta), -np.cos(beta), elev], 1),
            -(radii + 0.3),
        )
        sinuses.append((np.vstack([torcular, pts[1:]]), radii))
    sinuses.append((np.vstack([[0, -36, 8], torcular]), np.array([2.4, 2.6])))
    veins = [
        (
            np.array([[sx * 2.0, 0, 17], [sx * 1.5, -20, 15], [0, -33, 9]], float),
            np.array([1.1, 1.2, 2.4]),
        )
        for sx in (-1.0, 1.0)
    ]
    for _ in range(int(rng.integers(11, 17))):
        sx, r = rng.choice([-1.0, 1.0]), rng.uniform(0.7, 1.4)
        phi0, e0 = rng.uniform(-60, 60), rng.uniform(-15, 25)
        down = rng.random() < 0.25
        phi1, e1 = (phi0 + rng.uniform(-15, 15), rng.uniform(80, 86)) if not down else (-80, -25)
        tt = np.linspace(0.0, 1.0, 40)
        phi = np.deg2rad(
            phi0
            + (phi1 - phi0) * tt
            + 6.0 * np.sin(2 * np.pi * rng.uniform(1, 3) * tt + rng.uniform(0, 6))
        )
        ele = np.deg2rad(e0 + (e1 - e0) * tt)
        dirs = np.stack([sx * np.cos(ele) * np.cos(phi), np.cos(ele) * np.sin(phi), np.sin(ele)], 1)
        veins.append((_project(cer_sdf, np.asarray(cer_c), dirs, r + 0.2), np.full(tt.size, r)))
    sinus = _tube_fraction([_curve(p, r) for p, r in sinuses], canon_axes, s)
    vein = np.clip(
        _tube_fraction([_curve(p, r) for p, r in veins], canon_axes, s) - sinus, 0.0, None
    )
    vessel = np.clip(vein + sinus, 0.0, 1.0)
    occupied = sum(maps.values())
    keep = 1.0 - vessel
    maps = {k: v * keep for k, v in maps.items()}
    air = np.clip(1.0 - occupied, 0.0, 1.0)
    # vessels do not stick out into air: limit them to the head
    maps["vein"], maps["sinus"] = vein * (1.0 - air), sinus * (1.0 - air)
    fractions = {t: np.round(np.clip(maps[t], 0.0, 1.0) * 255.0).astype(np.uint8) for t in TISSUES}
    return Anatomy(int(subject_seed), s, affine, fractions, cerebrum)
