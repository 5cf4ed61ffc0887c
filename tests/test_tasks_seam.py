"""The declared task seam (workbench/tasks/base.py): each task module provides every hook of the
protocols it implements, with the declared parameters."""

from __future__ import annotations

import types

import pytest

from workbench import tasks
from workbench.tasks import base


@pytest.mark.parametrize("kind", sorted(base.PROTOCOLS))
def test_each_task_module_implements_its_protocols(kind):
    assert base.problems(getattr(tasks, kind), base.PROTOCOLS[kind]) == []


def test_every_task_type_maps_to_a_module_that_declares_its_protocols():
    modules = {m.__name__.rsplit(".", 1)[-1] for m in tasks._BY_KIND.values()}
    assert modules == set(base.PROTOCOLS)
    assert all(base.TaskType in p.__mro__ for ps in base.PROTOCOLS.values() for p in ps)


def test_a_missing_hook_or_a_changed_signature_is_named():
    fake = types.SimpleNamespace(**{k: getattr(tasks.classification, k) for k in base.hooks(base.TaskType)})
    assert base.problems(fake, (base.TaskType,)) == []
    del fake.dev
    fake.seeds = lambda config: None  # renamed parameter
    fake.labels = lambda cfg, split: None  # a new parameter without a default
    assert base.problems(fake, (base.TaskType,)) == [
        "TaskType.labels: takes (cfg, split), the seam declares (cfg)",
        "TaskType.seeds: takes (config), the seam declares (cfg)",
        "TaskType.dev: missing",
    ]
    assert "Exports.sft_records: missing" in base.problems(fake, (base.Exports,))


@pytest.mark.parametrize("flow", ["classification", "structured", "text"])
def test_each_flow_has_every_stage(flow):
    """The type-blind stage modules call a flow's functions by these names; each flow has them all,
    and every task type names one of them."""
    from workbench import flows

    assert base.problems(flows.FLOWS[flow], (base.Flow,)) == []
    assert {m.FLOW for m in tasks._BY_KIND.values()} == set(flows.FLOWS)
