"""What notebooks 05–07 run: the students, the before/after evaluation with safety and
contamination, and the failure clusters with the config patch and its review widget.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

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
    gaps,
    lineage,
    tasks,
    train,
)
from workbench.config import RunConfig
from workbench.files import batch_mode, cache_dir, write_atomic
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
                cfg, seeds, rows, stage.load("pairs"), labels, cache_dir(), out, reference, start_of(stage), judges
            )
        )
    summary = pd.concat(parts, ignore_index=True)
    stage.save(summary, "training")
    return summary


def start_of(stage: Stage) -> Path | None:
    """Where the causal student starts: with `train.start_from: parent`, the parent run's last student
    (`train.parent_student`); None (train.model) otherwise, or when the parent has none (logged)."""
    if stage.cfg.train.start_from != "parent":
        return None
    parent = stage.parent_dir()
    start = train.parent_student(parent)
    if start is None:
        log.warning(
            "train.start_from: parent, but %s: starting from train.model",
            "there is no parent run" if parent is None else f"{parent.name} has no causal student",
        )
    else:
        log.info("the causal student starts from the parent's %s", start)
    return start


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
    (one row per reply) and `safety_summary` (per model, with the red flag). Empty without replies
    (`evaluate.safety_rows: 0`), and saved empty so 99 reads the same tables either way."""
    cfg = stage.cfg
    if replies is None or not len(replies):
        rows, summary = (
            pd.DataFrame(columns=["model", "id", "text", "reply"]),
            pd.DataFrame(columns=["model", "refusal_rate"]),
        )
        stage.save(rows, "safety")
        stage.save(summary, "safety_summary")
        return rows, summary
    judge_p = evaluate.judge_refusals(stage.llm("refusal_judge"), replies, seed=cfg.seed)
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
    clustered, vectors, cluster_seconds = cluster(cfg, failures, list(failures["text"]))
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
    return write_patch(stage, edits)


def cluster(cfg: RunConfig, failures: pd.DataFrame, texts: list[str]) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Every 07's clustering: `texts` (one per failure) embedded with MiniLM (cached), mapped with
    UMAP and clustered with HDBSCAN (`clusters.default_models`). Returns the failures with x, y and
    cluster, their vectors, and the seconds UMAP and HDBSCAN took."""
    vectors = embed.embed(texts, cache_dir())
    t0 = time.perf_counter()
    reducer, clusterer = clusters.default_models(cfg.gaps, vectors)
    clustered = clusters.cluster_failures(failures, vectors, reducer, clusterer)
    return clustered, vectors, time.perf_counter() - t0


def write_patch(stage: Stage, edits: pd.DataFrame | list[dict]) -> tuple[pd.DataFrame, str]:
    """Every 07's last step: the edits (at most `gaps.max_edits`, numbered e1, e2, … when they are a
    list) as the commented YAML patch `config_patch.yaml` (applied by `workbench iterate`), and
    saved as `edits`. Returns the edits and the patch text."""
    if isinstance(edits, list):
        edits = [e | {"id": f"e{i + 1}"} for i, e in enumerate(edits[: stage.cfg.gaps.max_edits])]
        edits = pd.DataFrame(edits, columns=gaps.EDIT_COLUMNS)
    patch = gaps.patch_yaml(edits, stage.run_dir.name)
    write_atomic(stage.artifacts / "config_patch.yaml", patch)
    stage.save(edits.astype({"value": str}), "edits")
    return edits, patch


def review_edits(stage: Stage, edits: pd.DataFrame):
    """07's review in JupyterLab: a checkbox per edit and a button that shows the config the next
    iteration would run with (the fields that change) and the command that starts it. Under the
    driver (a saved page, where a widget cannot run) the command that accepts every edit."""
    if batch_mode():
        ids = ",".join(str(i) for i in edits["id"]) if len(edits) else ""
        return Markdown(
            f"Review these edits in JupyterLab (this notebook, opened from the run folder), or accept them: "
            f"`workbench iterate {stage.run_dir} --accept {ids}`"
            if ids
            else "No edit proposed: the next iteration would repeat this one."
        )
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
            text = gaps.apply(stage.run_dir / "config.yaml", chosen, tasks.of(stage.cfg).labels(stage.cfg))
            display(lineage.config_diff_texts((stage.run_dir / "config.yaml").read_text(), text))
            display(Markdown(f"`workbench iterate {stage.run_dir} --accept {','.join(e['id'] for e in chosen)}`"))

    button = widgets.Button(description="Preview next config")
    button.on_click(preview)
    return widgets.VBox([*boxes, button, out])
