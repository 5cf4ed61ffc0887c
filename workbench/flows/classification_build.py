"""Classification's stage bodies, 00–04: the task and seeds, prompts, candidates, the judge and
the final filter; each returns its rows with the summary the page records, and the line it shows
(`flows.classification` makes the pages' results).
"""

from __future__ import annotations

import time
from functools import partial

import pandas as pd

from workbench import (
    data,
    embed,
    export,
    filters,
    gates,
    judge,
    plan,
    prompts,
    responses,
    tasks,
)
from workbench.config import ROW_SCHEMA, RunConfig, task_kind
from workbench.files import cache_dir, write_atomic
from workbench.live import LiveView
from workbench.llm import LLM
from workbench.stage import Stage
from workbench.tables import funnel_table, reject_counts

# ---------------------------------------------------------------- 00_task


def task(stage: Stage) -> tuple[list[str], pd.DataFrame, dict]:
    """00: the labels and the real seed examples (saved as `seeds`: id, text, label), with their counts."""
    cfg = stage.cfg
    task_type = tasks.of(cfg)
    labels, seeds = task_type.labels(cfg), task_type.seeds(cfg)
    stage.save(seeds, "seeds")
    summary = {"labels": len(labels), "seeds": len(seeds), "seeds_per_label": cfg.data.seeds_per_label}
    return labels, seeds, summary


def task_markdown(cfg: RunConfig, labels: list[str], seeds: pd.DataFrame) -> str:
    kind = task_kind(cfg.task)
    source = cfg.data.seeds_file or f"the {cfg.data.dataset} train split"
    return (
        f"**Task:** {cfg.task.description}  \n**Type:** {kind} · **Domain:** {cfg.task.domain} · "
        f"**LLM:** {cfg.models_line()}  \n**A row:** {ROW_SCHEMA[kind]['row']}  \n"
        f"**Evaluated by:** {ROW_SCHEMA[kind]['evaluated']} ({', '.join(cfg.evaluate.metrics)})  \n"
        f"{len(labels)} labels, {len(seeds)} seed examples from {source}."
    )


# ---------------------------------------------------------------- 01_prompts


def build_prompts(stage: Stage, llm: LLM | None = None) -> tuple[pd.DataFrame, dict]:
    """01: prompts generated over the grid by `llm` (default: the generator's), critiqued by the
    critic's and gated (`prompts.build_prompts`; its rows, rejects marked), saved as `prompts`; the
    summary counts kept, short cells, critiques, throughput."""
    cfg = stage.cfg
    llm = llm or stage.llm("generator")
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
        critic=stage.llm("critic"),
    )
    # replies with diversity.multi_turn_share: the earlier turns, each through the constraint gate
    rows = tasks.of(cfg).histories(
        cfg, rows, llm, check=lambda texts: gates.check_constraints(texts, [None] * len(texts), cfg)
    )
    wall = time.perf_counter() - t0
    stage.save(rows, "prompts")
    plan.record_throughput(
        cfg,
        cache_dir(),
        "01_prompts",
        rows,
        rows.attrs["seconds"]["generate"],
        generated=len(rows),
        kept=int(rows["keep_prompts"].sum()),
    )
    if cfg.prompts.critique:
        plan.record_critic(cfg, cache_dir(), rows, rows.attrs["seconds"]["critique"])
    fresh = rows[~rows["cached"]]
    short = prompts.shortfall(rows)
    contaminated = rows["contaminated_split"].value_counts().to_dict() if "contaminated_split" in rows else {}
    summary = {
        "target": rows["slot"].nunique(),
        "generated": len(rows),
        "kept": int(rows["keep_prompts"].sum()),
        "rounds": int(rows["round"].max()) + 1,
        "short_cells": len(short),
        "missing": int(short["missing"].sum()),
        "critiques_parsed": int(rows["critique_parsed"].sum()) if "critique_parsed" in rows else None,
        "critiques_unparseable": int((rows["critique_raw"].notna() & ~rows["critique_parsed"].astype(bool)).sum())
        if "critique_raw" in rows
        else None,
        "contamination_dev": int(contaminated.get("dev", 0)),
        "reasons": rows["reject_reason_prompts"].value_counts().to_dict(),
        "seconds": round(wall, 1),
        "completion_tokens": int(rows["completion_tokens"].fillna(0).sum()),
        "tokens_per_s": round(float(fresh["completion_tokens"].sum()) / wall, 1) if len(fresh) else None,
        "llm_calls": llm.stats["calls"],
        "llm_cached": llm.stats["cached"],
        "llm_errors": llm.stats["errors"],
        **(
            {"turns": {int(k): int(v) for k, v in rows.loc[rows["keep_prompts"], "turns"].value_counts().items()}}
            if "turns" in rows
            else {}
        ),
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
    llm = stage.llm("generator")
    n_prompts = int(prompt_rows["keep_prompts"].sum())
    view = LiveView(n_prompts * cfg.responses.candidates, llm.stats, stage.artifacts / "candidates.jsonl")
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


# ---------------------------------------------------------------- 03_judge


def judge_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict, dict]:
    """03: rubric judge and label jury over 02's rows (`judge.judge_rows`), best-of-N scores and DPO
    pairs; saves `judged`, `judgments`, `scored_candidates` and `pairs`. Returns the judged rows,
    the judgments, the pairs, the summary, and the agreement tables the page shows (`votes`,
    `alpha`, `queue`: the disagreement queue)."""
    cfg = stage.cfg
    t0 = time.perf_counter()
    rows, judgments = judge.judge_rows(
        cfg, stage.load("responses"), stage.load("candidates"), stage.load("seeds"), stage.jury(), cache_dir()
    )
    seconds = time.perf_counter() - t0
    cands = judge.score_candidates(stage.load("candidates"), rows)
    pairs = judge.preference_pairs(cands[cands["row_kept"]], cfg.judge.pair_margin)
    for df, name in ((rows, "judged"), (judgments, "judgments"), (cands, "scored_candidates"), (pairs, "pairs")):
        stage.save(df, name)
    plan.record_throughput(cfg, cache_dir(), "03_judge", judgments, seconds)
    votes = judge.vote_table(rows)
    alpha = judge.judge_alpha(judgments)
    queue = judge.disagreements(rows, cfg.judge.max_spread)
    calib = None
    if cfg.judge.calibration_rows and cfg.data.dataset and judge.rubric(cfg):
        known = judge.calibration_rows(cfg, tasks.of(cfg).dev(cfg), data.labels(cfg))
        scored, calib = judge.calibrate(cfg, known, stage.load("seeds"), stage.jury())
        stage.save(scored, "calibration_scores")
        stage.save(calib, "calibration")
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
        "krippendorff_alpha": alpha.set_index("dimension")["alpha"].to_dict(),
        "disagreements": len(queue),
        "pairs": int(pairs["pair"].sum()),
        "seconds": round(seconds, 1),
        "calibration_auc": calib["auc"].iloc[-1] if calib is not None and len(calib) else None,
    }
    tables = {"votes": votes, "alpha": alpha, "queue": queue, "calibration": calib}
    return rows, judgments, pairs, summary, tables


def judge_markdown(m: dict, votes: pd.DataFrame) -> str:
    voted = len(votes.dropna())
    return (
        f"**{m['kept']} of {m['judged']}** judged rows kept · rejects {m['reasons'] or 'none'} · "
        f"jury Fleiss' κ = {m['fleiss_kappa']:.2f} over {voted} fully voted rows · "
        f"{m['disagreements']} rows in the disagreement queue · {m['pairs']} DPO pairs"
    )


def judge_report_markdown(j: dict) -> str:
    """99's line on 03, from its recorded metrics."""
    return (
        f"Rubric {j.get('rubric')} × {j.get('jurors')} juror(s); mean score {j.get('mean_score')}; "
        f"Krippendorff's alpha {j.get('krippendorff_alpha')}; calibration AUC {j.get('calibration_auc')}; "
        f"label jury {j.get('jury')}: Fleiss' kappa "
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


def filter_stage(stage: Stage) -> tuple[pd.DataFrame, dict, pd.DataFrame, dict]:
    """04: the final filter over 03's rows (`filters.filter_rows`: every gate marks, nothing is
    dropped) plus the rows earlier iterations carried over; saves `dataset`, `dataset.jsonl` (the
    kept text and label) and the exports. Returns the rows, the export paths, the reject counts
    (`tables.reject_counts`) and the summary."""
    cfg = stage.cfg
    seeds = stage.load("seeds")
    llm = stage.llm("generator") if cfg.filter.rewrite else None
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
    counts = reject_counts(rows)
    summary = {
        "rows": len(rows),
        "kept": len(kept),
        "carried": len(carried),
        "carried_kept": int(carried["keep"].sum()) if len(carried) else 0,
        "rejected": int((~rows["keep"]).sum()),
        "reasons": counts.groupby("reject_reason")["rows"].sum().to_dict(),
        "filter_reasons": rows["reject_reason_filter"].value_counts().to_dict(),
        "pii_redacted": int(rows.loc[rows["keep"], "pii_found"].notna().sum()),
        "dpo_pairs": dpo_pairs,
        "exports": {k: str(v.relative_to(stage.run_dir)) for k, v in paths.items()},
    }
    return rows, paths, counts, summary


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
