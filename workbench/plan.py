"""Before a run: what it will cost. After a run: which config field enforced what.

`estimate(cfg, labels)` counts, per stage, the LLM calls and tokens a run will spend, the cost
(when `llm.price_*` are set) and the wall time expected from the throughput measured on this
machine for this provider and model (`record_throughput`, written by stages 01 and 03).

`gate_table(cfg, rows)` lists every config field that constrains the data, the stage and gate
that enforced it, and how many rows it rejected (or, for generation-grid fields, what it produced).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from workbench import critique, judge, precision, prompts, responses
from workbench.config import RunConfig, _get, enforcer, leaf_fields, plan_counts, task_kind, to_yaml_value
from workbench.files import write_atomic

CHARS_PER_TOKEN = 4.0  # rough rule for English prompts; the estimate says it is rough
PREVIEW_PER_LABEL = 3
# Used only until a run on this machine has measured the provider: the embedded model in bfloat16
# at batch 48 on the 2-core development machine (README, "Timings").
DEFAULT_LOCAL_TOKENS_PER_S = 119.0
DATA_SECTIONS = ("task", "data", "sampling", "quality", "diversity", "prompts", "responses", "judge", "filter")


def _identity(cfg: RunConfig) -> str:
    llm = cfg.llm
    return f"{llm.provider}/{llm.model}" + (f"@{precision.resolve(llm.dtype)}" if llm.provider == "local" else "")


def _throughput_file(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "throughput.json"


def record_throughput(cfg: RunConfig, cache_dir: str | Path, stage: str, rows: pd.DataFrame, seconds: float) -> None:
    """Remember how fast this provider/model answered uncached calls of `stage` (for estimates)."""
    fresh = rows[~rows["cached"].astype(bool)] if "cached" in rows else rows
    if len(fresh) == 0 or seconds <= 0:
        return
    path = _throughput_file(cache_dir)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[f"{_identity(cfg)}/{stage}"] = {
        "calls": len(fresh),
        "completion_tokens": int(fresh["completion_tokens"].fillna(0).sum()),
        "seconds": round(seconds, 2),
        "batch_size": cfg.llm.batch_size if cfg.llm.provider == "local" else cfg.llm.max_concurrency,
    }

    write_atomic(path, json.dumps(data, indent=2))  # its temporary file is per process: runs may share the cache


def _measured(cfg: RunConfig, cache_dir: str | Path | None, stage: str) -> dict | None:
    if cache_dir is None or not _throughput_file(cache_dir).is_file():
        return None
    return json.loads(_throughput_file(cache_dir).read_text()).get(f"{_identity(cfg)}/{stage}")


def estimate(
    cfg: RunConfig,
    labels: list[str],
    train_counts: dict | None = None,
    cache_dir: str | Path | None = None,
    seeds: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per LLM stage: calls, prompt and completion tokens (completion at most max_tokens and,
    where measured, the measured mean), cost and expected seconds, with how each was obtained."""
    counts = plan_counts(cfg, labels, train_counts)
    n_gen = sum(counts.values())
    if seeds is None:
        seeds = pd.DataFrame({"id": [], "text": [], "label": []})
    plan = prompts.generation_requests(cfg, seeds, labels, train_counts)
    gen_chars = sum(len(c) for r in plan["request"] for _, c in r.messages)
    judge_chars = len(judge.SYSTEM) + len(judge.USER[0]) + 80 + 60 * (1 + cfg.judge.anchor)  # + criterion, message
    judge_calls = n_gen * len(judge.rubric(cfg)) * cfg.judge.jurors
    resp_chars = len(responses.SYSTEM) + len(responses.USER) + 40 * cfg.responses.choices + 60
    critic_chars = len(critique.SYSTEM) + len(critique.USER) + 40 + 4 * 60  # + topic, 3 peers and the message
    stages = [
        ("00_task (preview)", min(PREVIEW_PER_LABEL, max(counts.values(), default=0)) * len(labels), 0.0, "01_prompts"),
        ("01_prompts", n_gen, gen_chars / max(n_gen, 1), "01_prompts"),
        *([("01_prompts (critic)", n_gen, critic_chars, "01_critic")] if cfg.prompts.critique else []),
        ("02_responses", n_gen, resp_chars, "02_responses"),
        *([("03_judge", judge_calls, judge_chars, "03_judge")] if judge_calls else []),
        *([("04_filter (rewrite)", n_gen, 200, "04_rewrite")] if cfg.filter.rewrite else []),
    ]
    max_tokens = {
        "01_prompts": cfg.prompts.max_tokens,
        "01_critic": cfg.prompts.critic_max_tokens,
        "02_responses": cfg.responses.max_tokens * cfg.responses.candidates,
        "03_judge": cfg.judge.max_tokens,
        "04_rewrite": cfg.filter.rewrite_max_tokens,
    }
    rows = []
    for name, calls, chars_per_call, key in stages:
        m = _measured(cfg, cache_dir, key)
        mean_out = m["completion_tokens"] / m["calls"] if m else max_tokens[key]
        prompt_tok = calls * chars_per_call / CHARS_PER_TOKEN
        out_tok = calls * mean_out
        if name.startswith("00"):  # the preview asks for the first rows of 01's plan: 01 then reads them from cache
            prompt_tok = calls * (gen_chars / max(n_gen, 1)) / CHARS_PER_TOKEN
        if m:
            seconds, how = calls * m["seconds"] / m["calls"], f"measured here: {m['calls']} calls in {m['seconds']} s"
        elif cfg.llm.provider == "local":
            seconds, how = out_tok / DEFAULT_LOCAL_TOKENS_PER_S, f"{DEFAULT_LOCAL_TOKENS_PER_S} tok/s (README)"
        else:
            seconds, how = math.nan, "not measured yet for this endpoint"
        if key == "01_prompts" and cfg.prompts.rounds > 1:
            how += (
                f"; round 1 only: up to {cfg.prompts.rounds - 1} top-up rounds add "
                f"{cfg.prompts.topup_factor:g}× the prompts still missing"
            )
        price_in, price_out = cfg.llm.price_input_per_1m, cfg.llm.price_output_per_1m
        cost = (
            (prompt_tok * (price_in or 0) + out_tok * (price_out or 0)) / 1e6
            if price_in is not None or price_out is not None
            else math.nan
        )
        rows.append(
            {
                "stage": name,
                "llm_calls": int(calls),
                "prompt_tokens": int(round(prompt_tok)),
                "completion_tokens": int(round(out_tok)),
                "completion_tokens_max": int(calls * max_tokens[key]),
                "cost": cost,
                "seconds": seconds,
                "time_basis": how,
            }
        )
    out = pd.DataFrame(rows)
    total = out[["llm_calls", "prompt_tokens", "completion_tokens", "completion_tokens_max"]].sum()
    total_row = {"stage": "total", **total.to_dict(), "cost": out["cost"].sum(min_count=1)}
    total_row.update(seconds=out["seconds"].sum(min_count=1), time_basis="")
    return pd.concat([out, pd.DataFrame([total_row])], ignore_index=True)


def _value(cfg: RunConfig, dotted: str):
    v = to_yaml_value(_get(cfg, dotted))
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 80 else text[:77] + "…"


_GRID_COLUMNS = {
    "diversity.personas": "persona",
    "diversity.tones": "tone",
    "diversity.difficulty": "difficulty",
    "diversity.sentiment": "sentiment",
    "diversity.entities": "entity",
    "diversity.edge_case_share": "edge_case",
    "diversity.refusal_share": "refusal",
    "task.edge_cases": "edge_case",
    "sampling.rows_per_label": "label",
    "sampling.total_rows": "label",
    "sampling.class_balance": "label",
    "sampling.extra_rows": "label",
}


def gate_table(cfg: RunConfig, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every field that constrains the data for this task type, its stage and gate, and what it did
    to `rows` (the 04_filter dataset: rows rejected with its reasons, or the grid cells produced)."""
    kind = task_kind(cfg.task)
    out = []
    for dotted in leaf_fields():
        if dotted.split(".")[0] not in DATA_SECTIONS:
            continue
        stage, gate, reasons, kinds = enforcer(dotted) or ("—", "NOT ENFORCED", (), None)
        if kinds is not None and kind not in kinds:
            continue
        rejected, effect = None, ""
        if rows is not None and reasons and "reject_reason" in rows:
            hit = rows["reject_reason"].isin(reasons)
            rejected = int(hit.sum())
            effect = ", ".join(f"{r} {int((rows['reject_reason'] == r).sum())}" for r in reasons)
        col = _GRID_COLUMNS.get(dotted)
        if rows is not None and col and col in rows:
            vc = rows[col].fillna("—").astype(str).value_counts()
            effect = "generated: " + ", ".join(f"{k} {v}" for k, v in vc.head(6).items())
            effect += " …" if len(vc) > 6 else ""
        if dotted == "quality.pii" and rows is not None and "pii_found" in rows:
            effect += f"; rows with PII found: {int(rows['pii_found'].notna().sum())}"
        out.append(
            {
                "field": dotted,
                "value": _value(cfg, dotted),
                "stage": stage,
                "gate": gate,
                "reject_reasons": ", ".join(reasons),
                "rows_rejected": rejected,
                "effect": effect,
            }
        )
    table = pd.DataFrame(out)
    table["rows_rejected"] = table["rows_rejected"].astype("Int64")  # <NA> where the field rejects nothing
    return table
