"""Stage 05: train the student.

The `probe` student is a frozen all-MiniLM-L6-v2 encoder with a logistic-regression head:
seconds on a CPU, enough to tell whether synthetic rows help a classifier.

`training_sets(seeds, rows)` → {'seeds_only', 'seeds_unfiltered', 'seeds_synthetic'}, each with
columns text, label, source ('seed' or 'synthetic'): the filter ablation. seeds_unfiltered adds
every generated row with text (no gate applied); seeds_synthetic only rows with `keep` true.
`train_probe(train, cfg, cache_dir)` → a fitted `Probe`.
`train_students(seeds, rows, cfg, cache_dir, folder)` trains one probe per training set, saves
each to `folder/<name>.joblib` and returns a table: student, train_rows, train_seconds, path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from workbench.config import TrainConfig
from workbench.embed import embed, encoder


@dataclass
class Probe:
    """Frozen encoder + logistic-regression head; `predict` embeds (cached) and classifies."""

    head: LogisticRegression
    cache_dir: str
    train_rows: int = 0
    train_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.head.classes_)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.head.predict_proba(embed(texts, self.cache_dir))

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.head.classes_[self.predict_proba(texts).argmax(axis=1)]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path)
        return path

    @staticmethod
    def load(path: Path) -> Probe:
        return joblib.load(path)


# The filter ablation's students, in the order tables show them.
SETS = ("seeds_only", "seeds_unfiltered", "seeds_synthetic")


def training_sets(seeds: pd.DataFrame, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    from workbench.filters import unfiltered

    s = seeds[["text", "label"]].assign(source="seed")
    raw = unfiltered(rows)[["text", "label"]].assign(source="synthetic")
    kept = rows.loc[rows["keep"], ["text", "label"]].assign(source="synthetic")
    sets = {
        "seeds_only": s.reset_index(drop=True),
        "seeds_unfiltered": pd.concat([s, raw], ignore_index=True),
        "seeds_synthetic": pd.concat([s, kept], ignore_index=True),
    }
    assert tuple(sets) == SETS
    return sets


def train_probe(train: pd.DataFrame, cfg: TrainConfig, cache_dir: str | Path) -> Probe:
    t0 = time.perf_counter()
    x = embed(list(train["text"]), cache_dir)
    head = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter)
    head.fit(x, train["label"].to_numpy())
    return Probe(
        head,
        str(cache_dir),
        train_rows=len(train),
        train_seconds=time.perf_counter() - t0,
        info={"student": "probe", "C": cfg.C},
    )


def train_students(
    seeds: pd.DataFrame, rows: pd.DataFrame, cfg: TrainConfig, cache_dir: str | Path, folder: Path
) -> pd.DataFrame:
    encoder()  # load the encoder first, so train_seconds measure training, not loading
    out = []
    for name, train in training_sets(seeds, rows).items():
        probe = train_probe(train, cfg, cache_dir)
        path = probe.save(Path(folder) / f"{name}.joblib")
        out.append(
            {
                "student": name,
                "train_rows": probe.train_rows,
                "train_seconds": round(probe.train_seconds, 2),
                "path": str(path),
            }
        )
    return pd.DataFrame(out)


def load_students(folder: Path) -> dict[str, Probe]:
    """Every saved student in `folder`, by name, in the ablation's order (then alphabetical)."""
    paths = sorted(Path(folder).glob("*.joblib"), key=lambda p: (SETS.index(p.stem) if p.stem in SETS else 9, p.stem))
    return {p.stem: Probe.load(p) for p in paths}
