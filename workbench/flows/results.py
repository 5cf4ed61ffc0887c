"""What a stage returns to its page, the same for every task type: what the page records, its
headline, its rows, its reject pile and the sections only some types have (refusals, slot scores,
ROUGE-L, the label jury…), each shown where the type's stage produced it. A page never unpacks a
tuple: it reads these fields."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

from workbench import plots


@dataclass
class Section:
    """A part of a page a task type adds: its heading ('' for none), its text and what it shows
    (tables, figures, Markdown, widgets), in order."""

    title: str
    text: str = ""
    items: list = field(default_factory=list)


@dataclass
class Rejects:
    """A stage's reject pile as its page's drop-down shows it: the rows, the columns to show and the
    column holding the reason."""

    rows: pd.DataFrame
    columns: list[str]
    by: str = "reject_reason"


@dataclass
class StageResult:
    summary: dict  # what the page records (`stage.record(**summary)`)
    markdown: str = ""  # the headline
    rows: pd.DataFrame | None = None
    rejects: Rejects | None = None
    sections: list[Section] = field(default_factory=list)


@dataclass
class TaskResult(StageResult):
    seeds: pd.DataFrame | None = None
    labels: list[str] = field(default_factory=list)  # the labels, tools or (extraction) the schema's name


@dataclass
class PromptsResult(StageResult):
    kept: pd.DataFrame | None = None  # the kept inputs, with the columns the type shows


@dataclass
class CandidatesResult(StageResult):
    candidates: pd.DataFrame | None = None  # one row per model candidate, with its call's metadata


@dataclass
class JudgeResult(StageResult):
    pairs: pd.DataFrame | None = None
    queue: pd.DataFrame | None = None  # the disagreement queue, where a jury votes


@dataclass
class FilterResult(StageResult):
    kept: pd.DataFrame | None = None
    card: str = ""  # the dataset card's Markdown


@dataclass
class TrainResult(StageResult):
    training: pd.DataFrame | None = None


@dataclass
class EvaluateResult(StageResult):
    table: pd.DataFrame | None = None


@dataclass
class GapsResult(StageResult):
    clustered: pd.DataFrame | None = None
    clusters: pd.DataFrame | None = None
    edits: pd.DataFrame | None = None
    patch: str = ""


def show(sections: list[Section]) -> None:
    """Display each section: its heading, its text, then its items (a figure through `plots.show`)."""
    for s in sections:
        head = "\n\n".join(x for x in (f"## {s.title}" if s.title else "", s.text) if x)
        if head:
            display(Markdown(head))
        for item in s.items:
            if isinstance(item, go.Figure):
                plots.show(item)
            elif isinstance(item, str):
                display(Markdown(item))
            elif item is not None:
                display(item)
