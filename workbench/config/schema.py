"""Typed run configuration: one pydantic model per stage section plus the run.

YAML files hold values only; names, types, defaults and help text live here, once.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from workbench.config.learn import EvaluateConfig, GapsConfig, TrainConfig  # noqa: F401
from workbench.config.models import _MODEL_NAME, JUDGE_WORDINGS, LLMConfig, RolesConfig  # noqa: F401
from workbench.config.task import METRICS, SAMPLING, DataConfig, Share, TaskConfig, _Section, _unique, task_kind

# gaps.name_max_tokens by task type: replies' and summaries' namer answers with a name, a policy and
# a persona as JSON, which 40 tokens cut short (the other types' namer writes a short name)
NAMER_TOKENS = {"reply": 96, "summarization": 96}


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


# the ISO 639-1 codes langdetect has a profile for (its zh-cn and zh-tw are not two-letter codes)
LANGUAGES = ("af ar bg bn ca cs cy da de el en es et fa fi fr gu he hi hr hu id it ja kn ko lt lv mk ml mr ne nl no "
             "pa pl pt ro ru sk sl so sq sv sw ta te th tl tr uk ur vi").split()  # fmt: skip


class QualityConfig(_Section):
    min_chars: int = Field(10, ge=0, description="Rows shorter than this are rejected as too_short.")
    max_chars: int = Field(300, ge=1, description="Rows longer than this are rejected as too_long.")
    language: str | None = Field(
        "en", pattern=r"^[a-z]{2}$", description="ISO 639-1 code rows must be written in; null = any."
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, v):
        if v is not None and v not in LANGUAGES:
            raise ValueError(
                f"{v!r} is not a language the language check (langdetect) knows, so every row would fail it; "
                f"one of {', '.join(LANGUAGES)}, or null for any"
            )
        return v

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
    multi_turn_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Replies: proportion of messages written as the last turn of a conversation of 2 to "
        "task.max_turns customer turns (01 writes the earlier turns; replies answer with the history).",
    )
    no_tool_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Tool tasks: extra inputs, as a proportion of the tool rows, that no tool serves (the answer "
        "is tool none).",
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
    # summaries (tasks/summarization.py words these for a source and its summary)
    "faithfulness": "the summary states only what its source says: no invented numbers, names or claims",
    "coverage": "the summary keeps its source's main points",
    "concision": "the summary is short and plain, with no repetition or preamble",
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
    jury: list[Literal["probe", "knn", "llm", "judges"]] = Field(
        ["probe", "knn", "llm"],
        description="Classification: jurors that re-label each input blind (probe = MiniLM + logistic regression "
        "on the seeds; knn = nearest seed; llm = stage 02's candidates; judges = each model of roles.judge names "
        "a label, one call per input and model); [] = no label jury.",
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
    pairwise: bool = Field(
        True,
        description="Replies: confirm each DPO pair by asking every judge which reply is better, in both orders; a "
        "pair whose verdict flips with the order (position bias) or prefers the rejected reply is dropped.",
    )
    calibration_rows: int = Field(
        20,
        ge=0,
        le=1000,
        description="03's calibration: this many real dev rows judged twice, as they are (known good) and paired "
        "with a wrong answer (another label; another request's answer), by every judge; the AUC says how well "
        "each separates them (0.5 = chance). 0 = off; needs data.dataset.",
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
    llm: LLMConfig = Field(
        default_factory=LLMConfig,
        description="LLM: the generator's model, and every role's unless `roles` names another.",
    )
    models: dict[str, LLMConfig] = Field(
        {},
        description="MODELS: more models by name, each with its own endpoint, key variable and limits (the fields of "
        "`llm`), e.g. a stronger judge; `roles` names them.",
    )
    roles: RolesConfig = Field(
        default_factory=RolesConfig, description="ROLES: which model (llm or a name in models) plays each part."
    )
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="STAGE 01: input generation.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="STAGE 02: responses.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="STAGE 03: LLM judge.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="STAGE 04: final filter (duplicates).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="STAGE 05: the student.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="STAGE 06: evaluation.")
    gaps: GapsConfig = Field(default_factory=GapsConfig, description="STAGE 07: failure clusters.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed for every sampled LLM call and split in the run.")

    _reasons: dict[str, str] = PrivateAttr(default_factory=dict)  # why each by-type default was chosen
    # fields left null and filled in by task type: written back as null, so a change of task.type
    # re-derives them instead of keeping values that only fit the old type
    _derived: set[str] = PrivateAttr(default_factory=set)

    def __eq__(self, other: object) -> bool:  # equal values are equal configs, however they were written
        return isinstance(other, RunConfig) and self.model_dump() == other.model_dump()

    __hash__ = None

    def _derive(self, dotted: str, value: Any, why: str) -> None:
        """Fill a field left null with its by-type default (`value`, for `why`), and again after a
        change of task.type when it was derived before; a value the config sets stays."""
        section, name = dotted.split(".")
        sec = getattr(self, section)
        if getattr(sec, name) is None or dotted in self._derived:
            sec.__dict__[name] = value  # no re-validation: the defaults are in range
            self._derived.add(dotted)
            self._reasons[dotted] = f"{value} chosen for {self.task.type}: {why}; override freely"

    @model_validator(mode="after")
    def _resolve(self):
        kind = task_kind(self.task)
        for section in ("prompts", "responses"):
            key = self.task.type + ("/tools" if self.task.type == "dialogue" and self.task.tools else "")
            t, p, why = SAMPLING.get((section, "*")) or SAMPLING[(section, key)]
            self._derive(f"{section}.temperature", t, why)
            self._derive(f"{section}.top_p", p, why)
        words = self.task.summary_max_words
        n = {"classification": 2, "reply": 160, "summarization": words * 3 // 2}.get(self.task.type, 512)
        why = {2: "an option number", 160: "a support reply of a few sentences"}.get(n, "room for a full answer")
        why = f"a summary of task.summary_max_words ({words}) words" if self.task.type == "summarization" else why
        self._derive("responses.max_tokens", n, why)
        text = self.task.type in NAMER_TOKENS
        self._derive("gaps.name_max_tokens", NAMER_TOKENS.get(self.task.type, 40),
                     "a name, a policy and a persona as JSON" if text else "a cluster's short name")  # fmt: skip
        valid = METRICS[kind]
        if self.evaluate.metrics is None or "evaluate.metrics" in self._derived:
            self.evaluate.__dict__["metrics"] = list(valid)
            self._derived.add("evaluate.metrics")
        else:
            bad = [m for m in self.evaluate.metrics if m not in valid]
            if bad:
                raise ValueError(f"evaluate.metrics {bad} do not apply to {kind}; valid: {list(valid)}")
        s = self.sampling
        if {"rows_per_label", "total_rows"} <= s.model_fields_set and s.total_rows is not None:
            raise ValueError("sampling: set rows_per_label or total_rows, not both")
        if self.diversity.edge_case_share > 0 and not self.task.edge_cases:
            raise ValueError("diversity.edge_case_share > 0 but task.edge_cases is empty: list the edge cases")
        if self.diversity.refusal_share > 0 and not self.task.must_refuse:
            raise ValueError(
                "diversity.refusal_share > 0 but task.must_refuse is empty: list what the assistant must refuse, or set "
                "the share to 0 (nothing stands in for the list)"
            )
        self._check_roles()
        names = self.task.label_names()
        if self.task.type == "tools" and self.task.tools:  # the sampling plan's "labels" are the tools
            names = [t.name for t in self.task.tools]
        if names is not None:
            check_plan(self, names)
        return self

    def _check_roles(self) -> None:
        for name, model in self.models.items():
            model._where = f"models.{name}"  # its messages name it where the config does
        for name in self.models:
            if name == "llm" or not re.fullmatch(_MODEL_NAME, name):
                raise ValueError(f"models: {name!r} cannot name a model: use letters, digits, _ and -, not 'llm'")
        known = ["llm", *self.models]
        for role in RolesConfig.model_fields:
            for name in self.roles.names(role):
                if name not in known:
                    raise ValueError(f"roles.{role} names {name!r}, which is not a model: expected one of {known}")
        unused = sorted(set(self.models) - set(self.models_in_use()))
        if unused:
            raise ValueError(f"models {unused}: no role names them (roles.<role>: <name>), so nothing would call them")
        twice = sorted({n for n in self.roles.judge if self.roles.judge.count(n) > 1})
        if twice:
            raise ValueError(
                f"roles.judge names {twice} twice: a model's jurors are judge.jurors, not repeats in roles.judge"
            )
        same: dict[tuple, list[str]] = {}
        for name in self.roles.judge:
            m = self.model_named(name)
            key = (m.provider, m.model, m.dtype if m.provider == "local" else (m.base_url or "").rstrip("/"),
                   repr(sorted(m.extra_body.items())))  # fmt: skip
            same.setdefault(key, []).append(name)
        twins = [names for names in same.values() if len(names) > 1]
        if twins:
            raise ValueError(
                f"roles.judge: {' and '.join(twins[0])} are the same model ({self.model_named(twins[0][0]).model} at the "
                "same place): their jurors would send the same requests and get the same cached answers, which "
                "inflates the agreement; name one of them, and more jurors of it with judge.jurors"
            )
        if self.judge.temperature == 0 and self.judge.jurors > JUDGE_WORDINGS:
            raise ValueError(
                f"judge.jurors={self.judge.jurors} at judge.temperature 0: a model's juror past its "
                f"{JUDGE_WORDINGS} prompt wordings repeats an earlier one word for word, which inflates the "
                f"agreement; name more models in roles.judge, or set judge.temperature above 0"
            )

    def jurors(self) -> list[tuple[str, int]]:
        """The rubric jurors, in order: (model name, k) for each model `roles.judge` names and k below
        `judge.jurors`. A model's juror k reads the judge's wording k with seed `seed + k`."""
        return [(name, k) for name in self.roles.judge for k in range(self.judge.jurors)]

    def models_in_use(self) -> dict[str, LLMConfig]:
        """The models the roles name, by name (`llm` first when a role names it)."""
        names = [n for role in RolesConfig.model_fields for n in self.roles.names(role)]
        return {n: self.model_named(n) for n in dict.fromkeys(names)}

    def models_line(self) -> str:
        """`provider / model`, or each role's model when the roles name more than one."""
        used = self.models_in_use()
        if len(used) == 1:
            m = next(iter(used.values()))
            return f"{m.provider} / {m.model}"
        out = []
        for role in RolesConfig.model_fields:
            models = ", ".join(
                f"{self.model_named(n).provider} / {self.model_named(n).model}" for n in self.roles.names(role)
            )
            out.append(f"{role.replace('_', ' ')}: {models}")
        return "; ".join(out)

    def model_named(self, name: str) -> LLMConfig:
        return self.llm if name == "llm" else self.models[name]


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
