"""Stage 05: train the students.

The `probe` student is a frozen all-MiniLM-L6-v2 encoder with a logistic-regression head:
seconds on a CPU, enough to tell whether synthetic rows help a classifier. The `causal` student
is a chat LM fine-tuned with trl (workbench/causal.py): SFT, then DPO and GRPO from the SFT model.

`training_sets(seeds, rows)` → {'seeds_only', 'seeds_unfiltered', 'seeds_synthetic'}, each with
columns text, label, source ('seed' or 'synthetic'): the filter ablation. seeds_unfiltered adds
every generated row with text (no gate applied); seeds_synthetic only rows with `keep` true.
`train_probe(train, cfg, cache_dir)` → a fitted `Probe`.
`train_students(seeds, rows, cfg, cache_dir, folder, reference)` trains one probe per training set
(and the reference probe on real train rows), saves each to `folder/<name>.joblib` and returns a
table: student, model, train_rows, train_seconds, path.
`train_causal(cfg, seeds, rows, pairs, labels, cache_dir, folder, reference)` trains the causal
student's methods and its reference; `causal_models(folder)` finds them again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import joblib
import numpy as np
import pandas as pd

from workbench import causal
from workbench.config import RunConfig, TrainConfig
from workbench.embed import embed, encoder
from workbench.export import kept_pairs
from workbench.filters import unfiltered
from workbench.llm import local_model_dir

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression  # scikit-learn: imported where a probe trains (below)

log = logging.getLogger(__name__)


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
    from sklearn.linear_model import LogisticRegression  # scikit-learn (a second): only where a probe trains

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


REFERENCE = "reference"  # students trained on the real train split: the curated-data ceiling, shown apart


def train_students(
    seeds: pd.DataFrame,
    rows: pd.DataFrame,
    cfg: TrainConfig,
    cache_dir: str | Path,
    folder: Path,
    reference: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One probe per training set (and on `reference`, the real train rows, when given).

    Columns: `seeds` and `reference` have text and label; `rows` is 04's dataset (text, label,
    keep, …). Out, one row per probe: student, model, train_rows, train_seconds, path."""
    encoder()  # load the encoder first, so train_seconds measure training, not loading
    sets = training_sets(seeds, rows)
    if reference is not None:
        sets[REFERENCE] = reference[["text", "label"]].assign(source="real")
    out = []
    for name, train in sets.items():
        probe = train_probe(train, cfg, cache_dir)
        path = probe.save(Path(folder) / f"{name}.joblib")
        out.append(
            {
                "student": "probe",
                "model": name,
                "train_rows": probe.train_rows,
                "train_seconds": round(probe.train_seconds, 2),
                "path": str(path),
            }
        )
    return pd.DataFrame(out)


def grpo_rewards(
    cfg: RunConfig, verifiable: list, judges: dict | None, dims: list[str] | None = None, criteria: dict | None = None
) -> list:
    """GRPO's reward functions for `train.grpo_reward`: the task's `verifiable` terms and/or the
    judges' score on `dims` (`causal.judge_reward`; `judges`: roles.judge's LLMs by name;
    `criteria`: each dimension's wording, default causal.REWARD_CRITERIA)."""
    funcs = list(verifiable) if "verifiable" in cfg.train.grpo_reward else []
    if "judge" in cfg.train.grpo_reward:
        if not judges:
            raise ValueError("train.grpo_reward names judge, but no judge LLM was given")
        funcs.append(causal.judge_reward(cfg, judges, dims=dims, criteria=criteria))
    return funcs


def parent_student(parent: Path | None) -> Path | None:
    """The last causal student of a parent run's 05 (grpo, else dpo, else sft: its merged folder)."""
    for method in ("grpo", "dpo", "sft"):
        path = parent / "artifacts" / "causal" / method / "merged" if parent is not None else None
        if path is not None and (path / "config.json").is_file():
            return path
    return None


def train_causal(
    cfg: RunConfig,
    seeds: pd.DataFrame,
    rows: pd.DataFrame,
    pairs: pd.DataFrame,
    labels: list[str],
    cache_dir: Path,
    folder: Path,
    reference: pd.DataFrame | None = None,
    start: Path | None = None,
    judges: dict | None = None,
) -> pd.DataFrame:
    """The causal student: SFT on seeds + kept rows, then DPO and GRPO from the SFT model (as
    `train.methods` asks), and an SFT on `reference` (real train rows) when given. SFT starts from
    `start` (the parent run's student, `train.start_from: parent`) or else `train.model`; the
    reference always from `train.model`. GRPO's reward is `train.grpo_reward`'s terms (`judges`:
    roles.judge's LLMs, for the judge term). One folder per model under `folder`; returns one row
    per model: student, model, start, train_rows, train_seconds, steps and paths.

    Columns: as train_students; `pairs` is 03's (chosen, rejected, prompt, pair). Out, one row
    per method: student, model, start, train_rows, train_seconds, steps, path, adapter, merged, curve."""
    causal.check_args(cfg.train)
    base = local_model_dir(cfg.train.model, Path(cache_dir))
    system = causal.system_prompt(cfg)
    train = training_sets(seeds, rows)["seeds_synthetic"]
    out = []
    methods = cfg.train.methods
    if "sft" in methods:
        data = causal.sft_dataset(train, system)
        out.append(
            {"model": "sft", "start": str(start or base)} | causal.fit("sft", start or base, data, cfg, folder / "sft")
        )
    sft = folder / "sft" / "merged"
    if "dpo" in methods:
        p = kept_pairs(rows, pairs)
        if len(p):
            out.append({"model": "dpo"} | causal.fit("dpo", sft, causal.dpo_dataset(p, system), cfg, folder / "dpo"))
        else:
            log.warning("dpo skipped: no DPO pairs among the kept rows")
    if "grpo" in methods:
        data = causal.grpo_dataset(train, system)
        funcs = grpo_rewards(cfg, causal.rewards(labels), judges)
        out.append({"model": "grpo"} | causal.fit("grpo", sft, data, cfg, folder / "grpo", reward_funcs=funcs))
    if reference is not None:
        data = causal.sft_dataset(reference, system)
        out.append({"model": REFERENCE} | causal.fit("sft", base, data, cfg, folder / REFERENCE))
    return pd.DataFrame([{"student": "causal"} | r for r in out])


def load_students(folder: Path) -> dict[str, Probe]:
    """Every saved probe in `folder`, by name, in the ablation's order (then alphabetical, the
    reference last)."""

    def order(p: Path) -> tuple:
        return (SETS.index(p.stem) if p.stem in SETS else 9 if p.stem != REFERENCE else 10, p.stem)

    return {p.stem: Probe.load(p) for p in sorted(Path(folder).glob("*.joblib"), key=order)}


def causal_models(folder: Path) -> dict[str, Path]:
    """Every trained causal model's merged folder under `folder`, in the table's order."""
    names = ["sft", "dpo", "grpo", REFERENCE]
    return {n: Path(folder) / n / "merged" for n in names if (Path(folder) / n / "merged" / "config.json").is_file()}
