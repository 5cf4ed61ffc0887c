"""The stage bodies of replies and summaries, 02-04 (00 and 01 are classification's): candidate
replies with their metadata and live view, the judge on each (message, reply) with rationales,
refusals and over-refusals, best-of-N and DPO pairs by the judge's margin confirmed in both orders,
the calibration, the final filter on the best replies with the exports (`flows.text` makes their
pages' results)."""

from __future__ import annotations

import math
import time
from functools import partial

import numpy as np
import pandas as pd

from workbench import (
    embed,
    export,
    filters,
    judge,
    plan,
    responses,
    tasks,
)
from workbench.files import cache_dir
from workbench.live import LiveView
from workbench.llm import generate_each
from workbench.stage import Stage

META = ["provider", "model", "seed", "prompt_tokens", "completion_tokens", "latency_s", "ttft_s", "finish_reason",
        "error", "cached"]  # fmt: skip


def nouns(cfg) -> dict:
    """What the task's inputs and answers are called on its pages (message and reply, source and summary)."""
    return tasks.of(cfg).NOUNS


def messages(stage: Stage) -> pd.DataFrame:
    """01's kept messages with `should_refuse` (the refusal cells 01 wrote)."""
    rows = stage.load("prompts")
    rows = rows[rows["keep_prompts"]].reset_index(drop=True)
    rows = rows if "history" in rows else rows.assign(history=None)  # runs from before task.max_turns
    return rows.assign(should_refuse=rows["refusal"].fillna(False).astype(bool))


# ---------------------------------------------------------------- 02_responses


def candidates(stage: Stage) -> tuple[pd.DataFrame, dict]:
    """02: `responses.candidates` replies per kept message from the generator, streamed to
    `candidates.jsonl` and shown live; saves `candidates`: row (the message's id), candidate,
    label (its topic), text, should_refuse, reply, refuses (by the refusal phrases) and the call's
    metadata."""
    cfg = stage.cfg
    rows = messages(stage)
    llm = stage.llm("generator")
    view = LiveView(len(rows) * cfg.responses.candidates, llm.stats, stage.artifacts / "candidates.jsonl")
    records = rows[["id", "label", "text", "should_refuse", "history"]].to_dict("records")
    out: list[dict] = []
    t0 = time.perf_counter()

    def arrived(i: int, cands: list[dict]) -> None:
        now = time.perf_counter() - t0
        r = records[i]
        for c in cands:
            text = None if c["error"] else c["text"].strip()
            row = {"id": f"{r['id']}/c{c['candidate']}", "row": r["id"], "candidate": c["candidate"],
                   "label": r["label"], "text": r["text"], "history": r["history"], "should_refuse": r["should_refuse"], "reply": text,
                   "refuses": None if text is None else tasks.of(cfg).refuses(text), "source": "model", "arrived_s": now}  # fmt: skip
            row |= {f: c[f] for f in META}
            out.append(row)
            view(row)

    llm.generate(tasks.of(cfg).reply_requests(cfg, rows), desc="02 replies", on_result=arrived)
    view.close()
    seconds = time.perf_counter() - t0
    cols = ["id", "row", "candidate", "label", "text", "history", "should_refuse", "reply", "refuses", "source",
            "arrived_s"]  # fmt: skip
    cands = pd.DataFrame(out, columns=cols + META).sort_values(["row", "candidate"]).reset_index(drop=True)
    stage.save(cands, "candidates")
    as_rows = cands.assign(prompt_id=cands["row"], response_label=cands["reply"])  # responses' column names
    plan.record_throughput(cfg, cache_dir(), "02_responses", responses.per_request(as_rows), seconds)
    ok = cands[cands["error"].isna()]
    summary = {
        "prompts": len(rows),
        "should_refuse": int(rows["should_refuse"].sum()),
        "candidates": len(cands),
        "errors": int(cands["error"].notna().sum()),
        # a mask, not a column selection, also when 01 kept no message (an empty column of objects)
        "refusals_where_due": _share(ok.loc[ok["should_refuse"].astype(bool), "refuses"]),
        "refusals_where_not_due": _share(ok.loc[~ok["should_refuse"].astype(bool), "refuses"]),
        "mean_reply_words": float(ok["reply"].str.split().str.len().mean()) if len(ok) else None,
        "seconds": round(seconds, 1),
        **responses.throughput(as_rows),
        "nouns": nouns(cfg),
    }
    return cands, summary


def _share(s: pd.Series) -> float | None:
    return float(s.astype(bool).mean()) if len(s) else None


def candidates_markdown(m: dict, refusals: bool = True) -> str:
    """02's line; `refusals`: whether the type's answers may be refusals (`tasks.<type>.REFUSALS`)."""
    due = "n/a" if m["refusals_where_due"] is None else f"{m['refusals_where_due']:.0%}"
    not_due = "n/a" if m["refusals_where_not_due"] is None else f"{m['refusals_where_not_due']:.0%}"
    n = m["nouns"]
    head = f"**{m['candidates']} candidate {n['outputs']}** to {m['prompts']} {n['inputs']}"
    if not refusals and not m["should_refuse"]:  # nothing to refuse: a refusal is a failure to answer
        return f"{head} in {m['seconds']:.0f} s, {m['errors']} errors. By the refusal phrases, {not_due} refuse."
    return (
        f"{head} ({m['should_refuse']} must be refused) in {m['seconds']:.0f} s, {m['errors']} errors. By the "
        f"refusal phrases, the candidates refuse {due} of the {n['inputs']} that must be refused and {not_due} of "
        "the others (over-refusal)."
    )


# ---------------------------------------------------------------- 03_judge


def judge_items(stage: Stage, items: pd.DataFrame, desc: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The judges (roles.judge) on `items` (text, reply, should_refuse): returns `items` with
    judge_<dimension> (0-1, mean over jurors), judge_<dimension>_rationale, judge_score (mean over
    dimensions) and judge_spread (max - min over jurors), and the judgments, one row per (item,
    dimension, juror): item (its index), dimension, juror, juror_model, score, rationale, raw,
    error, cached, model, completion_tokens, latency_s."""
    cfg = stage.cfg
    reqs, keys = tasks.of(cfg).judge_requests(cfg, items)
    judgments = judge.run_judgments(cfg, stage.jury(), reqs, keys, desc)
    out = items.copy()
    for dim in tasks.of(cfg).rubric(cfg):
        d = judgments[judgments["dimension"] == dim]
        out[f"judge_{dim}"] = d.groupby("item")["score"].mean()
        first = d.dropna(subset=["rationale"]).groupby("item")["rationale"].first()
        out[f"judge_{dim}_rationale"] = first.reindex(out.index)
    dims = [f"judge_{d}" for d in tasks.of(cfg).rubric(cfg)]
    out["judge_score"] = out[dims].mean(axis=1, skipna=False) if dims else math.nan
    per_juror = judgments.groupby(["item", "juror"])["score"].mean().unstack()
    out["judge_spread"] = (per_juror.max(axis=1) - per_juror.min(axis=1)).where(per_juror.notna().sum(axis=1) > 1)
    return out, judgments


def judge_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """03: every candidate reply judged on the rubric with rationales; refusals where due and
    over-refusals; best-of-N and DPO pairs by the judge's margin (`tasks.reply.rank`), confirmed in
    both orders (`confirm_pairs`); a message is rejected when its best reply has no score
    (unparseable), scores below `judge.min_score` (low_score), does not refuse a request that must
    be refused (not_refused) or refuses a legitimate one (over_refused); the calibration. Saves `candidates_judged`, `judgments`, `judged` (one row per
    message: keep_judge, reject_reason_judge, best_reply, …), `pairs`, `calibration`,
    `calibration_scores`. Returns judged, candidates, pairs, summary."""
    cfg = stage.cfg
    t0 = time.perf_counter()
    cands = stage.load("candidates")
    live = cands[cands["reply"].notna()]
    scored, judgments = judge_items(stage, live, "03 judge on the replies")
    cands = cands.join(scored[[c for c in scored.columns if c.startswith("judge_")]])
    stage.save(cands, "candidates_judged")
    stage.save(judgments.assign(id=cands.loc[judgments["item"], "id"].to_numpy()), "judgments")
    best, pairs = tasks.of(cfg).rank(cands, cfg.judge.pair_margin)
    rows = messages(stage)
    pairs = confirm_pairs(stage, pairs.merge(rows[["id", "text", "history", "should_refuse"]], left_on="row",
                                             right_on="id"))  # fmt: skip
    judged = rows.merge(best, left_on="id", right_on="row", how="left").drop(columns="row")
    judged["best_refuses"] = judged["best_reply"].map(
        lambda r: tasks.of(cfg).refuses(r) if isinstance(r, str) else None
    )
    # a reply that trains the student must do what the message needs: refuse where due, help elsewhere
    wrong = judged["best_refuses"].notna() & (judged["best_refuses"].astype(bool) != judged["should_refuse"])
    judged["reject_reason_judge"] = np.select(
        [judged["best_score"].isna(), judged["best_score"] < cfg.judge.min_score, wrong & judged["should_refuse"],
         wrong],
        ["unparseable", "low_score", "not_refused", "over_refused"],
        None,
    )  # fmt: skip
    judged["keep_judge"] = judged["reject_reason_judge"].isna()
    stage.save(judged, "judged")
    stage.save(pairs, "pairs")
    plan.record_throughput(cfg, cache_dir(), "03_judge", judgments, time.perf_counter() - t0)
    calib = None
    items = tasks.of(cfg).calibration_items(cfg, judged[judged["keep_judge"]])
    if len(items):
        known, kj = judge_items(stage, items, "03 judge calibration")
        calib_scores = kj.assign(
            id=items.loc[kj["item"], "id"].to_numpy(), known=items.loc[kj["item"], "known"].to_numpy()
        )
        calib_scores = calib_scores.groupby(["id", "known", "juror_model"], as_index=False)["score"].mean()
        calib = judge.calibration_table(calib_scores)
        stage.save(calib_scores, "calibration_scores")
        stage.save(calib, "calibration")
    due, kept = judged[judged["should_refuse"]], judged[judged["keep_judge"]]
    summary = {
        "messages": len(judged),
        "judged_candidates": int(cands["judge_score"].notna().sum()),
        "kept": int(judged["keep_judge"].sum()),
        "reasons": judged["reject_reason_judge"].value_counts().to_dict(),
        "rubric": tasks.of(cfg).rubric(cfg),
        "jurors": len(cfg.jurors()),
        "mean_score": float(cands["judge_score"].mean()) if cands["judge_score"].notna().any() else None,
        "mean_best_score": float(kept["best_score"].mean()) if len(kept) else None,
        "judge_unparsed": int(judgments["score"].isna().sum()),
        "disagreements": len(disagreements(cands, cfg)),
        "krippendorff_alpha": judge.judge_alpha(judgments.rename(columns={"item": "id"}))
        .set_index("dimension")["alpha"]
        .to_dict()
        if len(cfg.jurors()) > 1
        else {},
        "best_refuses_where_due": _share(due["best_refuses"].dropna()),
        "best_refuses_where_not_due": _share(judged[~judged["should_refuse"]]["best_refuses"].dropna()),
        "pairs": int(pairs["pair"].sum()),
        "pairs_by_margin": len(pairs),
        "pairwise": pairs["outcome"].value_counts().to_dict() if "outcome" in pairs else {},
        "calibration_auc": calib["auc"].iloc[-1] if calib is not None and len(calib) else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "nouns": nouns(cfg),
    }
    return judged, cands, pairs, summary


def confirm_pairs(
    stage: Stage, pairs: pd.DataFrame, always: bool = False, desc: str = "03 pairwise, both orders"
) -> pd.DataFrame:
    """The pairs by margin (row, chosen, rejected, margin, text, should_refuse), each asked of every
    judge of roles.judge in both orders (`judge.pairwise`): `outcome` is the judges' majority
    ('chosen', 'rejected', 'position': the verdict followed the order, 'unread'); `pair` is True
    where it is 'chosen' (every pair by margin when judge.pairwise is off, unless `always`: 06's
    win-rate asks whatever the config says)."""
    cfg = stage.cfg
    if not (cfg.judge.pairwise or always) or pairs.empty:
        return pairs.assign(outcome=None, pair=True)
    t = tasks.of(cfg)
    reqs = t.pairwise_requests(cfg, pairs)
    judges = stage.jury()
    votes = [[t.pair_outcome(t.verdict(res[2 * k][0]), t.verdict(res[2 * k + 1][0])) for k in range(len(pairs))]
             for res in generate_each(judges, reqs, list(judges), desc).values()]  # fmt: skip
    # chosen needs more than half the judges; otherwise the commonest other outcome names why not
    outcome = [
        "chosen" if v.count("chosen") * 2 > len(v) else max(sorted(set(v) - {"chosen"}), key=v.count)
        for v in zip(*votes)
    ]
    return pairs.drop(columns="id").assign(outcome=outcome, pair=[o == "chosen" for o in outcome])


def judge_markdown(m: dict, refusals: bool = True) -> str:
    """03's line (from its recorded metrics); `refusals`: as `candidates_markdown`'s."""

    def pct(x):
        return "n/a" if x is None else f"{x:.0%}"

    n = m["nouns"]
    refused = (
        f"The best {n['output']} refuses {pct(m['best_refuses_where_due'])} of the {n['inputs']} that must be refused "
        f"and {pct(m['best_refuses_where_not_due'])} of the others. "
        if refusals
        else f"The best {n['output']} refuses {pct(m['best_refuses_where_not_due'])} of them. "
    )
    alpha = m.get("krippendorff_alpha") or {}
    jury = (
        f"The {m['jurors']} jurors agree with Krippendorff's alpha "
        + ", ".join(f"{d} {'n/a' if a is None or a != a else round(a, 2)}" for d, a in alpha.items())
        + f" (1 = always, 0 = chance); {m.get('disagreements', 0)} candidates in the disagreement queue. "
        if alpha
        else ""
    )
    return (
        f"The judge scored **{m['judged_candidates']} candidate {n['outputs']}** to {m['messages']} {n['inputs']} on "
        f"{', '.join(m['rubric'])} (mean {m['mean_score'] if m['mean_score'] is None else round(m['mean_score'], 2)}, "
        f"{m['judge_unparsed']} judgments without a score). {jury}**{m['kept']} {n['inputs']} kept** with their best "
        f"{n['output']}; rejects {m['reasons'] or 'none'}. {refused}"
        f"**{m['pairs']} DPO pairs**: best over worst by at least `judge.pair_margin` ({m['pairs_by_margin']}), "
        f"then asked in both orders: {m['pairwise'] or 'not asked'} (a `position` verdict follows the order, "
        f"not the {n['output']}: that pair is dropped)."
    )


def disagreements(cands: pd.DataFrame, cfg) -> pd.DataFrame:
    """The disagreement queue: candidates whose jurors' scores spread more than `judge.max_spread`
    (one juror: none), widest first, with the message, the candidate and each dimension's score."""
    dims = [f"judge_{d}" for d in tasks.of(cfg).rubric(cfg)]
    cols = ["row", "candidate", "label", "should_refuse", "text", "reply", "judge_spread", "judge_score", *dims]
    q = judge.disagreements(cands, cfg.judge.max_spread, cols)
    return q.sort_values("judge_spread", ascending=False) if "judge_spread" in q else q


def view(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """`frame`'s columns of `cols` that it has, without `should_refuse` where no row must be refused
    (summaries; replies with no `task.must_refuse`): a page's table shows what the rows carry."""
    drop = {"should_refuse"} if "should_refuse" in frame and not frame["should_refuse"].fillna(False).any() else set()
    return frame[[c for c in cols if c in frame and c not in drop]]


def judged_view(cands: pd.DataFrame, cfg) -> pd.DataFrame:
    """The candidates with their scores and rationales, best first per message."""
    dims = [f"judge_{d}" for d in tasks.of(cfg).rubric(cfg)]
    cols = ["row", "candidate", "label", "should_refuse", "text", "reply", "refuses", "judge_score", *dims]
    cols += [f"{d}_rationale" for d in dims]
    return cands.sort_values(["row", "judge_score"], ascending=[True, False])[[c for c in cols if c in cands]]


# ---------------------------------------------------------------- 04_filter


def filter_stage(stage: Stage) -> tuple[pd.DataFrame, dict]:
    """04: the final filter on the best replies (`filters.filter_rows` on the reply: constraints, PII,
    toxicity, domain (not for a refusal, generic by design), near-duplicate replies, the optional
    rewrite in the assistant's voice), over
    every message 01 wrote so the reject pile holds them all, plus the rows earlier iterations
    carried over (`carried_from`, their verdicts kept: the training data accumulates); saves
    `dataset` (message, text: the reply, should_refuse, keep, reject_stage, reject_reason, …) and
    the exports (`export.write_task_exports`): `export/sft.jsonl` (chat records of the kept
    replies, refusal examples among them), `export/dpo.jsonl` (the confirmed pairs of kept
    messages), the `datasets` folder `export/hf/` and the card `export/README.md`."""
    cfg = stage.cfg
    prompts = stage.load("prompts")
    judged = stage.load("judged")
    cols = ["id", "best_reply", "best_score", "best_refuses", "margin", "keep_judge", "reject_reason_judge"]
    rows = prompts.merge(judged[cols], on="id", how="left")
    rows["keep_judge"] = rows["keep_judge"].fillna(True).astype(bool)  # 01's rejects keep 01's reason
    rows = rows.assign(
        should_refuse=rows["refusal"].fillna(False).astype(bool),
        message=rows["text"],
        text=rows["best_reply"].fillna(""),
        entity=None,
    )  # fmt: skip  (01's entity is the message's)
    llm = stage.llm("generator") if cfg.filter.rewrite else None
    embed_fn = partial(embed.embed, cache_dir=cache_dir())
    t = tasks.of(cfg)
    rows["refuses"] = rows["text"].map(t.refuses) & rows["best_reply"].notna()
    rows = filters.filter_rows(cfg, rows, stage.load("seeds"), embed_fn, llm, t.REWRITE, off_topic_ok="refuses")
    over = rows["keep_filter"] & t.over_limit(cfg, rows["text"])  # summaries: task.summary_max_words
    if over.any():
        rows.loc[over, "keep_filter"], rows.loc[over, "reject_reason_filter"] = False, "over_word_limit"
        rows = filters.verdict(rows)
    rows = rows.assign(carried_from=None)
    carried = stage.earlier_rows()  # earlier iterations' messages and replies, verdicts kept: the data accumulates
    if len(carried):
        rows = pd.concat([rows, carried], ignore_index=True)
    stage.save(rows, "dataset")
    kept = rows[rows["keep"]]
    pairs = stage.load("pairs")
    pairs = pairs[pairs["pair"] & pairs["row"].isin(kept["id"])]
    sft, dpo = t.sft_records(cfg, kept), t.dpo_records(cfg, pairs)
    config_text = (stage.run_dir / "config.yaml").read_text()
    export.write_task_exports(cfg, rows, sft, dpo, stage.artifacts / "export", config_text, t.ROW_KEY)
    refusals = kept[kept["should_refuse"]]
    summary = {
        "rows": len(rows),
        "kept": len(kept),
        "carried": int(rows["carried_from"].notna().sum()),
        "carried_kept": int(kept["carried_from"].notna().sum()),
        "reasons": rows.loc[~rows["keep"], "reject_reason"].value_counts().to_dict(),
        "refusal_examples": int(refusals["best_refuses"].fillna(False).astype(bool).sum()),
        "should_refuse_kept": len(refusals),
        "dpo_pairs": len(dpo),
        "sft_records": len(sft),
        "nouns": nouns(cfg),
    }
    return rows, summary


def filter_markdown(m: dict, refusals: bool = True) -> str:
    """04's line; `refusals`: as `candidates_markdown`'s."""
    n = m["nouns"]
    refused = (
        f"Among the kept, {m['should_refuse_kept']} {n['inputs']} must be refused and {m['refusal_examples']} of "
        f"their {n['outputs']} refuse (the refusal examples). "
        if refusals or m["should_refuse_kept"]
        else ""
    )
    return (
        f"**{m['kept']} of {m['rows']} {n['inputs']} keep their best {n['output']}** for training "
        f"({m.get('carried_kept', 0)} of them carried from earlier iterations); rejects by reason: "
        f"{m['reasons'] or 'none'}. {refused}Exports: {m['sft_records']} SFT records, {m['dpo_pairs']} DPO pairs."
    )
