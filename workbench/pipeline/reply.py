"""What notebooks/reply/ runs (02-05 of `task.type: reply`; 00 and 01 are `build`'s): candidate
replies with their metadata and live view, the judge on each (message, reply) with rationales,
refusals and over-refusals, best-of-N and DPO pairs by the judge's margin confirmed in both orders,
the calibration, the final filter on the best replies with the exports, and the causal students."""

from __future__ import annotations

import math
import time
from functools import partial

import numpy as np
import pandas as pd
from IPython.display import Markdown

from workbench import (
    causal,
    clusters,
    data,
    embed,
    evaluate,
    export,
    filters,
    gaps,
    judge,
    lineage,
    plan,
    responses,
    tasks,
)
from workbench import train as trainer
from workbench.files import cache_dir
from workbench.live import LiveView
from workbench.llm import decode, generate_each, local_model_dir
from workbench.pipeline import learn
from workbench.pipeline.summary import parent_of
from workbench.stage import Stage
from workbench.tasks import reply

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


def candidates_markdown(m: dict) -> str:
    due = "n/a" if m["refusals_where_due"] is None else f"{m['refusals_where_due']:.0%}"
    not_due = "n/a" if m["refusals_where_not_due"] is None else f"{m['refusals_where_not_due']:.0%}"
    n = m.get("nouns", reply.NOUNS)
    head = f"**{m['candidates']} candidate {n['outputs']}** to {m['prompts']} {n['inputs']}"
    if n != reply.NOUNS and not m["should_refuse"]:  # nothing to refuse: a refusal is a failure to answer
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


def judge_markdown(m: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{x:.0%}"

    n = m.get("nouns", reply.NOUNS)
    refusals = (
        f"The best {n['output']} refuses {pct(m['best_refuses_where_due'])} of the {n['inputs']} that must be refused "
        f"and {pct(m['best_refuses_where_not_due'])} of the others. "
        if n == reply.NOUNS
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
        f"{n['output']}; rejects {m['reasons'] or 'none'}. {refusals}"
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


def filter_markdown(m: dict) -> str:
    n = m.get("nouns", reply.NOUNS)
    refusals = (
        f"Among the kept, {m['should_refuse_kept']} {n['inputs']} must be refused and {m['refusal_examples']} of "
        f"their {n['outputs']} refuse (the refusal examples). "
        if n == reply.NOUNS or m["should_refuse_kept"]
        else ""
    )
    return (
        f"**{m['kept']} of {m['rows']} {n['inputs']} keep their best {n['output']}** for training "
        f"({m.get('carried_kept', 0)} of them carried from earlier iterations); rejects by reason: "
        f"{m['reasons'] or 'none'}. {refusals}Exports: {m['sft_records']} SFT records, {m['dpo_pairs']} DPO pairs."
    )


# ---------------------------------------------------------------- 05_train


def train_stage(stage: Stage) -> pd.DataFrame:
    """05: the causal student on 04's kept replies (`train.methods`): SFT on every kept reply, the
    refusal examples among them; the same SFT without the refusal examples (`sft_no_refusals`, the
    ablation 06 compares on safety); DPO on the confirmed pairs; GRPO from the SFT model with
    `train.grpo_reward` (verifiable: `tasks.reply.rewards`; judge: roles.judge's score on the reply
    rubric). Each starts from `train.model`, or from the parent run's student (`train.start_from`).
    Saves `training` (student, model, start, train_rows, train_seconds, steps, paths)."""
    cfg = stage.cfg
    causal.check_args(cfg.train)
    rows = stage.load("dataset")
    kept = rows[rows["keep"]]
    data = pd.DataFrame({"text": kept["message"], "label": kept["text"], "should_refuse": kept["should_refuse"],
                         "history": kept["history"] if "history" in kept else None})  # fmt: skip
    system, folder = tasks.of(cfg).system_prompt(cfg), stage.artifacts / "causal"
    start = learn.start_of(stage) or local_model_dir(cfg.train.model, cache_dir())
    methods, out = cfg.train.methods, []
    if methods and len(data):
        out.append({"model": "sft", "start": str(start)}
                   | causal.fit("sft", start, causal.sft_dataset(data, system), cfg, folder / "sft"))  # fmt: skip
        plain = data[~data["should_refuse"].astype(bool)]
        if 0 < len(plain) < len(data):
            out.append({"model": "sft_no_refusals", "start": str(start)}
                       | causal.fit("sft", start, causal.sft_dataset(plain, system), cfg, folder / "sft_no_refusals"))  # fmt: skip
    sft = folder / "sft" / "merged"
    pairs = stage.load("pairs")
    pairs = pairs[pairs["pair"] & pairs["row"].isin(kept["id"])] if len(pairs) else pairs
    if "dpo" in methods and len(pairs):
        out.append({"model": "dpo"} | causal.fit("dpo", sft, causal.dpo_dataset(pairs, system), cfg, folder / "dpo"))
    if "grpo" in methods and len(data):
        judges = stage.jury() if "judge" in cfg.train.grpo_reward else None
        t = tasks.of(cfg)
        funcs = trainer.grpo_rewards(cfg, t.rewards(cfg), judges, dims=t.rubric(cfg), criteria=t.reward_criteria(cfg))
        from datasets import Dataset  # datasets (pyarrow) only where a dataset is written or mapped

        prompts = Dataset.from_list([{"prompt": causal.prompt_messages(system, t, h), "should_refuse": bool(r)}
                                     for t, r, h in zip(data["text"], data["should_refuse"], data["history"])])  # fmt: skip
        out.append({"model": "grpo"} | causal.fit("grpo", sft, prompts, cfg, folder / "grpo", reward_funcs=funcs))
    training = pd.DataFrame([{"student": "causal"} | r for r in out])
    # the columns 06 reads are there when nothing could be trained too (04 kept no row)
    training = training.reindex(columns=list(dict.fromkeys(["student", "model", "start", "merged", *training])))
    stage.save(training, "training")
    return training


def training_markdown(training: pd.DataFrame) -> str:
    lines = [f"- `{r.model}`: {r.train_rows} rows, {r.steps} steps, {r.train_seconds} s" for r in training.itertuples()]
    return "\n".join(lines) or "No student: 04 kept no reply, or train.methods is empty."


# ---------------------------------------------------------------- 06_evaluate

BASE = evaluate.CAUSAL_ZERO_SHOT  # the untuned model: the safety table's and the win-rate's reference


def evaluate_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """06 on real messages nobody here generated: `evaluate.causal_test_per_label` test messages per
    topic (Banking77's test split), answered greedily under the assistant's instructions by the
    untuned model and by each of 05's students. Each student's reply is put against the untuned
    model's, for every message, to every judge of roles.judge in both orders (`confirm_pairs`): a
    win, a loss, or a tie (the verdict followed the position, or no verdict); the win-rate counts a
    tie as half, with a 95% bootstrap CI. Over-refusal: the share of these benign messages a model
    refuses. Safety: each model answers `evaluate.safety_rows` AdvBench instructions as a plain chat
    and the refusal judge (roles.refusal_judge) decides (`learn.safety_stage`): `sft` against
    `sft_no_refusals` is the refusal examples' ablation. Saves `replies_test`, `wins`, `evaluation`,
    `safety`, `safety_summary`. Returns (evaluation, safety summary, the replies)."""
    cfg = stage.cfg
    test = data.sample_per_label(tasks.of(cfg).test(cfg), cfg.evaluate.causal_test_per_label, cfg.seed)
    harmful = data.harmful_instructions(cfg.evaluate.safety_rows, cfg.seed) if cfg.evaluate.safety_rows else None
    training = stage.load("training")
    models = {BASE: local_model_dir(cfg.train.model, cache_dir())} | dict(zip(training["model"], training["merged"]))
    system, bs = tasks.of(cfg).system_prompt(cfg), cfg.evaluate.batch_size
    said, harm = [], []
    for name, path in models.items():
        model, tok = decode.load(path, cfg.evaluate.dtype)
        got = causal.answers(model, tok, list(test["text"]), cfg.responses.max_tokens, bs, system=system)
        said.append(test.reindex(columns=["id", "label", "text", "reference"]).assign(model=name, reply=got))
        if harmful is not None and len(harmful):
            got = causal.answers(model, tok, list(harmful["text"]), cfg.evaluate.safety_max_tokens, bs)
            harm.append(harmful.assign(model=name, reply=got))
        del model
    replies = pd.concat(said, ignore_index=True).assign(refuses=lambda d: d["reply"].map(tasks.of(cfg).refuses))
    replies = tasks.of(cfg).scores(replies)
    stage.save(replies, "replies_test")
    base = replies[replies["model"] == BASE].set_index("id")["reply"]
    wins = []
    for name in models:
        if name == BASE:
            continue
        mine = replies[replies["model"] == name]
        pairs = pd.DataFrame({"row": mine["id"], "text": mine["text"], "chosen": mine["reply"],
                              "rejected": base.reindex(mine["id"]).to_numpy(), "should_refuse": False, "id": mine["id"]})  # fmt: skip
        got = confirm_pairs(stage, pairs.assign(margin=0.0), always=True, desc=f"06 {name} against the untuned")
        wins.append(got.assign(model=name))
    wins = pd.concat(wins, ignore_index=True) if wins else pd.DataFrame(columns=["model", "row", "outcome"])
    stage.save(wins.drop(columns=["pair"], errors="ignore"), "wins")
    _, safety = learn.safety_stage(stage, pd.concat(harm, ignore_index=True) if harm else None)
    table = win_table(cfg, replies, wins, training)
    table = table.merge(safety.reindex(columns=["model", "refusal_rate", "refusal_lo", "refusal_hi"]), on="model",
                        how="left")  # fmt: skip
    stage.save(table, "evaluation")
    return table, safety, replies


SCORES = ("faithful", "rouge_l")  # 06's per-answer scores a task may add (`tasks.<type>.scores`)


def win_table(cfg, replies: pd.DataFrame, wins: pd.DataFrame, training: pd.DataFrame) -> pd.DataFrame:
    """Per model: messages, wins / ties / losses against the untuned model and the win-rate (a tie
    counts half) with its 95% bootstrap CI; over-refusal (benign messages refused) with its CI;
    the mean of each of the task's own scores (`SCORES`) with its CI; train rows. The untuned model's row has over-refusal only."""
    boot, seed = cfg.evaluate.bootstrap, cfg.seed
    rows_of = dict(zip(training["model"], training["train_rows"]))
    out = []
    for name, g in replies.groupby("model", sort=False):
        r = g["refuses"].to_numpy(bool)
        lo, hi = evaluate.bootstrap_ci(np.ones(len(r), bool), r, evaluate._accuracy, boot, seed)
        entry = {"model": name, "messages": len(g), "over_refusal": float(r.mean()), "over_refusal_lo": lo,
                 "over_refusal_hi": hi, "train_rows": rows_of.get(name, 0)}  # fmt: skip
        for col in SCORES:  # a task's own scores (summaries: faithful, rouge_l), each with its CI
            if col in g and g[col].notna().any():
                v = g[col].dropna().astype(float).to_numpy()
                clo, chi = evaluate.bootstrap_ci(v, v, lambda t, p: float(np.mean(p)), boot, seed)
                entry |= {col: float(v.mean()), f"{col}_lo": clo, f"{col}_hi": chi}
        w = wins[wins["model"] == name]
        if len(w):
            s = w["outcome"].map({"chosen": 1.0, "rejected": 0.0}).fillna(0.5).to_numpy()
            wlo, whi = evaluate.bootstrap_ci(s, s, lambda t, p: float(np.mean(p)), boot, seed)
            entry |= {"wins": int((s == 1).sum()), "ties": int((s == 0.5).sum()), "losses": int((s == 0).sum()),
                      "win_rate": float(s.mean()), "win_lo": wlo, "win_hi": whi}  # fmt: skip
        out.append(entry)
    cols = ["model", "messages", "wins", "ties", "losses", "win_rate", "win_lo", "win_hi", "over_refusal",
            "over_refusal_lo", "over_refusal_hi"]  # fmt: skip
    cols += [f"{c}{end}" for c in SCORES for end in ("", "_lo", "_hi") if any(c in e for e in out)]
    return pd.DataFrame(out).reindex(columns=[*cols, "train_rows"])


def evaluation_view(table: pd.DataFrame):
    """06's table for a page: win-rates and the task's own scores to two decimals, refusal rates as
    percentages, counts whole; a column no model has (no AdvBench run: refusal_rate) is left out."""
    table = table.dropna(axis="columns", how="all")
    pct = [c for c in table.columns if "refusal" in c]
    two = ["win_rate", "win_lo", "win_hi"] + [f"{c}{e}" for c in SCORES for e in ("", "_lo", "_hi")]
    fmt = dict.fromkeys([c for c in two if c in table], "{:.2f}") | dict.fromkeys(pct, "{:.0%}")
    fmt |= dict.fromkeys([c for c in ("wins", "ties", "losses") if c in table], "{:.0f}")
    return table.style.format(fmt, na_rep="").hide(axis="index")


def evaluation_markdown(table: pd.DataFrame, safety: pd.DataFrame, nouns: dict | None = None) -> str:
    n = nouns or reply.NOUNS
    students = table[table["model"] != BASE]

    def scores(r) -> str:  # a task's own scores (summaries: faithful, rouge_l), untuned → this model
        base = table[table["model"] == BASE]
        out = ""
        for col in SCORES:
            if col in table and pd.notna(getattr(r, col, None)):
                was = base[col].iloc[0] if len(base) and pd.notna(base[col].iloc[0]) else None
                out += f"; {col} {'' if was is None else f'{was:.2f} → '}**{getattr(r, col):.2f}**"
        return out

    lines = [
        f"- `{r.model}`: win-rate against the untuned model **{r.win_rate:.2f}** [{r.win_lo:.2f}, {r.win_hi:.2f}] "
        f"({r.wins:.0f} wins, {r.ties:.0f} ties, {r.losses:.0f} losses over {r.messages} real {n['inputs']}); "
        f"over-refusal {r.over_refusal:.0%}{scores(r)}"
        for r in students.itertuples()
    ]
    if len(safety):
        rate = safety.set_index("model")["refusal_rate"]
        lines.append(
            "- AdvBench refusal rate: "
            + ", ".join(f"`{m}` {v:.0%}" for m, v in rate.items())
            + " (`sft` against `sft_no_refusals`: what the refusal examples did)"
        )
    return "\n".join(lines) or "No student to compare (05 trained none)."


# ---------------------------------------------------------------- 07_gaps


def final_student(training: pd.DataFrame) -> str | None:
    """The student 07 studies: 05's last (GRPO after DPO after SFT), never the ablation."""
    names = [m for m in training.get("model", pd.Series(dtype=str)) if m != "sft_no_refusals"]
    return names[-1] if names else None


def _low(scores: pd.DataFrame, dims: list[str], cut: float) -> list[list[str]]:
    return [[d for d in dims if pd.notna(r[f"judge_{d}"]) and r[f"judge_{d}"] < cut] for _, r in scores.iterrows()]


def dev_failures(stage: Stage, student: str, path: str) -> tuple[pd.DataFrame, dict]:
    """Real dev messages (train split, disjoint from the seeds; never the test split) answered by
    the untuned model and by `student`: the student's reply judged on the rubric and put against
    the untuned model's in both orders. A failure is a message where the student lost, refused
    (every dev message is legitimate), or scored below `gaps.low_score` on a dimension. Returns
    every dev message with its signature ('' for none) and the dev metrics."""
    cfg = stage.cfg
    dev = data.dev_split(cfg)
    system, bs, texts = tasks.of(cfg).system_prompt(cfg), cfg.evaluate.batch_size, list(dev["text"])
    said = {}
    for name, where in ((BASE, local_model_dir(cfg.train.model, cache_dir())), (student, path)):
        model, tok = decode.load(where, cfg.evaluate.dtype)
        said[name] = causal.answers(model, tok, texts, cfg.responses.max_tokens, bs, system=system)
        del model
    dev = dev.assign(reply=said[student], base_reply=said[BASE], should_refuse=False)
    pairs = pd.DataFrame({"row": dev["id"], "text": dev["text"], "chosen": dev["reply"], "rejected": dev["base_reply"],
                          "should_refuse": False, "id": dev["id"], "margin": 0.0})  # fmt: skip
    outcome = confirm_pairs(stage, pairs, always=True, desc=f"07 {student} against the untuned, dev")["outcome"]
    scored, _ = judge_items(stage, dev.reset_index(drop=True), f"07 judge on {student}'s dev replies")
    t = tasks.of(cfg)
    dims = t.rubric(cfg)
    scored["outcome"] = outcome.to_numpy()
    scored["refuses"] = scored["reply"].map(t.refuses)
    lows, extra = _low(scored, dims, cfg.gaps.low_score), t.checks(scored)
    scored["signature"] = [t.signature(o == "rejected", bool(r), lo, extra=x)
                           for o, r, lo, x in zip(scored["outcome"], scored["refuses"], lows, extra)]  # fmt: skip
    s = scored["outcome"].map({"chosen": 1.0, "rejected": 0.0}).fillna(0.5)
    metrics = {"dev_messages": len(scored), "dev_win_rate": float(s.mean()) if len(s) else None,
               "dev_over_refusal": float(scored["refuses"].mean()) if len(scored) else None,
               "dev_mean_score": float(scored["judge_score"].mean()) if len(scored) else None}  # fmt: skip
    return scored.assign(source="dev"), metrics


def synthetic_failures(stage: Stage) -> pd.DataFrame:
    """03's messages whose best reply scored below `gaps.low_score` on a dimension, or was rejected
    for not refusing what must be refused (not_refused) or refusing a legitimate request
    (over_refused): what the generator's replies get wrong. Source `low_judge`."""
    cfg = stage.cfg
    judged = stage.load("judged")
    cands = stage.load("candidates_judged")
    dims = tasks.of(cfg).rubric(cfg)
    best = judged.merge(cands[["row", "candidate"] + [f"judge_{d}" for d in dims]],
                        left_on=["id", "best_candidate"], right_on=["row", "candidate"], how="inner")  # fmt: skip
    best = best.assign(reply=best["best_reply"])
    t = tasks.of(cfg)
    lows, extra = _low(best, dims, cfg.gaps.low_score), t.checks(best)
    reason = best["reject_reason_judge"]
    best["signature"] = [t.signature(False, r == "over_refused", lo, r == "not_refused", x)
                         for r, lo, x in zip(reason, lows, extra)]  # fmt: skip
    return best.assign(source="low_judge")


def gaps_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """07: failures (`gaps.sources`: dev = real dev messages the final student (`final_student`)
    lost to the untuned model on, refused, or that scored low (`dev_failures`); low_judge = 03's
    weak or wrongly refusing best replies (`synthetic_failures`)), embedded as "signature: message",
    mapped with UMAP and clustered with HDBSCAN; each cluster named "topic → signature", then by the
    namer (roles.namer) with a policy and a persona it suggests (`tasks.reply.gap_requests`).
    Saves `dev_replies`, `failures` and `clusters`."""
    cfg = stage.cfg
    training = stage.load("training")
    student = final_student(training)
    frames, metrics = [], {"student": student}
    if "dev" in cfg.gaps.sources and student is not None:
        path = dict(zip(training["model"], training["merged"]))[student]
        dev, m = dev_failures(stage, student, path)
        stage.save(dev, "dev_replies")
        metrics |= m
        frames.append(dev)
    if "low_judge" in cfg.gaps.sources:
        frames.append(synthetic_failures(stage))
    cols = ["source", "id", "label", "text", "reply", "base_reply", "signature"]
    every = (
        pd.concat([f.reindex(columns=cols) for f in frames], ignore_index=True)
        if frames
        else pd.DataFrame(columns=cols)
    )
    fails = every[every["signature"].fillna("") != ""].reset_index(drop=True)
    fails = fails.assign(predicted=fails["signature"])
    clustered, _, seconds = learn.cluster(cfg, fails, [f"{s}: {t}" for s, t in zip(fails["signature"], fails["text"])])
    summary = clusters.summarize(clustered)
    summary = summary.assign(signature_words=summary["dominant_predicted"].map(tasks.of(cfg).describe))
    named = summary[summary["cluster"] >= 0]
    got = (
        stage.llm("namer").generate(tasks.of(cfg).gap_requests(cfg, named), desc="07 cluster names")
        if len(named)
        else []
    )
    read = dict(zip(named["cluster"], tasks.of(cfg).read_gaps([g[0].get("parsed") for g in got])))
    for key in ("name", "policy", "persona"):
        summary[f"suggested_{key}"] = summary["cluster"].map(lambda c, k=key: read.get(c, {}).get(k))
    summary["name_source"] = np.where(summary["suggested_name"].notna(), "llm", "labels")
    summary["name"] = summary["suggested_name"].fillna(summary["name"])
    stage.save(clustered, "failures")
    stage.save(summary.drop(columns="suggested_name"), "clusters")
    metrics |= {
        "failures": len(fails),
        "failures_by_source": fails["source"].value_counts().to_dict(),
        "signatures": fails["signature"].str.split().explode().value_counts().to_dict() if len(fails) else {},
        "clusters": int((summary["cluster"] >= 0).sum()),
        "noise": int((clustered["cluster"] == -1).sum()),
        "names_by_llm": int((summary["name_source"] == "llm").sum()),
        "cluster_seconds": round(seconds, 1),
        "nouns": nouns(cfg),
    }
    return clustered, summary.drop(columns="suggested_name"), metrics


def gaps_markdown(m: dict) -> str:
    n = m.get("nouns", reply.NOUNS)
    dev = (
        f"`{m['student']}` on **{m['dev_messages']} real dev {n['inputs']}: win-rate against the untuned model "
        f"{m['dev_win_rate']:.2f}, over-refusal {m['dev_over_refusal']:.0%}, mean judge score "
        f"{m['dev_mean_score']:.2f}**. "
        if m.get("dev_messages")
        else f"No dev {n['outputs']} (no student, or `gaps.sources` leaves out dev). "
    )
    return (
        f"{dev}Failures: {m['failures_by_source'] or 'none'} (by kind: {m['signatures'] or 'none'}); "
        f"**{m['clusters']} clusters**, {m['noise']} noise points (UMAP + HDBSCAN in {m['cluster_seconds']:.1f} s); "
        f"{m['names_by_llm']} of {m['clusters']} names written by the namer, the rest built from topic and signature."
    )


def refusal_edit(stage: Stage, fails: pd.DataFrame) -> dict | None:
    """A `refusals` edit (diversity.refusal_share up by REFUSAL_STEP, at most REFUSAL_MAX) when
    refusal examples fell short: 04 kept fewer refusal examples than the share the config asks
    for, or a best reply answered a request it had to refuse (`not_refused` failures)."""
    cfg = stage.cfg
    share = cfg.diversity.refusal_share
    if share >= gaps.REFUSAL_MAX or not cfg.task.must_refuse:
        return None
    rows = stage.load("dataset")
    kept = rows[rows["keep"]]
    examples = int((kept["should_refuse"] & kept["refuses"].fillna(False).astype(bool)).sum())
    missed = int(fails["signature"].str.split().map(lambda s: "not_refused" in s).sum()) if len(fails) else 0
    if examples >= share * len(kept) and not missed:
        return None
    new = round(min(gaps.REFUSAL_MAX, share + gaps.REFUSAL_STEP), 2)
    return {"kind": "refusals", "cluster": -1, "label": "refusals", "other": None, "path": gaps.PATHS["refusals"],
            "value": new, "evidence": f"04 kept {examples} refusal examples among {len(kept)} training replies "
            f"(diversity.refusal_share asks {share:.0%}); {missed} best replies answered a request that must be "
            f"refused. More messages that must be refused: refusal_share {share:.2f} → {new:.2f}."}  # fmt: skip


def config_patch(stage: Stage, clustered: pd.DataFrame, summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """07's edits for replies: first `refusal_edit`, then per cluster, largest first: more messages
    about its topic (`more_rows`), its real dev messages shown to the generator as examples of the
    topic (`phrasing`), the policy the namer suggested for it (`policy`, task.policies), the persona
    that writes such messages (`persona`, diversity.personas) and the cluster as an edge case
    (`edge_case`, task.edge_cases). Each edit once, at most `gaps.max_edits`. Writes
    `config_patch.yaml` (applied by `workbench iterate`) and saves `edits`."""
    cfg = stage.cfg
    extra, n = cfg.gaps.extra_rows or cfg.sampling.rows_per_label, nouns(cfg)
    topics = set(data.labels(cfg))
    have = {"policy": set(cfg.task.policies), "persona": {p.name for p in cfg.diversity.personas},
            "edge_case": set(cfg.task.edge_cases)}  # fmt: skip
    first = refusal_edit(stage, clustered)
    edits, done = ([first] if first else []), set()
    order = summary[summary["cluster"] >= 0].sort_values(["size", "cluster"], ascending=[False, True])
    for s in order.itertuples():
        topic = s.dominant_true
        g = clustered[clustered["cluster"] == s.cluster]
        dev = g.loc[(g["source"] == "dev") & (g["label"] == topic), "text"].head(3).tolist()
        why = f"cluster {s.cluster} '{s.name}': {s.size} failures ({s.sources}), mostly {topic}: {s.signature_words}"
        found = []
        if topic in topics:
            found.append(("more_rows", topic, int(extra), f"{extra} more {n['inputs']} about {topic}."))
            if dev:
                found.append(
                    ("phrasing", topic, dev, f"its real dev {n['inputs']} shown to the generator as examples.")
                )
        found += [(k, topic, v, f"the namer's suggested {k}.") for k, v in
                  (("policy", s.suggested_policy), ("persona", s.suggested_persona)) if isinstance(v, str)]  # fmt: skip
        if s.name_source == "llm":
            found.append(("edge_case", topic, s.name, f"what these {n['inputs']} share, written into more of them."))
        for kind, label, value, reason in found:
            key = (kind, label) if kind in ("more_rows", "phrasing") else (kind, value)
            if key in done or value in have.get(kind, ()):
                continue
            done.add(key)
            path = gaps.PATHS[kind].format(label=label)
            edits.append({"kind": kind, "cluster": int(s.cluster), "label": label, "other": None, "path": path,
                          "value": value, "evidence": f"{why}. {reason}"})  # fmt: skip
        if len(edits) >= cfg.gaps.max_edits:
            break
    return learn.write_patch(stage, edits)


# ---------------------------------------------------------------- 99_report


def lineage_views(stage: Stage) -> list:
    """99's comparison with the parent iteration: the patch, the config diff, the data statistics,
    each model's win-rate and over-refusal before and after (06, the same real test messages), and
    the parent's failure clusters against this run's dev failures. One line without a parent."""
    found = parent_of(stage)
    if found is None:
        return [Markdown("First iteration: no parent run.")]
    (a, head), b = found, stage.run_dir
    cols = ["model", "win_rate", "win_lo", "win_hi", "over_refusal"]
    before = pd.read_parquet(a / "artifacts" / "evaluation.parquet").reindex(columns=cols)
    wins = before.merge(stage.load("evaluation").reindex(columns=cols), on="model", how="outer",
                        suffixes=("_before", "_after"))  # fmt: skip
    return [*head, lineage.data_diff(a, b)[0], wins.round(3), lineage.cluster_diff(a, b)]
