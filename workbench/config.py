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

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError


class ConfigError(ValueError):
    """A config that cannot be used; the message says what, where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Section):
    name: str = Field("banking77", pattern=r"^[A-Za-z0-9_.-]+$", description="Short name; runs go to runs/<name>/.")
    type: Literal["classification"] = Field(
        "classification", description="Task type. The spine supports single-label classification."
    )
    description: str = Field(
        "Classify online-banking customer messages by intent.",
        min_length=10,
        description="One or two sentences saying what the fine-tuned model must do.",
    )
    domain: str = Field("online banking customer support", description="The domain generated text must stay in.")


class DataConfig(_Section):
    dataset: str = Field("banking77", description="Folder under data/ with train.csv and test.csv (text,category).")
    labels: list[str] | None = Field(
        None, description="Labels to use (a subset of the dataset's); null means all of them."
    )
    seeds_per_label: int = Field(3, ge=1, le=50, description="Real train rows per label shown to the generator.")
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
    max_concurrency: int = Field(16, ge=1, le=4096, description="Requests in flight at once (openai).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds (openai).")
    max_retries: int = Field(5, ge=0, le=50, description="Retries on 429/5xx/timeouts, honouring Retry-After (openai).")
    stream: bool = Field(False, description="Stream responses to measure time to first token (openai).")
    batch_size: int = Field(32, ge=1, le=1024, description="Rows per forward pass (local).")
    threads: int | None = Field(None, ge=1, description="Torch CPU threads (local); null means all cores.")
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description="Weights and activations of the local model. bfloat16 is 2x faster on CPUs with "
        "AVX512-BF16/AMX (measured: benchmarks in README); use float32 on CPUs without them.",
    )


class PromptsConfig(_Section):
    per_label: int = Field(4, ge=1, le=10000, description="Inputs to generate per label.")
    examples_per_call: int = Field(3, ge=1, le=20, description="Seed examples shown in each generation call.")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature; varied inputs need a high one.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(48, ge=1, le=4096, description="Cap on tokens per generated input.")


class ResponsesConfig(_Section):
    candidates: int = Field(1, ge=1, le=16, description="Candidate responses per prompt (generative tasks).")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature for responses.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass for responses.")
    max_tokens: int = Field(128, ge=1, le=8192, description="Cap on tokens per response.")


class JudgeConfig(_Section):
    min_score: float = Field(
        0.0, ge=0, le=1, description="Rows whose judge score (0-1) is below this are rejected as low_score."
    )
    max_tokens: int = Field(16, ge=1, le=1024, description="Cap on tokens of the judge's answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="Judge sampling temperature (0 = greedy).")


class FilterConfig(_Section):
    min_chars: int = Field(10, ge=0, description="Rows shorter than this are rejected as too_short.")
    max_chars: int = Field(300, ge=1, description="Rows longer than this are rejected as too_long.")
    near_dup_threshold: float = Field(
        0.7, gt=0, le=1, description="Jaccard similarity of character shingles above which rows are near-duplicates."
    )
    shingle_size: int = Field(5, ge=2, le=20, description="Characters per shingle for near-duplicate detection.")


class TrainConfig(_Section):
    student: Literal["probe"] = Field(
        "probe", description="probe: frozen all-MiniLM-L6-v2 encoder + logistic-regression head."
    )
    C: float = Field(10.0, gt=0, description="Inverse regularisation strength of the logistic-regression head.")
    max_iter: int = Field(2000, ge=10, description="Iterations for the logistic-regression solver.")


class EvaluateConfig(_Section):
    bootstrap: int = Field(1000, ge=0, le=100000, description="Bootstrap resamples for 95% confidence intervals.")


class GapsConfig(_Section):
    umap_neighbors: int = Field(10, ge=2, description="UMAP n_neighbors.")
    min_cluster_size: int = Field(4, ge=2, description="HDBSCAN min_cluster_size.")
    random_state: int = Field(0, description="UMAP random_state, fixed so maps are reproducible.")


class RunConfig(_Section):
    task: TaskConfig = Field(default_factory=TaskConfig, description="What the model must do.")
    data: DataConfig = Field(default_factory=DataConfig, description="Real data: seeds, dev and test samples.")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="The model behind every LLM call.")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="Stage 01: input generation.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="Stage 02: responses.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Stage 03: LLM judge.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Stage 04: final filter.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Stage 05: the student.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Stage 06: evaluation.")
    gaps: GapsConfig = Field(default_factory=GapsConfig, description="Stage 07: failure clusters.")
    seed: int = Field(0, description="Seed for every sampled LLM call and split in the run.")


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
    return cfg, doc


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


# ---------------------------------------------------------------- writing


def _merge(model: BaseModel, doc: CommentedMap, indent: int) -> CommentedMap:
    """Write every field of `model` into `doc`, keeping existing comments and order;
    fields the document lacked are added with their help text as a comment."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = doc.get(name)
            if not isinstance(sub, CommentedMap):
                sub = CommentedMap()
            new = name not in doc
            doc[name] = _merge(value, sub, indent + 2)
        else:
            new = name not in doc
            plain = value
            if _plain(doc.get(name)) != plain:
                doc[name] = plain
        if new:
            doc.yaml_set_comment_before_after_key(name, before=field.description or "", indent=indent)
    return doc


def dump_config(cfg: RunConfig, doc: CommentedMap | None = None) -> str:
    """YAML text of the fully resolved config, comments of `doc` kept, defaults explained."""
    out = _merge(cfg, doc if doc is not None else CommentedMap(), 0)
    buf = io.StringIO()
    _yaml().dump(out, buf)
    return buf.getvalue()
