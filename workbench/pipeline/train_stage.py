"""05: the students the config asks for, and the causal students' training curves."""

from __future__ import annotations

import pandas as pd

from workbench import flows
from workbench.flows import common
from workbench.flows.results import TrainResult
from workbench.stage import Stage


def train(stage: Stage) -> TrainResult:
    return flows.of(stage.cfg).train_stage(stage)


def curves(stage: Stage) -> pd.DataFrame:
    """The causal students' logged steps (saved as `training_curves` where there are any)."""
    return common.training_curves(stage)
