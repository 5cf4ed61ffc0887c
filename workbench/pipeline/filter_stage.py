"""04: the final filter and the exports (SFT and DPO JSONL, an HF dataset folder, the card)."""

from __future__ import annotations

from workbench import flows, plots
from workbench.flows.results import FilterResult, Rejects, Section
from workbench.stage import Stage


def final_filter(stage: Stage) -> FilterResult:
    return flows.of(stage.cfg).filter_stage(stage)


def rejects_shown(rejects: Rejects | None) -> list[Section]:
    """A reject pile as its drop-down table (one reason at a time), or the line saying there is none."""
    if rejects is None or not rejects.rows[rejects.by].notna().any():
        return [Section("", "No rejects.")]
    return [Section("", "", [plots.reject_table(rejects.rows, rejects.columns, by=rejects.by)])]
