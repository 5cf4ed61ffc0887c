"""01: the inputs, generated, critiqued and gated as the task type does it."""

from __future__ import annotations

from workbench import flows
from workbench.flows.results import PromptsResult
from workbench.stage import Stage


def prompts(stage: Stage) -> PromptsResult:
    return flows.of(stage.cfg).prompts_stage(stage)
