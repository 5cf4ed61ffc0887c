"""Each task type's stages, as the type-blind stage modules (`workbench.pipeline`) call them: a
type names its flow (`FLOW` in its module) and the flow's module has one function per stage, each
returning that stage's result. Classification's flow; the structured tasks' (tool calls and
extraction); the text tasks' (replies and summaries, which write their inputs as classification
does)."""

from __future__ import annotations

from types import ModuleType

from workbench import tasks
from workbench.config import RunConfig
from workbench.flows import classification, structured, text

FLOWS: dict[str, ModuleType] = {"classification": classification, "structured": structured, "text": text}
STEPS = ("task", "prompts_stage", "candidates", "judge_stage", "filter_stage", "train_stage", "evaluate_stage",
         "gaps_stage", "report", "lineage")  # fmt: skip


def of(cfg: RunConfig) -> ModuleType:
    """The flow of `cfg`'s task type."""
    return FLOWS[tasks.of(cfg).FLOW]
