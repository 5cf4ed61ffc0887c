"""What the structured tasks' stage notebooks (notebooks/tools/) run, one function per step, over
the task module (`tasks.tools`): 00 the tools and the real rows, 01 answer-first requests, 02
answers under the schema, 03 the verifiable checks, best-of-N and DPO pairs, 04 the final filter,
05 the tagger and causal students, 06 slot scores on the real test rows, 07 failure clusters by
error signature and the config patch. Rows keep their answers as dicts; artifacts store those
columns as JSON text (`save_rows`, `load_rows`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from workbench import causal, clusters, embed, export, filters, gaps, judge, structured, tagger, tasks
from workbench import train as trainer
from workbench.config import LLMConfig, RunConfig
from workbench.files import cache_dir
from workbench.live import LiveView
from workbench.llm import LLM, local_model_dir
from workbench.pipeline import learn
from workbench.stage import Stage

log = logging.getLogger(__name__)

JSON_COLUMNS = ("arguments", "answer", "field_agreement", "expected", "values")

# slot F1 of commercial NLU services trained on real SNIPS queries per intent, averaged over the 7
# intents weighted by slot frequency, as the structured-tasks issue summarises the benchmark's
# published metrics (sonos/nlu-benchmark, 2017-06-custom-intent-engines/<Intent>/<Service>_metrics.json)
PUBLISHED_SNIPS = pd.DataFrame(
    [
        {"real queries per intent": "10", "slot F1 of the services": "0.35 to 0.58"},
        {"real queries per intent": "70", "slot F1 of the services": "0.59 to 0.83"},
        {"real queries per intent": "about 2,000", "slot F1 of the services": "0.94 (Snips)"},
    ]
)


def save_rows(stage: Stage, rows: pd.DataFrame, name: str) -> Path:
    """`stage.save` with the dict columns (arguments, answers) written as JSON text."""
    out = rows.copy()
    for c in JSON_COLUMNS:
        if c in out:
            out[c] = [None if v is None else json.dumps(v, ensure_ascii=False) for v in out[c]]
    return stage.save(out, name)


def load_rows(stage: Stage, name: str) -> pd.DataFrame:
    rows = stage.load(name)
    for c in JSON_COLUMNS:
        if c in rows:
            rows[c] = [json.loads(v) if isinstance(v, str) else None for v in rows[c]]
    return rows


def answer_text(answer: dict | None) -> str | None:
    return None if answer is None else tasks.tools.answer_json(answer["tool"], answer["arguments"])


# ---------------------------------------------------------------- 00_task


def task(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """00: the tools (or fields) with their arguments, the real seeds and dev rows; saves `seeds`
    and `dev`. The test split is not read before 06."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    seeds, dev = t.seeds(cfg), t.dev(cfg)
    counts = t.label_counts(cfg)
    save_rows(stage, seeds, "seeds")
    save_rows(stage, dev, "dev")
    desc = {x.name: x.description for x in cfg.task.tools}
    table = pd.DataFrame(
        [
            {
                "tool": name,
                "description": desc.get(name, cfg.task.description),
                "arguments": ", ".join(f"{a}: {ty}" for a, ty in params.items()),
                "real train rows": counts.get(name, 0),
                "seeds": int((seeds["tool"] == name).sum()),
                "dev rows": int((dev["tool"] == name).sum()),
            }
            for name, params in structured.tools_of(cfg).items()
        ]
    )
    summary = {"tools": len(table), "seeds": len(seeds), "dev_rows": len(dev), "train_rows": int(sum(counts.values()))}
    return table, seeds, summary


def task_markdown(cfg: RunConfig, summary: dict) -> str:
    what = "tool calls" if cfg.task.type == "tools" else "extraction"
    return (
        f"**{cfg.task.name}** ({what}): {cfg.task.description}\n\n"
        f"{summary['tools']} {'tools' if cfg.task.type == 'tools' else 'schema'}; "
        f"{summary['seeds']} real seeds and {summary['dev_rows']} dev rows drawn from "
        f"{summary['train_rows']} real train rows of `{cfg.data.dataset}`."
    )


# ---------------------------------------------------------------- 01_prompts


def build_inputs(stage: Stage) -> tuple[pd.DataFrame, dict]:
    """01, answer first (`tasks.tools.generate_inputs`); saves `prompts` (every attempt, with its
    cell, intended answer and reject reason) and `suggestions` (values the generator proposed)."""
    cfg = stage.cfg
    rows = tasks.of(cfg).generate_inputs(cfg, load_rows(stage, "seeds"), stage.llm("generator"))
    rows["keep_prompts"] = rows["keep"]
    rows["reject_reason_prompts"] = rows["reject_reason"]
    save_rows(stage, rows, "prompts")
    sugg = pd.DataFrame([{"argument": k, "values": v} for k, v in rows.attrs["suggested"].items()])
    save_rows(stage, sugg, "suggestions")
    last = rows.groupby("cell")["keep"].any()
    summary = {
        "cells": int(rows["cell"].nunique()),
        "generated": len(rows),
        "kept": int(rows["keep"].sum()),
        "cells_unfilled": int((~last).sum()),
        "rounds": int(rows["round"].max() + 1) if len(rows) else 0,
        "reject_reasons": rows["reject_reason"].value_counts().to_dict(),
        "suggested_values": int(sum(len(v) for v in rows.attrs["suggested"].values())),
    }
    return rows, summary


def inputs_markdown(m: dict) -> str:
    return (
        f"**{m['kept']} of {m['generated']} generated requests kept** over {m['cells']} cells in {m['rounds']} "
        f"rounds; {m['cells_unfilled']} cells still empty after the last round. Reasons: {m['reject_reasons'] or 'none'}. "
        f"The generator suggested {m['suggested_values']} new argument values."
    )


def coverage(rows: pd.DataFrame) -> pd.DataFrame:
    """Cells per tool × difficulty: planned, and filled (a kept message)."""
    cells = rows.groupby("cell").agg(tool=("tool", "first"), difficulty=("difficulty", "first"), kept=("keep", "any"))
    cells["difficulty"] = cells["difficulty"].fillna("-")
    return (
        cells.groupby(["tool", "difficulty"])
        .agg(planned=("kept", "size"), filled=("kept", "sum"))
        .reset_index()
        .assign(short=lambda d: d["planned"] - d["filled"])
    )


# ---------------------------------------------------------------- 02_responses


def candidates(stage: Stage) -> tuple[pd.DataFrame, dict]:
    """02: `responses.candidates` answers per kept request under the schema, each checked
    against the intended answer, streamed to `candidates.jsonl` and shown live (`LiveView`);
    saves `candidates`."""
    cfg = stage.cfg
    rows = load_rows(stage, "prompts")
    llm = stage.llm("generator")
    view = LiveView(int(rows["keep"].sum()) * cfg.responses.candidates, llm.stats, stage.artifacts / "candidates.jsonl")
    t0 = time.perf_counter()
    cands = tasks.of(cfg).candidates(cfg, rows, llm, on_row=view)
    view.close()
    seconds = time.perf_counter() - t0
    save_rows(stage, cands, "candidates")
    tokens = cands["completion_tokens"].fillna(0).sum() if len(cands) else 0
    summary = {
        "prompts": int(rows["keep"].sum()),
        "candidates": len(cands),
        "schema_valid": float(cands["schema_valid"].mean()) if len(cands) else None,
        "mean_agreement": float(cands["agreement"].mean()) if len(cands) else None,
        "reasons": cands["reason"].value_counts().to_dict() if len(cands) else {},
        "seconds": round(seconds, 1),
        "tokens_per_s": round(float(tokens) / seconds, 1) if seconds > 0 and tokens else None,
    }
    return cands, summary


def candidates_markdown(m: dict) -> str:
    valid = "n/a" if m["schema_valid"] is None else f"{m['schema_valid']:.0%}"
    agree = "n/a" if m["mean_agreement"] is None else f"{m['mean_agreement']:.2f}"
    return (
        f"**{m['candidates']} candidate answers** for {m['prompts']} kept requests; **{valid} parse under the "
        f"schema**; mean field agreement with the intended answer {agree}. Where they disagree: {m['reasons'] or 'nowhere'}."
    )


def candidate_view(cands: pd.DataFrame) -> pd.DataFrame:
    cols = ["row", "candidate", "raw", "schema_valid", "agreement", "reason", "why", "seed", "completion_tokens",
            "latency_s", "cached"]  # fmt: skip
    return cands[[c for c in cols if c in cands]]


# ---------------------------------------------------------------- 03_judge


def judge_answers(stage: Stage, rows: pd.DataFrame, cands: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The judge on the answers of the kept rows' candidates: each rubric dimension (`judge.rubric`,
    else the task's) scored 1-5 with a rationale by `judge.jurors` jurors (own seed each). Returns
    the candidates with judge_score (0-1, mean over dimensions and jurors), judge_<dimension>,
    judge_<dimension>_rationale and judge_spread (max − min over jurors), and the judgments, one
    row per (row, candidate, dimension, juror)."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    reqs, keys = t.answer_judge_requests(cfg, rows, cands, load_rows(stage, "seeds"), judge.SCHEMA)
    judgments = judge.run_judgments(cfg, stage.jury(), reqs, keys, "03 judge on the answers")
    item = judgments.pop("item")
    judgments.insert(0, "row", cands.loc[item, "row"].to_numpy())
    judgments.insert(1, "candidate", cands.loc[item, "candidate"].to_numpy())
    judgments = judgments.drop(columns=["completion_tokens", "latency_s"])  # the columns 03 saved before
    out = cands.copy()
    out["judge_score"] = out["judge_spread"] = math.nan
    for (row, cand), g in judgments.groupby(["row", "candidate"]):
        at = out.index[(out["row"] == row) & (out["candidate"] == cand)]
        for dim, d in g.groupby("dimension"):
            out.loc[at, f"judge_{dim}"] = d["score"].mean()
            out.loc[at, f"judge_{dim}_rationale"] = (
                d["rationale"].dropna().iloc[0] if d["rationale"].notna().any() else None
            )
        out.loc[at, "judge_score"] = g["score"].mean()
        per_juror = g.groupby("juror")["score"].mean().dropna()
        if len(per_juror) > 1:
            out.loc[at, "judge_spread"] = per_juror.max() - per_juror.min()
    return out, judgments


def judge_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """03: the verifiable checks of each row's intended answer (`answer_invalid`, `value_missing`),
    then the judge on the candidates' answers of the rows that pass (`judge_answers`), the
    candidates' agreement per field, best-of-N by agreement then judge score (the row's answer
    stays the intended one, which the checks proved) and DPO pairs: the worst candidate is the
    rejected side when the intended answer beats it by `judge.pair_margin` in field agreement.
    Saves `judged`, `candidates_judged`, `judgments` and `pairs`."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    prompts, cands = load_rows(stage, "prompts"), load_rows(stage, "candidates")
    checked = t.judge_rows(cfg, prompts, cands)
    cands, judgments = judge_answers(stage, checked, cands)
    save_rows(stage, cands, "candidates_judged")
    stage.save(judgments, "judgments")
    judged = t.judge_rows(cfg, prompts, cands)
    judged["keep_judge"] = judged["keep"] | ~judged["keep_prompts"]  # 01's rejects keep 01's reason
    judged["reject_reason_judge"] = judged["reject_reason"].where(judged["keep_prompts"])
    worst = judged["agreement"].fillna(1.0)
    margin = 1.0 - worst  # the intended answer agrees with itself fully
    pair = judged["keep"] & judged["rejected_answer"].notna() & (margin >= cfg.judge.pair_margin)
    pairs = judged.loc[pair, ["id", "text", "tool", "answer", "rejected_answer", "agreement"]].rename(
        columns={"answer": "chosen", "rejected_answer": "rejected"}
    )
    save_rows(stage, judged, "judged")
    stage.save(pairs.reset_index(drop=True), "pairs")
    calib = calibrate(stage)
    if calib is not None:
        stage.save(calib[0], "calibration_scores")
        stage.save(calib[1], "calibration")
    fields: dict[str, list[float]] = {}
    for f in judged.loc[judged["keep"], "field_agreement"]:
        for k, v in (f or {}).items():
            fields.setdefault(k, []).append(v)
    summary = {
        "rows": len(judged),
        "checked": int(judged["keep_prompts"].sum()),
        "kept": int(judged["keep"].sum()),
        "rejected_here": int((judged["keep_prompts"] & ~judged["keep"]).sum()),
        "reasons": judged.loc[judged["keep_prompts"], "reject_reason"].value_counts().to_dict(),
        "mean_agreement": float(judged["agreement"].mean()) if judged["agreement"].notna().any() else None,
        "pairs": len(pairs),
        "field_agreement": {k: round(float(np.mean(v)), 3) for k, v in sorted(fields.items())},
        "judged_candidates": int(cands["judge_score"].notna().sum()),
        "mean_judge_score": float(cands["judge_score"].mean()) if cands["judge_score"].notna().any() else None,
        "judge_unparsed": int(judgments["score"].isna().sum()),
        "judge_alpha": _judge_alpha(judgments),
        # does the judge prefer the candidates that agree with the checked answer? (the judge's signal)
        "judge_vs_agreement": _spearman(cands["judge_score"], cands["agreement"]),
        "calibration_auc": calib[1]["auc"].iloc[-1] if calib is not None and len(calib[1]) else None,
    }
    return judged, pairs, summary


def calibrate(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """03's judge calibration: `judge.calibration_rows` real dev requests, each judged with its own
    answer (known good) and with the answer of another request (known bad: another tool's where
    there is one), by every judge of roles.judge. Returns (scores per item and judge model: id,
    known, juror_model, score; `judge.calibration_table`), or None when off."""
    cfg = stage.cfg
    if not cfg.judge.calibration_rows or not cfg.data.dataset or not tasks.of(cfg).answer_rubric(cfg):
        return None
    t, with_tool = tasks.of(cfg), cfg.task.type == "tools"
    dev = t.dev(cfg)
    dev = dev.sample(min(cfg.judge.calibration_rows, len(dev)), random_state=cfg.seed).reset_index(drop=True)
    if len(dev) < 2:
        return None
    rows = pd.DataFrame({"id": [f"cal{i}" for i in range(len(dev))], "text": dev["text"], "tool": dev["tool"],
                         "keep": True})  # fmt: skip
    good = [t.answer_json(r.tool, r.arguments, with_tool) for r in dev.itertuples()]
    other = [next((k for k in range(1, len(dev)) if dev.at[(i + k) % len(dev), "tool"] != dev.at[i, "tool"]), 1)
             for i in range(len(dev))]  # fmt: skip
    bad = [good[(i + k) % len(dev)] for i, k in enumerate(other)]
    cands = pd.DataFrame({"row": list(rows["id"]) * 2, "candidate": [0] * len(dev) + [1] * len(dev), "raw": good + bad})
    _, judgments = judge_answers(stage, rows, cands)
    scored = judgments.groupby(["row", "candidate", "juror_model"], as_index=False)["score"].mean()
    scored = scored.assign(id=scored["row"] + "/" + scored["candidate"].astype(str),
                           known=np.where(scored["candidate"] == 0, "good", "bad"))  # fmt: skip
    scored = scored[["id", "known", "juror_model", "score"]]
    return scored, judge.calibration_table(scored)


def _judge_alpha(judgments: pd.DataFrame) -> float | None:
    """Krippendorff's alpha (interval) of the jurors over (candidate, dimension); None with one juror."""
    if judgments.empty or judgments["juror"].nunique() < 2:
        return None
    m = judgments.pivot_table(index="juror", columns=["row", "candidate", "dimension"], values="score")
    a = judge.krippendorff_alpha(m.to_numpy())
    return None if a is None or math.isnan(a) else round(float(a), 3)


def _spearman(a: pd.Series, b: pd.Series) -> float | None:
    ok = a.notna() & b.notna()
    if ok.sum() < 3 or a[ok].nunique() < 2 or b[ok].nunique() < 2:
        return None
    return round(float(a[ok].rank().corr(b[ok].rank())), 3)


def judge_markdown(m: dict) -> str:
    agree = "n/a" if m["mean_agreement"] is None else f"{m['mean_agreement']:.2f}"
    score = "n/a" if m.get("mean_judge_score") is None else f"{m['mean_judge_score']:.2f}"
    corr = "n/a (too few distinct scores)" if m.get("judge_vs_agreement") is None else f"{m['judge_vs_agreement']:+.2f}"
    alpha = (
        "" if m.get("judge_alpha") is None else f" Jurors' agreement (Krippendorff's alpha): {m['judge_alpha']:.2f}."
    )
    return (
        f"**{m['kept']} of {m['checked']} requests pass the checks**; rejected here: {m['reasons'] or 'none'}. "
        f"The candidates' mean field agreement with the intended answers: {agree}. The judge scored "
        f"{m.get('judged_candidates', 0)} candidate answers (mean {score} on 0-1, {m.get('judge_unparsed', 0)} "
        f"judgments without a score); rank correlation of its score with the checked agreement: {corr}.{alpha} "
        f"**{m['pairs']} DPO pairs** (intended answer over the worst candidate)."
    )


def judged_candidates(stage: Stage) -> pd.DataFrame:
    """The judged candidates, best first per row: the answer, its checked agreement, the judge's
    score per dimension with the rationale."""
    c = load_rows(stage, "candidates_judged")
    cols = ["row", "candidate", "raw", "agreement", "judge_score"]
    cols += [x for d in tasks.of(stage.cfg).answer_rubric(stage.cfg) for x in (f"judge_{d}", f"judge_{d}_rationale")]
    cols += ["judge_spread"]
    c = c.sort_values(["row", "agreement", "judge_score"], ascending=[True, False, False])
    return c[[x for x in cols if x in c]].reset_index(drop=True)


def field_agreement(judged: pd.DataFrame) -> pd.DataFrame:
    """Per argument: the share of candidates that gave the intended value, over the kept rows."""
    recs = [
        {"tool": r.tool, "argument": k, "agreement": v}
        for r in judged[judged["keep"]].itertuples()
        for k, v in (r.field_agreement or {}).items()
    ]
    if not recs:
        return pd.DataFrame(columns=["tool", "argument", "rows", "agreement"])
    d = pd.DataFrame(recs)
    return (
        d.groupby(["tool", "argument"]).agg(rows=("agreement", "size"), agreement=("agreement", "mean")).reset_index()
    )


# ---------------------------------------------------------------- 04_filter


def filter_stage(stage: Stage) -> tuple[pd.DataFrame, dict]:
    """04: the final filter (`filters.filter_rows`: rewrite, constraints with PII, toxicity, domain,
    near-duplicates) on each request; the answer's values are spans of it, so what the message
    passes its answer passes. Saves `dataset` (every row, with keep, reject_stage, reject_reason)
    and the exports (`export.write_task_exports`: SFT records of the kept rows, the DPO pairs of
    kept rows, a `datasets` folder and the card)."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    judged = load_rows(stage, "judged")
    rows = judged.drop(columns=["keep", "reject_reason"]).assign(label=judged["tool"])
    rows["text"] = rows["text"].fillna("")
    seeds = load_rows(stage, "seeds").assign(label=lambda d: d["tool"])
    llm = stage.llm("generator") if cfg.filter.rewrite else None
    out = filters.filter_rows(cfg, rows, seeds, lambda texts: embed.embed(texts, cache_dir()), llm)
    if cfg.filter.rewrite:  # a rewrite that lost a value is caught like any message: value_missing
        for i in out.index[out["keep"] & out["original_text"].notna()]:
            if structured.missing_values(out.at[i, "text"], out.at[i, "arguments"]):
                out.at[i, "keep_filter"], out.at[i, "reject_reason_filter"] = False, "value_missing"
        out = filters.verdict(out)
    save_rows(stage, out, "dataset")
    kept = out[out["keep"]]
    pairs = stage.load("pairs")  # of the kept rows, with their final (filtered, rewritten) text
    pairs = pairs[pairs["id"].isin(kept["id"])].assign(text=lambda d: d["id"].map(kept.set_index("id")["text"]))
    sft, dpo = t.sft_records(cfg, kept), t.dpo_records(cfg, pairs)
    config_text = (stage.run_dir / "config.yaml").read_text()
    paths = export.write_task_exports(cfg, out, sft, dpo, stage.artifacts / "export", config_text, t.ROW_KEY)
    summary = {
        "rows": len(out),
        "kept": len(kept),
        "rejected_here": int((~out["keep_filter"]).sum()),
        "reasons_by_stage": {
            s: g["reject_reason"].value_counts().to_dict() for s, g in out[~out["keep"]].groupby("reject_stage")
        },
        "kept_by_tool": out.loc[out["keep"], "tool"].value_counts().to_dict(),
        "sft_records": len(sft),
        "dpo_pairs": len(dpo),
        "exports": {k: str(v.relative_to(stage.run_dir)) for k, v in paths.items()},
    }
    return out, summary


def filter_markdown(m: dict) -> str:
    return (
        f"**{m['kept']} of {m['rows']} rows kept**; {m['rejected_here']} rejected by this filter. Rejects by stage: "
        f"{m['reasons_by_stage'] or 'none'}. Kept per tool: {m['kept_by_tool']}. Exports: {m['sft_records']} SFT "
        f"records, {m['dpo_pairs']} DPO pairs, in `artifacts/export/`."
    )


# ---------------------------------------------------------------- 05_train


def _as_many(cfg: RunConfig, kept_set: pd.DataFrame) -> int:
    return math.ceil(len(kept_set) / max(1, len(structured.tools_of(cfg))))


def train_stage(stage: Stage) -> pd.DataFrame:
    """05: the tagger (`train.students` has probe: the MiniLM token tagger, the structured tasks'
    probe) on seeds, seeds + every generated message, seeds + the kept rows, and on real train rows
    (as many as the kept set, per tool; and `train.reference_rows` or all); the causal student
    (`causal`: SFT on seeds + kept rows writing the answer JSON, DPO on 03's pairs and GRPO with
    the verifiable rewards field_f1 and schema_valid, both from the SFT model). The references are
    taggers: a causal SFT on real rows would double the CPU demo's training time. Saves `training`."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    seeds, rows = load_rows(stage, "seeds"), load_rows(stage, "dataset")
    sets = t.training_sets(seeds, rows)
    params = {k: list(v) for k, v in structured.tools_of(cfg).items()}
    as_many = structured.reference_rows(cfg, _as_many(cfg, sets["seeds_synthetic"]))
    out = []
    folder = stage.artifacts / "students"
    if "probe" in cfg.train.students:
        named = dict(sets)
        if cfg.train.reference:
            named["reference_as_many"] = as_many
            named["reference"] = _reference(cfg)
        for name, train in named.items():
            m = tagger.train_tagger(train, params, seed=cfg.seed)
            path = folder / f"{name}.joblib"
            path.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(m, path)
            out.append({"student": "tagger", "model": name, "train_rows": len(train),
                        "train_seconds": round(m.train_seconds, 1), "path": str(path)})  # fmt: skip
    if "causal" in cfg.train.students:
        out += _train_causal(stage, sets["seeds_synthetic"])
    training = pd.DataFrame(out)
    stage.save(training.astype({c: str for c in training.columns if training[c].dtype == object}), "training")
    return training


def _reference(cfg: RunConfig) -> pd.DataFrame:
    rows = structured.reference_rows(cfg, None)
    n = cfg.train.reference_rows
    return rows.sample(n=n, random_state=cfg.data.seed) if n is not None and n < len(rows) else rows


def _train_causal(stage: Stage, train: pd.DataFrame) -> list[dict]:
    cfg = stage.cfg
    t = tasks.of(cfg)
    causal.check_args(cfg.train)
    base = local_model_dir(cfg.train.model, cache_dir())
    system = t.answer_system(cfg, brief=True)
    folder = stage.artifacts / "causal"
    sft_rows = t.sft_rows(cfg, train)
    out = []
    methods = cfg.train.methods
    start = learn.start_of(stage) or base
    if "sft" in methods or {"dpo", "grpo"} & set(methods):
        data = causal.sft_dataset(sft_rows, system)
        out.append({"model": "sft", "start": str(start)} | causal.fit("sft", start, data, cfg, folder / "sft"))
    sft = folder / "sft" / "merged"
    if "dpo" in methods:
        pairs = stage.load("pairs")
        if len(pairs):
            data = causal.dpo_dataset(pairs, system)
            out.append({"model": "dpo"} | causal.fit("dpo", sft, data, cfg, folder / "dpo"))
        else:
            log.warning("dpo skipped: 03 made no DPO pairs")
    if "grpo" in methods:
        data = causal.grpo_dataset(sft_rows, system)
        judges = stage.jury() if "judge" in cfg.train.grpo_reward else None
        funcs = trainer.grpo_rewards(cfg, t.rewards(cfg), judges)
        out.append({"model": "grpo"} | causal.fit("grpo", sft, data, cfg, folder / "grpo", reward_funcs=funcs))
    return [{"student": "causal"} | r for r in out]


def training_markdown(training: pd.DataFrame) -> str:
    lines = [f"- {r.student} `{r.model}`: {r.train_rows} rows, {r.train_seconds} s" for r in training.itertuples()]
    return "\n".join(lines) or "No student (train.students is empty)."


# ---------------------------------------------------------------- 06_evaluate

GROUPS = {"seeds_only": "synthetic", "seeds_unfiltered": "synthetic", "seeds_synthetic": "synthetic",
          "reference_as_many": "reference", "reference": "reference"}  # fmt: skip


def evaluate_stage(stage: Stage) -> dict:
    """06 on the real test rows: each tagger on every test row; the untuned model under the
    schema and each causal student on `evaluate.causal_test_per_label` rows per tool (every model
    is also scored on those shared rows for the paired deltas). Saves `evaluation` (one row per
    model: slot precision, recall, F1 with CIs, exact match, tool accuracy, parsed share),
    `test_answers` (every model's answer per test row), `ablation` and `per_slot`."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    test = t.test(cfg)
    boot = cfg.evaluate.bootstrap
    training = stage.load("training")
    answers: dict[str, list] = {}
    rows_of: dict[str, pd.DataFrame] = {}
    meta: dict[str, dict] = {}
    for r in training[training["student"] == "tagger"].itertuples():
        m = joblib.load(r.path)
        t0 = time.perf_counter()
        answers[f"tagger: {r.model}"] = m.answers(list(test["text"]))
        rows_of[f"tagger: {r.model}"] = test
        meta[f"tagger: {r.model}"] = {"group": GROUPS.get(r.model, "synthetic"), "train_rows": int(r.train_rows),
                                       "answer_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    shared = test
    if cfg.evaluate.causal_test_per_label is not None:
        shared = (
            test.sample(frac=1.0, random_state=cfg.seed).groupby("tool").head(cfg.evaluate.causal_test_per_label)
        ).sort_values(["tool", "id"])
    shared = shared.reset_index(drop=True)
    texts = list(shared["text"])
    llm_cfg = {**cfg.llm.model_dump(), "provider": "local", "model": cfg.train.model, "dtype": cfg.evaluate.dtype,
               "batch_size": cfg.evaluate.batch_size}  # fmt: skip
    raws: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    base = LLM(LLMConfig(**llm_cfg), cache_dir())
    answers["causal: untuned (schema-constrained)"], raws["untuned"] = t.llm_answers(cfg, texts, base, "06 untuned")
    rows_of["causal: untuned (schema-constrained)"] = shared
    meta["causal: untuned (schema-constrained)"] = {"group": "baseline", "train_rows": 0,
                                                     "answer_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    for r in training[training["student"] == "causal"].itertuples():
        name = f"causal: {r.model}"
        t0 = time.perf_counter()
        student = LLM(LLMConfig(**{**llm_cfg, "model": r.merged}), stage.artifacts / "causal" / ".calls")
        answers[name], raws[r.model] = t.llm_answers(cfg, texts, student, f"06 {r.model}", brief=True)
        rows_of[name] = shared
        meta[name] = {"group": "reference" if r.model.startswith("reference") else "synthetic",
                      "train_rows": int(r.train_rows), "answer_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    table = []
    for name, ans in answers.items():
        s = t.score(rows_of[name], ans, boot, seed=cfg.seed)
        table.append({"model": name, **meta[name], **s})
    table = pd.DataFrame(table)
    stage.save(table, "evaluation")
    # every model's answers on the shared rows (taggers answered every test row: their shared part)
    on_shared = {n: _on(shared, rows_of[n], a) for n, a in answers.items()}
    keep = shared.assign(**{f"answer: {n}": [answer_text(x) for x in a] for n, a in on_shared.items()})
    save_rows(stage, keep, "test_answers")
    ablation = deltas(test, shared, answers, rows_of, boot, cfg.seed)
    stage.save(ablation, "ablation")
    best = _best_synthetic(table)
    slots = structured.per_slot(_gold(rows_of[best]), answers[best]) if best else pd.DataFrame()
    stage.save(slots, "per_slot")
    return {"test": test, "shared": shared, "table": table, "ablation": ablation, "per_slot": slots, "best": best,
            "answers": on_shared}  # fmt: skip


def _gold(rows: pd.DataFrame) -> list[dict]:
    return [{"tool": t, "arguments": a} for t, a in zip(rows["tool"], rows["arguments"])]


def _on(shared: pd.DataFrame, rows: pd.DataFrame, ans: list) -> list:
    where = dict(zip(rows["id"], ans))
    return [where[i] for i in shared["id"]]


def _best_synthetic(table: pd.DataFrame) -> str | None:
    syn = table[table["group"] == "synthetic"]
    return None if syn.empty else str(syn.sort_values("slot_f1", ascending=False)["model"].iloc[0])


def _paired(gold: list[dict], a: list, b: list, boot: int, seed: int) -> tuple[float, float, float]:
    ca = np.array([structured.row_counts(g, p) for g, p in zip(gold, a)], dtype=float)
    cb = np.array([structured.row_counts(g, p) for g, p in zip(gold, b)], dtype=float)

    def f1(c: np.ndarray) -> np.ndarray:  # micro F1 over rows; c: (..., rows, 3)
        tp, fp, fn = c[..., 0].sum(-1), c[..., 1].sum(-1), c[..., 2].sum(-1)
        return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)

    d = float(f1(ca) - f1(cb))
    if boot <= 0 or not len(gold):
        return d, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(gold), size=(boot, len(gold)))
    diffs = f1(ca[idx]) - f1(cb[idx])
    return d, float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def deltas(test, shared, answers, rows_of, boot: int, seed: int) -> pd.DataFrame:
    """Paired differences in slot F1 (95% paired bootstrap): the filter's ablation among the taggers
    on every test row, each causal student against the untuned model on the shared rows."""
    pairs = [
        ("tagger: seeds_synthetic", "tagger: seeds_only", test),
        ("tagger: seeds_synthetic", "tagger: seeds_unfiltered", test),
        ("tagger: seeds_unfiltered", "tagger: seeds_only", test),
    ]
    pairs += [(n, "causal: untuned (schema-constrained)", shared) for n in answers if n.startswith("causal: ")
              and "untuned" not in n and "reference" not in n]  # fmt: skip
    if "causal: sft" in answers:
        pairs += [(n, "causal: sft", shared) for n in ("causal: dpo", "causal: grpo") if n in answers]
    out = []
    for a, b, rows in pairs:
        if a not in answers or b not in answers:
            continue
        d, lo, hi = _paired(
            _gold(rows), _on(rows, rows_of[a], answers[a]), _on(rows, rows_of[b], answers[b]), boot, seed
        )
        out.append({"comparison": f"{a} − {b}", "slot_f1_delta": d, "lo": lo, "hi": hi, "test_rows": len(rows)})
    return pd.DataFrame(out, columns=["comparison", "slot_f1_delta", "lo", "hi", "test_rows"])


def gap_closed(table: pd.DataFrame) -> float | None:
    """How much of the distance from the seeds-only tagger to the real-data reference (as many real
    rows) the filtered synthetic rows closed: (kept − seeds) / (reference − seeds)."""
    f = table.set_index("model")["slot_f1"]
    need = ["tagger: seeds_only", "tagger: seeds_synthetic", "tagger: reference_as_many"]
    if not all(n in f for n in need) or f[need[2]] == f[need[0]]:
        return None
    return float((f[need[1]] - f[need[0]]) / (f[need[2]] - f[need[0]]))


def evaluation_markdown(cfg: RunConfig, table: pd.DataFrame, shared_rows: int, test_rows: int) -> str:
    g = gap_closed(table)
    out = (
        f"Taggers answer all **{test_rows} real test rows**; the causal models answer {shared_rows} of them "
        f"(`evaluate.causal_test_per_label`). Intervals are 95% bootstrap over rows."
    )
    if g is not None:
        out += (
            f"\n\n**The filtered synthetic rows closed {g:+.0%} of the distance** between the seeds-only tagger "
            "and the tagger trained on as many real rows (slot F1)."
        )
    base = table[table["group"] == "baseline"]
    if len(base):
        out += f" The untuned model's answers under the schema parse **{base['parsed'].iloc[0]:.0%}**."
    return out


METRIC_COLUMNS = ["model", "group", "test_rows", "train_rows", "tool_accuracy", "slot_precision", "slot_recall",
                  "slot_f1", "slot_f1_lo", "slot_f1_hi", "exact_match", "exact_match_lo", "exact_match_hi",
                  "parsed"]  # fmt: skip


def evaluation_view(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in METRIC_COLUMNS if c in table]].round(3)


def published(cfg: RunConfig) -> pd.DataFrame | None:
    """The benchmark's published slot F1 of commercial services, for a run on SNIPS."""
    return PUBLISHED_SNIPS if cfg.data.dataset == "snips" and cfg.data.subset is None else None


# ---------------------------------------------------------------- 07_gaps


def gaps_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """07: the best synthetic tagger (seeds + kept) answers the real dev rows; each row with a
    wrong tool or a wrong, missing or extra argument is a failure with its error signature
    (`tasks.tools.failures`); failures are embedded as "signature: text", mapped with UMAP and
    clustered with HDBSCAN. Saves `failures` and `clusters`."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    dev = load_rows(stage, "dev")
    path = stage.artifacts / "students" / "seeds_synthetic.joblib"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: 07 needs the tagger on seeds + kept rows (train.students: [probe, ...])")
    answers = joblib.load(path).answers(list(dev["text"]))
    fails = t.failures(dev, answers).assign(source="dev")
    fails["predicted"] = fails["signature"]
    clustered, _, seconds = learn.cluster(cfg, fails, [f"{s}: {x}" for s, x in zip(fails["signature"], fails["text"])])
    summary = clusters.summarize(clustered)  # named "tool → signature"
    save_rows(stage, clustered, "failures")
    stage.save(summary, "clusters")
    s = t.score(dev, answers, bootstrap=0)
    metrics = {
        "dev_rows": len(dev),
        "dev_slot_f1": s["slot_f1"],
        "dev_tool_accuracy": s["tool_accuracy"],
        "failures": len(fails),
        "signatures": fails["signature"].value_counts().head(10).to_dict(),
        "clusters": int((summary["cluster"] >= 0).sum()),
        "noise": int((clustered["cluster"] == -1).sum()),
        "cluster_seconds": round(seconds, 1),
    }
    return clustered, summary, metrics


def gaps_markdown(m: dict) -> str:
    return (
        f"Tagger on seeds + kept rows, on **{m['dev_rows']} real dev rows: slot F1 {m['dev_slot_f1']:.3f}, tool "
        f"accuracy {m['dev_tool_accuracy']:.1%}**. {m['failures']} failures; **{m['clusters']} clusters**, "
        f"{m['noise']} noise points (UMAP + HDBSCAN in {m['cluster_seconds']:.1f} s). Most common signatures: "
        f"{m['signatures']}."
    )


def _value_list_edit(cfg: RunConfig, tool: str, g: pd.DataFrame, cluster: int, done: set) -> dict | None:
    """A `values` edit for the argument (of `tool`) that cluster `g`'s failures of `tool` most often
    miss or get wrong, with its real values there that the config lacks; None when there is none
    (or that argument had its edit already: `done` holds "tool.argument")."""
    g = g[g["tool"] == tool]
    missed = [
        sig.split(":", 1)[1] for x in g["signature"] for sig in x.split() if sig.startswith(("missing:", "wrong:"))
    ]
    if not missed:
        return None
    arg = pd.Series(missed).value_counts().index[0]
    if cfg.task.type == "extraction":
        label, known = arg, next((f.values for f in cfg.task.fields if f.name == arg), [])
    else:
        label = f"{tool}.{arg}"
        known = next((t.parameters[arg].values for t in cfg.task.tools if t.name == tool and arg in t.parameters), [])
    if label in done:
        return None
    seen = {structured.norm(v) for v in known}
    new = []
    for exp in g["expected"]:
        v = str((exp.get("arguments") or {}).get(arg, ""))
        if v and structured.norm(v) not in seen:
            seen.add(structured.norm(v))
            new.append(v)
    if not new:
        return None
    done.add(label)
    n = sum(1 for x in g["signature"] if f"missing:{arg}" in x.split() or f"wrong:{arg}" in x.split())
    return {
        "kind": "values",
        "cluster": int(cluster),
        "label": label,
        "other": None,
        "path": f"task.fields.{arg}.values" if label == arg else f"task.tools.{tool}.parameters.{arg}.values",
        "value": new[:8],
        "evidence": (
            f"cluster {cluster}: {n} real dev rows of {tool} miss or get '{arg}' wrong; their values "
            f"{new[:8]} are not in the config's list yet. 01 draws from them."
        ),
    }


def config_patch(stage: Stage, clustered: pd.DataFrame, summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """07's edits: per cluster, largest first, more generated rows for the tool its failures are
    about (`sampling.extra_rows`, read by 01's plan; each tool once), and a value list for the
    argument the cluster most often misses or gets wrong: its values in those real dev rows that
    the config does not list yet (`values`, drawn from by 01). At most `gaps.max_edits`. Writes
    `config_patch.yaml` (applied by `workbench iterate`) and saves `edits`."""
    cfg = stage.cfg
    extra = cfg.gaps.extra_rows or cfg.sampling.rows_per_label
    dev_counts = load_rows(stage, "dev")["tool"].value_counts().to_dict()
    edits, done = [], set()
    for s in summary[summary["cluster"] >= 0].sort_values(["size", "cluster"], ascending=[False, True]).itertuples():
        tool = s.dominant_true
        if tool == structured.NO_TOOL:
            continue
        # the cluster's failures of its dominant tool (a cluster may hold a few of other tools)
        g = clustered[(clustered["cluster"] == s.cluster) & (clustered["tool"] == tool)]
        value_edit = _value_list_edit(cfg, tool, g, s.cluster, done)
        if value_edit is not None:
            edits.append(value_edit)
        if tool in done:
            continue
        done.add(tool)
        edits.append(
            {
                "kind": "more_rows",
                "cluster": int(s.cluster),
                "label": tool,
                "other": None,
                "path": gaps.PATHS["more_rows"].format(label=tool),
                "value": int(extra),
                "evidence": (
                    f"cluster {s.cluster}: {len(g)} of {dev_counts.get(tool, 0)} real dev rows of {tool} fail as "
                    f"'{s.dominant_predicted}' (e.g. \"{g['text'].iloc[0]}\"). {extra} more requests for {tool}."
                ),
            }
        )
        if len(edits) >= cfg.gaps.max_edits:
            break
    return learn.write_patch(stage, edits)
