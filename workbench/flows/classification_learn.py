"""Classification's stage bodies, 05–99: the students, the before/after evaluation with
contamination, the failure clusters with the config patch, the filter ablation and the lineage
against the parent run (`flows.classification` makes the pages' results).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from IPython.display import Markdown

from workbench import (
    clusters,
    data,
    embed,
    evaluate,
    gaps,
    lineage,
    train,
)
from workbench.config import RunConfig
from workbench.files import cache_dir
from workbench.flows import common
from workbench.llm import local_model_dir
from workbench.stage import Stage

log = logging.getLogger(__name__)
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
        judges = stage.jury() if "judge" in cfg.train.grpo_reward else None
        parts.append(
            train.train_causal(
                cfg,
                seeds,
                rows,
                stage.load("pairs"),
                labels,
                cache_dir(),
                out,
                reference,
                common.start_of(stage),
                judges,
            )
        )
    summary = pd.concat(parts, ignore_index=True)
    stage.save(summary, "training")
    return summary


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
    meta = common.students(stage.load("training"))
    table = evaluate.before_after(shared, preds, meta, cfg.evaluate.bootstrap, seed=cfg.seed)
    return {"test": test, "shared": shared, "preds": preds, "probe_preds": probe_preds, "table": table,
            "replies": replies}  # fmt: skip


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
    clustered, vectors, cluster_seconds = common.cluster(cfg, failures, list(failures["text"]))
    summary = gaps.name_clusters(cfg, stage.llm("namer"), clusters.summarize(clustered))
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
    return common.write_patch(stage, edits)


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


def lineage_views(stage: Stage) -> list:
    """99's comparison with the parent iteration, as what to display in order: the patch, the
    config diff, the data statistics, the paired evaluation change, per-label and per-cluster
    changes. One line when the run has no parent."""
    cfg, found = stage.cfg, common.parent_of(stage)
    if found is None:
        return [Markdown("First iteration: no parent run.")]
    (a, head), b = found, stage.run_dir
    stats, per_label_rows = lineage.data_diff(a, b)
    diff = lineage.eval_diff(a, b, cfg.evaluate.bootstrap, cfg.seed)
    pct = [c for c in diff.columns if c.startswith(("before", "after", "change"))]
    diff_style = diff.style.format({c: "{:+.1%}" if c.startswith("change") else "{:.1%}" for c in pct})
    pl = lineage.per_label_diff(a, b)
    return [
        *head,
        stats,
        per_label_rows[per_label_rows["change"] != 0],
        diff_style.hide(axis="index"),
        pl[pl["change"] != 0].style.format({"before": "{:.0%}", "after": "{:.0%}", "change": "{:+.0%}"}),
        lineage.cluster_diff(a, b),
    ]
