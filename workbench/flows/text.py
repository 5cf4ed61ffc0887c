"""Replies' and summaries' stages from 02 on as their pages read them (00 and 01 are
classification's: their inputs are written the same way): each function runs the stage
(`text_build`, `text_learn`) and returns its result (`pipeline.results`) with the sections only
these types have (refusals where some inputs must be refused, the win-rate, faithfulness and
ROUGE-L where the type scores them, the replies side by side), in the type's words (`pages`)."""

from __future__ import annotations

from workbench import plots, tasks
from workbench.flows import classification, common
from workbench.flows import text_build as build
from workbench.flows import text_learn as learn
from workbench.flows.results import (
    CandidatesResult,
    EvaluateResult,
    FilterResult,
    GapsResult,
    JudgeResult,
    Rejects,
    Section,
    StageResult,
    TrainResult,
)
from workbench.stage import Stage
from workbench.tables import safety_table
from workbench.tasks import pages

task = classification.task
prompts_stage = classification.prompts_stage


def candidates(stage: Stage) -> CandidatesResult:
    cfg = stage.cfg
    cands, summary = build.candidates(stage)
    refusals = "should_refuse" if cands["should_refuse"].any() else None
    title = f"Tokens per {build.nouns(cfg)['output']}"
    cols = ["row", "candidate", "label", "should_refuse", "text", "reply", "refuses", "completion_tokens", "cached"]
    sections = [
        Section("", "", [plots.histogram(cands, "completion_tokens", title, color=refusals)]),
        Section("", pages.text(cfg, "02_responses.candidates"), [build.view(cands, cols).head(30)]),
    ]
    return CandidatesResult(
        summary, build.candidates_markdown(summary, tasks.of(cfg).REFUSALS), candidates=cands, sections=sections
    )


def judge_stage(stage: Stage) -> JudgeResult:
    cfg = stage.cfg
    judged, cands, pairs, summary = build.judge_stage(stage)
    sections = [Section("", pages.text(cfg, "03_judge.judged"), [build.judged_view(cands, cfg).head(30)])]
    if cands["should_refuse"].any():  # where some inputs must be refused
        quality = "judge_refusal_quality" in cands
        title = "Refusal quality by message kind"
        items = [plots.histogram(cands, "judge_refusal_quality", title, color="should_refuse") if quality else None]
        items.append(cands.groupby(["should_refuse", "refuses"]).size().rename("candidates").to_frame())
        sections.append(Section("", pages.text(cfg, "03_judge.refusals"), items))
    cols = ["id", "label", "should_refuse", "text", "best_reply", "best_score", "margin", "reject_reason_judge"]
    best = build.view(judged, cols)
    sections.append(Section("Best-of-N", "", [best.head(20)]))
    checked = judged[judged["reject_reason_judge"].notna()]
    return JudgeResult(
        summary,
        build.judge_markdown(summary, tasks.of(cfg).REFUSALS),
        rows=judged,
        rejects=Rejects(judged, list(build.view(checked, cols)), by="reject_reason_judge"),
        sections=sections,
        pairs=pairs,
        queue=build.disagreements(cands, cfg),
    )


def filter_stage(stage: Stage) -> FilterResult:
    cfg = stage.cfg
    rows, summary = build.filter_stage(stage)
    cols = ["id", "label", "should_refuse", "message", "text", "reject_stage"]
    kept = build.view(rows[rows["keep"]], ["id", "label", "should_refuse", "message", "text", "best_score"])
    return FilterResult(
        summary,
        build.filter_markdown(summary, tasks.of(cfg).REFUSALS),
        rows=rows,
        rejects=Rejects(rows, list(build.view(rows, cols))),
        kept=kept.head(30),
        card=(stage.artifacts / "export" / "README.md").read_text(),
        sections=[Section("", pages.text(cfg, "04_filter.training"))],
    )


def train_stage(stage: Stage) -> TrainResult:
    training = learn.train_stage(stage)
    return TrainResult({"students": common.students(training)}, learn.training_markdown(training), training=training)


def evaluate_stage(stage: Stage) -> EvaluateResult:
    cfg = stage.cfg
    table, safety, replies = learn.evaluate_stage(stage)
    sections = [Section("", "", [learn.evaluation_view(table)])]
    if len(safety):  # where the students answered harmful instructions (evaluate.safety_rows)
        sections.append(Section("", pages.text(cfg, "06_evaluate.safety"), [plots.safety(safety), safety]))
    if "faithful" in replies:  # a task's own scores (summaries: faithfulness, ROUGE-L)
        rouge = replies["rouge_l"].notna().any()
        items = [plots.histogram(replies, "rouge_l", "ROUGE-L per summary", color="model") if rouge else None]
        items.append(replies.reindex(columns=["id", "model", "faithful", "rouge_l", "unsupported"]).head(30))
        sections.append(Section("", pages.text(cfg, "06_evaluate.scores"), items))
    side = replies.pivot_table(index=["id", "text"], columns="model", values="reply", aggfunc="first").head(15)
    sections.append(Section("", pages.text(cfg, "06_evaluate.side_by_side"), [side]))
    md = learn.evaluation_markdown(table, safety, build.nouns(cfg))
    return EvaluateResult({"evaluation": table.to_dict("records")}, md, table=table, sections=sections)


def gaps_stage(stage: Stage) -> GapsResult:
    cfg = stage.cfg
    clustered, clusters, metrics = learn.gaps_stage(stage)
    edits, patch = learn.config_patch(stage, clustered, clusters)
    summary = metrics | {"edits": len(edits), "edits_by_kind": edits["kind"].value_counts().to_dict()}
    cols = ["source", "cluster", "label", "signature", "text", "reply", "base_reply"]
    failures = clustered[cols].sort_values(["cluster", "source"]).head(30)
    return GapsResult(
        summary,
        learn.gaps_markdown(metrics),
        clustered=clustered,
        clusters=clusters,
        edits=edits,
        patch=patch,
        sections=[
            Section("", pages.text(cfg, "07_gaps.failures"), [failures]),
            Section("", pages.text(cfg, "07_gaps.patch")),
        ],
    )


def report(stage: Stage) -> StageResult:
    """99's sections of replies and summaries: the win-rate table, safety, the judge."""
    cfg = stage.cfg
    table, safety = stage.load("evaluation"), stage.load("safety_summary")
    sections = [
        Section(
            "",
            pages.text(cfg, "99_report.evaluation"),
            [learn.evaluation_markdown(table, safety, build.nouns(cfg)), learn.evaluation_view(table)],
        )
    ]
    if len(safety):  # where the students answered harmful instructions (evaluate.safety_rows)
        sections.append(
            Section(
                "", pages.text(cfg, "99_report.safety"), [plots.safety(safety), safety_table(safety, hide_index=True)]
            )
        )
    table3, _, verdict = common.calibration(stage)
    sections.append(
        Section(
            "",
            pages.text(cfg, "99_report.judge"),
            [
                build.judge_markdown(stage.metrics().get("03_judge", {}), tasks.of(cfg).REFUSALS),
                verdict,
                table3,
                build.judged_view(stage.load("candidates_judged"), cfg).head(6),
                stage.load("pairs").head(6),
            ],
        )
    )
    return StageResult({}, "", sections=sections)


def lineage(stage: Stage) -> list:
    return learn.lineage_views(stage)


gaps_markdown = learn.gaps_markdown  # 99's line on 07
