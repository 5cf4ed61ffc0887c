"""02: the candidate answers (streamed to `candidates.jsonl` with the live view), and their
throughput from the candidates' own metadata, the same figures for every type."""

from __future__ import annotations

import pandas as pd

from workbench import flows, plots
from workbench.flows.results import CandidatesResult
from workbench.stage import Stage


def candidates(stage: Stage) -> CandidatesResult:
    return flows.of(stage.cfg).candidates(stage)


def throughput(cands: pd.DataFrame) -> list:
    """Rows arriving over time, time to first token and latency per candidate, for the model's
    candidates (classification's intended-label rows are not calls)."""
    model = cands[cands["source"] == "model"] if "source" in cands else cands
    out = [plots.arrivals(cands)] if "arrived_s" in cands else []
    if "ttft_s" in model and model["ttft_s"].notna().any():
        out.append(plots.histogram(model, "ttft_s", "Time to first token (s)"))
    if "latency_s" in model and model["latency_s"].notna().any():
        out.append(plots.histogram(model, "latency_s", "Latency per candidate (s)"))
    return out
