"""Lesion tracking across three visits with planted lesions and known head motion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gdlesion.io import Volume, save_volume
from gdlesion.registration import rigid_matrix
from gdlesion.tracking import match_lesions, per_visit, track_from_files, track_lesions

SHAPE = (40, 44, 36)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
AFFINE[:3, 3] = [-30, -33, -36]

# head-space centres (mm) and radius of planted lesions, per visit
LESIONS = {
    "A": ((-10.0, 0.0, 0.0), (0, 1, 2)),  # persistent through all visits
    "B": ((12.0, 8.0, -6.0), (0,)),  # resolves at visit 1
    "C": ((0.0, -14.0, 10.0), (1, 2)),  # new at 1, persistent at 2
    "D": ((8.0, 15.0, 12.0), (2,)),  # new at 2
    "E": ((-12.0, -12.0, -14.0), (1,)),  # new at 1, resolves at 2
}
POSES = [
    rigid_matrix(rotation_deg=(0, 0, 0), translation_mm=(0, 0, 0)),
    rigid_matrix(rotation_deg=(4, -3, 6), translation_mm=(5, -4, 3)),
    rigid_matrix(rotation_deg=(-5, 2, -4), translation_mm=(-4, 6, -2)),
]


def label_map(visit: int) -> tuple[Volume, dict[str, int]]:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    world = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    inv = np.linalg.inv(POSES[visit])
    head = world @ inv[:3, :3].T + inv[:3, 3]
    labels = np.zeros(SHAPE, np.int32)
    names = {}
    for name, (centre, visits) in LESIONS.items():
        if visit in visits:
            names[name] = len(names) + 1
            labels[np.linalg.norm(head - np.asarray(centre), axis=-1) <= 4.0] = names[name]
    return Volume(labels, AFFINE, f"v{visit}"), names


def matrices():
    # maps visit t grid RAS -> visit t-1 RAS: P_{t-1} P_t^{-1}
    return [None] + [POSES[t - 1] @ np.linalg.inv(POSES[t]) for t in (1, 2)]


def status_by_name(df, visit, names, prev_names):
    rows = df[df["session"] == f"0{visit}"]
    out = {}
    inv_cur = {v: k for k, v in names.items()}
    inv_prev = {v: k for k, v in prev_names.items()}
    for r in rows.itertuples():
        key = inv_prev[r.lesion] if r.status == "resolved" else inv_cur[r.lesion]
        out[key] = r.status
    return out


def test_track_planted_lesions_three_visits():
    maps, names = zip(*[label_map(v) for v in range(3)], strict=True)
    df = track_lesions(list(maps), matrices(), sessions=["00", "01", "02"], subject="x")
    assert status_by_name(df, 0, names[0], {}) == {"A": "baseline", "B": "baseline"}
    assert status_by_name(df, 1, names[1], names[0]) == {
        "A": "persistent", "B": "resolved", "C": "new", "E": "new"}
    assert status_by_name(df, 2, names[2], names[1]) == {
        "A": "persistent", "C": "persistent", "D": "new", "E": "resolved"}
    pv = per_visit(df).set_index("session")
    assert np.isnan(pv.loc["00", "new_lesions"])
    assert pv.loc["01", ["new_lesions", "persistent_lesions", "resolved_lesions"]].tolist() == [
        2, 1, 1]
    assert pv.loc["02", "new_lesions"] == 1
    vol = df[(df.session == "00") & (df.lesion == 1)]["volume_mm3"].item()
    assert vol == pytest.approx(4 / 3 * np.pi * 4**3, rel=0.25)


def test_identity_transform_misses_moved_lesions():
    # without the registration, the 6-mm head motion breaks the matches: proves matrices are used
    maps, _ = zip(*[label_map(v) for v in range(3)], strict=True)
    df = track_lesions(list(maps), [None] * 3, sessions=["00", "01", "02"])
    assert (df["status"] == "persistent").sum() < 3


def test_visit_without_lesions_counts_zero_new():
    maps, _ = zip(*[label_map(v) for v in range(2)], strict=True)
    empty = Volume(np.zeros(SHAPE, np.int32), AFFINE, "empty")
    df = track_lesions([maps[0], empty, empty], [None] * 3, sessions=["00", "01", "02"])
    pv = per_visit(df).set_index("session")
    assert pv.loc["01", ["new_lesions", "resolved_lesions"]].tolist() == [0, 2]
    assert pv.loc["02", ["new_lesions", "resolved_lesions"]].tolist() == [0, 0]
    assert df.loc[df["session"] == "02", "status"].tolist() == ["none"]


def test_match_lesions_threshold():
    prev = np.zeros((5, 5, 5), int)
    cur = np.zeros((5, 5, 5), int)
    prev[0, 0, :2] = 1
    cur[0, 0, 1:3] = 1
    cur[4, 4, 4] = 2
    links, back = match_lesions(prev, cur, min_overlap_voxels=1)
    assert links == {1: [(1, 1)], 2: []} and back == {1: [(1, 1)]}
    links, _ = match_lesions(prev, cur, min_overlap_voxels=2)
    assert links[1] == []


def test_track_from_files_without_raw(tmp_path):
    maps, _ = zip(*[label_map(v) for v in range(2)], strict=True)
    for t, vol in enumerate(maps):
        folder = tmp_path / "sub-01" / f"ses-0{t}" / "anat"
        save_volume(folder / f"sub-01_ses-0{t}_space-individual_desc-lesion_dseg.nii.gz",
                    vol.data, vol.affine, dtype=np.int32)
    visits = pd.DataFrame({"subject": "01", "session": ["00", "01", "02"], "status": "ok",
                           "date": pd.to_datetime(["2020-01-01", "2020-02-01", "2020-03-01"])})
    df, warnings = track_from_files(visits, tmp_path)
    assert set(df["session"]) == {"00", "01"}
    assert any("ses-02: no lesion label map" in w for w in warnings)
    assert any("without registration" in w for w in warnings)
