"""The field → gate table: which stage and gate enforce each config field, for which task kinds.

A set field that nothing enforces for the task type is a load error (files.unenforced), and the
report's field → gate table and the reject piles' `set_by` are built from this table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from workbench.config.schema import RunConfig
from workbench.config.task import ROW_SCHEMA, ConfigError, task_kind

ALL = None
# fields the structured tasks' stages do not read (dialogue is refused by `run` until its stages exist, so its
# fields are not silently ignored either)
CLS = ("classification", "classification/multi_label", "reply", "summarization", "dialogue")
# fields only the label-answer stages read (reply's and summarization's 02 and 03 write and judge texts instead)
LABELS = ("classification", "classification/multi_label", "dialogue")
# the task types whose 02-07 are replies' (flows/text.py): a text answer judged on a rubric
TEXT = ("reply", "summarization")
ENFORCED_BY: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...] | None]] = {
    "task.name": ("runs", "run folder runs/<name>/", (), ALL),
    "task.type": ("runs", "ROW_SCHEMA; stages refuse kinds they do not implement", (), ALL),
    "task.multi_label": ("runs", "ROW_SCHEMA", (), ("classification", "classification/multi_label")),
    "task.description": ("00_task", "shown in every report; drafts the config", (), ALL),
    "task.domain": ("01_prompts, 03_judge", "generator and judge system prompts", (), ALL),
    "task.style": ("01_prompts", "generator system prompt", (), ALL),
    "task.definitions": ("01_prompts", "generator system prompt", (), CLS),
    "task.labels": (
        "00_task, 01_prompts, 03_judge",
        "labels checked against the data; definitions and examples in generator and judge prompts (reply: the "
        "topics messages are written about; summarization: the kinds of source)",
        (),
        ("classification", "classification/multi_label", *TEXT),
    ),
    "task.policies": (
        "02_responses, 03_judge",
        "the reply writer's (summarizer's) system prompt; the judge's criteria",
        (),
        TEXT,
    ),
    "task.must_refuse": (
        "01_prompts, 03_judge",
        "refusal cells ask for these (should_refuse); the judge's refusal quality",
        (),
        ("reply",),
    ),
    "task.fields": (
        "00_task, 01_prompts",
        "the answer's schema; the dataset's arguments checked against it; `values` drawn from by 01",
        (),
        ("extraction",),
    ),
    "task.summary_max_words": (
        "02_responses, 03_judge, 04_filter, 05_train",
        "the summarizer's instructions; the judge's concision; longer summaries rejected; GRPO's length term",
        ("over_word_limit",),
        ("summarization",),
    ),
    "task.tools": (
        "00_task",
        "the tools checked against the dataset's (their rows, their arguments)",
        (),
        ("tools", "dialogue"),
    ),
    "task.max_turns": (
        "01_prompts",
        "reply: the most customer turns of the conversations diversity.multi_turn_share asks for (dialogue: "
        "refused by `workbench run` until its stages exist)",
        (),
        ("reply", "dialogue"),
    ),
    "task.edge_cases": ("01_prompts", "generation grid: edge-case cells", (), CLS),
    "data.dataset": ("00_task, 06_evaluate, 07_gaps", "real seeds, dev and test rows", (), ALL),
    "data.seeds_file": ("00_task", "seed examples, labels checked", (), CLS),
    "data.label_column": ("00_task, 06_evaluate, 07_gaps", "the label column of dataset and seeds file", (), CLS),
    "data.subset": ("00_task", "rows of one tool of a structured dataset", (), ("extraction", "tools")),
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
    "diversity.sentiment": ("01_prompts", "generation grid: sentiment", (), CLS),
    "diversity.entities": (
        "01_prompts, 04_filter",
        "generation grid: entity; constraints: entity",
        ("entity_missing",),
        CLS,
    ),
    "diversity.edge_case_share": ("01_prompts", "generation grid: edge-case cells", (), CLS),
    "diversity.refusal_share": (
        "01_prompts",
        "generation grid: refusal-worthy cells",
        (),
        ("classification", "classification/multi_label", "reply", "dialogue"),
    ),
    "diversity.multi_turn_share": (
        "01_prompts",
        "earlier turns written before a share of the messages (02's candidates and 05's students answer with them)",
        (),
        ("reply",),
    ),
    "diversity.no_tool_share": ("01_prompts", "generation grid: no-tool cells (tasks/tools.py)", (), ("tools",)),
    "llm": ("every LLM call", "provider, sampling transport, cache key", (), ALL),
    "models": ("every LLM call", "the models roles name: each its own provider, limits and cache key", (), ALL),
    "roles.generator": ("01_prompts, 02_responses", "the model that writes inputs, candidates and rewrites", (), ALL),
    "roles.critic": ("01_prompts", "critique", (), ALL),
    "roles.judge": (
        "03_judge, 05_train",
        "rubric judge: a juror per model (Krippendorff's alpha); GRPO's judge reward",
        (),
        ALL,
    ),
    "roles.refusal_judge": ("06_evaluate", "refusal rate before/after", (), ALL),
    "roles.namer": ("07_gaps", "cluster names by the LLM", (), ALL),
    "prompts.examples_per_call": ("01_prompts", "seed examples per call", (), ALL),
    "prompts.temperature": ("01_prompts", "sampling", (), ALL),
    "prompts.top_p": ("01_prompts", "sampling", (), ALL),
    "prompts.max_tokens": ("01_prompts", "sampling", (), ALL),
    "prompts.rounds": ("01_prompts", "top-up rounds; shortfall named", (), ALL),
    "prompts.topup_factor": ("01_prompts", "top-up attempts", (), CLS),
    "prompts.critique": ("01_prompts", "critique", ("vague", "redundant", "mis-scoped", "unrealistic"), ALL),
    "prompts.critic_max_tokens": ("01_prompts", "critique", (), ALL),
    "prompts.min_domain_score": ("01_prompts", "domain", ("off_domain",), ALL),
    "prompts.balance_tolerance": ("01_prompts", "balance", ("over_represented",), CLS),
    "responses": ("02_responses", "candidates and sampling", (), ALL),
    "responses.choices": ("02_responses", "labels shown per question", (), LABELS),
    "judge.rubric": (
        "03_judge, 05_train",
        "rubric judge (extraction, tools: on each candidate answer); GRPO's judge reward",
        ("unparseable", "llm_error"),
        ALL,
    ),
    "judge.jurors": ("03_judge", "rubric jury; Krippendorff's alpha", (), ALL),
    "judge.anchor": (
        "03_judge",
        "judge prompt: a real seed of the row's label (extraction, tools: a real request and its answer; "
        "summarization: a real source and its reference summary); a reply has no real reply to show",
        (),
        ("classification", "classification/multi_label", "dialogue", "extraction", "tools", "summarization"),
    ),
    "judge.min_score": ("03_judge", "judge score", ("low_score",), CLS),
    "judge.max_tokens": ("03_judge", "sampling", (), ALL),
    "judge.temperature": ("03_judge", "sampling", (), ALL),
    "judge.jury": ("03_judge", "label jury", ("label_mismatch", "uncertain"), ("classification",)),
    "judge.aggregate": ("03_judge", "label jury", ("label_mismatch", "uncertain"), ("classification",)),
    # structured tasks: the candidates' field agreement with the checked answer sets the margin
    "judge.pair_margin": ("03_judge", "DPO pairs", (), ALL),
    "judge.pairwise": ("03_judge", "DPO pairs confirmed in both orders", (), TEXT),
    "judge.calibration_rows": ("03_judge", "the judge's calibration: AUC on known-good and known-bad rows", (), ALL),
    "judge.max_spread": ("03_judge", "disagreement queue", (), ALL),
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
    "train": ("05_train", "student", (), ALL),
    "train.grpo_reward": ("05_train", "GRPO's reward terms", (), ALL),
    "train.start_from": ("05_train", "the causal student's starting model", (), ALL),
    "train.C": ("05_train", "probe: logistic-regression head", (), LABELS),
    "train.max_iter": ("05_train", "probe: logistic-regression head", (), LABELS),
    "evaluate.bootstrap": ("06_evaluate", "confidence intervals", (), ALL),
    "evaluate.metrics": ("06_evaluate", "metrics reported", (), LABELS),
    "evaluate.causal_test_per_label": ("06_evaluate", "test rows of the before/after table", (), ALL),
    "evaluate.safety_rows": ("06_evaluate", "refusal rate before/after", (), ALL),
    "evaluate.safety_max_tokens": ("06_evaluate", "refusal rate before/after", (), ALL),
    "evaluate.batch_size": ("06_evaluate", "scoring causal models", (), ALL),
    "evaluate.dtype": ("06_evaluate", "scoring causal models", (), ALL),
    "gaps": ("07_gaps", "failure clusters", (), ALL),
    "gaps.sources": ("07_gaps", "failures: dev, low-judge and jury rows", (), CLS),
    "gaps.low_score": ("07_gaps", "failures: low-judge rows", (), CLS),
    "gaps.name_max_tokens": ("07_gaps", "cluster names by the LLM", (), ALL),
    "seed": ("every stage", "sampling seeds", (), ALL),
}

# Reasons no single threshold sets: the gate's own rule, named here so the report can say so.
_RULE_REASONS = {
    "empty": "(generator returned no text)",
    "format": "(rule: meta-talk about the task, or [placeholders])",
    "toxicity": "filter.toxicity",
    "contamination": "filter.near_dup_threshold",
    # structured tasks (tasks/tools.py): checks of the values against the message, no threshold
    "value_missing": "(rule: every intended value is in the message)",
    "value_unintended": "(rule: no value of the example it saw that was not drawn)",
    "echoes_instructions": "(rule: the generator repeated its instructions)",
    "answer_invalid": "(rule: the answer validates under the tools' schema)",
    # replies (tasks/reply.py): the best reply must do what the message needs
    "not_refused": "task.must_refuse (rule: a message that must be refused gets a refusal)",
    "over_refused": "(rule: a legitimate message is answered, not refused)",
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
RUNNABLE = ("classification", "extraction", "tools", "reply", "summarization")
# kinds whose later stages are not built yet: `run` takes them only up to the last stage named here
RUNNABLE_UNTIL: dict[str, str] = {}
STAGE_ORDER = ("00_task", "01_prompts", "02_responses", "03_judge", "04_filter", "05_train", "06_evaluate", "07_gaps",
               "99_report")  # fmt: skip


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
    last = RUNNABLE_UNTIL.get(kind)
    if last is not None:
        built = STAGE_ORDER[: STAGE_ORDER.index(last) + 1]
        beyond = [s for s in (stages or STAGE_ORDER) if s not in built]
        if beyond:
            raise ConfigError(
                f"task.type {kind!r}: stages {', '.join(built)} are built, {', '.join(beyond)} not yet; "
                f"run with --stages {','.join(built)}"
            )
    needs_data = {"05_train", "06_evaluate", "07_gaps", "99_report"}
    if cfg.data.dataset is None and (stages is None or needs_data & set(stages)):
        raise ConfigError(
            "data.dataset is null: 05_train, 06_evaluate and 07_gaps need real labelled rows; set data.dataset "
            "or run only --stages 00_task,01_prompts,02_responses,03_judge,04_filter"
        )


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
