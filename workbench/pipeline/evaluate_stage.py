"""06: every model on real held-out rows nobody here generated, before and after."""

from __future__ import annotations

from workbench import flows
from workbench.flows.results import EvaluateResult
from workbench.stage import Stage


def evaluate(stage: Stage) -> EvaluateResult:
    return flows.of(stage.cfg).evaluate_stage(stage)
