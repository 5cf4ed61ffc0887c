"""Real labelled data: seeds and dev samples from the train split, and the test split.

Columns of every table returned here: `id` (str), `text` (str), `label` (str).
The test split is read by `test_split()` only, and only `06_evaluate` calls it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from workbench.config import ConfigError, DataConfig

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def dataset_dir(cfg: DataConfig) -> Path:
    p = Path(cfg.dataset)
    d = p if p.is_absolute() or p.parts[0] in (".", "..") else DATA_DIR / p
    if not d.is_dir():
        raise ConfigError(f"data.dataset: folder {d} not found; expected a folder with train.csv and test.csv")
    return d


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"text", "category"} <= set(reader.fieldnames):
                raise ConfigError(f"{path}:1: expected columns text,category; found {reader.fieldnames}")
            rows = []
            for line, r in enumerate(reader, start=2):
                if not (r.get("text") or "").strip() or not (r.get("category") or "").strip():
                    raise ConfigError(f"{path}:{line}: empty text or category")
                rows.append((f"{path.stem}-{line}", r["text"].strip(), r["category"].strip()))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e
    return pd.DataFrame(rows, columns=["id", "text", "label"])


def labels(cfg: DataConfig) -> list[str]:
    """The run's labels: `data.labels`, checked against the dataset, or all of the train split's."""
    return _labels(cfg, _read(dataset_dir(cfg) / "train.csv"))


def _labels(cfg: DataConfig, train: pd.DataFrame) -> list[str]:
    known = sorted(train["label"].unique())
    if cfg.labels is None:
        return known
    dupes = sorted({x for x in cfg.labels if cfg.labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"data.labels: duplicate labels {dupes}")
    unknown = [x for x in cfg.labels if x not in set(known)]
    if unknown:
        raise ConfigError(
            f"data.labels: unknown labels {unknown}; the dataset has {len(known)} labels, e.g. {known[:5]}"
        )
    return list(cfg.labels)


def describe_label(label: str) -> str:
    """`card_arrival` → `card arrival`: the label as words for prompts and zero-shot matching."""
    return label.replace("_", " ").replace("-", " ").strip()


def _train_samples(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = _read(dataset_dir(cfg) / "train.csv")
    train = train[train["label"].isin(_labels(cfg, train))]
    shuffled = train.sample(frac=1.0, random_state=cfg.seed)
    rank = shuffled.groupby("label").cumcount()
    seeds = shuffled[rank < cfg.seeds_per_label]
    dev = shuffled[(rank >= cfg.seeds_per_label) & (rank < cfg.seeds_per_label + cfg.dev_per_label)]
    short = seeds.groupby("label").size()
    short = short[short < cfg.seeds_per_label]
    if len(short):
        raise ConfigError(f"data.seeds_per_label={cfg.seeds_per_label}: too few train rows for {dict(short)}")
    return seeds.sort_values(["label", "id"]).reset_index(drop=True), dev.sort_values(["label", "id"]).reset_index(
        drop=True
    )


def seeds(cfg: DataConfig) -> pd.DataFrame:
    """`seeds_per_label` real train rows per label, chosen with `data.seed`."""
    return _train_samples(cfg)[0]


def dev_split(cfg: DataConfig) -> pd.DataFrame:
    """`dev_per_label` real train rows per label, disjoint from the seeds: for failure analysis."""
    return _train_samples(cfg)[1]


def test_split(cfg: DataConfig) -> pd.DataFrame:
    """The real test split (capped at `test_per_label` rows per label). Only 06_evaluate reads it."""
    test = _read(dataset_dir(cfg) / "test.csv")
    test = test[test["label"].isin(labels(cfg))]
    if cfg.test_per_label is not None:
        test = test.sample(frac=1.0, random_state=cfg.seed).groupby("label").head(cfg.test_per_label)
    return test.sort_values(["label", "id"]).reset_index(drop=True)
