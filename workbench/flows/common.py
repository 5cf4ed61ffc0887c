"""What every task type's stages share: the columns a page shows, 03's calibration as saved, a
stage's metrics line, where the causal student starts, the students' table and curves, safety on
harmful instructions, clustering the failures, 07's patch and its review widget, and 99's run
header, training table and parent run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from workbench import causal, clusters, data, embed, evaluate, gaps, judge, lineage, plan, tasks, train
from workbench.config import RunConfig
from workbench.files import batch_mode, cache_dir, write_atomic
from workbench.flows.results import Section
from workbench.llm import decode
from workbench.stage import Stage

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- 99_report


def training_table(stage: Stage) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """99: the causal students' curves (None when 05 logged none) and 05's table without paths."""
    path = stage.artifacts / "training_curves.parquet"
    curves = stage.load("training_curves") if path.exists() else None
    return curves, stage.load("training").drop(columns=["path", "adapter", "merged", "curve"], errors="ignore")


def run_header_markdown(stage: Stage) -> str:
    cfg, prov = stage.cfg, stage.provenance()
    return (
        f"**Task:** {cfg.task.description} · **LLM:** {cfg.models_line()} · "
        f"**run:** {stage.run_dir.name} · **git:** {(prov.get('git') or {}).get('sha')}"
    )


def parent_of(stage: Stage) -> tuple[Path, list] | None:
    """The parent run of `stage`'s run and what every 99 shows first about it: the parent line with
    the accepted edits, the patch and the config diff. None for a first iteration."""
    prov = stage.provenance()
    parent = prov.get("parent")
    if not parent:
        return None
    a, b = stage.run_dir.parent / parent, stage.run_dir
    accepted = (prov.get("patch") or {}).get("accepted", [])
    line = Markdown(f"**Parent:** {parent} · edits accepted: {', '.join(accepted) or 'none recorded'}")
    return a, [line, lineage.patch_of(b), lineage.config_diff(a, b)]


def present(rows: pd.DataFrame, columns: list[str]) -> list[str]:
    """The names of `columns` that `rows` has, in order (a page shows what a config produced)."""
    return [c for c in columns if c in rows]


def metrics_markdown(metrics: dict) -> str:
    """A stage's recorded metrics as one line of `**name** value` pairs."""
    return ", ".join(f"**{k}** {v:.3f}" if isinstance(v, float) else f"**{k}** {v}" for k, v in metrics.items())


def calibration(stage: Stage) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str]:
    """03's judge calibration as saved (`judge.calibrate`; tools: `structured_build.calibrate`): the
    table per judge, the scores of the known-good and known-bad items, and the verdict line."""
    have = (stage.artifacts / "calibration.parquet").is_file()
    table = stage.load("calibration") if have else None
    scored = stage.load("calibration_scores") if have else None
    return table, scored, judge.calibration_markdown(table)


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


def harmful_replies(cfg: RunConfig, models: dict[str, str | Path]) -> pd.DataFrame | None:
    """Each causal model's replies to `evaluate.safety_rows` AdvBench harmful instructions (a seeded
    sample), asked as a plain chat (no task system message): what `safety_stage` judges. None with
    `evaluate.safety_rows: 0`."""
    if not cfg.evaluate.safety_rows:
        return None
    harmful = data.harmful_instructions(cfg.evaluate.safety_rows, cfg.seed)
    out = []
    for name, path in models.items():
        model, tok = decode.load(path, cfg.evaluate.dtype)
        got = causal.answers(model, tok, list(harmful["text"]), cfg.evaluate.safety_max_tokens, cfg.evaluate.batch_size)
        out.append(harmful.assign(model=name, reply=got))
        del model
    return pd.concat(out, ignore_index=True)


def cluster(cfg: RunConfig, failures: pd.DataFrame, texts: list[str]) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Every 07's clustering: `texts` (one per failure) embedded with MiniLM (cached), mapped with
    UMAP and clustered with HDBSCAN (`clusters.default_models`). Returns the failures with x, y and
    cluster, their vectors, and the seconds UMAP and HDBSCAN took."""
    vectors = embed.embed(texts, cache_dir())
    t0 = time.perf_counter()
    reducer, clusterer = clusters.default_models(cfg.gaps, vectors)
    clustered = clusters.cluster_failures(failures, vectors, reducer, clusterer)
    return clustered, vectors, time.perf_counter() - t0


def lineage_basic(stage: Stage, metric: str) -> list:
    """99's comparison with the parent iteration for tool calls and extraction: the parent line, the
    patch and the config diff, the data statistics, each model's `metric` in both runs' evaluation
    tables with its change, the exact match of each answer paired on the same test rows
    (`lineage.eval_diff`) and which of the parent's failure clusters shrank or grew."""
    found = parent_of(stage)
    if found is None:
        return [Markdown("First iteration: no parent run.")]
    (a, head), b = found, stage.run_dir
    stats, _ = lineage.data_diff(a, b)
    before, after = pd.read_parquet(a / "artifacts" / "evaluation.parquet"), stage.load("evaluation")
    both = before[["model", metric]].merge(after[["model", metric]], on="model", suffixes=("_before", "_after"))
    both["change"] = both[f"{metric}_after"] - both[f"{metric}_before"]
    paired = lineage.eval_diff(a, b, stage.cfg.evaluate.bootstrap, stage.cfg.seed)
    return [*head, stats, both, paired, lineage.cluster_diff(a, b)]


ESTIMATE_TEXT = (
    "Per stage: LLM calls and tokens (prompt tokens at about 4 characters each; completion tokens at the mean "
    "measured on this machine, else the `max_tokens` cap), cost where `llm.price_*` are set, and seconds on this "
    "machine: LLM seconds from the stage's last run here with this model, else from a calibration of the "
    "embedded model measured once here (a few seconds); 01's calls already in the cache cost nothing, and its "
    "later rounds (top-ups, retried cells) are counted at the share its last run here rejected. Seconds outside the LLM "
    "(loading, gates, training, figures) come from the stage's earlier runs here, scaled to this run's size; a "
    "stage never run here shows —. Each stage's page ends with its estimate beside the time it took."
)


def estimate_section(stage: Stage, labels: list[str], counts: dict, seeds: pd.DataFrame) -> Section:
    """00's pre-run estimate (`plan.estimate`, with the generator for this machine's calibration),
    saved as `estimate` (each page's `stage.finish()` sets it beside the time taken), as a section."""
    estimate = plan.estimate(stage.cfg, labels, counts, cache_dir(), seeds, stage.llm())
    stage.save(estimate, "estimate")
    fmt = {"cost": "{:.4f}", "llm_seconds": "{:.0f}", "other_seconds": "{:.0f}", "seconds": "{:.0f}"}
    return Section("Pre-run estimate", ESTIMATE_TEXT, [estimate.style.format(fmt, na_rep="—")])
