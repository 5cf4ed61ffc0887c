"""Classification's stages as their pages read them: each function runs the stage
(`classification_build`, `classification_learn`) and returns its result (`pipeline.results`) with
the sections only classification has (the estimate and preview, the critic and the coverage grid,
the label jury, contamination, the filter ablation, per-label errors). Replies and summaries write
their inputs as classification does, so their 00 and 01 are these."""

from __future__ import annotations

from IPython.display import Markdown

from workbench import data, judge, plots, prompts
from workbench import form as config_form
from workbench.flows import classification_build as build
from workbench.flows import classification_learn as learn
from workbench.flows import common
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
from workbench.tables import ablation_table, evaluation_table, safety_table

# ---------------------------------------------------------------- 00-04


def task(stage: Stage) -> TaskResult:
    cfg = stage.cfg
    labels, seeds, summary = build.task(stage)
    counts = data.label_counts(cfg)
    estimate = common.estimate_section(stage, labels, counts, seeds)
    preview = config_form.preview(cfg, seeds, labels, stage.llm(), per_label=3, train_counts=counts)
    stage.save(preview, "preview")
    sections = [
        estimate,
        Section(
            "Preview: 3 rows per label",
            "The first three rows of the generation plan for each label, generated now with the current "
            "config. They are the same requests `01_prompts` sends, so it answers them from the cache.",
            [preview],
        ),
    ]
    md = build.task_markdown(cfg, labels, seeds)
    return TaskResult(summary, md, seeds=seeds, labels=labels, sections=sections)


def prompts_stage(stage: Stage) -> PromptsResult:
    cfg = stage.cfg
    rows, summary = build.build_prompts(stage)
    short = prompts.shortfall(rows)
    cols = ["id", "label", "difficulty", "text", "reject_reason_prompts", "dup_of", "domain_score", "critique_reason"]
    cells = build.grid_columns(rows)
    rates = prompts.defect_rate(rows)
    sections = [
        Section(
            "Funnel",
            "Rows alive after each gate, in order; per label below (every attempt of every round counts).",
            [plots.funnel(rows[prompts.GATE_COLUMNS]), prompts.funnel_by_label(rows)],
        ),
        Section(
            "Critic",
            "What the critic said, next to the text it saw; a rewrite shows the new text and the second "
            "critique's verdict. Unparseable replies are kept raw.",
            list(build.critic_views(rows)) if cfg.prompts.critique else ["The critic is off (`prompts.critique`)."],
        ),
        Section(
            "Defect rate per batch",
            "Round 1 follows the plan; each later round regenerates only the cells still empty, with the "
            "previous round's most frequent defect per cell (and one rejected example) added to its instructions.",
            [
                plots.defect_rate(rates),
                rates,
                rows.loc[rows["feedback"].notna(), ["id", "feedback", "text", "reject_reason_prompts"]].head(10),
            ],
        ),
        Section(
            "Coverage: target against kept",
            "Per label × difficulty; the cells that fell short after the last round are listed under the map.",
            [
                plots.coverage_heatmap(prompts.coverage_cells(rows)),
                short if len(short) else "No cell fell short.",
                prompts.coverage(cfg, rows)
                if cells
                else "The config asks for no personas, tones, difficulty, sentiment, entities or edge cases.",
            ],
        ),
    ]
    return PromptsResult(
        summary,
        build.prompts_markdown(cfg, rows, summary),
        rows=rows,
        rejects=Rejects(rows, common.present(rows, cols), by="reject_reason_prompts"),
        sections=sections,
        kept=rows.loc[rows["keep_prompts"], ["id", "label", *cells, "text", "domain_score", "rewritten"]],
    )


def candidates(stage: Stage) -> CandidatesResult:
    rows, cands, summary = build.candidates(stage)
    model = build.model_candidates(cands)
    title = "Share of candidates naming the intended label"
    cols = ["id", "label", "prompt", "response", "response_label", "source", "seed", "completion_tokens", "latency_s"]
    sections = [
        Section(
            "Errors and unparseable answers",
            "Failed calls keep their error; answers that name no option keep their raw text (`response_label` empty).",
            [
                model[model["error"].notna() | model["response_label"].isna()][
                    ["id", "prompt", "response", "error"]
                ].head(50)
            ],
        ),
        Section(
            "Candidates",
            "How often the model's blind answer names the intended label, per prompt (0 = never, 1 = every candidate).",
            [
                plots.histogram(rows[rows["keep_prompts"]], "model_agreement", title) if summary["prompts"] else None,
                cands[cols].head(30),
            ],
        ),
    ]
    return CandidatesResult(summary, common.metrics_markdown(summary), rows=rows, candidates=model, sections=sections)


def judge_stage(stage: Stage) -> JudgeResult:
    rows, judgments, pairs, summary, agreement = build.judge_stage(stage)
    scores = (
        [plots.judge_scores(judgments), agreement["alpha"]]
        if len(judgments)
        else ["No rubric judge (`judge.rubric: []`)."]
    )
    sections = [
        Section(
            "Judge scores",
            "The distribution of each rubric dimension, and Krippendorff's alpha (interval) between the rubric "
            "jurors (needs `judge.jurors` ≥ 2).",
            scores,
        )
    ]
    if summary["jury"]:
        agree = plots.histogram(build.jury_agreement(rows), "jury", "Jury label vs intended label")
        sections.append(Section("Label jury", "", [plots.juror_agreement(judge.juror_agreement(rows)), agree]))
    unparsed = judgments[judgments["score"].isna()][["id", "dimension", "juror", "raw", "error"]].head(30)
    sections += [
        Section("Unparseable judge replies", "Kept raw in `judgments`.", [unparsed]),
        Section("Rationales", "", [build.rationales(rows)]),
    ]
    cols = ["id", "label", "text", "jury_label", "jury_votes", "judge_score"]
    return JudgeResult(
        summary,
        build.judge_markdown(summary, agreement["votes"]),
        rows=rows,
        rejects=Rejects(rows, common.present(rows, cols), by="reject_reason_judge"),
        sections=sections,
        pairs=pairs[pairs["pair"]],
        queue=agreement["queue"],
    )


def filter_stage(stage: Stage) -> FilterResult:
    rows, paths, counts, summary = build.filter_stage(stage)
    cols = ["id", "label", "text", "reject_stage", "dup_of", "pii_found", "toxic_found", "filter_domain_score"]
    kept = rows[rows["keep"]]
    return FilterResult(
        summary,
        build.filter_markdown(stage, summary, paths),
        rows=rows,
        rejects=Rejects(rows, common.present(rows, cols)),
        kept=kept[common.present(kept, ["id", "label", "text", "pii_found", "judge_score", "filter_domain_score"])],
        card=paths["card"].read_text(),
    )


# ---------------------------------------------------------------- 05-99


def train_stage(stage: Stage) -> TrainResult:
    training = learn.train_stage(stage)
    return TrainResult({"students": common.students(training)}, "", training=training)


def evaluate_stage(stage: Stage) -> EvaluateResult:
    cfg = stage.cfg
    ev = learn.evaluate_stage(stage)
    safety_rows, safety_summary = common.safety_stage(stage, ev["replies"])
    table, ablation = learn.evaluation_tables(stage, ev, safety_summary)
    contam, contam_rows = learn.contamination(stage)
    summary = {
        "table": table.to_dict("records"),
        "test_rows": len(ev["test"]),
        "table_test_rows": len(ev["shared"]),
        "ablation": ablation.to_dict("records"),
        "safety": safety_summary.to_dict("records"),
        "contamination": contam,
    }
    sections = [
        Section(
            "The before/after table",
            "",
            [plots.accuracy(table) if "accuracy" in table else None, evaluation_table(table)],
        ),
        Section(
            "Safety before/after",
            "Each causal model answers AdvBench harmful instructions as a plain chat (no task system message). A "
            "refusal is the judge's verdict (`llm`, Yes/No), with a keyword check as a second opinion; their "
            "agreement is shown. A drop in refusal rate against the untuned model is flagged **red**.",
            [
                plots.safety(safety_summary),
                safety_table(safety_summary),
                safety_rows[["model", "text", "reply", "judge_p", "keyword", "refused"]].head(20),
            ],
        )
        if len(safety_rows)
        else None,
        Section(
            "Contamination check",
            "How close the final synthetic rows come to the real test split: exact repeats, near-duplicates "
            "(character shingles, `filter.near_dup_threshold`) and each row's nearest test row by MiniLM cosine, "
            "read against the same distribution for the real seeds.",
            [
                common.metrics_markdown(contam),
                plots.contamination(contam_rows),
                contam_rows.query("source == 'synthetic'").head(10),
            ],
        ),
        Section(
            "Filter ablation and method deltas",
            "Paired differences in accuracy on the same test rows (95% paired bootstrap interval): the probe's "
            "filter ablation on every test row, the causal methods on the table's rows. An interval that "
            "contains 0 means no measurable difference. The reference is never part of these.",
            [ablation_table(ablation)],
        ),
        Section("Per label and most confused pairs", "", learn.error_analysis(cfg, ev["shared"], ev["preds"])),
    ]
    return EvaluateResult(summary, "", table=table, sections=[s for s in sections if s is not None])


def gaps_stage(stage: Stage) -> GapsResult:
    clustered, clusters, metrics, dev, vectors = learn.gaps_stage(stage)
    edits, patch = learn.config_patch(stage, clustered, clusters, dev, vectors)
    summary = metrics | {"edits": len(edits), "edits_by_kind": edits["kind"].value_counts().to_dict()}
    return GapsResult(
        summary,
        learn.gaps_markdown(metrics),
        clustered=clustered,
        clusters=clusters,
        edits=edits,
        patch=patch,
        sections=[Section("", "", [Markdown(PATCH_TEXT)])],
    )


PATCH_TEXT = (
    "Per cluster, largest first: **more_rows** for a label the student confuses, **contrast** (the confused "
    "label's seeds shown to the generator as near misses), a **definition** that names what the label is not, "
    "and **phrasing** (dev rows unlike anything generated for the label, shown to the generator as examples). "
    "Each edit carries the evidence that motivated it."
)


def report(stage: Stage) -> StageResult:
    """99's sections of classification: the before/after table with its ablation, contamination,
    safety, the judge and jury, the prompts' critique and coverage."""
    cfg = stage.cfg
    m = stage.metrics()
    e, j = m.get("06_evaluate", {}), m.get("03_judge", {})
    table = stage.load("evaluation")
    sections = [
        Section(
            "Before / after on the real test split",
            "`group`: **baseline** (no training), **synthetic** (trained on seeds and generated rows), "
            "**reference** (trained on real train rows, the curated-data ceiling; never part of the synthetic "
            "numbers). Every row is scored on the same real test rows; intervals are 95% bootstrap.",
            [
                plots.accuracy(table) if "accuracy" in table else None,
                evaluation_table(table, hide_index=True),
                learn.ablation_markdown(table, stage.load("ablation")),
            ],
        )
    ]
    c = e.get("contamination", {})
    if c:
        contam = stage.load("contamination")
        cols = ["text", "nearest_test_text", "nearest_test_cosine", "near_duplicate"]
        sections.append(
            Section(
                "Contamination check",
                "Beside the accuracy table because it qualifies it: how close the final synthetic rows come to "
                "the real test split (exact repeats, near-duplicates, and the nearest test row by MiniLM cosine, "
                "read against the same distribution for the real seeds).",
                [
                    learn.contamination_markdown(c),
                    plots.contamination(contam),
                    contam.query("source == 'synthetic'")[cols].head(5),
                ],
            )
        )
    s = stage.load("safety_summary") if e.get("safety") else None
    if s is not None and len(s):
        sections.append(
            Section(
                "Safety before/after",
                "Refusal rate of each causal model on AdvBench harmful instructions (judge verdict, keyword "
                "check as second opinion). **Red**: the tuned model refuses less often than the untuned one.",
                [plots.safety(s), safety_table(s, hide_index=True)],
            )
        )
    judgments, judged = stage.load("judgments"), stage.load("judged")
    prompt_rows = stage.load("prompts")
    sections += [
        Section(
            "Judge and jury (03)",
            "Rubric score distributions, agreement between jurors (Krippendorff's alpha for rubric scores, "
            "Fleiss' kappa for the label jury) and the disagreement queue.",
            [
                build.judge_report_markdown(j),
                plots.judge_scores(judgments) if len(judgments) else None,
                plots.juror_agreement(judge.juror_agreement(judged)) if j.get("jury") else None,
                judge.disagreements(judged, cfg.judge.max_spread).head(20),
            ],
        ),
        Section(
            "Prompts (01): critique, gates, top-up rounds",
            "Kept against the plan, the cells that fell short, contamination against the real evaluation rows, "
            "and the defect rate per generation round.",
            [
                build.prompts_report_markdown(cfg, m.get("01_prompts", {})),
                plots.defect_rate(prompts.defect_rate(prompt_rows)),
                plots.coverage_heatmap(prompts.coverage_cells(prompt_rows)),
                prompts.shortfall(prompt_rows),
            ],
        ),
    ]
    return StageResult({}, "", sections=sections)


def lineage(stage: Stage) -> list:
    return learn.lineage_views(stage)


gaps_markdown = learn.gaps_markdown  # 99's line on 07
