"""Stage 07: cluster the student's failures on the real dev split.

`cluster_failures(failures, vectors, reducer, clusterer)`:
    in:  failures with columns id, text, label (true), predicted; their embeddings
    out: the same rows plus x, y (2-D map) and cluster (-1 = noise, shown, not hidden)
`summarize(clustered)` → one row per cluster: size, sources, its most common confusion (dominant
true and predicted labels, with their shares of the cluster), 3-5 exemplars. Reducer and clusterer are any objects with scikit-learn's `fit_transform` and
`fit`/`labels_`, so tests swap in PCA/KMeans.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from workbench.config import GapsConfig


def default_models(cfg: GapsConfig, vectors: np.ndarray):
    """UMAP (fixed random_state, cosine) and HDBSCAN sized for the points in `vectors`. The nearest
    neighbours are computed exactly here and handed to UMAP (`precomputed_knn`): for a few thousand
    points that is cheaper than UMAP's approximate search, whose numba compile dominates a first fit."""
    import hdbscan  # umap/hdbscan (numba) take seconds to import: only in 07
    import umap  # umap/hdbscan (numba) take seconds to import: only in 07

    n = len(vectors)
    k = max(2, min(cfg.umap_neighbors, n - 1))
    # without a search index UMAP cannot `transform` new points; nothing here needs it
    warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
    knn = (None, None, None)
    if n > k:
        from sklearn.neighbors import NearestNeighbors  # scikit-learn (a second): only where failures are clustered

        dists, idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(vectors).kneighbors()
        # UMAP's neighbour lists start with the point itself at distance 0
        idx = np.hstack([np.arange(n)[:, None], idx[:, : k - 1]])
        dists = np.hstack([np.zeros((n, 1)), dists[:, : k - 1]]).astype(np.float32)
        knn = (idx, dists, None)
    reducer = umap.UMAP(
        n_neighbors=k,
        n_components=2,
        metric="cosine",
        random_state=cfg.random_state,
        n_jobs=1,
        init="random" if n < 10 else "spectral",
        precomputed_knn=knn,
    )
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=min(cfg.min_cluster_size, max(2, n // 2)), cluster_selection_method=cfg.selection
    )
    return reducer, clusterer


def cluster_failures(failures: pd.DataFrame, vectors: np.ndarray, reducer, clusterer) -> pd.DataFrame:
    """The failures on a 2-D map and in clusters.

    Columns: `failures` as gaps.failures returns; `vectors` one embedding per row. Out: `failures`
    with x, y (the reducer's map) and cluster (-1 for noise)."""
    out = failures.reset_index(drop=True).copy()
    if len(out) < 3:  # too few points for a map: each failure is its own noise point
        out["x"], out["y"], out["cluster"] = 0.0, 0.0, -1
        return out
    xy = np.asarray(reducer.fit_transform(vectors))
    out["x"], out["y"] = xy[:, 0], xy[:, 1]
    out["cluster"] = np.asarray(clusterer.fit(xy).labels_).astype(int)
    return out


def summarize(clustered: pd.DataFrame, exemplars: int = 5) -> pd.DataFrame:
    """One row per cluster (noise = -1 included): size, failures per source, dominant true and
    predicted labels with their shares, and the `exemplars` rows nearest the cluster's centre on
    the map (real dev rows before synthetic ones).

    Columns: `clustered` as cluster_failures returns. Out, one row per cluster: cluster, size,
    the counts per source, the dominant true and predicted labels, exemplars."""
    rows = []
    for c, g in clustered.groupby("cluster", sort=True):
        wrong = g[g["predicted"] != g["label"]]  # low-judge rows the jury agreed with are no confusion
        if len(wrong):  # the cluster's most common confusion names it
            pairs = wrong.groupby(["label", "predicted"]).size().sort_values(ascending=False, kind="stable")
            true, pred = pairs.index[0]
        else:
            true = pred = g["label"].value_counts().index[0]
        synthetic = g["source"].ne("dev") if "source" in g else pd.Series(False, index=g.index)
        centre = np.hypot(g["x"] - g["x"].mean(), g["y"] - g["y"].mean())
        order = g.assign(_synthetic=synthetic, _d=centre).sort_values(["_synthetic", "_d"], kind="stable")
        rows.append(
            {
                "cluster": int(c),
                "name": "noise" if c == -1 else f"{true} → {pred}",
                "size": len(g),
                "sources": ", ".join(f"{n} {k}" for k, n in g["source"].value_counts().items())
                if "source" in g
                else f"{len(g)} dev",
                "dominant_true": true,
                "true_share": round(float((g["label"] == true).mean()), 2),
                "dominant_predicted": pred,
                "predicted_share": round(float((g["predicted"] == pred).mean()), 2),
                "exemplars": list(order["text"].head(exemplars)),
            }
        )
    columns = ["cluster", "name", "size", "sources", "dominant_true", "true_share", "dominant_predicted"]
    columns += ["predicted_share", "exemplars"]
    return pd.DataFrame(rows, columns=columns).sort_values(["cluster"]).reset_index(drop=True)
