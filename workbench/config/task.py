"""The task section of the config (what a row is, the labels, the tools) and the data section.

ConfigError and the section base class live here, at the bottom of the config package.
"""

from __future__ import annotations

import re
import unicodedata
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message says what, where and how to fix it."""


def visible_name(v: str) -> str:
    """A label or value name as one reads it: NFC-normalised (two spellings of é are one label), and
    refused when it holds a character nobody sees (a zero-width space, a joiner, a direction mark,
    a byte-order mark: Unicode's format characters) or starts or ends with a space."""
    for i, ch in enumerate(v):
        if unicodedata.category(ch) == "Cf":
            raise ValueError(
                f"{v!r} holds an invisible character {unicodedata.name(ch, hex(ord(ch)))} (U+{ord(ch):04X}) at "
                f"position {i}: two labels that look the same would be two labels; remove it"
            )
    if v != v.strip():
        raise ValueError(f"{v!r} starts or ends with a space")
    return unicodedata.normalize("NFC", v)


def _members(annotation: Any) -> tuple:
    """The types a (possibly optional or union) annotation admits."""
    return get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether `value` puts a boolean where `annotation` wants a number, at its top or inside a list or
    dict: pydantic's lax mode reads `true` as 1, so `rows_per_label: true` would run as 1 row."""
    members = _members(annotation)
    if isinstance(value, bool):
        numbers = any(m in (int, float) for m in members)
        return numbers and not any(m in (bool, Any) for m in members)
    for m in members:
        origin, args = get_origin(m), get_args(m)
        if origin in (list, tuple, set, frozenset) and isinstance(value, list | tuple) and args:
            return any(_bool_for_number(args[0], v) for v in value)
        if origin is dict and isinstance(value, dict) and len(args) == 2:
            return any(_bool_for_number(args[1], v) for v in value.values())
    return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None and _bool_for_number(field.annotation, v):
            raise ValueError(f"expected a number, got the boolean {v!r} (true/false is not read as 1/0)")
        return v


_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
TASK_TYPES = ("classification", "extraction", "tools", "reply", "summarization", "dialogue")

# What a row is and how it is evaluated, per task type. Shown by `workbench check`, written into
# drafted configs and shown in 00_task, so a reader knows what the data will look like.
ROW_SCHEMA: dict[str, dict[str, str]] = {
    "classification": {
        "row": "input: str (a user message); label: str, one of task.labels",
        "evaluated": "accuracy and macro-F1 on the real test split, per-label accuracy, confused pairs",
    },
    "classification/multi_label": {
        "row": "input: str; labels: list[str], a subset of task.labels (possibly empty)",
        "evaluated": "subset accuracy, micro- and macro-F1 on the real test split",
    },
    "extraction": {
        "row": "input: str (a document or message); target: object with task.fields (name: typed value)",
        "evaluated": "exact match of the whole object and per-field F1 on held-out rows",
    },
    "tools": {
        "row": "input: str (a request); target: {tool: one of task.tools or none, arguments: {name: value}}",
        "evaluated": "tool accuracy, slot precision/recall/F1 (micro and per argument) and exact match on the "
        "real test split",
    },
    "reply": {
        "row": "input: str (a user's message, about one of task.labels as its topic; should_refuse: bool); "
        "target: str (the assistant's reply under task.policies: a refusal where should_refuse)",
        "evaluated": "judge win-rate against the base model on real held-out messages; refusal rate on AdvBench "
        "and over-refusal on real benign messages",
    },
    "summarization": {
        "row": "input: str (a document); target: str (a summary of at most task.summary_max_words words)",
        "evaluated": "ROUGE-L against reference summaries and judge win-rate against the base model",
    },
    "dialogue": {
        "row": "messages: list of {role: user|assistant|tool, content, tool_calls?} ending in an assistant turn",
        "evaluated": "judge win-rate against the base model; tool-call accuracy (name and arguments) when tools",
    },
}

METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1", "per_label", "confused_pairs"),
    "classification/multi_label": ("subset_accuracy", "micro_f1", "macro_f1"),
    "extraction": ("exact_match", "field_f1"),
    "tools": ("tool_accuracy", "slot_f1", "exact_match"),
    "reply": ("judge_win_rate", "refusal_rate", "over_refusal"),
    "summarization": ("rouge_l", "judge_win_rate"),
    "dialogue": ("judge_win_rate", "tool_call_accuracy"),
}

# Sampling defaults by what the text must be: (temperature, top_p, reason). Inputs are generated
# creatively whatever the task (they must vary); responses are as deterministic as the task needs.
SAMPLING: dict[tuple[str, str], tuple[float, float, str]] = {
    ("prompts", "*"): (0.9, 0.95, "inputs must vary in wording: creative range 0.7-1.0"),
    ("responses", "classification"): (0.2, 0.9, "a label is a fixed answer: deterministic range 0.1-0.3"),
    ("responses", "extraction"): (0.1, 0.9, "field values must be copied exactly: deterministic range 0.1-0.3"),
    ("responses", "tools"): (0.2, 0.9, "tool calls need exact names and arguments: deterministic 0.1-0.3"),
    ("responses", "reply"): (0.7, 0.95, "replies must differ for best-of-N to choose: creative range 0.7-1.0"),
    ("responses", "summarization"): (0.3, 0.9, "a summary must stay faithful to its source: deterministic 0.1-0.3"),
    ("responses", "dialogue"): (0.7, 0.95, "conversation benefits from varied replies: creative range 0.7-1.0"),
    ("responses", "dialogue/tools"): (0.2, 0.9, "tool calls need exact names and arguments: deterministic 0.1-0.3"),
}


def task_kind(task: TaskConfig) -> str:
    """Key into ROW_SCHEMA and METRICS: the type, with '/multi_label' for multi-label classification."""
    return "classification/multi_label" if task.type == "classification" and task.multi_label else task.type


class LabelSpec(_Section):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",  # no line break or control character: one label reads as one
        description="The label as it appears in the data.",
    )
    definition: str | None = Field(None, description="One sentence: what belongs under this label.")
    positive: list[str] = Field([], description="Example inputs that belong under this label.")
    negative: list[str] = Field([], description="Inputs that look similar but do not belong (near misses).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _visible(cls, v: str) -> str:
        return visible_name(v)


class FieldSpec(_Section):
    name: str = Field(pattern=_NAME, description="Field name in the extracted object.")
    type: Literal["string", "integer", "number", "boolean", "date", "list"] = Field(
        "string", description="Value type; date is ISO 8601 (YYYY-MM-DD); list is a list of strings."
    )
    description: str = Field("", description="What the field holds.")
    required: bool = Field(True, description="Whether every row must have a value for it.")
    values: list[str] = Field([], description="Known values, shown to the generator as suggestions; [] = none.")


class ParamSpec(_Section):
    type: Literal["string", "integer", "number", "boolean"] = Field("string", description="The argument's type.")
    description: str = Field("", description="One line: what the argument holds (shown to generator and judge).")
    values: list[str] = Field([], description="Known values, shown to the generator as suggestions; [] = none.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data


class ToolSpec(_Section):
    name: str = Field(pattern=_NAME, description="Function name the assistant calls.")
    description: str = Field(min_length=1, description="When the assistant should call it.")
    parameters: dict[str, ParamSpec] = Field(
        {}, description="Argument name → type, or → {type, description, values}; every argument is optional."
    )

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v):
        bad = [k for k in v if not re.match(_NAME, k)]
        if bad:
            raise ValueError(f"argument names must be identifiers (letters, digits, _); got {bad}")
        return v

    def types(self) -> dict[str, str]:
        return {k: p.type for k, p in self.parameters.items()}


class Share(_Section):
    name: str = Field(min_length=1, description="A persona, tone or entity.")
    share: float | None = Field(None, ge=0, le=1, description="Target proportion of rows; null = an equal part.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _visible(cls, v: str) -> str:
        return visible_name(v)


def _unique(items: list, what: str) -> list:
    names = [x.name if isinstance(x, BaseModel) else x for x in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what}: {dupes}")
    return items


class TaskConfig(_Section):
    name: str = Field(
        "banking77",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",  # not ".", ".." or a hidden name: runs/<name>/ stays in runs/
        max_length=100,
        description="Short name; runs go to runs/<name>/.",
    )
    type: Literal["classification", "extraction", "tools", "reply", "summarization", "dialogue"] = Field(
        "classification", description="Task type; ROW_SCHEMA in workbench/config/task.py says what a row is per type."
    )
    multi_label: bool = Field(False, description="Classification only: a row may carry several labels.")
    description: str = Field(
        "Classify online-banking customer messages by intent.",
        min_length=10,
        description="One or two sentences saying what the fine-tuned model must do.",
    )
    domain: str = Field("online banking customer support", description="The domain generated text must stay in.")
    style: str | None = Field(None, description="Style guidelines for generated text (register, length, spelling).")
    definitions: dict[str, str] = Field({}, description="Domain terms → definitions, shown to the generator.")
    labels: list[LabelSpec] | None = Field(
        None,
        description="Classification: labels (a name, or name + definition + positive/negative examples); reply: "
        "the topics users write about. null = every label of data.dataset.",
    )
    policies: list[str] = Field(
        [],
        description="Reply: the assistant's policies (e.g. 'never promise a refund'), shown to the model that writes "
        "replies and to the judge.",
    )
    must_refuse: list[str] = Field(
        [],
        description="Reply: requests the assistant must refuse (e.g. 'access to someone else's account'); 01's "
        "refusal cells (diversity.refusal_share) ask for these and are flagged should_refuse.",
    )
    fields: list[FieldSpec] = Field([], description="Extraction: the fields to extract, with types.")
    summary_max_words: int = Field(60, ge=5, le=2000, description="Summarization: longest acceptable summary.")
    tools: list[ToolSpec] = Field([], description="Tools (and dialogue): the tools a request may call.")
    max_turns: int = Field(
        4,
        ge=1,
        le=50,
        description="Most customer turns per conversation (dialogue; replies with diversity.multi_turn_share).",
    )
    edge_cases: list[str] = Field([], description="Situations the data must include (see diversity.edge_case_share).")

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v):
        if v is not None and not v:
            raise ValueError("empty label list; list at least two labels, or null for every label of the dataset")
        return _unique(v, "labels") if v else v

    @field_validator("fields")
    @classmethod
    def _fields_unique(cls, v):
        return _unique(v, "field names")

    @field_validator("tools")
    @classmethod
    def _tools_unique(cls, v):
        return _unique(v, "tool names")

    @model_validator(mode="after")
    def _by_type(self):
        if self.type == "extraction" and not self.fields:
            raise ValueError("type extraction needs task.fields: at least one field to extract")
        if self.type == "tools" and not self.tools:
            raise ValueError("type tools needs task.tools: at least one tool with its parameters")
        if self.multi_label and self.type != "classification":
            raise ValueError(f"multi_label applies to classification, not {self.type}")
        if self.type == "classification" and self.labels is not None and len(self.labels) < 2:
            raise ValueError(f"classification needs at least two labels; got {[x.name for x in self.labels]}")
        return self

    def label_names(self) -> list[str] | None:
        return None if self.labels is None else [x.name for x in self.labels]

    def label(self, name: str) -> LabelSpec:
        """The spec of one label (a bare name when the config does not list it)."""
        for x in self.labels or []:
            if x.name == name:
                return x
        return LabelSpec(name=name)


class DataConfig(_Section):
    dataset: str | None = Field(
        "banking77",
        description="A folder with train.csv and test.csv (a text column and a label column; extraction and tools: "
        "train.jsonl and test.jsonl, or the SNIPS files): a name under data/, or a path (relative to this config's "
        "folder); null = no real data (stages 05-07 cannot run).",
    )
    seeds_file: str | None = Field(
        None,
        description="CSV or JSONL of your own seed examples (a text column and a label column; a path relative to "
        "this config's folder); null = sample them from the dataset.",
    )
    label_column: str | None = Field(
        None,
        min_length=1,
        description="The label column of the dataset and seeds file; null = 'label', else 'category', else the "
        "one column besides text (and id).",
    )
    subset: str | None = Field(
        None,
        min_length=1,
        description="Structured datasets (extraction, tools): only the rows of this tool, e.g. a SNIPS intent; "
        "null = every row.",
    )
    seeds_per_label: int = Field(3, ge=1, le=50, description="Real rows per label shown to the generator.")
    dev_per_label: int = Field(
        5, ge=1, le=100, description="Real train rows per label (disjoint from seeds) for failure analysis."
    )
    test_per_label: int | None = Field(
        None, ge=1, description="Cap on real test rows per label for 06_evaluate; null means all."
    )
    seed: int = Field(0, ge=0, lt=2**32, description="Seed for choosing seeds, dev and test samples.")
