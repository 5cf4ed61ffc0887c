"""07: the failures clustered (embeddings, UMAP, HDBSCAN) and the config patch, with its review."""

from __future__ import annotations

from IPython.display import Markdown

from workbench import flows
from workbench.flows import common
from workbench.flows.results import GapsResult
from workbench.stage import Stage


def gaps(stage: Stage) -> GapsResult:
    return flows.of(stage.cfg).gaps_stage(stage)


def review(stage: Stage, result: GapsResult):
    """The review of the patch: checkboxes in JupyterLab, the accepting command in a saved page."""
    if not len(result.edits):
        return Markdown("No edit proposed: the next iteration would repeat this one.")
    return common.review_edits(stage, result.edits)
