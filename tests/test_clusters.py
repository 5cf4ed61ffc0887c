import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

from workbench.clusters import cluster_failures, default_models, summarize
from workbench.config import GapsConfig


def failures(n):
    return pd.DataFrame(
        {
            "id": range(n),
            "text": [f"t{i}" for i in range(n)],
            "label": ["a"] * (n // 2) + ["b"] * (n - n // 2),
            "predicted": "c",
        }
    )


def test_seams_take_any_reducer_and_clusterer():
    x, y = make_blobs(n_samples=60, centers=3, n_features=10, random_state=0)
    out = cluster_failures(failures(60), x, PCA(2, random_state=0), KMeans(3, n_init=10, random_state=0))
    assert set(out["cluster"]) == {0, 1, 2}
    # each blob lands in one cluster
    assert pd.crosstab(out["cluster"], y).gt(0).sum(axis=1).eq(1).all()
    s = summarize(out)
    assert s["size"].sum() == 60 and len(s) == 3 and all(len(e) == 5 for e in s["exemplars"])


def test_umap_hdbscan_are_seeded_and_find_blobs():
    x, _ = make_blobs(n_samples=90, centers=3, n_features=16, cluster_std=0.5, random_state=1)
    for selection in ["leaf", "eom"]:
        cfg = GapsConfig(min_cluster_size=10, selection=selection)
        runs = [cluster_failures(failures(90), x, *default_models(cfg, x)) for _ in range(2)]
        assert np.allclose(runs[0][["x", "y"]], runs[1][["x", "y"]])
        assert len(set(runs[0]["cluster"]) - {-1}) == 3


def test_too_few_failures_are_all_noise():
    out = cluster_failures(failures(2), np.zeros((2, 4)), None, None)
    assert list(out["cluster"]) == [-1, -1]


def test_no_failures_give_an_empty_summary_not_an_error():
    empty = pd.DataFrame({"text": [], "label": [], "predicted": []})
    clustered = cluster_failures(empty, np.zeros((0, 4)), None, None)
    summary = summarize(clustered)
    assert summary.empty and "cluster" in summary.columns
