"""Stage 03: how far the jurors agree: Fleiss' kappa over label votes, Krippendorff's alpha over
rubric scores, and the disagreement queue (rows whose jurors split) a person looks at."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a subjects × categories table of rater counts (same raters per subject)."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)
    if len(counts) == 0 or not np.allclose(n, n[0]) or n[0] < 2:
        return math.nan
    n = n[0]
    p_j = counts.sum(axis=0) / counts.sum()
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    pe = float((p_j**2).sum())
    return math.nan if pe == 1 else float((p_i.mean() - pe) / (1 - pe))


def kappa_from_votes(votes: pd.DataFrame) -> float:
    """Fleiss' kappa over the rows where every juror voted."""
    full = votes.dropna()
    if full.empty or full.shape[1] < 2:
        return math.nan
    cats = sorted(set(full.to_numpy().ravel()))
    counts = np.array([[list(r).count(c) for c in cats] for r in full.to_numpy()])
    return fleiss_kappa(counts)


def krippendorff_alpha(ratings: np.ndarray, metric: str = "interval") -> float:
    """Krippendorff's alpha of a raters × units matrix (NaN = missing), interval or nominal metric.

    In closed form: the sum of squared differences over all ordered pairs of m values is
    2·m·Σx² − 2·(Σx)², and the number of unequal nominal pairs is m² − Σ_c count_c², so memory
    grows with raters × units, not with the square of all values (three jurors over 10,000 rows
    built 7 GB arrays pairwise; benchmarks/agreement.py)."""
    r = np.asarray(ratings, dtype=float)
    if r.ndim != 2:
        return math.nan
    have = ~np.isnan(r)
    m = have.sum(axis=0)
    r, have, m = r[:, m >= 2], have[:, m >= 2], m[m >= 2]  # units with a pair to compare
    n = float(m.sum())
    if n == 0:
        return math.nan
    if metric == "interval":
        x = np.where(have, r, 0.0)
        s1, s2 = x.sum(axis=0), (x**2).sum(axis=0)
        d_o = float(((2 * m * s2 - 2 * s1**2) / (m - 1)).sum()) / n
        d_e = (2 * n * float(s2.sum()) - 2 * float(s1.sum()) ** 2) / (n * (n - 1))
    else:
        values, codes = np.unique(r[have], return_inverse=True)
        units = np.nonzero(have)[1]
        counts = np.zeros((r.shape[1], len(values)))
        np.add.at(counts, (units, codes), 1.0)
        d_o = float(((m**2 - (counts**2).sum(axis=1)) / (m - 1)).sum()) / n
        total = counts.sum(axis=0)
        d_e = (n**2 - float((total**2).sum())) / (n * (n - 1))
    return math.nan if d_e == 0 else float(1 - d_o / d_e)


def judge_alpha(judgments: pd.DataFrame) -> pd.DataFrame:
    """Krippendorff's alpha (interval) between rubric jurors, per dimension."""
    out = []
    for dim, g in judgments.groupby("dimension"):
        m = g.pivot_table(index="juror", columns="id", values="score", aggfunc="first")
        out.append({"dimension": dim, "jurors": len(m), "alpha": krippendorff_alpha(m.to_numpy())})
    return pd.DataFrame(out, columns=["dimension", "jurors", "alpha"])


QUEUE_COLUMNS = ["id", "label", "text", "jury_votes", "jury_label", "judge_spread", "reject_reason_judge"]


def disagreements(rows: pd.DataFrame, max_spread: float, columns: list[str] = QUEUE_COLUMNS) -> pd.DataFrame:
    """Rows the jury split on: label jurors not unanimous, or rubric jurors' scores spread >
    max_spread; with those of `columns` the rows have."""
    m = pd.Series(False, index=rows.index)
    if "jury_unanimous" in rows:
        m |= rows["jury_unanimous"].eq(False)
    if "judge_spread" in rows:
        m |= rows["judge_spread"].fillna(0) > max_spread
    return rows.loc[m, [c for c in columns if c in rows]]
