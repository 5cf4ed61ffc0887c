"""What each stage notebook runs: one function per notebook, which does the stage's job through its
module, keeps the throughput bookkeeping, saves the stage's artifacts and returns its rows with the
summary the notebook records; and the Markdown line each notebook shows. The notebooks only call
these and draw.
"""

from __future__ import annotations

import time
from functools import partial

import ipywidgets as widgets
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from workbench import (
    causal,
    clusters,
    data,
    embed,
    evaluate,
    export,
    filters,
    gaps,
    gates,
    judge,
    lineage,
    plan,
    prompts,
    responses,
    train,
)
from workbench.config import ROW_SCHEMA, RunConfig, task_kind
from workbench.files import cache_dir, write_atomic
from workbench.live import LiveView
from workbench.llm import LLM, local_model_dir
from workbench.stage import Stage
from workbench.tables import funnel_table, reject_counts

# ---------------------------------------------------------------- 00_task


def task(stage: Stage) -> tuple[pd.DataFrame, dict]:
    """00: the labels, the real seed examples (saved as `seeds`: id, text, label) and their counts."""
    cfg = stage.cfg
    labels, seeds = data.labels(cfg), data.seeds(cfg)
    stage.save(seeds, "seeds")
    summary = {"labels": len(labels), "seeds": len(seeds), "seeds_per_label": cfg.data.seeds_per_label}
    return seeds, summary


def task_markdown(cfg: RunConfig, labels: list[str], seeds: pd.DataFrame) -> str:
    kind = task_kind(cfg.task)
    source = cfg.data.seeds_file or f"the {cfg.data.dataset} train split"
    return (
        f"**Task:** {cfg.task.description}  \n**Type:** {kind} · **Domain:** {cfg.task.domain} · "
        f"**LLM:** {cfg.llm.provider} / {cfg.llm.model}  \n**A row:** {ROW_SCHEMA[kind]['row']}  \n"
        f"**Evaluated by:** {ROW_SCHEMA[kind]['evaluated']} ({', '.join(cfg.evaluate.metrics)})  \n"
        f"{len(labels)} labels, {len(seeds)} seed examples from {source}."
    )


# ---------------------------------------------------------------- 01_prompts


def build_prompts(stage: Stage, llm: LLM) -> tuple[pd.DataFrame, dict]:
    """01: prompts generated over the grid, critiqued and gated (`prompts.build_prompts`; its rows,
    rejects marked), saved as `prompts`; the summary counts kept, short cells, critiques, throughput."""
    cfg = stage.cfg
    t0 = time.perf_counter()
    rows = prompts.build_prompts(
        cfg,
        stage.load("seeds"),
        llm,
        partial(embed.embed, cache_dir=cache_dir()),
        labels=data.labels(cfg),
        train_counts=data.label_counts(cfg),
        eval_index=gates.eval_index(cfg) if cfg.data.dataset else None,
        earlier=stage.earlier_prompts(),
    )
    wall = time.perf_counter() - t0
    stage.save(rows, "prompts")
    plan.record_throughput(cfg, cache_dir(), "01_prompts", rows, rows.attrs["seconds"]["generate"])
    if cfg.prompts.critique:
        crit = rows[rows["critique_raw"].notna()]
        crit = crit.assign(cached=crit["critique_cached"], completion_tokens=crit["critique_tokens"])
        plan.record_throughput(cfg, cache_dir(), "01_critic", crit, rows.attrs["seconds"]["critique"])
    fresh = rows[~rows["cached"]]
    short = prompts.shortfall(rows)
    contaminated = rows["contaminated_split"].value_counts().to_dict() if "contaminated_split" in rows else {}
    raw = "critique_raw" in rows
    summary = {
        "target": rows["slot"].nunique(),
        "generated": len(rows),
        "kept": int(rows["keep_prompts"].sum()),
        "rounds": int(rows["round"].max()) + 1,
        "short_cells": len(short),
        "missing": int(short["missing"].sum()),
        "critiques_parsed": int(rows["critique_parsed"].sum()) if "critique_parsed" in rows else None,
        "critiques_unparseable": int((rows["critique_raw"].notna() & ~rows["critique_parsed"].astype(bool)).sum())
        if raw
        else None,
        "contamination_dev": int(contaminated.get("dev", 0)),
        "reasons": rows["reject_reason_prompts"].value_counts().to_dict(),
        "seconds": round(wall, 1),
        "completion_tokens": int(rows["completion_tokens"].fillna(0).sum()),
        "tokens_per_s": round(float(fresh["completion_tokens"].sum()) / wall, 1) if len(fresh) else None,
        "llm_calls": llm.stats["calls"],
        "llm_cached": llm.stats["cached"],
        "llm_errors": llm.stats["errors"],
    }
    return rows, summary


def prompts_markdown(cfg: RunConfig, rows: pd.DataFrame, m: dict) -> str:
    fresh = int((~rows["cached"]).sum())
    short = (
        f"**{m['short_cells']} cells fell short by {m['missing']} prompts** (table below). "
        if m["short_cells"]
        else "Every cell is full. "
    )
    critic = (
        f"Critic: {m['critiques_parsed']} critiques parsed, {m['critiques_unparseable']} unparseable "
        "(kept raw; those prompts go on to the gates)."
        if cfg.prompts.critique
        else "Critic: off (prompts.critique: false)."
    )
    return (
        f"**{m['kept']} of {m['target']} prompts kept** ({len(rows)} generated over {m['rounds']} round(s) in "
        f"{m['seconds']:.0f} s, {len(rows) - fresh} from cache). {short}"
        f"Contamination: {m['contamination_dev']} near-copies of a real dev row. {critic}"
    )


def prompts_report_markdown(cfg: RunConfig, p: dict) -> str:
    """99's line on 01, from its recorded metrics."""
    critic = (
        f"{p.get('critiques_parsed')} critiques parsed, {p.get('critiques_unparseable')} unparseable."
        if cfg.prompts.critique
        else "off."
    )
    return (
        f"**{p.get('kept')} of {p.get('target')} prompts kept** after {p.get('rounds')} round(s) "
        f"({p.get('generated')} generated); {p.get('short_cells')} cells short by {p.get('missing')} prompts; "
        f"contamination rejected: {p.get('contamination_dev')} near-copies of real dev rows; critic: {critic}"
    )


def present(rows: pd.DataFrame, columns: list[str]) -> list[str]:
    """The names of `columns` that `rows` has, in order (a page shows what a config produced)."""
    return [c for c in columns if c in rows]


def critic_views(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """01's critic: actions taken, parsed critiques beside the text they saw, unparseable replies."""
    crit = rows[rows["critique_raw"].notna()]
    actions = crit["critique_action"].fillna("unparseable").value_counts().rename("prompts").to_frame()
    cols = [
        "id",
        "original_text",
        "critique_defects",
        "critique_reason",
        "critique_action",
        "text",
        "recritique_action",
    ]
    parsed = crit[crit["critique_parsed"]][cols].head(30)
    return actions, parsed, crit[~crit["critique_parsed"]][["id", "original_text", "critique_raw"]].head(10)


def grid_columns(rows: pd.DataFrame) -> list[str]:
    """The generation-grid columns (persona, tone, …) the config actually used."""
    return [c for c in prompts.GRID if rows[c].notna().any()]


# ---------------------------------------------------------------- 02_responses


def candidates(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """02: N blind candidates per kept prompt with their metadata, streamed to `candidates.jsonl` and
    shown live; saves `candidates` (one row per candidate) and `responses` (the prompts with
    `model_agreement` and the candidates' labels)."""
    cfg = stage.cfg
    prompt_rows = stage.load("prompts")
    labels = sorted(prompt_rows["label"].unique())
    shortlists = responses.label_shortlists(cfg, labels, cfg.responses.choices, cache_dir())
    llm = stage.llm()
    n_prompts = int(prompt_rows["keep_prompts"].sum())
    view = LiveView(n_prompts * (cfg.responses.candidates + 1), llm.stats, stage.artifacts / "candidates.jsonl")
    t0 = time.perf_counter()
    cands = responses.generate_candidates(cfg, prompt_rows, llm, shortlists, on_row=view)
    view.close()
    seconds = time.perf_counter() - t0
    rows = responses.attach_responses(prompt_rows, cands)
    stage.save(cands, "candidates")
    stage.save(rows, "responses")
    plan.record_throughput(cfg, cache_dir(), "02_responses", responses.per_request(cands), seconds)
    figures = responses.throughput(cands)
    summary = {
        "prompts": n_prompts,
        "candidates_per_prompt": cfg.responses.candidates,
        "choices": cfg.responses.choices,
        "seconds": round(seconds, 1),
        "retries": llm.stats["retries"],
        "mean_model_agreement": float(rows["model_agreement"].mean()) if n_prompts else None,
        **figures,
    }
    return rows, cands, summary


def model_candidates(cands: pd.DataFrame) -> pd.DataFrame:
    return cands[cands["source"] == "model"]


def metrics_markdown(metrics: dict) -> str:
    """A stage's recorded metrics as one line of `**name** value` pairs."""
    return ", ".join(f"**{k}** {v:.3f}" if isinstance(v, float) else f"**{k}** {v}" for k, v in metrics.items())


# ---------------------------------------------------------------- 03_judge


def judge_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """03: rubric judge and label jury over 02's rows (`judge.judge_rows`), best-of-N scores and DPO
    pairs; saves `judged`, `judgments`, `scored_candidates` and `pairs`. Returns the judged rows,
    the judgments, the pairs and the summary."""
    cfg = stage.cfg
    t0 = time.perf_counter()
    rows, judgments = judge.judge_rows(
        cfg, stage.load("responses"), stage.load("candidates"), stage.load("seeds"), stage.llm(), cache_dir()
    )
    seconds = time.perf_counter() - t0
    cands = judge.score_candidates(stage.load("candidates"), rows)
    pairs = judge.preference_pairs(cands[cands["row_kept"]], cfg.judge.pair_margin)
    for df, name in ((rows, "judged"), (judgments, "judgments"), (cands, "scored_candidates"), (pairs, "pairs")):
        stage.save(df, name)
    plan.record_throughput(cfg, cache_dir(), "03_judge", judgments, seconds)
    votes = judge.vote_table(rows)
    judged = rows[rows["keep_prompts"]]
    summary = {
        "judged": len(judged),
        "kept": int(judged["keep_judge"].sum()),
        "rubric": judge.rubric(cfg),
        "jurors": cfg.judge.jurors,
        "mean_score": float(judged["judge_score"].mean()) if judged["judge_score"].notna().any() else None,
        "reasons": judged["reject_reason_judge"].value_counts().to_dict(),
        "jury": list(votes.columns),
        "fleiss_kappa": judge.kappa_from_votes(votes),
        "krippendorff_alpha": judge.judge_alpha(judgments).set_index("dimension")["alpha"].to_dict(),
        "disagreements": len(judge.disagreements(rows, cfg.judge.max_spread)),
        "pairs": int(pairs["pair"].sum()),
        "seconds": round(seconds, 1),
    }
    return rows, judgments, pairs, summary


def judge_markdown(rows: pd.DataFrame, m: dict) -> str:
    voted = len(judge.vote_table(rows).dropna())
    return (
        f"**{m['kept']} of {m['judged']}** judged rows kept · rejects {m['reasons'] or 'none'} · "
        f"jury Fleiss' κ = {m['fleiss_kappa']:.2f} over {voted} fully voted rows · "
        f"{m['disagreements']} rows in the disagreement queue · {m['pairs']} DPO pairs"
    )


def judge_report_markdown(j: dict) -> str:
    """99's line on 03, from its recorded metrics."""
    return (
        f"Rubric {j.get('rubric')} × {j.get('jurors')} juror(s); mean score {j.get('mean_score')}; "
        f"Krippendorff's alpha {j.get('krippendorff_alpha')}; label jury {j.get('jury')}: Fleiss' kappa "
        f"{j.get('fleiss_kappa')}; judge rejects {j.get('reasons')}; {j.get('pairs')} DPO pairs"
    )


def jury_agreement(rows: pd.DataFrame) -> pd.DataFrame:
    """The judged rows with `jury`: whether the jury's label is the intended one."""
    judged = rows[rows["keep_prompts"]]
    return judged.assign(jury=judged["jury_label"].eq(judged["label"]).map({True: "agrees", False: "differs"}))


def rationales(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in rows.columns if c.endswith("_rationale")]
    return rows.loc[rows["keep_prompts"], ["id", "label", "text", "judge_score", *cols]].head(20)


# ---------------------------------------------------------------- 04_filter


def filter_stage(stage: Stage) -> tuple[pd.DataFrame, dict, dict]:
    """04: the final filter over 03's rows (`filters.filter_rows`: every gate marks, nothing is
    dropped) plus the rows earlier iterations carried over; saves `dataset`, `dataset.jsonl` (the
    kept text and label) and the exports. Returns the rows, the export paths and the summary."""
    cfg = stage.cfg
    seeds = stage.load("seeds")
    llm = stage.llm() if cfg.filter.rewrite else None
    rows = filters.filter_rows(cfg, stage.load("judged"), seeds, partial(embed.embed, cache_dir=cache_dir()), llm)
    rows = rows.assign(carried_from=None)
    carried = stage.earlier_rows()  # earlier iterations' rows with their verdicts: the data accumulates
    if len(carried):
        rows = pd.concat([rows, carried], ignore_index=True)
    stage.save(rows, "dataset")
    kept = rows[rows["keep"]]
    write_atomic(stage.artifacts / "dataset.jsonl", kept[["text", "label"]].to_json(orient="records", lines=True))
    paths = export.write_exports(
        cfg,
        rows,
        stage.load("pairs"),
        sorted(seeds["label"].unique()),
        stage.artifacts / "export",
        funnel_table(rows),
        (stage.run_dir / "config.yaml").read_text(),
        export.models_used(cfg),
        export.seed_licence(cfg),
    )
    with open(paths["dpo"]) as f:
        dpo_pairs = sum(1 for _ in f)
    summary = {
        "rows": len(rows),
        "kept": len(kept),
        "carried": len(carried),
        "carried_kept": int(carried["keep"].sum()) if len(carried) else 0,
        "rejected": int((~rows["keep"]).sum()),
        "reasons": reject_counts(rows).groupby("reject_reason")["rows"].sum().to_dict(),
        "filter_reasons": rows["reject_reason_filter"].value_counts().to_dict(),
        "pii_redacted": int(rows.loc[rows["keep"], "pii_found"].notna().sum()),
        "dpo_pairs": dpo_pairs,
        "exports": {k: str(v.relative_to(stage.run_dir)) for k, v in paths.items()},
    }
    return rows, paths, summary


def filter_markdown(stage: Stage, m: dict, paths: dict) -> str:
    carried = (
        f" ({m['carried']} rows, {m['carried_kept']} kept, carried over from earlier iterations)"
        if m["carried"]
        else ""
    )
    return (
        f"**{m['kept']} of {m['rows']}** generated rows kept{carried}; "
        f"exports in `{paths['sft'].parent.relative_to(stage.run_dir)}`"
    )


# ---------------------------------------------------------------- 05_train


def train_stage(stage: Stage) -> pd.DataFrame:
    """05: the students the config asks for (probe and/or causal), on seeds + 04's kept rows, and
    on real train rows for the reference; saves `training` (student, model, train_rows,
    train_seconds, paths). Returns that table."""
    cfg = stage.cfg
    seeds, rows = stage.load("seeds"), stage.load("dataset")
    reference = data.reference_split(cfg) if cfg.train.reference else None
    parts = []
    if "probe" in cfg.train.students:
        parts.append(train.train_students(seeds, rows, cfg.train, cache_dir(), stage.artifacts / "students", reference))
    if "causal" in cfg.train.students:
        labels, out = data.labels(cfg), stage.artifacts / "causal"
        parts.append(train.train_causal(cfg, seeds, rows, stage.load("pairs"), labels, cache_dir(), out, reference))
    summary = pd.concat(parts, ignore_index=True)
    stage.save(summary, "training")
    return summary


def students(training: pd.DataFrame) -> dict:
    """`student: model` → train_rows and train_seconds, from 05's training table."""
    return {
        f"{r.student}: {r.model}": {"train_rows": r.train_rows, "train_seconds": r.train_seconds}
        for r in training.itertuples()
    }


def training_curves(stage: Stage) -> pd.DataFrame:
    """The causal students' logged steps (saved as `training_curves` when there are any)."""
    curves = causal.curves(stage.artifacts / "causal")
    if len(curves):
        stage.save(curves, "training_curves")
    return curves


# ---------------------------------------------------------------- 06_evaluate


def evaluate_stage(stage: Stage) -> dict:
    """06: every student and the untuned baselines on the same real test rows, and each causal
    model's replies to harmful instructions. Returns what the later cells show: `test` (every test
    row), `shared` (the rows the table scores), `preds` and `probe_preds` (model → labels),
    `table` (before/after), `replies` (None without a causal student)."""
    cfg = stage.cfg
    labels = data.labels(cfg)
    test = data.test_split(cfg)
    probes = train.load_students(stage.artifacts / "students")
    probe_preds = evaluate.predictions(test, labels, probes, cache_dir())  # every test row: the filter ablation
    causal_models = train.causal_models(stage.artifacts / "causal") if "causal" in cfg.train.students else None
    # the rows every model of the table is scored on (the causal students' sample of the test rows)
    shared = (
        data.sample_per_label(test, cfg.evaluate.causal_test_per_label, cfg.seed) if causal_models is not None else test
    )
    on_shared = test["id"].isin(shared["id"]).to_numpy()
    assert list(test["id"][on_shared]) == list(shared["id"])
    preds = {name: p[on_shared] for name, p in probe_preds.items()}
    replies = None
    if causal_models is not None:
        base = local_model_dir(cfg.train.model, cache_dir())
        harmful = data.harmful_instructions(cfg.evaluate.safety_rows, cfg.seed)
        causal_preds, replies, _ = evaluate.score_causal(cfg, shared, labels, causal_models, base, harmful)
        preds |= causal_preds
    meta = students(stage.load("training"))
    table = evaluate.before_after(shared, preds, meta, cfg.evaluate.bootstrap, seed=cfg.seed)
    return {"test": test, "shared": shared, "preds": preds, "probe_preds": probe_preds, "table": table,
            "replies": replies}  # fmt: skip


def safety_stage(stage: Stage, replies: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """06's safety before/after: the refusal judge over each causal model's replies; saves `safety`
    (one row per reply) and `safety_summary` (per model, with the red flag). Empty without replies."""
    cfg = stage.cfg
    if replies is None or not len(replies):
        return pd.DataFrame(), pd.DataFrame(columns=["model", "refusal_rate"])
    judge_p = evaluate.judge_refusals(stage.llm(), replies, seed=cfg.seed)
    rows, summary = evaluate.safety(replies, judge_p, cfg.evaluate.bootstrap, seed=cfg.seed)
    stage.save(rows, "safety")
    stage.save(summary, "safety_summary")
    return rows, summary


def evaluation_tables(stage: Stage, ev: dict, safety_summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """06's final table (the metrics the config asks for, refusal rate joined) and the ablation
    (paired differences on every test row for the probes, on the shared rows for the causal
    students); saves `evaluation`, `test_predictions`, `test_predictions_all` and `ablation`."""
    cfg, test, shared, preds, probe_preds = stage.cfg, ev["test"], ev["shared"], ev["preds"], ev["probe_preds"]
    table = ev["table"].merge(safety_summary[["model", "refusal_rate"]], on="model", how="left")
    table = evaluate.select_metrics(table, cfg.evaluate.metrics)  # the metrics the config asks for
    stage.save(table, "evaluation")
    stage.save(shared.assign(**{f"pred: {k}": v for k, v in preds.items()}), "test_predictions")
    stage.save(test.assign(**{f"pred: {k}": v for k, v in probe_preds.items()}), "test_predictions_all")
    boot = cfg.evaluate.bootstrap
    probes = evaluate.ablation(test["label"], probe_preds, boot, seed=cfg.seed).assign(test_rows=len(test))
    tuned = evaluate.ablation(shared["label"], preds, boot, seed=cfg.seed)
    tuned = tuned.query("comparison.str.startswith('causal')").assign(test_rows=len(shared))
    ablation = pd.concat([probes, tuned], ignore_index=True)
    stage.save(ablation, "ablation")
    return table, ablation


def contamination(stage: Stage) -> tuple[dict, pd.DataFrame]:
    """06's contamination check of 04's kept rows against the whole real test split; saves
    `contamination` (one row per synthetic and real seed row, with its nearest test row)."""
    cfg = stage.cfg
    kept = stage.load("dataset").query("keep")
    test = data.test_split(cfg, whole=True)
    found, rows = evaluate.contamination(cfg, kept, test, cache_dir(), real=stage.load("seeds"))
    stage.save(rows, "contamination")
    return found, rows


def error_analysis(cfg: RunConfig, shared: pd.DataFrame, preds: dict) -> list:
    """06's per-label table and confused pairs, for the metrics the config asks for: a list of
    what to display, in order."""
    out: list = []
    if "per_label" in cfg.evaluate.metrics:
        out.append(evaluate.per_label(shared["label"], preds).style.format(precision=2))
    if "confused_pairs" in cfg.evaluate.metrics:
        for name in ["probe: seeds_synthetic", "causal: sft"]:
            if name in preds:
                out += [f"**{name}**", evaluate.confused_pairs(shared["label"], preds[name])]
    return out


# ---------------------------------------------------------------- 07_gaps


def gaps_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame, np.ndarray]:
    """07: failures of the student on real dev rows and weak synthetic rows (`gaps.failures`),
    embedded, mapped with UMAP and clustered with HDBSCAN, each cluster named by the LLM; saves
    `failures` (one row per failure with its cluster and map position) and `clusters` (one row per
    cluster). Returns both, the summary, and the dev split and failure vectors the patch needs."""
    cfg = stage.cfg
    dev = data.dev_split(cfg)
    probe = train.Probe.load(stage.artifacts / "students" / "seeds_synthetic.joblib")
    predicted = probe.predict(list(dev["text"]))
    synthetic = stage.load("dataset")  # 04's rows: keep, judge_score, jury_label
    synthetic = synthetic[synthetic["carried_from"].isna()] if "carried_from" in synthetic else synthetic
    failures = gaps.failures(cfg, dev, predicted, synthetic)
    vectors = embed.embed(list(failures["text"]), cache_dir())
    t0 = time.perf_counter()
    reducer, clusterer = clusters.default_models(cfg.gaps, vectors)
    clustered = clusters.cluster_failures(failures, vectors, reducer, clusterer)
    cluster_seconds = time.perf_counter() - t0
    summary = gaps.name_clusters(cfg, stage.llm(), clusters.summarize(clustered))
    stage.save(clustered, "failures")
    stage.save(summary, "clusters")
    metrics = {
        "dev_rows": len(dev),
        "dev_accuracy": float((predicted == dev["label"]).mean()),
        "failures": len(failures),
        "failures_by_source": failures["source"].value_counts().to_dict(),
        "clusters": int((summary["cluster"] >= 0).sum()),
        "noise": int((clustered["cluster"] == -1).sum()),
        "names_by_llm": int((summary["name_source"] == "llm").sum()),
        "cluster_seconds": round(cluster_seconds, 1),
    }
    return clustered, summary, metrics, dev, vectors


def gaps_markdown(m: dict) -> str:
    return (
        f"Student (probe on seeds + filtered synthetic) on **{m['dev_rows']} real dev rows: {m['dev_accuracy']:.1%}**. "
        f"Failures: {m['failures_by_source']}; **{m['clusters']} clusters**, {m['noise']} noise points "
        f"(UMAP + HDBSCAN in {m['cluster_seconds']:.1f} s); {m['names_by_llm']} of {m['clusters']} names written "
        "by the LLM, the rest built from the labels."
    )


def config_patch(stage: Stage, clustered: pd.DataFrame, summary: pd.DataFrame, dev: pd.DataFrame, vectors: np.ndarray):
    """07's edits for the next iteration (`gaps.propose`) and their YAML patch, written to
    `config_patch.yaml`; saves `edits` (one row per edit: id, kind, cluster, label, path, value,
    evidence)."""
    cfg = stage.cfg
    kept = stage.load("dataset").query("keep")  # every row the student trained on, carried ones too
    kept_vectors = embed.embed(list(kept["text"]), cache_dir())
    dev_counts = dev["label"].value_counts().to_dict()
    seeds = stage.load("seeds")
    edits = gaps.propose(cfg, clustered, summary, seeds, dev_counts, vectors, kept, kept_vectors)
    patch = gaps.patch_yaml(edits, stage.run_dir.name)
    write_atomic(stage.artifacts / "config_patch.yaml", patch)
    stage.save(edits.astype({"value": str}), "edits")
    return edits, patch


def review_edits(stage: Stage, edits: pd.DataFrame):
    """07's review in JupyterLab: a checkbox per edit and a button that shows the config the next
    iteration would run with (the fields that change) and the command that starts it."""
    boxes = [
        widgets.Checkbox(value=True, description=f"{e.id} · {e.kind} · {e.label}", layout={"width": "95%"})
        for e in edits.itertuples()
    ]
    out = widgets.Output()

    def preview(_) -> None:
        chosen = [e for e, b in zip(gaps.load_patch(stage.artifacts / "config_patch.yaml"), boxes) if b.value]
        with out:
            out.clear_output()
            if not chosen:
                display(Markdown("No edit ticked: the next iteration would repeat this one."))
                return
            text = gaps.apply(stage.run_dir / "config.yaml", chosen, data.labels(stage.cfg))
            display(lineage.config_diff_texts((stage.run_dir / "config.yaml").read_text(), text))
            display(Markdown(f"`workbench iterate {stage.run_dir} --accept {','.join(e['id'] for e in chosen)}`"))

    button = widgets.Button(description="Preview next config")
    button.on_click(preview)
    return widgets.VBox([*boxes, button, out])


# ---------------------------------------------------------------- 99_report

ABLATION_STUDENTS = {
    "probe: seeds_only": "seeds only",
    "probe: seeds_unfiltered": "seeds + unfiltered synthetic",
    "probe: seeds_synthetic": "seeds + filtered synthetic",
}


def ablation_markdown(table: pd.DataFrame, ablation: pd.DataFrame) -> str:
    """99's filter ablation: each probe's accuracy with its interval, then each paired difference."""
    ab = table[table["model"].isin(ABLATION_STUDENTS)]
    lines = []
    if "accuracy" in ab and len(ab) == 3:
        lines.append(
            f"**Filter ablation** (accuracy on the table's {int(ab['test_rows'].iloc[0]):,} test rows, 95% CI): "
            + " · ".join(
                f"{ABLATION_STUDENTS[r.model]} {r.accuracy:.1%} [{r.accuracy_lo:.1%}–{r.accuracy_hi:.1%}], "
                f"{r.train_rows} rows"
                for r in ab.itertuples()
            )
        )
    lines += [
        f"- {r.comparison}: **{r.delta_accuracy:+.1%}** [{r.delta_lo:+.1%}, {r.delta_hi:+.1%}] "
        f"(paired bootstrap on the same {r.test_rows:,} test rows)"
        for r in ablation.itertuples()
    ]
    return "\n\n".join(lines)


def contamination_markdown(c: dict) -> str:
    return (
        f"**{c['synthetic_rows']} synthetic rows** against {c['test_rows']:,} real test rows: "
        f"**{c['exact']} exact**, **{c['near_duplicates']} near-duplicates**; nearest-test cosine median "
        f"{c['cosine_p50']:.2f}, p90 {c['cosine_p90']:.2f}, max {c['cosine_max']:.2f} "
        f"(real seeds: median {c.get('real_cosine_p50', float('nan')):.2f}, "
        f"p90 {c.get('real_cosine_p90', float('nan')):.2f})"
    )


def training_table(stage: Stage) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """99: the causal students' curves (None when 05 logged none) and 05's table without paths."""
    path = stage.artifacts / "training_curves.parquet"
    curves = stage.load("training_curves") if path.exists() else None
    return curves, stage.load("training").drop(columns=["path", "adapter", "merged", "curve"], errors="ignore")


def run_header_markdown(stage: Stage) -> str:
    cfg, prov = stage.cfg, stage.provenance()
    return (
        f"**Task:** {cfg.task.description} · **LLM:** {cfg.llm.provider} / {cfg.llm.model} · "
        f"**run:** {stage.run_dir.name} · **git:** {(prov.get('git') or {}).get('sha')}"
    )


def lineage_views(stage: Stage) -> list:
    """99's comparison with the parent iteration, as what to display in order: the patch, the
    config diff, the data statistics, the paired evaluation change, per-label and per-cluster
    changes. One line when the run has no parent."""
    cfg, prov = stage.cfg, stage.provenance()
    parent = prov.get("parent")
    if not parent:
        return [Markdown("First iteration: no parent run.")]
    a, b = stage.run_dir.parent / parent, stage.run_dir
    accepted = (prov.get("patch") or {}).get("accepted", [])
    stats, per_label_rows = lineage.data_diff(a, b)
    diff = lineage.eval_diff(a, b, cfg.evaluate.bootstrap, cfg.seed)
    pct = [c for c in diff.columns if c.startswith(("before", "after", "change"))]
    diff_style = diff.style.format({c: "{:+.1%}" if c.startswith("change") else "{:.1%}" for c in pct})
    pl = lineage.per_label_diff(a, b)
    return [
        Markdown(f"**Parent:** {parent} · edits accepted: {', '.join(accepted) or 'none recorded'}"),
        lineage.patch_of(b),
        lineage.config_diff(a, b),
        stats,
        per_label_rows[per_label_rows["change"] != 0],
        diff_style.hide(axis="index"),
        pl[pl["change"] != 0].style.format({"before": "{:.0%}", "after": "{:.0%}", "change": "{:+.0%}"}),
        lineage.cluster_diff(a, b),
    ]
