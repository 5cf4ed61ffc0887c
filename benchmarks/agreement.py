"""Krippendorff's alpha at scale: 10,000 rows × 3 rubric jurors, wall time and peak memory
(tracemalloc), interval and nominal.

    .venv/bin/python benchmarks/agreement.py [--rows 10000] [--jurors 3]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from workbench.judge import krippendorff_alpha


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--jurors", type=int, default=3)
    args = ap.parse_args()
    r = np.random.default_rng(0).integers(1, 6, size=(args.jurors, args.rows)).astype(float)
    print("| metric | rows | jurors | seconds | peak MB |")
    print("| --- | --- | --- | --- | --- |")
    for metric in ("interval", "nominal"):
        tracemalloc.start()
        t0 = time.perf_counter()
        krippendorff_alpha(r, metric)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        print(f"| {metric} | {args.rows} | {args.jurors} | {seconds:.3f} | {peak:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
