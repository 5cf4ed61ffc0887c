"""The stage bodies of replies and summaries, 05-99: the causal students, the win-rate with safety
and the type's own scores, the failures with the config patch, and the lineage against the parent
run (`flows.text` makes their pages' results)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from IPython.display import Markdown

from workbench import (
    causal,
    clusters,
    data,
    evaluate,
    gaps,
    lineage,
    tasks,
)
from workbench import train as trainer
from workbench.files import cache_dir
from workbench.flows import common
from workbench.flows.text_build import confirm_pairs, judge_items, nouns
from workbench.llm import decode, local_model_dir
from workbench.stage import Stage

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
    start = common.start_of(stage) or local_model_dir(cfg.train.model, cache_dir())
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
    and the refusal judge (roles.refusal_judge) decides (`common.safety_stage`): `sft` against
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
    _, safety = common.safety_stage(stage, pd.concat(harm, ignore_index=True) if harm else None)
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


def evaluation_markdown(table: pd.DataFrame, safety: pd.DataFrame, nouns: dict) -> str:
    n = nouns  # what the type calls its inputs and answers (`text_build.nouns`)
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
    clustered, _, seconds = common.cluster(cfg, fails, [f"{s}: {t}" for s, t in zip(fails["signature"], fails["text"])])
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
    n = m["nouns"]
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
    return common.write_patch(stage, edits)


# ---------------------------------------------------------------- 99_report


def lineage_views(stage: Stage) -> list:
    """99's comparison with the parent iteration: the patch, the config diff, the data statistics,
    each model's win-rate and over-refusal before and after (06, the same real test messages), and
    the parent's failure clusters against this run's dev failures. One line without a parent."""
    found = common.parent_of(stage)
    if found is None:
        return [Markdown("First iteration: no parent run.")]
    (a, head), b = found, stage.run_dir
    cols = ["model", "win_rate", "win_lo", "win_hi", "over_refusal"]
    before = pd.read_parquet(a / "artifacts" / "evaluation.parquet").reindex(columns=cols)
    wins = before.merge(stage.load("evaluation").reindex(columns=cols), on="model", how="outer",
                        suffixes=("_before", "_after"))  # fmt: skip
    return [*head, lineage.data_diff(a, b)[0], wins.round(3), lineage.cluster_diff(a, b)]
