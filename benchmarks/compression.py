"""Compression of .nii.gz files: zlib (Python's, what nibabel uses) versus ISA-L (``isal``).

Run by hand: ``.venv/bin/python benchmarks/compression.py [--repeat N]``. For each real scan in
``../shared/data/lesjak2018_ms`` (skipped with a message when absent) the uncompressed NIfTI
bytes are deflated at level 1 by both libraries and inflated again; the table gives the median
seconds of ``--repeat`` runs, the ISA-L/zlib ratios (measured in the same run, so machine load
cancels out) and the compressed sizes. Both streams inflate to the same bytes (checked).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
import zlib
from pathlib import Path

from isal import isal_zlib

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lesjak2018_ms"


def _timed(fn, repeat: int) -> tuple[float, bytes]:
    times, out = [], b""
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _deflate(module, raw: bytes) -> bytes:
    c = module.compressobj(1, module.DEFLATED, -module.MAX_WBITS)
    return c.compress(raw) + c.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    scans = sorted(DATA.glob("patient*/T1*.nii.gz")) + sorted(DATA.glob("patient*/FLAIR.nii.gz"))
    if not scans:
        print(f"skipped: no Lesjak scans under {DATA}")
        return 0
    print(f"{'scan':28s} {'MB':>6s} {'deflate zlib':>12s} {'isal':>7s} {'ratio':>6s} "
          f"{'inflate zlib':>12s} {'isal':>7s} {'ratio':>6s} {'size zlib':>10s} {'isal':>9s}")
    sums = {"dz": 0.0, "di": 0.0, "iz": 0.0, "ii": 0.0}
    for path in scans:
        raw = gzip.decompress(path.read_bytes())
        dz, cz = _timed(lambda: _deflate(zlib, raw), args.repeat)  # noqa: B023
        di, ci = _timed(lambda: _deflate(isal_zlib, raw), args.repeat)  # noqa: B023
        iz, back_z = _timed(lambda: zlib.decompress(cz, -15), args.repeat)  # noqa: B023
        ii, back_i = _timed(lambda: isal_zlib.decompress(ci, -15), args.repeat)  # noqa: B023
        assert back_z == raw == back_i
        for key, value in zip(sums, (dz, di, iz, ii), strict=True):
            sums[key] += value
        name = f"{path.parent.name}/{path.name}"
        print(f"{name:28s} {len(raw) / 1e6:6.1f} {dz:12.3f} {di:7.3f} {di / dz:6.2f} "
              f"{iz:12.3f} {ii:7.3f} {ii / iz:6.2f} {len(cz) / 1e6:9.2f}M {len(ci) / 1e6:8.2f}M")
    print(f"{'all scans':28s} {'':6s} {sums['dz']:12.3f} {sums['di']:7.3f} "
          f"{sums['di'] / sums['dz']:6.2f} {sums['iz']:12.3f} {sums['ii']:7.3f} "
          f"{sums['ii'] / sums['iz']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
