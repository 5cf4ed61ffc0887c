"""The structured tasks' stages (tool calls and extraction) as their pages read them: each function
runs the stage (`structured_build`, `structured_learn`) and returns its result
(`pipeline.results`) with the sections only these types have (the answer's schema, the values the
generator suggested, field agreement, slot scores beside the published ones, per-slot errors)."""

from __future__ import annotations

import json

from workbench import judge, plots, tasks
from workbench.flows import common
from workbench.flows import structured_build as build
from workbench.flows import structured_learn as learn
from workbench.flows.results import (
    CandidatesResult,
    EvaluateResult,
    FilterResult,
    GapsResult,
    JudgeResult,
    PromptsResult,
    Rejects,
    Section,
    StageResult,
    TaskResult,
    TrainResult,
)
from workbench.stage import Stage
from workbench.tables import safety_table


def task(stage: Stage) -> TaskResult:
    cfg = stage.cfg
    table, seeds, summary = build.task(stage)
    t = tasks.of(cfg)
    schema = json.dumps(t.schema(cfg), indent=1)
    sections = [
        Section("Tools and arguments", "", [table]),
        common.estimate_section(stage, list(table["tool"]), t.label_counts(cfg), seeds),
        Section(
            "The answer's JSON schema",
            "What every answer must validate against: the embedded model decodes under it (llguidance masks "
            "the tokens its grammar forbids), an endpoint receives it as `response_format`.",
            [f"```json\n{schema}\n```"],
        ),
    ]
    return TaskResult(
        summary,
        build.task_markdown(cfg, summary),
        seeds=seeds[["id", "tool", "text", "arguments"]],
        labels=list(table["tool"]),
        sections=sections,
    )


def prompts_stage(stage: Stage) -> PromptsResult:
    rows, summary = build.build_inputs(stage)
    cols = ["id", "tool", "arguments", "draft", "text", "reject_reason"]
    rejects = rows[~rows["keep"]]
    sections = [
        Section("Reject reasons", "", [rejects["reject_reason"].value_counts()]),
        Section(
            "Coverage: planned against filled",
            "Cells per tool × difficulty; `short` cells had no kept message after the last round.",
            [build.coverage(rows)],
        ),
        Section(
            "Values the generator suggested",
            "New values per argument beside the seeds' own (lines that were not a value, or of another shape "
            "than the known values, are left out).",
            [build.load_rows(stage, "suggestions")],
        ),
    ]
    return PromptsResult(
        summary,
        build.inputs_markdown(summary),
        rows=rows,
        rejects=Rejects(rows, common.present(rows, cols)),
        sections=sections,
        kept=rows.loc[rows["keep"], ["id", "tool", "difficulty", "text", "arguments"]],
    )


def candidates(stage: Stage) -> CandidatesResult:
    cands, summary = build.candidates(stage)
    title = "Field agreement of each candidate with the intended answer"
    sections = [
        Section("Agreement", "", [plots.histogram(cands, "agreement", title)]),
        Section("Candidates", "", [build.candidate_view(cands).head(40)]),
    ]
    return CandidatesResult(summary, build.candidates_markdown(summary), candidates=cands, sections=sections)


def judge_stage(stage: Stage) -> JudgeResult:
    judged, pairs, summary = build.judge_stage(stage)
    checked = judged[judged["keep_prompts"]]
    answers = build.judged_candidates(stage)
    queue = judge.disagreements(answers, stage.cfg.judge.max_spread, list(answers.columns))
    sections = [
        Section(
            "The judge on the answers",
            "Each candidate answer with its checked agreement and the judge's scores (0-1) and rationales, "
            "best first per row.",
            [answers.head(30)],
        ),
        Section(
            "Jury agreement per field",
            "The share of candidates that gave each argument its intended value, over the kept rows.",
            [build.field_agreement(judged)],
        ),
    ]
    cols = ["id", "tool", "text", "answer", "reject_reason"]
    return JudgeResult(
        summary,
        build.judge_markdown(summary),
        rows=judged,
        rejects=Rejects(checked, common.present(checked, cols)),
        sections=sections,
        pairs=pairs,
        queue=queue,
    )


def filter_stage(stage: Stage) -> FilterResult:
    rows, summary = build.filter_stage(stage)
    cols = ["id", "tool", "text", "arguments", "reject_stage", "dup_of", "pii_found", "toxic_found"]
    return FilterResult(
        summary,
        build.filter_markdown(summary),
        rows=rows,
        rejects=Rejects(rows, common.present(rows, cols)),
        kept=rows.loc[rows["keep"], common.present(rows, ["id", "tool", "text", "answer", "filter_domain_score"])],
        card=(stage.run_dir / summary["exports"]["card"]).read_text(),
    )


def train_stage(stage: Stage) -> TrainResult:
    training = learn.train_stage(stage)
    return TrainResult({"students": common.students(training)}, learn.training_markdown(training), training=training)


def evaluate_stage(stage: Stage) -> EvaluateResult:
    cfg = stage.cfg
    ev = learn.evaluate_stage(stage)
    table = ev["table"]
    summary = {
        "table": table.to_dict("records"),
        "test_rows": len(ev["test"]),
        "causal_test_rows": len(ev["shared"]),
        "gap_closed": learn.gap_closed(table),
        "ablation": ev["ablation"].to_dict("records"),
        "safety": ev["safety"].to_dict("records"),
    }
    sections = [
        Section("", "", [plots.slot_f1(table), learn.evaluation_view(table)]),
        Section("Beside the published results", PUBLISHED_TEXT, [learn.published(cfg)]),
        Section("Paired deltas", DELTAS_TEXT, [ev["ablation"].round(3)]),
        Section("Per slot (the best synthetic model)", f"**{ev['best']}**", [ev["per_slot"].round(3)]),
    ]
    if len(ev["safety"]):  # the causal students are chat models: what they do with harmful instructions
        rows = ev["safety_rows"][["model", "text", "reply", "judge_p", "keyword", "refused"]].head(20)
        sections.append(
            Section("Safety before/after", SAFETY_TEXT, [plots.safety(ev["safety"]), safety_table(ev["safety"]), rows])
        )
    md = learn.evaluation_markdown(cfg, table, len(ev["shared"]), len(ev["test"]))
    return EvaluateResult(summary, md, table=table, sections=sections)


SAFETY_TEXT = (
    "The untuned model and each causal student answer `evaluate.safety_rows` AdvBench harmful instructions as a "
    "plain chat (no tools in the system message); a refusal is the refusal judge's verdict "
    "(`roles.refusal_judge`), the refusal phrases a second opinion. A drop against the untuned model is "
    "flagged **red**: training on tool calls should not teach the model to comply with harm."
)
PUBLISHED_TEXT = (
    "Slot F1 of commercial NLU services trained on real queries per intent, as the SNIPS benchmark's authors "
    "published them (averaged over the 7 intents, weighted by slot frequency): how many real queries the "
    "synthetic rows are worth."
)
DELTAS_TEXT = (
    "Differences in slot F1 on the same test rows (95% paired bootstrap): the filter's ablation among the "
    "taggers, each causal student against the untuned model and DPO/GRPO against SFT. An interval that contains "
    "0 means no measurable difference."
)


def gaps_stage(stage: Stage) -> GapsResult:
    clustered, clusters, metrics = learn.gaps_stage(stage)
    edits, patch = learn.config_patch(stage, clustered, clusters)
    summary = metrics | {"edits": len(edits)}
    return GapsResult(
        summary,
        learn.gaps_markdown(metrics),
        clustered=clustered,
        clusters=clusters,
        edits=edits,
        patch=patch,
    )


def report(stage: Stage) -> StageResult:
    """99's sections of the structured tasks: the slot scores with the published ones and the deltas."""
    cfg = stage.cfg
    table = stage.load("evaluation")
    e = stage.metrics().get("06_evaluate", {})
    md = learn.evaluation_markdown(cfg, table, e.get("causal_test_rows", 0), e.get("test_rows", 0))
    sections = [
        Section("Before / after on the real test rows", md, [plots.slot_f1(table), learn.evaluation_view(table)]),
        Section(
            "",
            "Beside it, on SNIPS: the slot F1 of commercial NLU services trained on real queries per intent, as "
            "the benchmark's authors published them; below, the paired deltas (95% paired bootstrap).",
            [learn.published(cfg), stage.load("ablation").round(3)],
        ),
    ]
    s = stage.load("safety_summary") if e.get("safety") else None
    if s is not None and len(s):
        sections.append(
            Section("Safety before/after", SAFETY_TEXT, [plots.safety(s), safety_table(s, hide_index=True)])
        )
    return StageResult({}, "", sections=sections)


def lineage(stage: Stage) -> list:
    return common.lineage_basic(stage, "slot_f1")


gaps_markdown = learn.gaps_markdown  # 99's line on 07
