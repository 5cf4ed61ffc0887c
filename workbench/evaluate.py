"""Stage 06: accuracy on the real test split, with bootstrap confidence intervals.

`zero_shot(texts, labels, cache_dir)` predicts the label whose name is most similar to the text
(the untrained baseline). `score(name, y_true, y_pred, …)` gives one row of the before/after
table: accuracy and macro-F1 with 95% bootstrap intervals. `before_after(test, labels, students, …)`
scores the zero-shot baseline and every student on the same real test rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from workbench.data import describe_label
from workbench.embed import embed
from workbench.train import Probe

ZERO_SHOT = "zero-shot (label names)"


def zero_shot(texts: list[str], labels: list[str], cache_dir: str | Path) -> np.ndarray:
    x = embed(texts, cache_dir)
    names = embed([describe_label(label) for label in labels], cache_dir)
    return np.asarray(labels)[(x @ names.T).argmax(axis=1)]


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, metric, n: int, seed: int = 0) -> tuple[float, float]:
    if n == 0 or len(y_true) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n, len(y_true)))
    vals = [metric(y_true[i], y_pred[i]) for i in idx]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def _accuracy(t: np.ndarray, p: np.ndarray) -> float:
    return float((t == p).mean())


def _macro_f1(t: np.ndarray, p: np.ndarray) -> float:
    return float(f1_score(t, p, average="macro", zero_division=0))


def score(
    name: str,
    y_true,
    y_pred,
    bootstrap: int,
    train_rows: int | None = None,
    train_seconds: float | None = None,
    seed: int = 0,
) -> dict:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    acc_lo, acc_hi = bootstrap_ci(t, p, _accuracy, bootstrap, seed)
    # macro-F1's interval costs a full F1 per resample; 200 resamples are plenty for its width
    f1_lo, f1_hi = bootstrap_ci(t, p, _macro_f1, min(bootstrap, 200), seed)
    return {
        "model": name,
        "accuracy": _accuracy(t, p),
        "accuracy_lo": acc_lo,
        "accuracy_hi": acc_hi,
        "macro_f1": _macro_f1(t, p),
        "macro_f1_lo": f1_lo,
        "macro_f1_hi": f1_hi,
        "test_rows": int(len(t)),
        "train_rows": train_rows,
        "train_seconds": train_seconds,
    }


def per_label(y_true, preds: dict[str, np.ndarray]) -> pd.DataFrame:
    """Accuracy per true label for each model, one column per model."""
    t = np.asarray(y_true)
    df = pd.DataFrame({name: (np.asarray(p) == t) for name, p in preds.items()})
    df["label"] = t
    return df.groupby("label").mean().reset_index()


def confused_pairs(y_true, y_pred, top: int = 10) -> pd.DataFrame:
    df = pd.DataFrame({"true": np.asarray(y_true), "predicted": np.asarray(y_pred)})
    wrong = df[df["true"] != df["predicted"]]
    return wrong.value_counts().rename("count").reset_index().head(top)


def predictions(
    test: pd.DataFrame, labels: list[str], students: dict[str, Probe], cache_dir: str | Path
) -> dict[str, np.ndarray]:
    """Predicted labels for the test rows: the zero-shot baseline, then each student ("probe: <name>")."""
    texts = list(test["text"])
    preds = {ZERO_SHOT: zero_shot(texts, labels, cache_dir)}
    preds.update({f"probe: {name}": p.predict(texts) for name, p in students.items()})
    return preds


def before_after(
    test: pd.DataFrame, preds: dict[str, np.ndarray], students: dict[str, Probe], bootstrap: int, seed: int = 0
) -> pd.DataFrame:
    """One row per model: accuracy and macro-F1 with CIs, train rows and seconds."""
    rows = []
    for name, pred in preds.items():
        p = students.get(name.removeprefix("probe: "))
        rows.append(
            score(
                name,
                test["label"],
                pred,
                bootstrap,
                p.train_rows if p else 0,
                round(p.train_seconds, 2) if p else 0.0,
                seed,
            )
        )
    return pd.DataFrame(rows)


def select_metrics(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The before/after table with only the metric columns `evaluate.metrics` asks for."""
    scored = ("accuracy", "macro_f1")
    drop = [c for c in table.columns for m in scored if m not in metrics and (c == m or c.startswith(m + "_"))]
    return table.drop(columns=drop)


ABLATION = [
    ("seeds + filtered − seeds only", "probe: seeds_synthetic", "probe: seeds_only"),
    ("seeds + unfiltered − seeds only", "probe: seeds_unfiltered", "probe: seeds_only"),
    ("seeds + filtered − seeds + unfiltered", "probe: seeds_synthetic", "probe: seeds_unfiltered"),
]


def paired_delta(y_true, pred_a, pred_b, n: int, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of a minus accuracy of b on the same rows, with a 95% paired bootstrap interval
    (both models resampled on the same rows, so shared hard rows do not widen it)."""
    d = (np.asarray(pred_a) == np.asarray(y_true)).astype(float) - (np.asarray(pred_b) == np.asarray(y_true))
    if len(d) == 0:
        return (float("nan"),) * 3
    if n == 0:
        return float(d.mean()), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def ablation(y_true, preds: dict[str, np.ndarray], n: int, seed: int = 0) -> pd.DataFrame:
    """The filter ablation as paired differences in accuracy, for the students that ran."""
    rows = []
    for name, a, b in ABLATION:
        if a in preds and b in preds:
            delta, lo, hi = paired_delta(y_true, preds[a], preds[b], n, seed)
            rows.append({"comparison": name, "delta_accuracy": delta, "delta_lo": lo, "delta_hi": hi})
    return pd.DataFrame(rows, columns=["comparison", "delta_accuracy", "delta_lo", "delta_hi"])
