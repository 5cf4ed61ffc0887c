"""99: the run on one page: the header and stage times, the type's results, the dataset's reject
pile, 02's throughput, the students, the failure clusters and the lineage against the parent run."""

from __future__ import annotations

from workbench import flows
from workbench.flows import common
from workbench.flows.common import training_table  # noqa: F401 (the page's students cell)
from workbench.flows.results import Rejects, StageResult
from workbench.stage import Stage

# the columns a reject pile shows, of those a type's dataset has
REJECT_COLUMNS = ["label", "tool", "should_refuse", "message", "text", "arguments", "reject_stage", "reject_reason",
                  "dup_of"]  # fmt: skip


def report(stage: Stage) -> StageResult:
    return flows.of(stage.cfg).report(stage)


def header(stage: Stage) -> str:
    return common.run_header_markdown(stage)


def dataset_rejects(stage: Stage) -> Rejects:
    rows = stage.load("dataset")
    if "should_refuse" in rows and not rows["should_refuse"].any():
        rows = rows.drop(columns=["should_refuse"])
    return Rejects(rows, common.present(rows, REJECT_COLUMNS))


def gaps_line(stage: Stage) -> str:
    """07's recorded metrics as its page's headline says them."""
    return flows.of(stage.cfg).gaps_markdown(stage.metrics().get("07_gaps", {}))


def lineage(stage: Stage) -> list:
    """This iteration against its parent (one line for a first iteration)."""
    return flows.of(stage.cfg).lineage(stage)
