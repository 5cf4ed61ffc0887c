"""Sampling arithmetic: how many inputs each label gets under the config's plan."""

from __future__ import annotations

import numpy as np

from workbench.config.schema import RunConfig


def plan_counts(cfg: RunConfig, labels: list[str], train_counts: dict[str, int] | None = None) -> dict[str, int]:
    """Inputs to generate per label under the sampling plan (largest-remainder rounding)."""
    s = cfg.sampling
    extra = s.extra_rows
    if s.total_rows is None and s.class_balance == "balanced":
        return {x: s.rows_per_label + extra.get(x, 0) for x in labels}
    if s.class_balance == "balanced":
        weights = dict.fromkeys(labels, 1.0)
    elif s.class_balance == "proportional":
        if not train_counts:
            raise ValueError("sampling.class_balance=proportional needs a dataset to take proportions from")
        weights = {x: float(train_counts.get(x, 0)) for x in labels}
    else:
        weights = {x: float(s.class_balance.get(x, 0.0)) for x in labels}
    total = s.total_rows if s.total_rows is not None else s.rows_per_label * len(labels)
    counts = allocate(total, [weights[x] for x in labels])
    return {x: n + extra.get(x, 0) for x, n in zip(labels, counts)}


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` in proportion to `weights`, rounding by largest remainder (sums exactly to total)."""
    w = np.asarray(weights, dtype=float)
    if total <= 0 or w.sum() <= 0:
        return [0] * len(weights)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out.tolist()


# Every field, and what enforces it: (stage, gate, reject reasons it produces, task kinds it applies to).
# Kinds None = every kind. `check_enforced` makes a set field that nothing enforces a load error, and the
