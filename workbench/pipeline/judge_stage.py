"""03: the judge (and, where the type has one, the jury), best-of-N and DPO pairs; the judge's
calibration on real rows, read the same way for every type."""

from __future__ import annotations

from workbench import flows
from workbench.flows.common import calibration  # noqa: F401 (the page's calibration cell)
from workbench.flows.results import JudgeResult
from workbench.stage import Stage


def judge(stage: Stage) -> JudgeResult:
    return flows.of(stage.cfg).judge_stage(stage)
