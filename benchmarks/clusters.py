"""Stage 07's map at scale: UMAP + HDBSCAN on 10,000 points.

    .venv/bin/python benchmarks/clusters.py [--points 10000]

The points are the real Banking77 training messages (10,003), embedded with the embedded
all-MiniLM-L6-v2 through the workbench's embedding cache, the way stage 07 embeds its failures.
The embedding is timed apart: the first run on a machine computes them, later runs read the cache.
Then the clustering is timed as `clusters.default_models` + `cluster_failures` run it:
- exact cosine neighbours, handed to UMAP as `precomputed_knn`;
- UMAP (cosine, 2-D, fixed random_state);
- HDBSCAN (leaf selection, min_cluster_size from configs/banking77.yaml).
UMAP's numba functions are compiled on first use and cached on disk by numba. This script runs
in a fresh process, so the time includes loading them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(points: int = 10_000) -> dict:
    t_import = time.perf_counter()
    import numpy as np
    import pandas as pd

    from workbench import clusters, embed
    from workbench.config import load_config
    from workbench.files import cache_dir

    import_s = time.perf_counter() - t_import
    cfg, _ = load_config(ROOT / "configs" / "banking77.yaml")
    rows = pd.read_csv(ROOT / "data" / "banking77" / "train.csv").head(points)
    rows = rows.rename(columns={"category": "label"}).assign(id=[f"t{i}" for i in range(len(rows))])
    rows["predicted"] = rows["label"]
    t0 = time.perf_counter()
    vectors = embed.embed(rows["text"].tolist(), cache_dir())
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reducer, clusterer = clusters.default_models(cfg.gaps, vectors)
    knn_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    xy = np.asarray(reducer.fit_transform(vectors))
    umap_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = np.asarray(clusterer.fit(xy).labels_)
    hdbscan_s = time.perf_counter() - t0
    return {
        "points": len(rows),
        "seconds": round(knn_s + umap_s + hdbscan_s, 1),
        "knn_s": round(knn_s, 1),
        "umap_s": round(umap_s, 1),
        "hdbscan_s": round(hdbscan_s, 1),
        "embed_s": round(embed_s, 1),
        "import_s": round(import_s, 1),
        "clusters": int(labels.max() + 1),
        "noise_points": int((labels == -1).sum()),
        "min_cluster_size": cfg.gaps.min_cluster_size,
        "selection": cfg.gaps.selection,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=10_000)
    print(json.dumps(run(ap.parse_args().points), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
