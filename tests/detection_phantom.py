"""A small skull-stripped pre/post phantom with planted structures whose truth is known.

Built in world (RAS mm) coordinates and sampled at the voxel centres of any grid (e.g. the
oblique anisotropic affine of conftest), with 3x3x3 supersampling for partial volume. Pre and
post use different tissue contrasts; the post adds enhancement to lesions, a vein-like tube and a
choroid-plexus-like blob inside a ventricle.
"""

from __future__ import annotations

import numpy as np

from gdlesion.io import Volume

CENTRE = np.array([0.0, 0.0, 0.0])
BRAIN_AXES = np.array([45.0, 50.0, 38.0])
GM_MM = 3.0
VENTRICLE = (np.array([6.0, 0.0, 4.0]), np.array([4.5, 13.0, 6.0]))
PLEXUS = (np.array([6.0, 3.0, 4.0]), 2.5)
TUBE = (np.array([-24.0, -22.0, 8.0]), np.array([-24.0, 12.0, 11.0]), 1.1)
# WM intensity 1000 on post; pre is a different sequence (other GM/CSF contrast, scale)
POST = {"wm": 1000.0, "gm": 680.0, "csf": 220.0, "plexus": 650.0}
PRE = {"wm": 800.0, "gm": 470.0, "csf": 120.0, "plexus": 500.0}
ENHANCE = {"lesion": 450.0, "tube": 900.0, "plexus": 700.0}


def _ellipsoid(p, centre, axes):
    return (((p - centre) / axes) ** 2).sum(-1)


def _segment_dist(p, a, b):
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def make_grid(shape, affine):
    """World coordinates of 2x2x2 sub-samples of every voxel: float32 array (*shape, 8, 3)."""
    sub = np.array([-0.25, 0.25])
    off = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(8, 3)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    pts = ijk[..., None, :].astype(np.float32) + off.astype(np.float32)
    return pts @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)


def render(shape, affine, *, lesions=(), tube=True, plexus=True, noise=12.0, seed=0, motion=None):
    """Return ``(pre, post, truth)`` Volumes/array; truth labels planted lesions 1..n (>=50 %).

    ``lesions``: sequence of (centre_mm, radius_mm). ``motion``: 4x4 RAS matrix applied to the
    pre scan's anatomy (pre shows the anatomy at ``motion @ x``).
    """
    rng = np.random.default_rng(seed)
    out = {}
    truth = np.zeros(shape, dtype=np.int32)
    for scan in ("post", "pre"):
        p = make_grid(shape, affine)
        if scan == "pre" and motion is not None:
            p = p @ motion[:3, :3].T + motion[:3, 3]
        tab = POST if scan == "post" else PRE
        r_brain = _ellipsoid(p, CENTRE, BRAIN_AXES)
        inner = _ellipsoid(p, CENTRE, BRAIN_AXES - GM_MM)
        img = np.where(r_brain <= 1, np.where(inner <= 1, tab["wm"], tab["gm"]), 0.0)
        vent = _ellipsoid(p, *VENTRICLE) <= 1
        img = np.where(vent, tab["csf"], img)
        if plexus:
            blob = np.linalg.norm(p - PLEXUS[0], axis=-1) <= PLEXUS[1]
            img = np.where(blob, tab["plexus"] + (ENHANCE["plexus"] if scan == "post" else 0), img)
        if tube:
            t = _segment_dist(p, TUBE[0], TUBE[1]) <= TUBE[2]
            img = np.where(t, tab["wm"] + (ENHANCE["tube"] if scan == "post" else 0), img)
        for idx, (centre, radius) in enumerate(lesions, start=1):
            inside = np.linalg.norm(p - np.asarray(centre, float), axis=-1) <= radius
            if scan == "post":
                img = np.where(inside, img + ENHANCE["lesion"], img)
                truth[inside.mean(-1) >= 0.5] = idx
            else:
                img = np.where(inside, img * 0.9, img)
        data = img.mean(-1)
        data = np.where(data > 0, data + rng.normal(0, noise, shape), 0.0).astype(np.float32)
        out[scan] = Volume(data, affine, f"{scan}.nii.gz")
    return out["pre"], out["post"], truth
