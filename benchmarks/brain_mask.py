"""Classical brain mask on full-head simulated scans: Dice against the simulator's brain, time.

Run from the repository root::

    .venv/bin/python benchmarks/brain_mask.py [--seeds 0 1]

For each simulated study (``gdlesion.simulate.simulate_study``, full head, skull on) the truth
brain is the simulator's partial-volume composite of white matter, grey matter, deep grey
matter, choroid plexus and CSF (inside the dura) rendered on the post grid with the same slice
profile, thresholded at 0.5. Reported: Dice, the fraction of the mask outside the truth brain
("leak", mm^3 share) and the fraction of the truth brain missed, and the wall time of
``estimate_brain_mask``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gdlesion.preprocess import estimate_brain_mask
from gdlesion.simulate import simulate_study, truth_brain_mask

CASES = [("1mm", None), ("2d", None), ("1mm", 3.0), ("1mm", 2.0), ("1mm", 4.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    print("| case | Dice | leak | missed | time s |")
    print("|---|---|---|---|---|")
    for res, vs in CASES:
        for seed in args.seeds:
            st = simulate_study(resolution=res, voxel_size=vs, seed=seed, n_lesions=0,
                                with_flair=False)
            truth = truth_brain_mask(st)
            t0 = time.perf_counter()
            mask = estimate_brain_mask(st.post.data, st.post.affine)
            dt = time.perf_counter() - t0
            inter = np.count_nonzero(mask & truth)
            dice = 2 * inter / (mask.sum() + truth.sum())
            leak = 1 - inter / max(mask.sum(), 1)
            missed = 1 - inter / truth.sum()
            name = f"{res}{'' if vs is None else f'@{vs:g}mm'}-{seed}"
            print(f"| {name} | {dice:.3f} | {leak:.3f} | {missed:.3f} | {dt:.2f} |")


if __name__ == "__main__":
    main()
