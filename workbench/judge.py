"""Stage 03: a rubric judge (or several) and, for classification, a jury that re-labels blind.

Rubric judge. Each kept row is scored 1-5 on each dimension of `judge.rubric` with a one-line
rationale by the jurors (`RunConfig.jurors`): each model `roles.judge` names, `judge.jurors` times with its
own seed and prompt wording each; a jury of different models is several names. Endpoints get a JSON schema ({score, rationale}); the embedded
model's first token is constrained to a digit 1-5, then it writes its reason. A reply with no
score is kept raw. Scores are scaled to 0-1 and averaged over jurors; agreement between them is
Krippendorff's alpha (interval), and rows whose jurors' scores spread more than
`judge.max_spread` go to the disagreement queue.

Label jury (classification). Each juror names a label without being told the intended one:
    probe: MiniLM + logistic regression trained on the seeds and the config's positives
    knn:   the label of the nearest seed or positive (cosine of MiniLM embeddings)
    llm:   the most frequent label among stage 02's blind candidates (ties: no vote)
    judges: each model of `roles.judge` names one label, shown the message and the label list, under a
           JSON schema whose label is one of the list (juror `judge:<model>`): a jury of different models
Votes are aggregated by majority (`judge.aggregate`: more than half of the votes cast) or by
mean (the label with the highest mean probability). Agreement is Fleiss' kappa.

`judge_rows(cfg, rows, cands, seeds, llms, cache_dir)` → (rows, judgments); llms: the judges by name
    rows in:  prompt rows of 02 (id, label, text, keep_prompts, …); cands: 02's candidates
    rows out: + judge_<dim> (0-1), judge_<dim>_rationale, judge_score (mean over dimensions),
              judge_spread, jury_votes ({juror: label}), jury_label, jury_unanimous,
              keep_judge, reject_reason_judge (None, 'unparseable', 'llm_error', 'low_score',
              'label_mismatch', 'uncertain')
    judgments: one row per (row, dimension, juror): id, dimension, juror, juror_model, score, rationale,
               raw, error
Rows rejected upstream are not judged (keep_judge True; the earlier reason stands).

`preference_pairs(cands, margin)` → best-of-N and DPO pairs from scored candidates.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd

from workbench import tasks
from workbench.agreement import (  # noqa: F401 (03's agreement, asked of judge as before)
    QUEUE_COLUMNS,
    disagreements,
    fleiss_kappa,
    judge_alpha,
    kappa_from_votes,
    krippendorff_alpha,
)
from workbench.config import RUBRIC, RunConfig
from workbench.data import label_topic
from workbench.embed import embed
from workbench.llm import LLM, Request, generate_by, generate_each
from workbench.llm.types import RATING_SCHEMA, read_rating
from workbench.train import train_probe

SYSTEM = "You are a strict data-quality reviewer for {domain}."
# A model's juror k uses wording k and seed + k (config.JUDGE_WORDINGS: no more of them at temperature 0).
# Measured with the embedded model on 120 real dev rows, each judged under its true label and under a
# random wrong one (score = expected rating under the model's first-token probabilities of 1-5):
# wording 0 separates them with AUC 0.58 (0.61 with the anchor example), wording 1 with 0.49 (0.48);
# the two agree poorly (Krippendorff's alpha -0.94). The 135M model is a weak judge: an endpoint
# model is the one to trust, and `judge.min_score` gates nothing by default.
USER = (
    'Criterion: {criterion}.\n{anchor}Message: "{text}"\nScore the message 1 (fails) to 5 (fully meets), '
    "then give a one-sentence reason.",
    "Rate from 1 to 5 how well this customer message meets the criterion.\nCriterion: {criterion}.\n{anchor}"
    'Message: "{text}"\nReply with the rating, then one short sentence why.',
)
ANCHOR = 'A real message on this topic, for reference: "{example}"\n'
SCHEMA = RATING_SCHEMA
parse_judgment = read_rating  # (score in 0-1, rationale) of one judgment


def rubric(cfg: RunConfig) -> list[str]:
    """The dimensions 03 scores: `judge.rubric`, or the task type's default (`tasks.<type>.rubric`)."""
    return tasks.of(cfg).rubric(cfg)


def as_jury(cfg: RunConfig, llms) -> dict:
    """The judges by name: `llms` as given, or one LLM answering for every name in `roles.judge`."""
    return llms if isinstance(llms, dict) else {name: llms for name in cfg.roles.judge}


def judge_requests(cfg: RunConfig, rows: pd.DataFrame, seeds: pd.DataFrame) -> tuple[list[Request], list[tuple]]:
    """One request per (row, dimension, juror), and its (row index, dimension, juror number)."""
    j = cfg.judge
    example = seeds.groupby("label")["text"].first().to_dict() if j.anchor else {}
    reqs, keys = [], []
    for i, row in rows.iterrows():
        topic = label_topic(cfg, row["label"])
        anchor = ANCHOR.format(example=example[row["label"]]) if row["label"] in example else ""
        for dim in rubric(cfg):
            criterion = RUBRIC[dim].format(topic=topic, domain=cfg.task.domain)
            for juror, (_, k) in enumerate(cfg.jurors()):
                reqs.append(
                    Request.rating(
                        SYSTEM.format(domain=cfg.task.domain),
                        USER[k % len(USER)].format(criterion=criterion, anchor=anchor, text=row["text"]),
                        temperature=j.temperature,
                        max_tokens=j.max_tokens,
                        seed=cfg.seed + k,
                        schema=SCHEMA,
                    )
                )
                keys.append((i, dim, juror))
    return reqs, keys


JUDGMENT_COLUMNS = ["dimension", "juror", "juror_model", "score", "rationale", "raw", "error", "cached", "model",
                    "completion_tokens", "latency_s"]  # fmt: skip


def run_judgments(cfg: RunConfig, llms: dict, reqs: list[Request], keys: list[tuple], desc: str) -> pd.DataFrame:
    """Rating requests answered by the jurors' models (`keys`: (item, dimension, juror number) each,
    the juror numbering `cfg.jurors()`) and read: one row per request, `item` then JUDGMENT_COLUMNS
    (score 0-1 or NaN, rationale, the raw reply and the call's metadata). The one place the classification
    judge, the structured answer judge and the reply judge turn ratings into judgments."""
    who = cfg.jurors()
    results = generate_by(llms, reqs, [who[k][0] for *_, k in keys], desc) if reqs else []
    recs = [
        {"item": i, "dimension": dim, "juror": juror, "juror_model": who[juror][0]}
        | dict(zip(("score", "rationale"), parse_judgment(c[0]["text"], c[0]["parsed"], c[0].get("first_probs"))))
        | {"raw": c[0]["text"], "error": c[0]["error"], "cached": bool(c[0]["cached"]), "model": c[0]["model"]}
        | {"completion_tokens": c[0]["completion_tokens"], "latency_s": c[0]["latency_s"]}
        for (i, dim, juror), c in zip(keys, results)
    ]
    return pd.DataFrame(recs, columns=["item", *JUDGMENT_COLUMNS]).astype({"score": float})


def judge_rows(
    cfg: RunConfig, rows: pd.DataFrame, cands: pd.DataFrame, seeds: pd.DataFrame, llms: dict[str, LLM] | LLM, cache_dir
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rubric judge and the label jury over 02's rows; `llms`: the judges by the names in
    `roles.judge` (one LLM: it answers for all).

    Columns: `rows` is 02's (id, text, label, keep_prompts, …), `cands` 02's candidates, `seeds` id,
    text, label. Out: `rows` with judge_<dimension> and judge_<dimension>_rationale per rubric
    dimension, judge_score, judge_spread, jury_votes, jury_label, jury_unanimous, keep_judge and
    reject_reason_judge; and the judgments, one row per (id, dimension, juror): juror_model (its name in
    roles.judge), score, rationale, raw, error, cached, model, completion_tokens, latency_s."""
    j = cfg.judge
    out = rows.copy()
    todo = out.index[out["keep_prompts"]]
    dims = rubric(cfg)
    reqs, keys = judge_requests(cfg, out.loc[todo], seeds)
    judgments = run_judgments(cfg, as_jury(cfg, llms), reqs, keys, "03 judge")
    judgments.insert(0, "id", out.loc[judgments.pop("item"), "id"].to_numpy())
    out["judge_score"] = math.nan
    out["judge_spread"] = math.nan
    for dim in dims:
        out[f"judge_{dim}"] = math.nan
        out[f"judge_{dim}_rationale"] = None
    out["keep_judge"] = True
    out["reject_reason_judge"] = None
    by_id = {k: g for k, g in judgments.groupby("id")} if len(judgments) else {}
    for i in todo:
        g = by_id.get(out.at[i, "id"])
        if g is None:
            continue
        reason = None
        for dim in dims:
            d = g[g["dimension"] == dim]
            ok = d["score"].notna()
            if not ok.any():
                reason = reason or ("llm_error" if d["error"].notna().all() else "unparseable")
                continue
            out.at[i, f"judge_{dim}"] = float(d.loc[ok, "score"].mean())
            out.at[i, f"judge_{dim}_rationale"] = d.loc[ok, "rationale"].iloc[0]
        per_juror = g.groupby("juror")["score"].mean()
        if len(per_juror.dropna()) > 1:
            out.at[i, "judge_spread"] = float(per_juror.max() - per_juror.min())
        scores = [out.at[i, f"judge_{d}"] for d in dims]
        if reason is None and dims:
            out.at[i, "judge_score"] = float(np.mean(scores))
            if out.at[i, "judge_score"] < j.min_score:
                reason = "low_score"
        out.at[i, "keep_judge"] = reason is None
        out.at[i, "reject_reason_judge"] = reason
    if tasks.of(cfg).LABEL_JURY and j.jury:
        jury(cfg, out, todo, cands, seeds, cache_dir, llms)
    return out, judgments


# ---------------------------------------------------------------- calibration


def calibration_rows(cfg: RunConfig, dev: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Known-good and known-bad rows for the judge: `judge.calibration_rows` real dev rows (a seeded
    sample), each under its own label (good) and under another label (bad). Columns: id, text,
    label, known ('good' or 'bad'), keep_prompts."""
    n = min(cfg.judge.calibration_rows, len(dev))
    dev = dev.sample(n, random_state=cfg.seed).reset_index(drop=True)
    rng = np.random.default_rng(cfg.seed)
    wrong = [rng.choice([x for x in labels if x != t]) for t in dev["label"]]
    return pd.DataFrame(
        {
            "id": [f"good{i}" for i in range(n)] + [f"bad{i}" for i in range(n)],
            "text": list(dev["text"]) * 2,
            "label": list(dev["label"]) + wrong,
            "known": ["good"] * n + ["bad"] * n,
            "keep_prompts": True,
        }
    )


def calibrate(cfg: RunConfig, rows: pd.DataFrame, seeds: pd.DataFrame, llms) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rubric judges on `calibration_rows` (no label jury, no gate): (the rows' scores, one row
    per (id, juror_model): id, known, juror_model, score), and `calibration_table` of them."""
    j = cfg.judge.model_copy(update={"jury": [], "min_score": 0.0})
    _, judgments = judge_rows(cfg.model_copy(update={"judge": j}), rows, pd.DataFrame(), seeds, llms, None)
    scored = judgments.groupby(["id", "juror_model"], as_index=False)["score"].mean()
    scored = scored.merge(rows[["id", "known"]], on="id")
    return scored, calibration_table(scored)


def calibration_table(scored: pd.DataFrame) -> pd.DataFrame:
    """How well each judge model, and the jury's mean, separates known-good from known-bad items:
    `scored` has id, known ('good'/'bad'), juror_model, score (0-1). Out: judge, good, bad (items
    scored), mean score of each, AUC (the chance a good item outscores a bad one; ties count a
    half; None without both kinds), and unscored (no readable score)."""
    jury = scored.groupby("id", as_index=False).agg(score=("score", "mean"), known=("known", "first"))
    from sklearn.metrics import roc_auc_score  # scikit-learn (a second): only where the judge is calibrated

    parts = [(m, g) for m, g in scored.groupby("juror_model", sort=False)]
    if len(parts) > 1:
        parts.append(("jury (mean)", jury))
    out = []
    for name, g in parts:
        ok = g.dropna(subset=["score"])
        good, bad = ok[ok["known"] == "good"], ok[ok["known"] == "bad"]
        both = len(good) and len(bad)
        auc = float(roc_auc_score(ok["known"].eq("good"), ok["score"])) if both else None
        out.append({"judge": name, "good": len(good), "bad": len(bad), "good_mean": good["score"].mean(),
                    "bad_mean": bad["score"].mean(), "auc": auc, "unscored": int(g["score"].isna().sum())})  # fmt: skip
    return pd.DataFrame(out, columns=["judge", "good", "bad", "good_mean", "bad_mean", "auc", "unscored"])


def calibration_markdown(table: pd.DataFrame) -> str:
    """One line on whether to trust the judge, from its calibration AUC."""
    if table is None or not len(table) or table["auc"].isna().all():
        return "No calibration (`judge.calibration_rows: 0`, no real dev rows, or no readable score)."
    row = table.iloc[-1]
    auc = row["auc"]
    verdict = (
        "it separates them: its scores can rank rows"
        if auc >= 0.75
        else "a weak signal: read its scores as hints, not verdicts"
        if auc >= 0.6
        else "no better than chance: do not trust its scores or the pairs they make"
    )
    return (
        f"**Judge calibration:** {row['judge']} gives known-good items {row['good_mean']:.2f} and known-bad "
        f"{row['bad_mean']:.2f} on average; **AUC {auc:.2f}** over {row['good']} + {row['bad']} items: {verdict}."
    )


# ---------------------------------------------------------------- label jury (classification)


LABEL_SYSTEM = "You sort {domain} messages into categories."
LABEL_USER = (
    'Message: "{text}"\nCategories: {options}.\nWhich category is this message? Answer in JSON: {{"label": ...}}'
)


def label_schema(labels: list[str]) -> str:
    return json.dumps({"type": "object", "properties": {"label": {"enum": labels}}, "required": ["label"],
                       "additionalProperties": False})  # fmt: skip


def judge_votes(cfg: RunConfig, llms, texts: list[str], labels: list[str]) -> dict[str, np.ndarray]:
    """The `judges` jurors: every model of roles.judge names a label for each text, blind (it is not
    told the intended one), under `label_schema` (the embedded model decodes under its grammar).
    One-hot rows; a reply naming no label of the list is an abstention (a row of 0)."""
    names = list(dict.fromkeys(cfg.roles.names("judge")))
    llms = as_jury(cfg, llms)
    options, schema = ", ".join(labels), label_schema(labels)
    reqs = [Request.chat(LABEL_SYSTEM.format(domain=cfg.task.domain), LABEL_USER.format(text=t, options=options),
                         temperature=0.0, max_tokens=cfg.judge.max_tokens, seed=cfg.seed, schema=schema, strict=True)
            for t in texts]  # fmt: skip
    col = {lab: k for k, lab in enumerate(labels)}
    out = {}
    for name, got in generate_each(llms, reqs, names, "03 label votes of the judges").items():
        p = np.zeros((len(texts), len(labels)))
        for r, res in enumerate(got):
            parsed = res[0].get("parsed")
            said = parsed.get("label") if isinstance(parsed, dict) else None
            if said in col:
                p[r, col[said]] = 1.0
        out[f"judge:{name}"] = p
    return out


def juror_probabilities(
    cfg: RunConfig,
    texts: list[str],
    cands: pd.DataFrame,
    ids: list[str],
    seeds: pd.DataFrame,
    labels: list[str],
    cd,
    llms=None,
) -> dict[str, np.ndarray]:
    """Each juror's distribution over `labels` for each text (rows of 0 = the juror abstains);
    `llms`: the judges by name, for the `judges` jurors."""
    ref = pd.concat(
        [seeds[["text", "label"]]]
        + [pd.DataFrame({"text": s.positive, "label": s.name}) for s in (cfg.task.labels or []) if s.positive],
        ignore_index=True,
    )
    col = {lab: k for k, lab in enumerate(labels)}
    out: dict[str, np.ndarray] = {}
    if "probe" in cfg.judge.jury:
        probe = train_probe(ref.assign(source="seed"), cfg.train, cd)
        p = np.zeros((len(texts), len(labels)))
        if texts:
            p[:, [col[c] for c in probe.labels]] = probe.predict_proba(texts)
        out["probe"] = p
    if "knn" in cfg.judge.jury:
        p = np.zeros((len(texts), len(labels)))
        if texts:
            sims = embed(texts, cd) @ embed(list(ref["text"]), cd).T
            p[np.arange(len(texts)), ref["label"].map(col).to_numpy()[sims.argmax(1)]] = 1.0
        out["knn"] = p
    if "llm" in cfg.judge.jury:
        p = np.zeros((len(texts), len(labels)))
        named = cands[(cands["source"] == "model") & cands["response_label"].notna()]
        votes = named.groupby("prompt_id")["response_label"].apply(list).to_dict()
        for r, pid in enumerate(ids):
            for lab, n in Counter(votes.get(pid, [])).items():
                p[r, col[lab]] = n
            if p[r].sum():
                p[r] /= p[r].sum()
        out["llm"] = p
    if "judges" in cfg.judge.jury and texts:
        out |= judge_votes(cfg, llms, texts, labels)
    return out


def vote(probs: np.ndarray) -> int | None:
    """A juror's label: its most probable one, or None (abstain) when it gave nothing or tied."""
    if probs.sum() == 0:
        return None
    top = np.flatnonzero(probs == probs.max())
    return int(top[0]) if len(top) == 1 else None


def aggregate(votes: list[int | None], probs: list[np.ndarray], how: str) -> int | None:
    """majority: the label named by more than half of the votes cast; mean: the label with the
    highest mean probability over jurors that voted. None when there is no such label."""
    cast = [v for v in votes if v is not None]
    if not cast:
        return None
    if how == "majority":
        lab, n = Counter(cast).most_common(1)[0]
        return lab if n * 2 > len(cast) else None
    mean = np.mean([p for p, v in zip(probs, votes) if v is not None], axis=0)
    return vote(mean)


def jury(
    cfg: RunConfig, out: pd.DataFrame, todo: pd.Index, cands: pd.DataFrame, seeds: pd.DataFrame, cd, llms=None
) -> None:
    labels = sorted(set(out["label"]) | set(seeds["label"]))
    texts, ids = list(out.loc[todo, "text"]), list(out.loc[todo, "id"])
    probs = juror_probabilities(cfg, texts, cands, ids, seeds, labels, cd, llms)
    names = list(probs)
    out["jury_votes"] = None
    out["jury_label"] = None
    out["jury_unanimous"] = None
    for r, i in enumerate(todo):
        rp = [probs[n][r] for n in names]
        votes = [vote(p) for p in rp]
        agg = aggregate(votes, rp, cfg.judge.aggregate)
        out.at[i, "jury_votes"] = json.dumps({n: labels[v] if v is not None else None for n, v in zip(names, votes)})
        out.at[i, "jury_label"] = labels[agg] if agg is not None else None
        out.at[i, "jury_unanimous"] = None not in votes and len(set(votes)) == 1
        if not out.at[i, "keep_judge"]:
            continue
        reason = "uncertain" if agg is None else ("label_mismatch" if labels[agg] != out.at[i, "label"] else None)
        out.at[i, "keep_judge"] = reason is None
        out.at[i, "reject_reason_judge"] = reason


def vote_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One column per juror with the label it named (None = abstained), for judged rows."""
    if "jury_votes" not in rows:
        return pd.DataFrame(index=rows.index[:0])
    have = rows[rows["jury_votes"].notna()]
    return pd.DataFrame([json.loads(v) for v in have["jury_votes"]], index=have.index)


# ---------------------------------------------------------------- best-of-N and preference pairs


def score_candidates(cands: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Classification: a candidate scores 1 when it names the row's label (the intended label,
    confirmed by the jury for kept rows), 0 when it names another, NaN when it does not parse.

    Columns: `cands` as 02 wrote them, `rows` 03's judged rows. Out: `cands` with score and
    row_kept."""
    out = cands.copy()
    named = out["response_label"]
    out["score"] = np.where(named.isna(), np.nan, (named == out["label"]).astype(float))
    keep = rows.set_index("id")["keep_judge"] & rows.set_index("id")["keep_prompts"]
    out["row_kept"] = out["prompt_id"].map(keep).fillna(False).astype(bool)
    return out


def preference_pairs(cands: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Per prompt: the best candidate (highest score; ties → lowest candidate number) and, when the
    worst scores at least `margin` lower, a (chosen, rejected) pair. Unscored candidates are skipped.

    Columns: `cands` as score_candidates returns. Out, one row per prompt: prompt_id, prompt,
    label, best_id, chosen, best_score, worst_id, rejected, worst_score, margin, pair."""
    out = []
    for pid, g in cands[cands["score"].notna()].groupby("prompt_id", sort=False):
        g = g.sort_values(["score", "candidate"], ascending=[False, True])
        best, worst = g.iloc[0], g.sort_values(["score", "candidate"], ascending=[True, True]).iloc[0]
        gap = float(best["score"] - worst["score"])
        is_pair = gap >= margin and gap > 0
        out.append(
            {
                "prompt_id": pid,
                "prompt": best["prompt"],
                "label": best["label"],
                "best_id": best["id"],
                "chosen": best["response_label"],
                "best_score": float(best["score"]),
                "worst_id": worst["id"] if is_pair else None,
                "rejected": worst["response_label"] if is_pair else None,
                "worst_score": float(worst["score"]),
                "margin": gap,
                "pair": is_pair,
            }
        )
    cols = ["prompt_id", "prompt", "label", "best_id", "chosen", "best_score", "worst_id", "rejected"]
    return pd.DataFrame(out, columns=cols + ["worst_score", "margin", "pair"])


def juror_agreement(rows: pd.DataFrame) -> pd.DataFrame:
    """Per juror: votes cast, and the share of them naming the row's intended label."""
    votes = vote_table(rows)
    out = []
    for juror in votes.columns:
        cast = votes[juror].dropna()
        agree = (cast == rows.loc[cast.index, "label"]).mean() if len(cast) else math.nan
        out.append({"juror": juror, "votes": len(cast), "agrees_with_intended": agree})
    return pd.DataFrame(out, columns=["juror", "votes", "agrees_with_intended"])
