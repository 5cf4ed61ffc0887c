"""00: the task, its seeds and what the type shows of them, with the diff against the parent run's
config; and every page's introduction in the type's words."""

from __future__ import annotations

from workbench import flows, form
from workbench.flows.results import TaskResult
from workbench.stage import Stage
from workbench.tasks import pages


def task(stage: Stage) -> TaskResult:
    return flows.of(stage.cfg).task(stage)


def about(stage: Stage) -> str:
    """What this stage does for this run's task type, in its words (`tasks.pages`)."""
    return pages.text(stage.cfg, stage.name)


def parent_diff(stage: Stage) -> str:
    """The config's diff against the parent run's (or the line saying there is none)."""
    parent = stage.parent_config()
    if parent is None:
        return "no earlier run of this task: nothing to compare"
    this = (stage.run_dir / "config.yaml").read_text()
    return form.diff(parent[1], this, parent[0], stage.run_dir.name) or f"same values as {parent[0]}"
