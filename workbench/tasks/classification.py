"""Single-label classification: a row is a message and one of `task.labels`; real rows come from
a CSV dataset (`workbench/data.py`); 06 reports accuracy and macro-F1. The stages' behaviour for
this type is unchanged by the seam."""

from __future__ import annotations

import pandas as pd

from workbench import data
from workbench.config import RunConfig

ROW_KEY = "label"  # the column real and generated rows are grouped, balanced and stratified by
FLOW = "classification"  # its stages: flows/classification.py
LABEL_JURY = True  # 03's blind label jury (`judge.jury`) re-labels its rows
# the rubric 03 scores when `judge.rubric` is unset (a dialogue config, which `run` refuses, is
# estimated on its own)
RUBRIC_DEFAULT = {"dialogue": ["helpfulness", "correctness", "policy_compliance", "refusal_quality", "tool_usage"]}
RUBRIC = ["correctness", "formatting", "policy_compliance"]


def rubric(cfg: RunConfig) -> list[str]:
    """`judge.rubric`, or the type's default dimensions when it is null."""
    default = RUBRIC_DEFAULT.get(cfg.task.type, RUBRIC)
    return list(cfg.judge.rubric) if cfg.judge.rubric is not None else list(default)


# what the generator is asked for one new input (01, `prompts.render`); a task type may have its own
PROMPT = {
    "system": "You are a customer of {domain} writing to its support chat.",
    "persona": "You are {persona}, a customer of {domain} writing to its support chat.",
    "user": (
        "Topic: {topic}.\nExamples of messages about this topic:\n{examples}\n"
        "Write one new message about this topic, in your own words. Output only the message."
    ),
    "difficulty": {
        "easy": "Make it easy: short and direct, it names the topic plainly.",
        "medium": "Make it medium: an everyday message with some detail.",
        "hard": "Make it hard: indirect or ambiguous, it never names the topic outright.",
    },
}


def labels(cfg: RunConfig) -> list[str]:
    return data.labels(cfg)


def seeds(cfg: RunConfig) -> pd.DataFrame:
    return data.seeds(cfg)


def dev(cfg: RunConfig) -> pd.DataFrame:
    return data.dev_split(cfg)


def test(cfg: RunConfig) -> pd.DataFrame:
    return data.test_split(cfg)


def label_counts(cfg: RunConfig) -> dict[str, int]:
    return data.label_counts(cfg)


def histories(cfg: RunConfig, rows: pd.DataFrame, llm, check=None) -> pd.DataFrame:
    """01's earlier turns: none (a classification row is one message; replies write them)."""
    return rows


def check_data(cfg: RunConfig) -> None:
    """What `check` and a run's preflight read before anything runs: the labels and the seeds."""
    data.labels(cfg)
    if cfg.data.seeds_file or cfg.data.dataset:
        data.seeds(cfg)
