"""The task-type seam: one module per task type owns what differs between them (what a row is,
where its real rows come from, how an answer is requested, parsed, checked and scored). Stages ask
`of(cfg)` and call it; they do not branch on the type. `base.py` declares the hooks as Protocols
(what every type provides, and what the text and the structured stages ask of theirs), and
tests/test_tasks_seam.py checks each module against them.

    classification.py   single-label classification (Banking77): the stages' behaviour as it was
    tools.py            tool calls and extraction: tool + arguments, answer schema, slot scores
    reply.py            replies under policies: candidate replies, the judge on (message, reply), refusals
    summarization.py    summaries: replies' stages with a summarizer's instructions, faithfulness, ROUGE-L
"""

from __future__ import annotations

from workbench.config import RunConfig, task_kind
from workbench.tasks import classification, reply, summarization, tools

_BY_KIND = {
    "classification": classification,
    "classification/multi_label": classification,
    "extraction": tools,
    "tools": tools,
    "reply": reply,
    "summarization": summarization,
}


def of(cfg: RunConfig):
    """The module of `cfg`'s task type (classification for the types no module implements yet:
    their configs validate and `workbench run` refuses them)."""
    return _BY_KIND.get(task_kind(cfg.task), classification)
