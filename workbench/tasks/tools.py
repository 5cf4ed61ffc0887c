"""Tool calls and extraction: a row is a request, the tool it calls (or none) and the arguments
it carries; real rows come from a structured dataset (`workbench/structured.py`: JSONL or the
SNIPS files); an answer is JSON under the tools' schema; 06 reports tool accuracy, slot
precision/recall/F1 and exact match. For extraction the one tool is the field schema and the
answer is its arguments object alone."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from workbench import structured
from workbench.config import RUBRIC, ConfigError, RunConfig
from workbench.data import dataset_dir
from workbench.llm.types import Request
from workbench.tasks.tools_answer import (  # noqa: F401 (the answer's hooks, this type's)
    answer_json,
    answer_request,
    answer_system,
    parse,
    schema,
    score,
)
from workbench.tasks.tools_inputs import (  # noqa: F401 (01's hooks, this type's)
    check_input,
    clean_message,
    draft,
    generate_inputs,
    parse_suggestions,
    planned_requests,
    value_pool,
)
from workbench.tasks.tools_training import (  # noqa: F401 (05's hooks, this type's)
    SETS,
    dpo_records,
    rewards,
    sft_records,
    sft_rows,
    training_sets,
)

ROW_KEY = "tool"
FLOW = "structured"  # its stages: flows/structured.py
LABEL_JURY = False  # the candidates' field agreement is the jury (03)
# 07's cluster namer (`gaps.name_clusters`): a cluster is a tool and the student's commonest error on it
NAME_USER = (
    "Requests for the tool '{true}' that the student answered wrongly (its commonest error: {pred}):\n{examples}\n\n"
    "Write a short title (3 to 6 words) for what these requests have in common, then one sentence about them.\n"
    "Title:"
)


def labels(cfg: RunConfig) -> list[str]:
    """The tools (extraction: its one schema's name), checked against the dataset's."""
    names = list(structured.tools_of(cfg))
    if cfg.data.dataset is not None and cfg.task.type == "tools":
        known = set(structured.read_split(_dir(cfg), "train")["tool"])
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"task.tools: {unknown} have no rows in data.dataset {cfg.data.dataset!r}; its tools: {sorted(known)}"
            )
    return names


def _dir(cfg: RunConfig):
    return dataset_dir(cfg)


def _need_data(cfg: RunConfig) -> None:
    if cfg.data.dataset is None:
        raise ConfigError(
            f"data.dataset is null: a {cfg.task.type} task needs a structured dataset (train.jsonl, test.jsonl)"
        )


def seeds(cfg: RunConfig) -> pd.DataFrame:
    _need_data(cfg)
    return structured.train_samples(cfg)[0]


def dev(cfg: RunConfig) -> pd.DataFrame:
    _need_data(cfg)
    return structured.train_samples(cfg)[1]


def test(cfg: RunConfig) -> pd.DataFrame:
    _need_data(cfg)
    return structured.test_rows(cfg)


def label_counts(cfg: RunConfig) -> dict[str, int]:
    _need_data(cfg)
    return structured.reference_rows(cfg, None)["tool"].value_counts().to_dict()


def check_data(cfg: RunConfig) -> None:
    """The tools (or fields) and every row of the train split (`structured.check_rows`: no argument
    the config does not declare, each value of its type); the test split is checked where 06 reads it."""
    labels(cfg)
    seeds(cfg)


# ---------------------------------------------------------------- the answer


# ---------------------------------------------------------------- 03: verifiable checks of answers


def check_answer(cfg: RunConfig, text: str, intended: dict, raw: str) -> dict:
    """A candidate answer checked without a judge: it parses under the schema; each of its values
    is in the message; agreement with the intended answer field by field (precision, recall, F1
    of (argument, value) pairs, the tool). `reason` names the first failure (None: none)."""
    answer, why = parse(cfg, raw)
    if answer is None:
        return {"answer": None, "schema_valid": False, "reason": "schema_invalid", "why": why, "agreement": 0.0}
    missing = structured.missing_values(text, answer["arguments"])
    tp, fp, fn = structured.row_counts(intended, answer)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    tool_ok = answer["tool"] == intended["tool"]
    agreement = f1 * tool_ok
    reason = (
        "value_not_in_text" if missing else "wrong_tool" if not tool_ok else "wrong_arguments" if (fp or fn) else None
    )
    return {
        "answer": answer,
        "schema_valid": True,
        "values_present": not missing,
        "tool_agrees": tool_ok,
        "field_precision": p,
        "field_recall": r,
        "agreement": agreement,
        "reason": reason,
        "why": f"not in the message: {missing}" if missing else None,
    }


CANDIDATE_META = ("model", "seed", "completion_tokens", "latency_s", "ttft_s", "cached", "error")


def candidates(cfg: RunConfig, rows: pd.DataFrame, llm, on_row=None) -> pd.DataFrame:
    """02: `responses.candidates` answers per kept row, under the schema, each checked against
    the row's intended answer (`check_answer`); `on_row(record)` is called with each as it arrives
    (02's live view and `candidates.jsonl`). The rows come back in the kept rows' order."""
    kept = rows[rows["keep"]].reset_index(drop=True)
    reqs = [
        answer_request(
            cfg,
            t,
            seed=cfg.seed * 7919 + i,
            n=cfg.responses.candidates,
            temperature=cfg.responses.temperature or 0.2,
            max_tokens=cfg.responses.max_tokens or 64,
        )
        for i, t in enumerate(kept["text"])
    ]
    got: dict[int, list[dict]] = {}
    t0 = time.perf_counter()

    def arrived(i: int, out: list[dict]) -> None:
        now = time.perf_counter() - t0
        r = kept.iloc[i]
        intended = {"tool": r["tool"], "arguments": r["arguments"]}
        got[i] = []
        for c in out:
            chk = check_answer(cfg, r["text"], intended, c["text"] or "")
            meta = {k: c.get(k) for k in CANDIDATE_META}
            got[i].append({"row": r["id"], "candidate": c["candidate"], "raw": c["text"], **chk, **meta}
                          | {"source": "model", "arrived_s": now})  # fmt: skip
            if on_row is not None:
                on_row(got[i][-1])

    llm.generate(reqs, desc="02 structured candidates", on_result=arrived)
    return pd.DataFrame([rec for i in sorted(got) for rec in got[i]])


# The judge on an answer: what each rubric dimension means for a tool call or an extraction (the
# other dimensions keep their general wording), and the dimensions scored when `judge.rubric` is unset.
ANSWER_CRITERIA = {
    "correctness": "the answer fits the request: the right tool, and each value it gives is the request's own "
    "words for that argument, with nothing the request says left out",
    "formatting": "the answer uses only the schema's own argument names, with no empty, placeholder or made-up values",
    "tool_usage": RUBRIC["tool_usage"],
}
ANSWER_RUBRIC = {"tools": ["correctness", "tool_usage"], "extraction": ["correctness", "formatting"]}
JUDGE_SYSTEM = "You are a strict reviewer of {what} for {domain}."
# a model's juror k reads wording k (config.JUDGE_WORDINGS of them), as the classification judge's
JUDGE_USER = (
    'Criterion: {criterion}.\n{anchor}Request: "{text}"\nAnswer: {answer}\n'
    "Score the answer 1 (fails) to 5 (fully meets), then give a one-sentence reason.",
    "Rate from 1 to 5 how well this answer to the request meets the criterion.\nCriterion: {criterion}.\n"
    '{anchor}Request: "{text}"\nAnswer: {answer}\nReply with the rating, then one short sentence why.',
)
JUDGE_ANCHOR = 'A real request and its correct answer, for reference:\nRequest: "{text}"\nAnswer: {answer}\n'


def answer_rubric(cfg: RunConfig) -> list[str]:
    return list(cfg.judge.rubric) if cfg.judge.rubric is not None else ANSWER_RUBRIC[cfg.task.type]


rubric = answer_rubric  # the seam's name (TaskType.rubric)


def answer_judge_requests(
    cfg: RunConfig, rows: pd.DataFrame, cands: pd.DataFrame, seeds: pd.DataFrame, rating_schema: str
) -> tuple[list[Request], list[tuple]]:
    """03's judge on the answers: one request per (candidate of a kept row, rubric dimension, juror),
    showing the request and the candidate's answer (and, with `judge.anchor`, a real seed of the
    same tool with its answer), and the key (candidate index, dimension, juror)."""
    j = cfg.judge
    with_tool = cfg.task.type == "tools"
    anchor = {}
    if j.anchor:
        for s in seeds.drop_duplicates("tool").itertuples():
            anchor[s.tool] = JUDGE_ANCHOR.format(text=s.text, answer=answer_json(s.tool, s.arguments, with_tool))
    kept = rows.set_index("id")[rows.set_index("id")["keep"]]
    what = "tool calls" if with_tool else "extracted fields"
    reqs, keys = [], []
    for i, c in cands[cands["row"].isin(kept.index)].iterrows():
        r = kept.loc[c["row"]]
        for dim in answer_rubric(cfg):
            criterion = ANSWER_CRITERIA.get(dim) or RUBRIC[dim].format(topic=r["tool"], domain=cfg.task.domain)
            for juror, (_, k) in enumerate(cfg.jurors()):
                user = JUDGE_USER[k].format(
                    criterion=criterion, anchor=anchor.get(r["tool"], ""), text=r["text"], answer=c["raw"]
                )
                reqs.append(
                    Request.rating(
                        JUDGE_SYSTEM.format(what=what, domain=cfg.task.domain),
                        user,
                        temperature=j.temperature,
                        max_tokens=j.max_tokens,
                        seed=cfg.seed + k,
                        schema=rating_schema,
                    )
                )
                keys.append((i, dim, juror))
    return reqs, keys


def judge_rows(cfg: RunConfig, rows: pd.DataFrame, cands: pd.DataFrame) -> pd.DataFrame:
    """03, verifiable checks first: a row's answer is its intended one (drawn before the message
    was written), kept only if it validates under the schema and each value is in the message
    (`answer_invalid`, `value_missing`); the candidates' agreement with it, field by field, is
    the jury's (`agreement`: mean F1 over candidates; `agreement_<argument>`: the share of
    candidates that give that argument its value). Candidates rank by agreement, then by the
    judge's score where 03 has one (`judge_score`): the best is `best_answer`; the worst, when it
    agrees less than fully, is the rejected side of a DPO pair."""
    tools = structured.tools_of(cfg)
    out = rows.copy()
    reasons, agree, worst, best, scored, per_field = [], [], [], [], [], []
    by_row = {k: g for k, g in cands.groupby("row")} if len(cands) else {}
    for r in out.itertuples():
        reason = r.reject_reason
        if reason is None:
            answer, why = structured.parse_answer(answer_json(r.tool, r.arguments), tools)
            if answer is None:
                reason = "answer_invalid"
            elif structured.missing_values(r.text, r.arguments):
                reason = "value_missing"
        reasons.append(reason)
        g = by_row.get(r.id)
        if g is None or not len(g):
            agree.append(None)
            worst.append(None)
            best.append(None)
            scored.append(None)
            per_field.append({})
            continue
        agree.append(float(g["agreement"].mean()))
        judge = g["judge_score"] if "judge_score" in g else pd.Series(np.nan, index=g.index)
        order = g.assign(_judge=judge.fillna(-1.0)).sort_values(["agreement", "_judge", "candidate"], kind="stable")
        lo, hi = order.iloc[0], order.iloc[-1]
        worst.append(lo["raw"] if lo["agreement"] < 1.0 and lo["answer"] is not None else None)
        best.append(hi["raw"])
        scored.append(float(judge.mean()) if judge.notna().any() else None)
        fields = {}
        for k, v in r.arguments.items():
            fields[k] = float(
                np.mean(
                    [
                        a is not None and structured.norm(a["arguments"].get(k, "")) == structured.norm(v)
                        for a in g["answer"]
                    ]
                )
            )
        per_field.append(fields)
    out["reject_reason"] = reasons
    out["keep"] = out["reject_reason"].isna()
    out["agreement"] = agree
    out["field_agreement"] = per_field
    out["answer"] = [answer_json(t, a, cfg.task.type == "tools") for t, a in zip(out["tool"], out["arguments"])]
    out["rejected_answer"] = worst
    out["best_answer"] = best
    out["judge_score"] = scored
    return out


# ---------------------------------------------------------------- 06: a model's answers


def llm_answers(
    cfg: RunConfig, texts: list[str], llm, desc: str, brief: bool = False
) -> tuple[list[dict | None], list[str]]:
    """A causal model's greedy answers under the schema (the untuned model, or with `brief` a tuned
    student, as `llm`), parsed; and the raw texts."""
    reqs = [
        answer_request(cfg, t, seed=0, temperature=0.0, max_tokens=cfg.responses.max_tokens or 64, brief=brief)
        for t in texts
    ]
    raws = [o[0]["text"] or "" for o in llm.generate(reqs, desc=desc)]
    return [parse(cfg, r)[0] for r in raws], raws


def failures(gold: pd.DataFrame, answers: list[dict | None]) -> pd.DataFrame:
    """07's failures: rows whose answer has the wrong tool, or a wrong, missing or extra argument,
    with the error signature (`wrong_tool`, `missing:<arg>`, `extra:<arg>`, `wrong:<arg>`)."""
    out = []
    for r, a in zip(gold.itertuples(), answers):
        g = {k: structured.norm(v) for k, v in r.arguments.items()}
        if a is None:
            sig = ["unparsed"]
        elif a["tool"] != r.tool:
            sig = ["wrong_tool"]
        else:
            p = {k: structured.norm(v) for k, v in a["arguments"].items()}
            sig = [f"missing:{k}" for k in g if k not in p]
            sig += [f"extra:{k}" for k in p if k not in g]
            sig += [f"wrong:{k}" for k in g if k in p and p[k] != g[k]]
        if sig:
            out.append(
                {
                    "id": r.id,
                    "text": r.text,
                    "tool": r.tool,
                    "label": r.tool,
                    "signature": " ".join(sorted(sig)),
                    "answer": a,
                    "expected": {"tool": r.tool, "arguments": r.arguments},
                }
            )
    return pd.DataFrame(out, columns=["id", "text", "tool", "label", "signature", "answer", "expected"])
