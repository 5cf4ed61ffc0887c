"""Stage 07: cluster the student's failures on the real dev split.

`cluster_failures(failures, vectors, reducer, clusterer)`:
    in:  failures with columns id, text, label (true), predicted; their embeddings
    out: the same rows plus x, y (2-D map) and cluster (-1 = noise, shown, not hidden)
`summarize(clustered)` → one row per cluster: size, dominant true and predicted labels,
exemplars. Reducer and clusterer are any objects with scikit-learn's `fit_transform` and
`fit`/`labels_`, so tests swap in PCA/KMeans.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.config import GapsConfig


def default_models(cfg: GapsConfig, n: int):
    """UMAP (fixed random_state) and HDBSCAN sized for `n` points."""
    import hdbscan
    import umap

    reducer = umap.UMAP(
        n_neighbors=max(2, min(cfg.umap_neighbors, n - 1)),
        n_components=2,
        metric="cosine",
        random_state=cfg.random_state,
        n_jobs=1,
        init="random" if n < 10 else "spectral",
    )
    clusterer = hdbscan.HDBSCAN(min_cluster_size=min(cfg.min_cluster_size, max(2, n // 2)))
    return reducer, clusterer


def cluster_failures(failures: pd.DataFrame, vectors: np.ndarray, reducer, clusterer) -> pd.DataFrame:
    out = failures.reset_index(drop=True).copy()
    if len(out) < 3:  # too few points for a map: each failure is its own noise point
        out["x"], out["y"], out["cluster"] = 0.0, 0.0, -1
        return out
    xy = np.asarray(reducer.fit_transform(vectors))
    out["x"], out["y"] = xy[:, 0], xy[:, 1]
    out["cluster"] = np.asarray(clusterer.fit(xy).labels_).astype(int)
    return out


def summarize(clustered: pd.DataFrame, exemplars: int = 3) -> pd.DataFrame:
    rows = []
    for c, g in clustered.groupby("cluster", sort=True):
        true, pred = g["label"].value_counts(), g["predicted"].value_counts()
        rows.append(
            {
                "cluster": int(c),
                "name": "noise" if c == -1 else f"{true.index[0]} → {pred.index[0]}",
                "size": len(g),
                "dominant_true": true.index[0],
                "true_share": round(true.iloc[0] / len(g), 2),
                "dominant_predicted": pred.index[0],
                "predicted_share": round(pred.iloc[0] / len(g), 2),
                "exemplars": list(g["text"].head(exemplars)),
            }
        )
    columns = ["cluster", "name", "size", "dominant_true", "true_share", "dominant_predicted", "predicted_share"]
    return pd.DataFrame(rows, columns=[*columns, "exemplars"]).sort_values(["cluster"]).reset_index(drop=True)
