"""The stage bodies of tool calls and extraction, 00-04, over the task module (`tasks.tools`): 00
the tools and the real rows, 01 answer-first requests, 02 answers under the schema, 03 the
verifiable checks, best-of-N and DPO pairs, 04 the final filter with the exports (`flows.structured`
makes their pages' results). Rows keep their answers as dicts; artifacts store those
columns as JSON text (`save_rows`, `load_rows`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import embed, export, filters, judge, plan, plan_structured, structured, tasks
from workbench.config import RunConfig
from workbench.files import cache_dir
from workbench.live import LiveView
from workbench.stage import Stage

log = logging.getLogger(__name__)

JSON_COLUMNS = ("arguments", "answer", "field_agreement", "expected", "values")


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
    critic = stage.llm("critic") if cfg.prompts.critique else None
    rows = tasks.of(cfg).generate_inputs(cfg, load_rows(stage, "seeds"), stage.llm("generator"), critic)
    seconds, sugg = rows.attrs.pop("seconds"), pd.DataFrame(rows.attrs.pop("suggestion_calls"))
    keys = plan_structured.KEYS
    plan.record_throughput(cfg, cache_dir(), keys["suggestions"], sugg, seconds["suggestions"])
    plan.record_throughput(cfg, cache_dir(), keys["generation"], rows, seconds["messages"], generated=len(rows),
                           kept=int(rows["keep"].sum()))  # fmt: skip
    if "critique_raw" in rows:
        plan.record_critic(cfg, cache_dir(), rows, seconds["critique"])
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
        "critic": rows["critique_action"].fillna("unparseable").value_counts().to_dict()
        if "critique_action" in rows
        else None,
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
    if len(cands):  # per request: its candidates' tokens, cached when all were
        calls = cands.groupby("row").agg(cached=("cached", "all"), completion_tokens=("completion_tokens", "sum"))
        plan.record_throughput(cfg, cache_dir(), plan_structured.KEYS["candidates"], calls, seconds)
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
    t0 = time.perf_counter()
    judgments = judge.run_judgments(cfg, stage.jury(), reqs, keys, "03 judge on the answers")
    plan.record_throughput(cfg, cache_dir(), plan_structured.KEYS["rubric"], judgments, time.perf_counter() - t0)
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
