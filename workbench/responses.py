"""Stage 02: the response each input should get.

For classification the response is the intended label: the generator was asked for a message
about that label, so the row's target is known without another LLM call, and the judge (03)
checks it.

`attach_responses(cfg, rows)`:
    in:  rows from stage 01 (id, label, text, keep_prompts, …)
    out: the same rows plus `response` (str) and `response_source` ('intended_label')
"""

from __future__ import annotations

import pandas as pd

from workbench.config import RunConfig


def attach_responses(cfg: RunConfig, rows: pd.DataFrame) -> pd.DataFrame:
    if cfg.task.type != "classification":  # the config schema admits only classification today
        raise ValueError(f"task.type {cfg.task.type!r}: responses are implemented for classification only")
    out = rows.copy()
    out["response"] = out["label"]
    out["response_source"] = "intended_label"
    return out
