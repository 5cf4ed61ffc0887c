"""The config's sections of the stages that learn from the data: `train` (05: the students,
trl's methods and their arguments), `evaluate` (06) and `gaps` (07)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from workbench.config.task import _Section


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
    grpo_reward: list[Literal["verifiable", "judge"]] = Field(
        ["verifiable"],
        min_length=1,
        description="causal: GRPO's reward terms. verifiable: the task's checks (the label is the intended one, "
        "with a small format term; slot F1 and schema validity for structured tasks); judge: the score (1-5 as "
        "0-1) the models of roles.judge give each reply, shown the request, on judge.rubric's dimensions "
        "(correctness when null), in one cached batch per step. Weights: train.grpo.reward_weights, else 1 per "
        "term and 0.2 for a format term.",
    )
    start_from: Literal["base", "parent"] = Field(
        "base",
        description="causal: base = each iteration trains train.model afresh; parent = from the parent run's last "
        "causal student (grpo, else dpo, else sft), so SFT and RFT rounds continue across iterations (the first "
        "iteration, and a parent with no student, start from train.model: 05 says which).",
    )
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
        None, description="Metrics 06_evaluate reports; null = the task type's (METRICS in workbench/config/task.py)."
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
    dtype: Literal["auto", "int8", "bfloat16", "float32"] = Field(
        "auto",
        description="Weights of each causal model while it is scored and answers the safety set (llm.dtype's "
        "choices). Every model of the table is scored in the same one.",
    )


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
    name_max_tokens: int | None = Field(
        None,
        ge=8,
        le=512,
        description="Cap on tokens of the LLM's answer naming a cluster; null = by task type (40 for a name; 96 "
        "for replies' and summaries', whose namer writes a name, a policy and a persona as JSON).",
    )
