"""Batch throughput: sessions/minute for 1 worker, 2 workers and a Dask LocalCluster.

Simulated 1.5 mm sessions (``simulate_study(voxel_size=1.5)``, 4 lesions each) are
written as a BIDS dataset once, then the same batch is run three times into fresh
output folders, in one process run:

* 1 worker (in-process, the baseline),
* 2 workers (local process pool, spawn),
* Dask ``distributed.LocalCluster`` with 2 single-threaded worker processes.

Wall time includes worker start-up (spawn + imports), discovery and the tables,
i.e. what a user waits for. The script also checks that the three runs wrote
byte-identical ``lesion_counts.csv``. Usage::

    .venv/bin/python benchmarks/batch.py [--sessions 8] [--voxel-size 1.5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from gdlesion.batch import run_batch
from gdlesion.params import load_params


def write_sessions(root: Path, n_sessions: int, voxel_size: float) -> None:
    """BIDS dataset of ``n_sessions`` simulated sessions (2 per subject)."""
    from gdlesion.simulate import write_bids_dataset

    write_bids_dataset(root, n_subjects=(n_sessions + 1) // 2, n_sessions=2, seed=100,
                       n_lesions=4, voxel_size=voxel_size, with_flair=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--voxel-size", type=float, default=1.5)
    args = parser.parse_args()
    params = load_params("default")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_sessions(tmp / "bids", args.sessions, args.voxel_size)
        print(f"simulated {args.sessions} sessions at {args.voxel_size} mm in "
              f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.1f}")
        runs = [("1 worker", {"workers": 1}),
                ("2 workers (processes)", {"workers": 2, "executor": "processes"}),
                ("Dask LocalCluster (2 procs)", {"workers": 2, "executor": "dask"})]
        rows, tables = [], []
        for name, kw in runs:
            out = tmp / name.split()[0].lower().replace("(", "")
            t = time.perf_counter()
            result = run_batch(tmp / "bids", out, params=params, pipeline="default", **kw)
            wall = time.perf_counter() - t
            rows.append((name, wall, args.sessions / wall * 60.0, result.n_ok))
            tables.append(result.counts_path.read_bytes())
        base = rows[0][2]
        print(f"\n{'run':<30}{'ok':>4}{'wall s':>9}{'sessions/min':>14}{'vs 1 worker':>13}")
        for name, wall, rate, n_ok in rows:
            print(f"{name:<30}{n_ok:>4}{wall:>9.1f}{rate:>14.2f}{rate / base:>12.2f}x")
        same = all(t == tables[0] for t in tables)
        print(f"load average at the end {os.getloadavg()[0]:.1f} (> CPUs: timings contended)")
        print(f"\nlesion_counts.csv identical across the three runs: {same}")


if __name__ == "__main__":
    main()
