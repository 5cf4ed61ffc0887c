"""Typed run configuration: one pydantic model per stage plus the run.

YAML files hold values only; names, types, defaults and help text live here, once.
Loading keeps the YAML's comments (ruamel.yaml round-trip) so a resolved config written
into a run folder still carries the user's notes, with every default filled in and
explained. Errors name the file, the line and the field, and list the valid keys.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError


class ConfigError(ValueError):
    """A config that cannot be used; the message says what, where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
TASK_TYPES = ("classification", "extraction", "summarization", "dialogue")

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
    "summarization": ("rouge_l", "judge_win_rate"),
    "dialogue": ("judge_win_rate", "tool_call_accuracy"),
}

# Sampling defaults by what the text must be: (temperature, top_p, reason). Inputs are generated
# creatively whatever the task (they must vary); responses are as deterministic as the task needs.
SAMPLING: dict[tuple[str, str], tuple[float, float, str]] = {
    ("prompts", "*"): (0.9, 0.95, "inputs must vary in wording: creative range 0.7-1.0"),
    ("responses", "classification"): (0.2, 0.9, "a label is a fixed answer: deterministic range 0.1-0.3"),
    ("responses", "extraction"): (0.1, 0.9, "field values must be copied exactly: deterministic range 0.1-0.3"),
    ("responses", "summarization"): (0.3, 0.9, "a summary must stay faithful to its source: deterministic 0.1-0.3"),
    ("responses", "dialogue"): (0.7, 0.95, "conversation benefits from varied replies: creative range 0.7-1.0"),
    ("responses", "dialogue/tools"): (0.2, 0.9, "tool calls need exact names and arguments: deterministic 0.1-0.3"),
}


def task_kind(task: TaskConfig) -> str:
    """Key into ROW_SCHEMA and METRICS: the type, with '/multi_label' for multi-label classification."""
    return "classification/multi_label" if task.type == "classification" and task.multi_label else task.type


class LabelSpec(_Section):
    name: str = Field(min_length=1, max_length=100, description="The label as it appears in the data.")
    definition: str | None = Field(None, description="One sentence: what belongs under this label.")
    positive: list[str] = Field([], description="Example inputs that belong under this label.")
    negative: list[str] = Field([], description="Inputs that look similar but do not belong (near misses).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class FieldSpec(_Section):
    name: str = Field(pattern=_NAME, description="Field name in the extracted object.")
    type: Literal["string", "integer", "number", "boolean", "date", "list"] = Field(
        "string", description="Value type; date is ISO 8601 (YYYY-MM-DD); list is a list of strings."
    )
    description: str = Field("", description="What the field holds.")
    required: bool = Field(True, description="Whether every row must have a value for it.")


class ToolSpec(_Section):
    name: str = Field(pattern=_NAME, description="Function name the assistant calls.")
    description: str = Field(min_length=1, description="When the assistant should call it.")
    parameters: dict[str, Literal["string", "integer", "number", "boolean"]] = Field(
        {}, description="Argument name → type."
    )


class Share(_Section):
    name: str = Field(min_length=1, description="A persona, tone or entity.")
    share: float | None = Field(None, ge=0, le=1, description="Target proportion of rows; null = an equal part.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


def _unique(items: list, what: str) -> list:
    names = [x.name if isinstance(x, BaseModel) else x for x in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what}: {dupes}")
    return items


class TaskConfig(_Section):
    name: str = Field("banking77", pattern=r"^[A-Za-z0-9_.-]+$", description="Short name; runs go to runs/<name>/.")
    type: Literal["classification", "extraction", "summarization", "dialogue"] = Field(
        "classification", description="Task type; ROW_SCHEMA in workbench/config.py says what a row is per type."
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
        description="Classification: labels (a name, or name + definition + positive/negative examples). "
        "null = every label of data.dataset.",
    )
    fields: list[FieldSpec] = Field([], description="Extraction: the fields to extract, with types.")
    summary_max_words: int = Field(60, ge=5, le=2000, description="Summarization: longest acceptable summary.")
    tools: list[ToolSpec] = Field([], description="Dialogue: tools the assistant may call.")
    max_turns: int = Field(4, ge=1, le=50, description="Dialogue: most user turns per conversation.")
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
        description="Folder under data/ (or a path) with train.csv and test.csv (columns text,category); "
        "null = no real data (stages 05-07 cannot run).",
    )
    seeds_file: str | None = Field(
        None, description="CSV (text,label) or JSONL of your own seed examples; null = sample them from the dataset."
    )
    seeds_per_label: int = Field(3, ge=1, le=50, description="Real rows per label shown to the generator.")
    dev_per_label: int = Field(
        5, ge=1, le=100, description="Real train rows per label (disjoint from seeds) for failure analysis."
    )
    test_per_label: int | None = Field(
        None, ge=1, description="Cap on real test rows per label for 06_evaluate; null means all."
    )
    seed: int = Field(0, description="Seed for choosing seeds, dev and test samples.")


class LLMConfig(_Section):
    provider: Literal["local", "openai"] = Field(
        "local", description="local: the embedded SmolLM2-135M-Instruct; openai: any OpenAI-compatible endpoint."
    )
    model: str = Field(
        "smollm2-135m-instruct",
        description="Model name sent to the endpoint; for local, 'smollm2-135m-instruct' or a folder.",
    )
    base_url: str | None = Field(None, description="Endpoint base URL, e.g. http://localhost:8000/v1 (openai only).")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API key (never the key).",
    )
    replicas: list[str] = Field(
        [],
        description="More base URLs serving the same model (openai): the requests are shared among base_url "
        "and these, max_concurrency in flight on each; the cache does not care which answered.",
    )
    max_concurrency: int = Field(
        16, ge=1, le=4096, description="Requests in flight at once, per endpoint replica (openai)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds (openai).")
    max_retries: int = Field(5, ge=0, le=50, description="Retries on 429/5xx/timeouts, honouring Retry-After (openai).")
    adaptive_concurrency: bool = Field(
        True,
        description="Lower the requests in flight when the endpoint's latency rises above latency_tolerance times the "
        "lowest seen (a self-hosted server slowing down under load), and raise them again as it recovers: "
        "additive increase, multiplicative decrease, at most max_concurrency (openai).",
    )
    latency_tolerance: float = Field(
        2.0, gt=1, description="adaptive_concurrency: how many times the lowest latency seen counts as congestion."
    )
    rpm: int | None = Field(
        None, ge=1, description="Requests per minute the endpoint allows (openai); null means no limit is kept."
    )
    tpm: int | None = Field(
        None,
        ge=1,
        description="Tokens per minute the endpoint allows (openai): each request counts its prompt (about 4 "
        "characters a token) plus max_tokens x n, as providers count it; null means no limit is kept.",
    )
    stream: bool = Field(False, description="Stream responses to measure time to first token (openai).")
    batch_api: bool = Field(
        False,
        description="Send the calls through the provider's batch API (/v1/batches; openai): cheaper and slower. "
        "The batch id is kept in the cache folder, so a re-run collects the batch instead of paying again.",
    )
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between checks of a running batch (batch_api).")
    batch_wait_s: float = Field(
        86400.0,
        gt=0,
        description="How long one run waits for its batch before stopping with a 're-run to collect' error (batch_api).",
    )
    batch_window: Literal["24h"] = Field("24h", description="The batch's completion window (batch_api).")
    batch_size: int = Field(32, ge=1, le=1024, description="Rows per forward pass (local).")
    threads: int | None = Field(None, ge=1, description="Torch CPU threads (local); null means all cores.")
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description="Weights and activations of the local model. bfloat16 is 2x faster on CPUs with "
        "AVX512-BF16/AMX (measured: benchmarks in README); use float32 on CPUs without them.",
    )
    price_input_per_1m: float | None = Field(None, ge=0, description="Price per million prompt tokens (estimate).")
    price_output_per_1m: float | None = Field(None, ge=0, description="Price per million completion tokens (estimate).")


class SamplingConfig(_Section):
    rows_per_label: int = Field(4, ge=1, le=100000, description="Inputs to generate per label (balanced plan).")
    total_rows: int | None = Field(
        None, ge=1, description="Inputs to generate in all, split by class_balance; set this or rows_per_label."
    )
    class_balance: Literal["balanced", "proportional"] | dict[str, float] = Field(
        "balanced",
        description="balanced: equal rows per label; proportional: as in the dataset's train split; or label → weight.",
    )
    extra_rows: dict[str, int] = Field(
        {},
        description="Label → inputs to generate on top of the plan (07_gaps proposes these for labels the "
        "student confuses).",
    )

    @field_validator("extra_rows")
    @classmethod
    def _extra(cls, v):
        bad = {k: n for k, n in v.items() if n < 0}
        if bad:
            raise ValueError(f"extra rows must be non-negative; got {bad}")
        return v


class QualityConfig(_Section):
    min_chars: int = Field(10, ge=0, description="Rows shorter than this are rejected as too_short.")
    max_chars: int = Field(300, ge=1, description="Rows longer than this are rejected as too_long.")
    language: str | None = Field(
        "en", pattern=r"^[a-z]{2}$", description="ISO 639-1 code rows must be written in; null = any."
    )
    profanity: Literal["reject", "allow"] = Field("reject", description="reject: rows with profanity are rejected.")
    pii: Literal["redact", "reject", "allow"] = Field(
        "redact", description="Emails, phone, card and IBAN numbers, IP addresses: redact, reject the row, or allow."
    )
    forbidden: list[str] = Field(
        [], description="Regular expressions (case-insensitive) rows must not match; a match is rejected as forbidden."
    )

    @field_validator("forbidden")
    @classmethod
    def _regexes(cls, v):
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _range(self):
        if self.min_chars >= self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must be below max_chars ({self.max_chars})")
        return self


class DiversityConfig(_Section):
    personas: list[Share] = Field([], description="Who writes the inputs, with target shares.")
    tones: list[Share] = Field([], description="Tones of voice, with target shares.")
    difficulty: dict[Literal["easy", "medium", "hard"], float] = Field(
        {}, description="Target shares of easy / medium / hard inputs; {} = not asked for."
    )
    sentiment: dict[Literal["negative", "neutral", "positive"], float] = Field(
        {}, description="Target shares of negative / neutral / positive inputs; {} = not asked for."
    )
    entities: list[Share] = Field(
        [], description="Entities inputs must mention (share = proportion of rows); rows missing theirs are rejected."
    )
    edge_case_share: float = Field(
        0.0, ge=0, le=1, description="Proportion of inputs written as one of task.edge_cases."
    )
    refusal_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Proportion of inputs that ask for something the assistant must refuse (marked refusal=True).",
    )

    @field_validator("personas", "tones", "entities")
    @classmethod
    def _shares(cls, v, info):
        _unique(v, info.field_name)
        given = sum(x.share for x in v if x.share is not None)
        if given > 1 + 1e-6:
            raise ValueError(f"shares add up to {given:g}; they must not exceed 1")
        if info.field_name != "entities" and v and all(x.share is not None for x in v) and abs(given - 1) > 0.01:
            raise ValueError(f"shares add up to {given:g}; they must add up to 1 (or leave some null)")
        return v

    @field_validator("difficulty", "sentiment")
    @classmethod
    def _proportions(cls, v):
        if v and (any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1) > 0.01):
            raise ValueError(f"proportions {dict(v)} must be non-negative and add up to 1")
        return v


class PromptsConfig(_Section):
    examples_per_call: int = Field(3, ge=1, le=20, description="Seed examples shown in each generation call.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; null = by task type.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass; null = by task type.")
    max_tokens: int = Field(48, ge=1, le=4096, description="Cap on tokens per generated input.")
    rounds: int = Field(
        3,
        ge=1,
        le=20,
        description="Generation rounds: round 1 follows the plan, later ones top up cells that fell short.",
    )
    topup_factor: float = Field(
        2.0, ge=1, le=10, description="Attempts per missing prompt in a top-up round; the surplus is down-sampled."
    )
    critique: bool = Field(True, description="Run the LLM critic (vague / redundant / mis-scoped / unrealistic).")
    critic_max_tokens: int = Field(96, ge=16, le=2048, description="Cap on tokens of one critique.")
    min_domain_score: float = Field(
        0.4,
        ge=-1,
        le=1,
        description="Prompts whose embedding similarity to the seeds and label definitions is below this are off_domain.",
    )
    balance_tolerance: float = Field(
        0.5,
        ge=0,
        le=10,
        description="Kept share of a label or difficulty may differ from its target by this fraction of the target.",
    )


class ResponsesConfig(_Section):
    candidates: int = Field(
        3,
        ge=1,
        le=16,
        description="Candidate responses per prompt, sampled in one request (n). Classification: the model's "
        "blind answers, which vote in the jury; candidate 0 is always the intended label.",
    )
    choices: int = Field(
        5, ge=2, le=20, description="Classification: labels shown per question (the intended one and its nearest)."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; null = by task type.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass; null = by task type.")
    max_tokens: int | None = Field(
        None, ge=1, le=8192, description="Cap on tokens per response; null = by task type (classification: 2)."
    )


# The judge's rubric: dimension → criterion ({topic}: the row's label; {domain}: task.domain).
RUBRIC: dict[str, str] = {
    "correctness": "the message is really about {topic}",
    "helpfulness": "the response does what the user asked, completely and usefully",
    "policy_compliance": "the text is something a {domain} dataset may contain: nothing harmful, abusive or "
    "private, and a request that must be refused is refused",
    "formatting": "it reads as the message itself: no preamble, notes, placeholders or markup",
    "tool_usage": "tool calls name the right tool with correct arguments, and only when needed",
    "refusal_quality": "a refusal is brief and polite, says why, and offers a safe alternative",
}


class JudgeConfig(_Section):
    rubric: list[Literal[tuple(RUBRIC)]] | None = Field(
        None,
        description="Rubric dimensions each row is scored on (1-5, with a rationale): "
        + ", ".join(RUBRIC)
        + "; null = by task type; [] = no rubric judge.",
    )
    jurors: int = Field(
        1, ge=1, le=9, description="Rubric judges per row: the same model with its own seed and prompt wording each."
    )
    anchor: bool = Field(True, description="Show the judge one real seed example of the row's label.")
    min_score: float = Field(
        0.0, ge=0, le=1, description="Rows whose mean rubric score (0-1) is below this are rejected as low_score."
    )
    max_tokens: int = Field(24, ge=1, le=1024, description="Cap on tokens of one judgment (score and rationale).")
    temperature: float = Field(0.0, ge=0, le=2, description="Judge sampling temperature (0 = greedy).")
    jury: list[Literal["probe", "knn", "llm"]] = Field(
        ["probe", "knn", "llm"],
        description="Classification: jurors that re-label each input blind (probe = MiniLM + logistic regression "
        "on the seeds; knn = nearest seed; llm = stage 02's candidates); [] = no label jury.",
    )
    aggregate: Literal["majority", "mean"] = Field(
        "majority", description="Jury verdict: the label most jurors name (majority) or the highest mean probability."
    )
    max_spread: float = Field(
        0.5, ge=0, le=1, description="Rubric jurors whose scores spread more than this put the row in the queue."
    )
    pair_margin: float = Field(
        0.5, ge=0, le=1, description="DPO pair: the best candidate must score at least this above the worst."
    )


class FilterConfig(_Section):
    near_dup_threshold: float = Field(
        0.7, gt=0, le=1, description="Jaccard similarity of character shingles above which rows are near-duplicates."
    )
    shingle_size: int = Field(5, ge=2, le=20, description="Characters per shingle for near-duplicate detection.")
    toxicity: Literal["reject", "allow"] = Field(
        "reject", description="reject: rows with threats, harassment or slurs (a word-pattern check) are rejected."
    )
    min_domain_score: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="On-domain score (MiniLM, against the task definition, labels and seeds) below which a row is "
        "rejected as off_domain; null = prompts.min_domain_score.",
    )
    rewrite: str | None = Field(
        None,
        description="Optional rewrite of each kept row, e.g. 'in the voice of a retired customer, under 25 words'; "
        "the rewritten text is checked again. null = no rewrite.",
    )
    rewrite_max_tokens: int = Field(64, ge=8, le=2048, description="Cap on tokens of one rewrite.")
    num_proc: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes for the row-by-row checks of stage 04 (constraints, PII, toxicity) via "
        "datasets.map; near-dedup stays in one process, its index grows with the rows it keeps.",
    )


class TrainConfig(_Section):
    students: list[Literal["probe", "causal"]] = Field(
        ["probe", "causal"],
        min_length=1,
        description="probe: frozen all-MiniLM-L6-v2 encoder + logistic-regression head (seconds on a CPU); "
        "causal: a chat LM fine-tuned with trl (train.methods).",
    )
    C: float = Field(10.0, gt=0, description="probe: inverse regularisation strength of the logistic-regression head.")
    max_iter: int = Field(2000, ge=10, description="probe: iterations for the logistic-regression solver.")
    model: str = Field(
        "smollm2-135m-instruct",
        description="causal: the base model; the embedded SmolLM2-135M-Instruct (its GGUF converted once to "
        "safetensors in the cache) or a local model folder.",
    )
    methods: list[Literal["sft", "dpo", "grpo"]] = Field(
        ["sft", "dpo", "grpo"],
        description="causal: sft on seeds + kept rows; dpo on 03's best-vs-worst pairs and grpo (RFT, reward: "
        "the generated label is the intended one) both start from the SFT model.",
    )
    lora: dict[str, Any] | None = Field(
        default_factory=lambda: {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        description="causal: peft.LoraConfig fields for every method; null = full fine-tune. (lora_dropout 0: on a CPU "
        "dropout costs a fifth of each step.)",
    )
    sft: dict[str, Any] = Field(
        default_factory=dict,
        description="causal: trl.SFTConfig fields, over the defaults in workbench/causal.py (TRAINER_DEFAULTS).",
    )
    dpo: dict[str, Any] = Field(default_factory=dict, description="causal: trl.DPOConfig fields, over the defaults.")
    grpo: dict[str, Any] = Field(default_factory=dict, description="causal: trl.GRPOConfig fields, over the defaults.")
    reference: bool = Field(
        True,
        description="Also train each student on the real train split: the clearly labelled reference row "
        "(curated real data), never mixed into the synthetic rows or their numbers.",
    )
    reference_rows: int | None = Field(
        None, ge=1, description="Real train rows the reference is trained on (a seeded sample); null = all of them."
    )

    @model_validator(mode="after")
    def _methods(self):
        if {"dpo", "grpo"} & set(self.methods) and "sft" not in self.methods:
            raise ValueError(f"train.methods {self.methods}: dpo and grpo start from the SFT model; add sft")
        return self


class EvaluateConfig(_Section):
    bootstrap: int = Field(1000, ge=0, le=100000, description="Bootstrap resamples for 95% confidence intervals.")
    metrics: list[str] | None = Field(
        None, description="Metrics 06_evaluate reports; null = the task type's (METRICS in workbench/config.py)."
    )
    causal_test_per_label: int | None = Field(
        None,
        ge=1,
        description="Test rows per label the causal students are scored on (a seeded sample of the test rows; the "
        "probes are scored on them too, so every row of the table shares them); null = all test rows.",
    )
    safety_rows: int | None = Field(
        100,
        ge=0,
        description="AdvBench harmful instructions (a seeded sample) each causal model answers, for the refusal "
        "rate before/after; null = all 520; 0 = no safety check.",
    )
    safety_max_tokens: int = Field(48, ge=4, le=1024, description="Tokens of each answer to a harmful instruction.")
    batch_size: int = Field(32, ge=1, le=1024, description="Rows per forward pass when a causal model is scored.")


class GapsConfig(_Section):
    sources: list[Literal["dev", "low_judge", "jury"]] = Field(
        ["dev", "low_judge", "jury"],
        min_length=1,
        description="Failures to cluster: dev = real dev rows the student misclassifies; low_judge = judged synthetic "
        "rows the judge scored below gaps.low_score; jury = judged synthetic rows the label jury gave another label.",
    )
    low_score: float = Field(0.5, ge=0, le=1, description="Judge score (0-1) below which a judged row is a failure.")
    umap_neighbors: int = Field(10, ge=2, description="UMAP n_neighbors.")
    min_cluster_size: int = Field(4, ge=2, description="HDBSCAN min_cluster_size.")
    selection: Literal["leaf", "eom"] = Field(
        "leaf",
        description="HDBSCAN cluster_selection_method: leaf = many small, tight failure modes (stable as rows are "
        "added); eom = the most persistent clusters, which on 212 Banking77 failures swung between 15 and 2 "
        "as min_cluster_size went from 4 to 5.",
    )
    random_state: int = Field(0, description="UMAP random_state, fixed so maps are reproducible.")
    max_edits: int = Field(
        12, ge=0, le=200, description="Most config edits the patch proposes (largest clusters first)."
    )
    extra_rows: int | None = Field(
        None, ge=1, le=10000, description="Inputs a 'more rows' edit adds to a confused label; null = rows_per_label."
    )
    name_max_tokens: int = Field(40, ge=8, le=512, description="Cap on tokens of the LLM's name for a cluster.")


class RunConfig(_Section):
    task: TaskConfig = Field(default_factory=TaskConfig, description="TASK: what the fine-tuned model must do.")
    data: DataConfig = Field(default_factory=DataConfig, description="DATA: real seeds, dev and test rows.")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="SAMPLING PLAN: how many inputs, per label."
    )
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="QUALITY CONTROLS: enforced by the 04_filter gates."
    )
    diversity: DiversityConfig = Field(
        default_factory=DiversityConfig, description="DIVERSITY CONTROLS: the 01_prompts generation grid."
    )
    llm: LLMConfig = Field(default_factory=LLMConfig, description="LLM: the model behind every LLM call.")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="STAGE 01: input generation.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="STAGE 02: responses.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="STAGE 03: LLM judge.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="STAGE 04: final filter (duplicates).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="STAGE 05: the student.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="STAGE 06: evaluation.")
    gaps: GapsConfig = Field(default_factory=GapsConfig, description="STAGE 07: failure clusters.")
    seed: int = Field(0, description="Seed for every sampled LLM call and split in the run.")

    _reasons: dict[str, str] = PrivateAttr(default_factory=dict)  # why each by-type default was chosen

    def __eq__(self, other: object) -> bool:  # equal values are equal configs, however they were written
        return isinstance(other, RunConfig) and self.model_dump() == other.model_dump()

    __hash__ = None

    @model_validator(mode="after")
    def _resolve(self):
        kind = task_kind(self.task)
        for section in ("prompts", "responses"):
            key = self.task.type + ("/tools" if self.task.type == "dialogue" and self.task.tools else "")
            t, p, why = SAMPLING.get((section, "*")) or SAMPLING[(section, key)]
            sec = getattr(self, section)
            for name, value in (("temperature", t), ("top_p", p)):
                if getattr(sec, name) is None:
                    sec.__dict__[name] = value  # no re-validation: the table's values are in range
                    self._reasons[f"{section}.{name}"] = f"{value} chosen for {self.task.type}: {why}; override freely"
        if self.responses.max_tokens is None:
            n = 2 if self.task.type == "classification" else 512
            self.responses.__dict__["max_tokens"] = n
            why = "an option number" if n == 2 else "room for a full answer"
            self._reasons["responses.max_tokens"] = f"{n} chosen for {self.task.type}: {why}; override freely"
        valid = METRICS[kind]
        if self.evaluate.metrics is None:
            self.evaluate.__dict__["metrics"] = list(valid)
        else:
            bad = [m for m in self.evaluate.metrics if m not in valid]
            if bad:
                raise ValueError(f"evaluate.metrics {bad} do not apply to {kind}; valid: {list(valid)}")
        s = self.sampling
        if {"rows_per_label", "total_rows"} <= s.model_fields_set and s.total_rows is not None:
            raise ValueError("sampling: set rows_per_label or total_rows, not both")
        if self.diversity.edge_case_share > 0 and not self.task.edge_cases:
            raise ValueError("diversity.edge_case_share > 0 but task.edge_cases is empty: list the edge cases")
        names = self.task.label_names()
        if names is not None:
            check_plan(self, names)
        return self


def check_plan(cfg: RunConfig, labels: list[str]) -> None:
    """Contradictions between the sampling plan and the labels (also checked once a dataset's labels are known)."""
    s = cfg.sampling
    if isinstance(s.class_balance, dict):
        unknown = sorted(set(s.class_balance) - set(labels))
        if unknown:
            raise ValueError(f"sampling.class_balance names unknown labels {unknown}")
        if any(w < 0 for w in s.class_balance.values()) or not sum(s.class_balance.values()) > 0:
            raise ValueError("sampling.class_balance weights must be non-negative with a positive sum")
    unknown = sorted(set(s.extra_rows) - set(labels))
    if unknown:
        raise ValueError(f"sampling.extra_rows names unknown labels {unknown}")
    if s.total_rows is not None and s.class_balance == "balanced" and s.total_rows < len(labels):
        raise ValueError(
            f"sampling.total_rows={s.total_rows} cannot give each of {len(labels)} labels a row under a "
            "balanced plan; raise total_rows or use rows_per_label"
        )


def plan_counts(cfg: RunConfig, labels: list[str], train_counts: dict[str, int] | None = None) -> dict[str, int]:
    """Inputs to generate per label under the sampling plan (largest-remainder rounding)."""
    s = cfg.sampling
    extra = s.extra_rows
    if s.total_rows is None and s.class_balance == "balanced":
        return {x: s.rows_per_label + extra.get(x, 0) for x in labels}
    if s.class_balance == "balanced":
        weights = dict.fromkeys(labels, 1.0)
    elif s.class_balance == "proportional":
        if not train_counts:
            raise ValueError("sampling.class_balance=proportional needs a dataset to take proportions from")
        weights = {x: float(train_counts.get(x, 0)) for x in labels}
    else:
        weights = {x: float(s.class_balance.get(x, 0.0)) for x in labels}
    total = s.total_rows if s.total_rows is not None else s.rows_per_label * len(labels)
    counts = allocate(total, [weights[x] for x in labels])
    return {x: n + extra.get(x, 0) for x, n in zip(labels, counts)}


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` in proportion to `weights`, rounding by largest remainder (sums exactly to total)."""
    w = np.asarray(weights, dtype=float)
    if total <= 0 or w.sum() <= 0:
        return [0] * len(weights)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out.tolist()


# Every field, and what enforces it: (stage, gate, reject reasons it produces, task kinds it applies to).
# Kinds None = every kind. `check_enforced` makes a set field that nothing enforces a load error, and the
# report's field → gate table is built from this.
ALL = None
ENFORCED_BY: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...] | None]] = {
    "task.name": ("runs", "run folder runs/<name>/", (), ALL),
    "task.type": ("runs", "ROW_SCHEMA; stages refuse kinds they do not implement", (), ALL),
    "task.multi_label": ("runs", "ROW_SCHEMA", (), ("classification", "classification/multi_label")),
    "task.description": ("00_task", "shown in every report; drafts the config", (), ALL),
    "task.domain": ("01_prompts, 03_judge", "generator and judge system prompts", (), ALL),
    "task.style": ("01_prompts", "generator system prompt", (), ALL),
    "task.definitions": ("01_prompts", "generator system prompt", (), ALL),
    "task.labels": (
        "00_task, 01_prompts, 03_judge",
        "labels checked against the data; definitions and examples in generator and judge prompts",
        (),
        ("classification", "classification/multi_label"),
    ),
    "task.fields": ("01_prompts", "extraction schema", (), ("extraction",)),
    "task.summary_max_words": ("02_responses", "summary length", (), ("summarization",)),
    "task.tools": ("01_prompts", "tool-use requests", (), ("dialogue",)),
    "task.max_turns": ("01_prompts", "conversation length", (), ("dialogue",)),
    "task.edge_cases": ("01_prompts", "generation grid: edge-case cells", (), ALL),
    "data.dataset": ("00_task, 06_evaluate, 07_gaps", "real seeds, dev and test rows", (), ALL),
    "data.seeds_file": ("00_task", "seed examples, labels checked", (), ALL),
    "data.seeds_per_label": ("00_task", "seed sample", (), ALL),
    "data.dev_per_label": ("07_gaps", "dev sample", (), ALL),
    "data.test_per_label": ("06_evaluate", "test sample", (), ALL),
    "data.seed": ("00_task", "seed, dev and test sampling", (), ALL),
    "sampling.rows_per_label": ("01_prompts", "generation plan: rows per label", (), ALL),
    "sampling.total_rows": ("01_prompts", "generation plan: rows in all", (), ALL),
    "sampling.class_balance": ("01_prompts", "generation plan: rows per label", (), ALL),
    "sampling.extra_rows": ("01_prompts", "generation plan: rows per label", (), ALL),
    "quality.min_chars": ("01_prompts, 04_filter", "constraints: length", ("too_short",), ALL),
    "quality.max_chars": ("01_prompts, 04_filter", "constraints: length", ("too_long",), ALL),
    "quality.language": ("01_prompts, 04_filter", "constraints: language", ("wrong_language",), ALL),
    "quality.profanity": ("01_prompts, 04_filter", "constraints: profanity", ("profanity",), ALL),
    "quality.pii": ("01_prompts, 04_filter", "constraints: pii (redact or reject)", ("pii",), ALL),
    "quality.forbidden": ("01_prompts, 04_filter", "constraints: forbidden content", ("forbidden",), ALL),
    "diversity.personas": ("01_prompts", "generation grid: persona", (), ALL),
    "diversity.tones": ("01_prompts", "generation grid: tone", (), ALL),
    "diversity.difficulty": ("01_prompts", "generation grid: difficulty", (), ALL),
    "diversity.sentiment": ("01_prompts", "generation grid: sentiment", (), ALL),
    "diversity.entities": (
        "01_prompts, 04_filter",
        "generation grid: entity; constraints: entity",
        ("entity_missing",),
        ALL,
    ),
    "diversity.edge_case_share": ("01_prompts", "generation grid: edge-case cells", (), ALL),
    "diversity.refusal_share": ("01_prompts", "generation grid: refusal-worthy cells", (), ALL),
    "llm": ("every LLM call", "provider, sampling transport, cache key", (), ALL),
    "prompts.examples_per_call": ("01_prompts", "seed examples per call", (), ALL),
    "prompts.temperature": ("01_prompts", "sampling", (), ALL),
    "prompts.top_p": ("01_prompts", "sampling", (), ALL),
    "prompts.max_tokens": ("01_prompts", "sampling", (), ALL),
    "prompts.rounds": ("01_prompts", "top-up rounds; shortfall named", (), ALL),
    "prompts.topup_factor": ("01_prompts", "top-up attempts", (), ALL),
    "prompts.critique": ("01_prompts", "critique", ("vague", "redundant", "mis-scoped", "unrealistic"), ALL),
    "prompts.critic_max_tokens": ("01_prompts", "critique", (), ALL),
    "prompts.min_domain_score": ("01_prompts", "domain", ("off_domain",), ALL),
    "prompts.balance_tolerance": ("01_prompts", "balance", ("over_represented",), ALL),
    "responses": ("02_responses", "candidates and sampling", (), ALL),
    "judge.rubric": ("03_judge", "rubric judge", ("unparseable", "llm_error"), ALL),
    "judge.jurors": ("03_judge", "rubric jury; Krippendorff's alpha", (), ALL),
    "judge.anchor": ("03_judge", "judge prompt", (), ALL),
    "judge.min_score": ("03_judge", "judge score", ("low_score",), ALL),
    "judge.max_tokens": ("03_judge", "sampling", (), ALL),
    "judge.temperature": ("03_judge", "sampling", (), ALL),
    "judge.jury": ("03_judge", "label jury", ("label_mismatch", "uncertain"), ("classification",)),
    "judge.aggregate": ("03_judge", "label jury", ("label_mismatch", "uncertain"), ("classification",)),
    "judge.max_spread": ("03_judge", "disagreement queue", (), ALL),
    "judge.pair_margin": ("03_judge", "DPO pairs", (), ALL),
    "filter.near_dup_threshold": (
        "01_prompts, 04_filter",
        "dedup, contamination, near-duplicates",
        ("near_duplicate", "copy_of_seed", "duplicate", "seen_before", "contamination"),
        ALL,
    ),
    "filter.shingle_size": (
        "01_prompts, 04_filter",
        "dedup, contamination, near-duplicates",
        ("near_duplicate", "copy_of_seed", "duplicate", "seen_before", "contamination"),
        ALL,
    ),
    "filter.toxicity": ("04_filter", "toxicity", ("toxicity",), ALL),
    "filter.min_domain_score": ("04_filter", "domain", ("off_domain",), ALL),
    "filter.rewrite": ("04_filter", "rewrite, then every check again", ("uncertain",), ALL),
    "filter.rewrite_max_tokens": ("04_filter", "rewrite", (), ALL),
    "filter.num_proc": ("04_filter", "constraints, PII and toxicity in parallel (datasets.map)", (), ALL),
    "train": ("05_train", "student", (), ("classification",)),
    "evaluate.bootstrap": ("06_evaluate", "confidence intervals", (), ALL),
    "evaluate.metrics": ("06_evaluate", "metrics reported", (), ALL),
    "evaluate.causal_test_per_label": ("06_evaluate", "test rows of the before/after table", (), ALL),
    "evaluate.safety_rows": ("06_evaluate", "refusal rate before/after", (), ALL),
    "evaluate.safety_max_tokens": ("06_evaluate", "refusal rate before/after", (), ALL),
    "evaluate.batch_size": ("06_evaluate", "scoring causal models", (), ALL),
    "gaps": ("07_gaps", "failure clusters", (), ALL),
    "seed": ("every stage", "sampling seeds", (), ALL),
}

# Reasons no single threshold sets: the gate's own rule, named here so the report can say so.
_RULE_REASONS = {
    "empty": "(generator returned no text)",
    "format": "(rule: meta-talk about the task, or [placeholders])",
    "toxicity": "filter.toxicity",
    "contamination": "filter.near_dup_threshold",
}


def reason_fields() -> dict[str, list[str]]:
    """Reject reason → the config fields that decide it (from ENFORCED_BY), for the reject piles."""
    out: dict[str, list[str]] = {}
    for field, (_, _, reasons, _) in ENFORCED_BY.items():
        for r in reasons:
            out.setdefault(r, []).append(field)
    for r, f in _RULE_REASONS.items():
        out.setdefault(r, [f])
    return out


# What `workbench run` can execute today; other kinds validate (`workbench check`, `workbench init`)
# but are refused by `check_runnable`, so no field of theirs is silently ignored.
RUNNABLE = ("classification",)


def leaf_fields(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """Dotted names of every field that holds a value (sections are walked; list items are not)."""
    model = model or RunConfig
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaf_fields(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def enforcer(dotted: str) -> tuple[str, str, tuple[str, ...], tuple[str, ...] | None] | None:
    """The ENFORCED_BY entry of a field, or of its section when the whole section is enforced as one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        hit = ENFORCED_BY.get(".".join(parts[:i]))
        if hit:
            return hit
    return None


def check_runnable(cfg: RunConfig, stages: list[str] | None = None) -> None:
    """Refuse a config `workbench run` would not honour in full (for the stages asked for)."""
    kind = task_kind(cfg.task)
    if kind not in RUNNABLE:
        raise ConfigError(
            f"task.type {kind!r}: the stages implement {', '.join(RUNNABLE)} today; this config is valid "
            "(`workbench check` prints it) but `workbench run` would ignore what makes it "
            f"{kind}. Row schema: {ROW_SCHEMA[kind]['row']}"
        )
    needs_data = {"05_train", "06_evaluate", "07_gaps", "99_report"}
    if cfg.data.dataset is None and (stages is None or needs_data & set(stages)):
        raise ConfigError(
            "data.dataset is null: 05_train, 06_evaluate and 07_gaps need real labelled rows; set data.dataset "
            "or run only --stages 00_task,01_prompts,02_responses,03_judge,04_filter"
        )


# ---------------------------------------------------------------- loading


def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments, order and line numbers
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 110
    return y


def _line_of(doc: Any, loc: tuple) -> int | None:
    """1-based line of the deepest key of `loc` that exists in the YAML document."""
    node, line = doc, None
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            line = node.lc.item(key)[0] + 1 if hasattr(node, "lc") else line
            node = node[key]
        else:
            break
    return line


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for key in loc:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _describe(err: dict, doc: Any, source: str, overrides: dict[tuple, str]) -> str:
    loc = tuple(err["loc"])
    if not loc:  # a check across sections: find the first field it names
        named = [f for f in leaf_fields() if f in err["msg"]]
        loc = tuple(named[0].split(".")) if named else ()
    dotted = ".".join(str(p) for p in loc)
    where = overrides.get(loc)
    if where is None:
        line = _line_of(doc, loc)
        where = f"{source}:{line}" if line else source
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = ", ".join(parent.model_fields) if parent else "?"
        return f"{where}: field '{dotted}': unknown key; valid keys here: {valid}"
    received = err.get("input")
    if "key" in str(loc[-1] if loc else "") and isinstance(received, str) and len(received) > 8:
        # llm.api_key_env holding the key itself: the message must not carry the secret on
        return (
            f"{where}: field '{dotted}': expected the name of an environment variable (letters, digits, _) that "
            f"holds the key, never the key; received a {len(received)}-character value starting {received[:3]!r}…"
            " Put the key in an environment variable and name that variable here."
        )
    if err["type"] == "value_error" and isinstance(received, dict):  # a whole section: the message says it
        return f"{where}: field '{dotted}': {err['msg'].removeprefix('Value error, ')}"
    return f"{where}: field '{dotted}': {err['msg']} (received {received!r})"


def _set_dotted(doc: CommentedMap, dotted: str, value: Any) -> tuple:
    parts = dotted.split(".")
    node = doc
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], dict):
            node[p] = CommentedMap()
        node = node[p]
    node[parts[-1]] = value
    return tuple(parts)


def parse_overrides(pairs: list[str] | None) -> list[tuple[str, Any]]:
    """`["a.b=3", "c=x"]` → `[("a.b", 3), ("c", "x")]`; values are read as YAML scalars."""
    out = []
    for pair in pairs or []:
        if "=" not in pair or not re.match(r"^[A-Za-z_][\w.]*=", pair):
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with a dotted key, e.g. prompts.per_label=8")
        key, raw = pair.split("=", 1)
        value = YAML(typ="safe").load(raw) if raw.strip() else ""
        out.append((key, value))
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, CommentedMap]:
    """Read and validate a YAML config. Returns the model and the comment-keeping document."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: YAML syntax error: {e.problem or e.context}") from e
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ConfigError(f"{path}:1: expected a mapping of sections (task:, data:, …), got {type(doc).__name__}")
    where: dict[tuple, str] = {}
    for key, value in parse_overrides(overrides):
        where[_set_dotted(doc, key, value)] = f"--set {key}"
    try:
        cfg = RunConfig.model_validate(_plain(doc))
    except ValidationError as e:
        lines = [_describe(err, doc, str(path), where) for err in e.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
    problems = unenforced(cfg, doc, str(path), where)
    if problems:
        raise ConfigError("fields that nothing would enforce:\n  " + "\n  ".join(problems))
    return cfg, doc


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def unenforced(cfg: RunConfig, doc: CommentedMap, source: str, overrides: dict[tuple, str]) -> list[str]:
    """Fields whose value differs from the task type's default but that no stage enforces for this
    task type: an error, so a setting is never a silent no-op."""
    kind = task_kind(cfg.task)
    reset = {}
    for name, field in TaskConfig.model_fields.items():
        rule = enforcer(f"task.{name}")
        if rule and rule[3] is not None and kind not in rule[3]:
            reset[name] = field.get_default(call_default_factory=True)
    base = RunConfig(task=cfg.task.model_copy(update=reset))
    out = []
    for dotted in leaf_fields():
        if _get(cfg, dotted) == _get(base, dotted):
            continue
        rule = enforcer(dotted)
        if rule is not None and (rule[3] is None or kind in rule[3]):
            continue
        loc = tuple(dotted.split("."))
        where = overrides.get(loc) or f"{source}:{_line_of(doc, loc) or '?'}"
        kinds = ", ".join(rule[3]) if rule else "none"
        out.append(f"{where}: field '{dotted}': set, but no stage enforces it for {kind} (it applies to: {kinds})")
    return out


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


# ---------------------------------------------------------------- writing


def to_yaml_value(value: Any) -> Any:
    """Plain YAML data for a field value; a label or share with only a name is written as the bare name."""
    if isinstance(value, BaseModel):
        d = value.model_dump()
        extra = {k: v for k, v in d.items() if k != "name" and v != type(value).model_fields[k].default}
        return d["name"] if "name" in d and not extra and isinstance(value, LabelSpec | Share) else d
    if isinstance(value, list):
        return [to_yaml_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_yaml_value(v) for k, v in value.items()}
    return value


def _merge(model: BaseModel, doc: CommentedMap, indent: int, reasons: dict[str, str], prefix: str) -> CommentedMap:
    """Write every field of `model` into `doc`, keeping existing comments and order;
    fields the document lacked are added with their help text (and any default's reason) as a comment."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        new = name not in doc
        if isinstance(value, BaseModel) and not isinstance(value, LabelSpec | Share):
            sub = doc.get(name)
            if not isinstance(sub, CommentedMap):
                sub = CommentedMap()
            doc[name] = _merge(value, sub, indent + 2, reasons, f"{prefix}{name}.")
        else:
            plain = to_yaml_value(value)
            if new or _plain(doc.get(name)) != plain:
                doc[name] = plain
        if new:
            note = field.description or ""
            if f"{prefix}{name}" in reasons:
                note += f"\n{reasons[prefix + name]}"
            if indent == 0:
                note = f"\n{'-' * 100}\n{note}"
            doc.yaml_set_comment_before_after_key(name, before=note, indent=indent)
    return doc


def dump_config(cfg: RunConfig, doc: CommentedMap | None = None) -> str:
    """YAML text of the fully resolved config, comments of `doc` kept, defaults explained."""
    out = _merge(cfg, doc if doc is not None else CommentedMap(), 0, cfg._reasons, "")
    buf = io.StringIO()
    _yaml().dump(out, buf)
    return buf.getvalue()
