"""Shared fixtures: seeded RNG, oblique anisotropic affine, unequal shapes, real-data paths."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LESJAK = SHARED_DATA / "lesjak2018_ms"
TCGA = SHARED_DATA / "tcga_fg_6692"


def oblique_affine(
    zooms=(0.9, 1.1, 2.5), angles_deg=(12.0, -7.0, 20.0), origin=(-40.0, 25.0, -10.0)
):
    """A rotated, anisotropic voxel-to-RAS affine (no axis aligned with the world)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ ry @ rx @ np.diag(zooms)
    aff[:3, 3] = origin
    return aff


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


@pytest.fixture
def affine_oblique():
    return oblique_affine()


@pytest.fixture
def shape_unequal():
    return (7, 8, 9)


@pytest.fixture
def write_nifti(tmp_path):
    """Write an array + affine to a NIfTI file in tmp_path and return its path."""

    def _write(data, affine=None, name="img.nii.gz", dtype=np.float32):
        affine = np.eye(4) if affine is None else affine
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
        path = tmp_path / name
        nib.save(img, str(path))
        return path

    return _write


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available at {path} (needs ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def lesjak_dir():
    return _require(LESJAK)


@pytest.fixture(scope="session")
def tcga_dir():
    return _require(TCGA)
