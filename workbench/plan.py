"""Before a run: what it will cost. After a run: which config field enforced what.

`estimate(cfg, labels)` counts, per stage, the LLM calls and tokens a run will spend, the cost
(when `llm.price_*` are set) and the wall time expected from the throughput measured on this
machine for this provider and model (`record_throughput`, written by stages 01 and 03).

`gate_table(cfg, rows)` lists every config field that constrains the data, the stage and gate
that enforced it, and how many rows it rejected (or, for generation-grid fields, what it produced).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench import critique, judge, plan_structured, prompts, responses, tasks
from workbench.causal import TRAINER_DEFAULTS
from workbench.config import (
    STAGE_ORDER,
    RunConfig,
    _get,
    enforcer,
    leaf_fields,
    plan_counts,
    task_kind,
    to_yaml_value,
)
from workbench.files import write_atomic
from workbench.llm.decode import local_identity
from workbench.plan_text import (  # noqa: F401 (text_task and the parts: asked of plan as before)
    CHARS_PER_TOKEN,
    earlier_turn_parts,
    input_chars,
    reply_parts,
    reply_rating_chars,
    reply_students,
    text_task,
)

log = logging.getLogger(__name__)

PREVIEW_PER_LABEL = 3
REJECT_SHARE = 0.5  # 01's share of rejected prompts until a run here has measured it
DATA_SECTIONS = ("task", "data", "sampling", "quality", "diversity", "prompts", "responses", "judge", "filter")
# one estimate row per stage: runs.STAGES, which this module sits below (runs imports nothing of it)
STAGE_NAMES = STAGE_ORDER
LLM_PARTS = ("00_task", "01_prompts", "02_responses", "03_judge", "04_filter")  # stages whose calls are estimated
REPLY_LLM_PARTS = ("05_train", "06_evaluate", "07_gaps")  # replies' judges answer in these too (`reply_parts`)
KEEP_STAGE_RECORDS = 6  # per stage: the line through the last runs' (rows, seconds)
# Until a stage has run on this machine, its seconds outside the LLM are those of two reference
# runs on the 2-core Xeon (the smoke config, the session smoke run of `.ci/run`; and `make demo`),
# each scaled by this machine's calibration against the calibration that run made of its own
# machine (the Xeon's speed drifted 2× over a day). docs/timings.md ("Estimates") says how they
# were measured; a stage that runs here replaces them.
REFERENCE = {
    "machine": "2-core Xeon, AVX512, float32",
    "runs": {"smoke": 0.00234, "demo": 0.00218},  # each run's own calibration: seconds per prompt token
    "stages": {  # stage: [(run, work units, seconds outside the LLM), …]
        "00_task": [("smoke", 30, 14.0), ("demo", 462, 19.1)],
        "01_prompts": [("smoke", 30, 18.0), ("demo", 462, 22.3)],
        "02_responses": [("smoke", 30, 4.9), ("demo", 462, 9.5)],
        "03_judge": [("smoke", 30, 5.2), ("demo", 462, 15.7)],
        "04_filter": [("smoke", 30, 10.2), ("demo", 462, 11.4)],
        "05_train": [("smoke", 126, 71.8), ("demo", 1278, 493.9)],
        "06_evaluate": [("smoke", 26, 73.2), ("demo", 435, 353.0)],
        "07_gaps": [("smoke", 30, 35.4), ("demo", 462, 16.3)],
        "99_report": [("smoke", 30, 16.3), ("demo", 462, 17.1)],
    },
}


def _identity(cfg: RunConfig) -> str:
    llm = cfg.llm
    return f"{llm.provider}/{llm.model}" + (f"@{local_identity(llm.dtype)}" if llm.provider == "local" else "")


# the role whose model answers each part's calls (and whose prices it costs)
PART_ROLE = {"preview": "generator", "suggestions": "generator", "generation": "generator", "critic": "critic", "candidates": "generator",
             "rubric": "judge", "rewrite": "generator", "pairwise": "judge", "judge reward": "judge",
             "safety judge": "refusal_judge", "dev rubric": "judge", "dev pairwise": "judge",
             "cluster names": "namer", "earlier turns": "generator", "earlier replies": "generator"}  # fmt: skip


def _cost(cfg: RunConfig, role: str, prompt_tokens: float, completion_tokens: float) -> float:
    """What a part's tokens cost at the prices of its role's models (the judge's shared among its
    jurors' models); NaN when none of them has a price."""
    names = cfg.roles.names(role)
    out = []
    for name in names:
        m = cfg.model_named(name)
        if m.price_input_per_1m is not None or m.price_output_per_1m is not None:
            p_in, p_out = m.price_input_per_1m or 0, m.price_output_per_1m or 0
            out.append((prompt_tokens * p_in + completion_tokens * p_out) / 1e6 / len(names))
    return sum(out) if out else math.nan


def _throughput_file(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "throughput.json"


def _read(cache_dir: str | Path | None) -> dict:
    if cache_dir is None or not _throughput_file(cache_dir).is_file():
        return {}
    try:
        return json.loads(_throughput_file(cache_dir).read_text())
    except ValueError:  # a file cut by a crash: estimates start over rather than fail a stage
        return {}


def _update(cache_dir: str | Path, key: str, value: Any) -> None:
    data = _read(cache_dir)
    data[key] = value
    write_atomic(_throughput_file(cache_dir), json.dumps(data, indent=2))  # its temporary file is per process


def record_critic(cfg: RunConfig, cache_dir: str | Path, rows: pd.DataFrame, seconds: float) -> None:
    """`record_throughput` of 01's critic, from the rows it reviewed (their critique_cached and
    critique_tokens columns)."""
    crit = rows[rows["critique_raw"].notna()]
    crit = crit.assign(cached=crit["critique_cached"], completion_tokens=crit["critique_tokens"])
    record_throughput(cfg, cache_dir, "01_critic", crit, seconds)


def record_throughput(
    cfg: RunConfig, cache_dir: str | Path, stage: str, rows: pd.DataFrame, seconds: float, **extra: Any
) -> None:
    """Remember how fast this provider/model answered uncached calls of `stage` (for estimates);
    `extra`: what else the estimate reads (01: how many prompts it generated for how many kept)."""
    fresh = rows[~rows["cached"].astype(bool)] if "cached" in rows else rows
    if len(fresh) == 0 or seconds <= 0:
        return
    _update(
        cache_dir,
        f"{_identity(cfg)}/{stage}",
        {
            "calls": len(fresh),
            "completion_tokens": int(fresh["completion_tokens"].fillna(0).sum()),
            "seconds": round(seconds, 2),
            "batch_size": cfg.llm.batch_size if cfg.llm.provider == "local" else cfg.llm.max_concurrency,
            **extra,
        },
    )


def _measured(cfg: RunConfig, known: dict, stage: str) -> dict | None:
    """What `known` (throughput.json's contents) holds of `stage`'s calls with this provider and model."""
    return known.get(f"{_identity(cfg)}/{stage}")


def calibration(
    cfg: RunConfig, cache_dir: str | Path | None, llm: Any = None, plan: pd.DataFrame | None = None
) -> tuple[dict | None, float]:
    """This machine's speed for the embedded model at the config's batch size, and the seconds
    spent measuring it now (0 when it was known): seconds per prompt token read and per decoding
    step of a full batch, measured once (some seconds: real and short requests,
    `_LocalModel.calibrate`) and kept in the cache's throughput.json. None for an endpoint (its
    calls are timed by the stages) or when no LLM is given."""
    if cfg.llm.provider != "local":
        return None, 0.0
    key = f"calibration/{_identity(cfg)}/batch{cfg.llm.batch_size}"
    known = _read(cache_dir).get(key)
    if known or llm is None or plan is None or plan.empty or cache_dir is None:
        return known, 0.0
    t0 = time.perf_counter()
    found = llm.calibrate(list(plan["request"]), cfg.llm.batch_size)
    spent = time.perf_counter() - t0
    log.info("calibrated %s at batch %d in %.1f s: %s", _identity(cfg), cfg.llm.batch_size, spent, found)
    _update(cache_dir, key, found)
    return found, spent


def _local_seconds(cal: dict, calls: float, n: int, prompt_tokens: float, max_tokens: int) -> float:
    """Seconds the embedded model takes for `calls` requests of `n` candidates each: every distinct
    prompt read once, then `max_tokens` steps per batch of `batch_size` rows (rows rarely stop
    early), a step costing between the calibrated cost for one row and for a full batch."""
    b = cal["batch_size"]
    one = cal.get("step_s_batch1", cal["step_s"] / b)

    def step(rows: float) -> float:
        return one + (cal["step_s"] - one) * (rows - 1) / max(b - 1, 1)

    items = calls * n
    full, rest = divmod(items, b)
    steps = max_tokens * (full * cal["step_s"] + (step(rest) if rest >= 0.5 else 0.0))
    return calls * prompt_tokens * cal["prefill_s_per_token"] + steps


def work_units(cfg: RunConfig, stage: str, counts: dict[str, int]) -> float:
    """The size of a stage's work that its time grows with: generated rows for most stages;
    examples seen in training for 05 (steps × batch size of each method, plus the probes' rows);
    rows scored for 06 (test rows per label × labels for the causal students, plus the safety
    rows; the test split is not read before 06, so a null count is taken as Banking77's 40)."""
    rows = float(max(sum(counts.values()), 1))
    if stage == "06_evaluate":
        per_label = cfg.evaluate.causal_test_per_label or cfg.data.test_per_label or 40
        safety = 520 if cfg.evaluate.safety_rows is None else cfg.evaluate.safety_rows  # None: all of AdvBench
        return float(per_label * max(len(counts), 1) + safety)
    if stage != "05_train" or "causal" not in cfg.train.students:
        return rows
    total = rows
    for m in cfg.train.methods:
        a = {**TRAINER_DEFAULTS[m], **getattr(cfg.train, m)}
        batch = a.get("per_device_train_batch_size", 8)
        steps = a.get("max_steps") or math.ceil(a.get("num_train_epochs", 1) * rows / batch)
        total += steps * batch * (a.get("num_generations", 1) if m == "grpo" else 1)
    return total


def record_stage(cfg: RunConfig, cache_dir: str | Path, stage: str, seconds: float, llm_seconds: float, units: float):
    """Remember a finished stage's time outside its LLM calls, with the size of its work (the
    estimate draws a line through the last few)."""
    key = _stage_key(cfg, stage)
    past = [r for r in _read(cache_dir).get(key, []) if r.get("units") != units]
    # 06's safety judge and 07's cluster names are few calls the estimate does not count apart:
    # their seconds stay in the stage's own
    llm_parts = LLM_PARTS + (REPLY_LLM_PARTS if text_task(cfg) else ())
    other = max(seconds - llm_seconds, 0.0) if stage in llm_parts else seconds
    _update(cache_dir, key, ([*past, {"units": units, "other_seconds": round(other, 2)}])[-KEEP_STAGE_RECORDS:])


def _stage_key(cfg: RunConfig, stage: str) -> str:
    """Where a stage's measured seconds are kept: each task type but classification under its task
    module's name (a tool-call 01, a reply's training or a summary's evaluation are other work than
    classification's, and than each other's, though replies and summaries share their pages)."""
    folder = tasks.of(cfg).__name__.rsplit(".", 1)[-1]
    return f"stages/{folder}/{stage}" if folder != "classification" else f"stages/{stage}"


def _other_seconds(
    known: dict, stage: str, units: float, cal: dict | None, key: str, reference: bool = True
) -> tuple[float, str]:
    """A stage's seconds outside LLM calls for work of `units`, from the runs measured here: the
    same size read as it was, else a line through two sizes or more, else in proportion to one.
    A stage never run here: the reference runs (REFERENCE) scaled by this machine's calibration
    against the reference machine's, or unknown without a calibration."""
    past = known.get(key, [])
    how = "here"
    if not past:
        if not cal or stage not in REFERENCE["stages"] or not reference:
            return math.nan, "not run on this machine yet"
        past = [
            {"units": u, "other_seconds": sec * cal["prefill_s_per_token"] / REFERENCE["runs"][run]}
            for run, u, sec in REFERENCE["stages"][stage]
        ]
        how = f"in the reference runs ({REFERENCE['machine']}), scaled by this machine's calibration against theirs"
    same = [r for r in past if r["units"] == units]
    if same:
        return same[-1]["other_seconds"], f"as last time {how}"
    if len(past) >= 2:
        x = np.array([r["units"] for r in past], dtype=float)
        y = np.array([r["other_seconds"] for r in past], dtype=float)
        slope, fixed = np.polyfit(x, y, 1)
        slope, fixed = max(slope, 0.0), max(fixed, 0.0)
        return fixed + slope * units, f"a line through {len(past)} runs {how}"
    r = past[-1]
    return r["other_seconds"] * units / r["units"], f"scaled from one run {how} ({r['units']:g} → {units:g})"


def expected_generations(cfg: RunConfig, n: int, reject_share: float) -> float:
    """Prompts 01 generates for `n` planned ones when `reject_share` of them fail the gates: round 1,
    then top-up rounds of `topup_factor` × the prompts still missing."""
    calls, missing = float(n), n * reject_share
    for _ in range(cfg.prompts.rounds - 1):
        if missing < 0.5:
            break
        add = math.ceil(cfg.prompts.topup_factor * missing)
        calls += add
        missing = max(0.0, missing - add * (1 - reject_share))
    return calls


def estimate(
    cfg: RunConfig,
    labels: list[str],
    train_counts: dict | None = None,
    cache_dir: str | Path | None = None,
    seeds: pd.DataFrame | None = None,
    llm: Any = None,
) -> pd.DataFrame:
    """One row per stage: its LLM calls, prompt and completion tokens, cost, and the seconds
    expected on this machine, each with how it was obtained.

    LLM seconds: for a stage that ran here with this provider and model, its measured seconds per
    call; else, for the embedded model, this machine's calibration (`calibration`, measured once
    with `llm`); an endpoint not measured yet gets none. 01's requests already in the cache cost
    nothing. Seconds outside the LLM (loading, gates, training, figures): from the stage's earlier
    runs here (`record_stage`), scaled to this run's size."""
    counts = plan_counts(cfg, labels, train_counts)
    if seeds is None:
        seeds = pd.DataFrame({"id": [], "text": [], "label": []})
    if tasks.of(cfg).FLOW == "structured":  # answer first: suggestions, then a message per cell
        parts, n_gen, reject, share, cal, calibrating, known = _structured(cfg, seeds, cache_dir, llm)
    else:
        parts, n_gen, reject, share, cal, calibrating, known = _parts(cfg, labels, train_counts, cache_dir, seeds, llm)
    return _table(cfg, parts, counts, n_gen, reject, share, cal, calibrating, known)


def _structured(cfg: RunConfig, seeds: pd.DataFrame, cache_dir, llm) -> tuple:
    """`estimate`'s parts for tool calls and extraction (`plan_structured`): 01's planned requests
    (the suggestions, round 1's messages) calibrate the embedded model, and the share of the
    suggestions already cached stands for the run's later calls."""
    planned = tasks.of(cfg).planned_requests(cfg, seeds)
    cal, calibrating = calibration(cfg, cache_dir, llm, planned)
    known = _read(cache_dir)
    m01 = _measured(cfg, known, plan_structured.KEYS["generation"]) or {}
    reject = 1 - m01["kept"] / m01["generated"] if m01.get("generated") else REJECT_SHARE
    sugg = list(planned.loc[planned["part"] == "suggestion", "request"])
    share = llm.cached_count(sugg) / len(sugg) if llm is not None and sugg else 0.0
    cells = int((planned["part"] == "message").sum())
    return plan_structured.parts(cfg, planned, seeds, reject, share), cells, reject, share, cal, calibrating, known


def _parts(cfg: RunConfig, labels, train_counts, cache_dir, seeds: pd.DataFrame, llm) -> tuple:
    """`estimate`'s parts for classification, replies and summaries: 01's round 1 is
    `prompts.generation_requests`, 00's preview its first rows per label."""
    counts = plan_counts(cfg, labels, train_counts)
    n_gen = sum(counts.values())
    plan = prompts.generation_requests(cfg, seeds, labels, train_counts)
    gen_chars = sum(len(c) for r in plan["request"] for _, c in r.messages) / max(len(plan), 1)
    cal, calibrating = calibration(cfg, cache_dir, llm, plan)
    known = _read(cache_dir)  # after the calibration, which may have added to it
    preview = min(PREVIEW_PER_LABEL, max(counts.values(), default=0)) * len(labels)
    cached = cached_preview = 0
    if llm is not None and len(plan):  # 01's round 1 is `plan`; 00's preview its first rows per label
        cached = llm.cached_count(list(plan["request"]))
        first = plan[plan.groupby("label").cumcount() < PREVIEW_PER_LABEL]
        cached_preview = llm.cached_count(list(first["request"]))
        preview = len(first)
    judge_chars = len(judge.SYSTEM) + len(judge.USER[0]) + 80 + 60 * (1 + cfg.judge.anchor)  # + criterion, message
    per_row = cfg.responses.candidates if text_task(cfg) else 1  # reply: each candidate is judged
    known_items = 2 * cfg.judge.calibration_rows if cfg.data.dataset else 0  # the calibration's good and bad
    judge_calls = (n_gen * per_row + known_items) * len(judge.rubric(cfg)) * len(cfg.jurors())
    resp_chars = len(responses.SYSTEM) + len(responses.USER) + 40 * cfg.responses.choices + 60
    if text_task(cfg):  # the assistant's instructions, then the message; the judge reads the reply too
        resp_chars = len(tasks.of(cfg).system_prompt(cfg)) + input_chars(cfg)
        judge_chars = reply_rating_chars(cfg)
    critic_chars = len(critique.SYSTEM) + len(critique.USER) + 40 + 4 * 60  # + topic, 3 peers and the message
    m01 = _measured(cfg, known, "01_prompts") or {}
    reject = 1 - m01["kept"] / m01["generated"] if m01.get("generated") else REJECT_SHARE
    generated = expected_generations(cfg, n_gen, reject)
    # Later calls depend on 01's answers, so which are cached is not known before 01 runs; a run is
    # deterministic given its config and seeds, so they are taken to be cached in the share 01's
    # first round is (a run done before is all cached, a new one not at all).
    share = cached / len(plan) if len(plan) else 0.0
    # (stage, part, calls, candidates per call, prompt chars per call, max tokens, measured key, calls already cached)
    parts = [
        ("00_task", "preview", preview, 1, gen_chars, cfg.prompts.max_tokens, "01_prompts", cached_preview),
        # the preview's rows are in the cache by the time 01 runs
        ("01_prompts", "generation", generated, 1, gen_chars, cfg.prompts.max_tokens, "01_prompts",
         cached + preview - cached_preview + (generated - n_gen) * share),
        *([("01_prompts", "critic", generated, 1, critic_chars, cfg.prompts.critic_max_tokens, "01_critic",
            generated * share)] if cfg.prompts.critique else []),
        *earlier_turn_parts(cfg, n_gen, share),
        ("02_responses", "candidates", n_gen, cfg.responses.candidates, resp_chars, cfg.responses.max_tokens,
         "02_responses", n_gen * share),
        *([("03_judge", "rubric", judge_calls, 1, judge_chars, cfg.judge.max_tokens, "03_judge", judge_calls * share)]
          if judge_calls else []),
        *([("04_filter", "rewrite", n_gen, 1, 200, cfg.filter.rewrite_max_tokens, "04_rewrite", n_gen * share)]
          if cfg.filter.rewrite else []),
        *(reply_parts(cfg, n_gen, len(labels), share) if text_task(cfg) else []),
    ]  # fmt: skip
    return parts, n_gen, reject, share, cal, calibrating, known


def _reference(cfg: RunConfig) -> bool:
    """Whether `REFERENCE`'s runs stand for this type's stages: they are classification's; a reply's
    or a tool call's training and evaluation are other work."""
    return tasks.of(cfg).FLOW == "classification"


def _table(cfg: RunConfig, parts: list[tuple], counts: dict, n_gen: int, reject: float, share: float,
           cal: dict | None, calibrating: float, known: dict) -> pd.DataFrame:  # fmt: skip
    """`estimate`'s table from the parts: per stage, calls, tokens, cost and seconds (measured
    here, else this machine's calibration), and the seconds outside the LLM."""
    rows = []
    for name in STAGE_NAMES:
        row = dict(stage=name, llm_calls=0, prompt_tokens=0.0, completion_tokens=0.0, completion_tokens_max=0)
        llm_s, basis, costs = 0.0, [], []
        for stage, part, calls, n, chars, max_tokens, key, hits in parts:
            if stage != name:
                continue
            m = _measured(cfg, known, key)
            mean_out = m["completion_tokens"] / m["calls"] if m else max_tokens * n
            fresh = max(calls - hits, 0)
            row["llm_calls"] += int(round(calls))
            row["prompt_tokens"] += calls * chars / CHARS_PER_TOKEN
            row["completion_tokens"] += calls * mean_out
            costs.append(_cost(cfg, PART_ROLE[part], calls * chars / CHARS_PER_TOKEN, calls * mean_out))
            row["completion_tokens_max"] += int(round(calls)) * max_tokens * n
            if m:
                llm_s += fresh * m["seconds"] / m["calls"]
                basis.append(f"{part}: {m['calls']} calls took {m['seconds']:g} s here")
            elif cal:
                llm_s += _local_seconds(cal, fresh, n, chars / CHARS_PER_TOKEN, max_tokens)
                basis.append(f"{part}: this machine's calibration")
            else:
                llm_s = math.nan
                basis.append(f"{part}: endpoint not measured yet")
            if hits >= 0.5:
                basis[-1] += f" ({hits:.0f} of {calls:.0f} calls cached" + (
                    f", {share:.0%} as in 01's first round)" if stage not in ("00_task",) and share else ")"
                )
            if stage == "01_prompts" and part == "generation" and cfg.prompts.rounds > 1:
                basis[-1] += f"; {n_gen} planned, {calls:g} expected with top-ups ({reject:.0%} rejected)"
        if cal and llm_s == llm_s and any(st == name and calls > hits for st, _, calls, *_, hits in parts):
            llm_s += cal.get("load_s", 0.0)  # the model loads where a call is not in the cache
            basis.append(f"model load: {cal.get('load_s', 0.0):.0f} s")
        if name == "00_task" and calibrating:  # spent already, in this stage
            llm_s += calibrating
            basis.append(f"calibration: {calibrating:.0f} s, just now")
        units = work_units(cfg, name, counts)
        other, how = _other_seconds(known, name, units, cal, _stage_key(cfg, name), reference=_reference(cfg))
        row["cost"] = sum(c for c in costs if c == c) if any(c == c for c in costs) else math.nan
        row["llm_seconds"] = llm_s if row["llm_calls"] else 0.0
        row["other_seconds"] = other
        row["seconds"] = (
            row["llm_seconds"] + other
            if not math.isnan(other)
            else (row["llm_seconds"] if row["llm_calls"] else math.nan)
        )
        row["time_basis"] = "; ".join([*basis, f"rest: {how}"])
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in ("prompt_tokens", "completion_tokens"):
        out[c] = out[c].round().astype(int)
    total = out[["llm_calls", "prompt_tokens", "completion_tokens", "completion_tokens_max"]].sum()
    total_row = {"stage": "total", **total.to_dict(), "cost": out["cost"].sum(min_count=1)}
    total_row.update(
        llm_seconds=out["llm_seconds"].sum(min_count=1),
        other_seconds=out["other_seconds"].sum(min_count=1),
        seconds=out["seconds"].sum(min_count=1),
        time_basis="stages not measured here yet count as 0" if out["seconds"].isna().any() else "",
    )
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
