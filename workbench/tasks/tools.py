"""Tool calls and extraction: a row is a request, the tool it calls (or none) and the arguments
it carries; real rows come from a structured dataset (`workbench/structured.py`: JSONL or the
SNIPS files); an answer is JSON under the tools' schema; 06 reports tool accuracy, slot
precision/recall/F1 and exact match. For extraction the one tool is the field schema and the
answer is its arguments object alone."""

from __future__ import annotations

import difflib
import json
import re
import time

import numpy as np
import pandas as pd

from workbench import structured
from workbench.config import RUBRIC, ConfigError, RunConfig, plan_counts
from workbench.data import dataset_dir
from workbench.llm.types import Request, clean_text

ROW_KEY = "tool"
FLOW = "structured"  # its stages: flows/structured.py


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
    labels(cfg)
    rows = seeds(cfg)
    unknown = _undeclared(cfg, rows)
    if unknown:
        raise ConfigError(
            f"data.dataset {cfg.data.dataset!r}: its rows use arguments the config does not declare: {unknown}; "
            "add them to task.tools (or task.fields), or they can never be predicted"
        )


def _undeclared(cfg: RunConfig, rows: pd.DataFrame) -> dict[str, list[str]]:
    declared = structured.tools_of(cfg)
    out: dict[str, set[str]] = {}
    for tool, args in zip(rows["tool"], rows["arguments"]):
        extra = set(args) - set(declared.get(tool, {}))
        if extra and tool != structured.NO_TOOL:
            out.setdefault(tool, set()).update(extra)
    return {k: sorted(v) for k, v in out.items()}


# ---------------------------------------------------------------- the answer


def schema(cfg: RunConfig) -> dict:
    """The answer's JSON schema (with a no-tool branch for tool tasks)."""
    tools = cfg.task.type == "tools"
    required = [] if tools else [f.name for f in cfg.task.fields if f.required]
    return structured.answer_schema(structured.tools_of(cfg), with_tool=tools, no_tool=tools, required=required)


def answer_system(cfg: RunConfig, brief: bool = False) -> str:
    """The system message asking for an answer: the task, each tool with its one-line description
    and its arguments' descriptions, and the answer's form. `brief`: the task and the form only,
    for a tuned student, which learned the tools (as classification's students learn the labels)."""
    if brief:
        return f"{cfg.task.description.strip()} Answer with JSON."
    lines = [cfg.task.description.strip(), ""]
    if cfg.task.type == "tools":
        lines.append("Tools:")
        for t in cfg.task.tools:
            args = ", ".join(f"{k} ({p.description})" if p.description else k for k, p in t.parameters.items())
            lines.append(f"- {t.name}: {t.description} Arguments: {args}.")
        lines.append(
            'Answer with JSON: {"tool": <name>, "arguments": {<argument>: <the words of the request>}}; '
            f'{{"tool": "{structured.NO_TOOL}", "arguments": {{}}}} when no tool applies. Leave out arguments the '
            "request does not give."
        )
    else:
        fields = ", ".join(f"{f.name} ({f.description})" if f.description else f.name for f in cfg.task.fields)
        lines.append(f"Fields: {fields}.")
        lines.append("Answer with a JSON object of the fields the text gives, each value copied from the text.")
    return "\n".join(lines)


def answer_request(
    cfg: RunConfig,
    text: str,
    seed: int,
    n: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 64,
    brief: bool = False,
) -> Request:
    """A strict request for `text`'s answer: endpoints get the schema as response_format, the
    embedded model decodes under its grammar."""
    return Request.chat(
        answer_system(cfg, brief),
        text,
        temperature=temperature,
        top_p=cfg.responses.top_p or 1.0,
        max_tokens=max_tokens,
        seed=seed,
        n=n,
        schema=json.dumps(schema(cfg), sort_keys=True),
        strict=True,
    )


def parse(cfg: RunConfig, text: str) -> tuple[dict | None, str | None]:
    return structured.parse_answer(text, structured.tools_of(cfg), with_tool=cfg.task.type == "tools")


def score(gold: pd.DataFrame, answers: list[dict | None], bootstrap: int, seed: int = 0) -> dict:
    """06's metrics for one model's answers to the rows of `gold` (tool, arguments)."""
    truth = [{"tool": t, "arguments": a} for t, a in zip(gold["tool"], gold["arguments"])]
    return structured.scores(truth, answers, bootstrap, seed)


# ---------------------------------------------------------------- 01: answer-first inputs


def value_pool(cfg: RunConfig, seeds: pd.DataFrame) -> dict[str, list[str]]:
    """Values each argument may take in a generated request: the config's `values` (of tool
    arguments, or of extraction fields), then every value the real seeds give the argument (under
    any tool: a city is a city), in that order, each once. An argument without any has none, and
    is drawn only with suggested values."""
    pool: dict[str, list[str]] = {}
    for t in cfg.task.tools:
        for name, p in t.parameters.items():
            pool.setdefault(name, []).extend(p.values)
    for f in cfg.task.fields if cfg.task.type == "extraction" else []:
        pool.setdefault(f.name, []).extend(f.values)
    for args in seeds["arguments"]:
        for name, v in args.items():
            pool.setdefault(name, []).append(str(v))
    return {k: list(dict.fromkeys(v)) for k, v in pool.items()}


def suggestion_requests(cfg: RunConfig, pool: dict[str, list[str]], per_argument: int = 8) -> dict[str, Request]:
    """One request per argument asking the generator for new values like the known ones (its
    own suggestions widen the seeds' few values)."""
    desc = {k: p.description for t in cfg.task.tools for k, p in t.parameters.items()}
    if cfg.task.type == "extraction":
        desc = {f.name: f.description for f in cfg.task.fields}
    out = {}
    for name in sorted(desc):
        known = ", ".join(pool.get(name, [])[:5]) or "none yet"
        what = desc[name] or name.replace("_", " ")
        out[name] = Request.chat(
            f"You help build test data for: {cfg.task.domain}.",
            f"List {per_argument} different realistic values of {name.replace('_', ' ')} ({what}), one per line, "
            f"no numbering. Known values: {known}.",
            temperature=cfg.prompts.temperature or 0.9,
            top_p=cfg.prompts.top_p or 0.95,
            max_tokens=60,
            seed=cfg.seed,
        )
    return out


_WORDY = re.compile(r"^[^\W\d_][\w '&-]*$")


def parse_suggestions(
    text: str, known: list[str] | None = None, max_chars: int = structured.MAX_VALUE_CHARS
) -> list[str]:
    """Values from a suggestion reply: a line each, bullets and numbering dropped; a line with
    more than six words or that is not a value (a sentence, a colon) is left out."""
    out = []
    known = known or []
    wordy = bool(known) and all(_WORDY.match(k) for k in known)
    digits = bool(known) and all(k.isdigit() for k in known)
    most = max((len(k.split()) for k in known), default=4) + 2
    for line in (text or "").splitlines():
        v = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip("\"'.,")
        if (len(v) < 2 and not v.isdigit()) or ":" in v or len(v) > max_chars or len(v.split()) > min(most, 6):
            continue
        if (wordy and not _WORDY.match(v)) or (digits and not v.isdigit()):  # the shape of the known values
            continue
        out.append(v)
    return list(dict.fromkeys(out))


def plan_cells(cfg: RunConfig, seeds: pd.DataFrame, rng) -> list[dict]:
    """The coverage grid, answer first: per tool, its count under the sampling plan
    (`config.plan_counts`: rows_per_label or total_rows, class_balance, extra_rows) of cells, each a real
    seed of the tool as template (its arguments are the ones present, cycling through the seeds
    so every combination they show is covered) and a difficulty; plus `diversity.no_tool_share`
    no-tool cells for tool tasks (requests no tool serves: the answer is tool none)."""
    diff = cfg.diversity.difficulty or {}
    levels, weights = (list(diff), np.array(list(diff.values()), dtype=float)) if diff else ([None], np.ones(1))
    weights = weights / weights.sum()
    cells = []
    names = list(structured.tools_of(cfg))
    proportional = cfg.sampling.class_balance == "proportional"
    counts = plan_counts(cfg, names, label_counts(cfg) if proportional else None)
    for name in names:
        own = seeds[seeds["tool"] == name]
        for i in range(counts[name]):
            t = own.iloc[i % len(own)] if len(own) else None
            cells.append(
                {
                    "tool": name,
                    "template": None if t is None else t["id"],
                    "present": [] if t is None else sorted(t["arguments"]),
                    "difficulty": levels[int(rng.choice(len(levels), p=weights))],
                }
            )
    if cfg.task.type == "tools" and cfg.diversity.no_tool_share:
        n = int(round(len(cells) * cfg.diversity.no_tool_share))
        cells += [{"tool": structured.NO_TOOL, "template": None, "present": [], "difficulty": None} for _ in range(n)]
    for dim, items in (("persona", cfg.diversity.personas), ("tone", cfg.diversity.tones)):
        drawn = _draw(items, len(cells), rng)
        for cell, v in zip(cells, drawn):
            cell[dim] = v
    return cells


def _draw(items: list, n: int, rng) -> list[str | None]:
    """`n` names drawn from shares (`diversity.personas`, `tones`: unset shares split what the set
    ones leave), or None each without any."""
    if not items:
        return [None] * n
    given = sum(x.share for x in items if x.share is not None)
    unset = [x for x in items if x.share is None]
    w = np.array([x.share if x.share is not None else max(0.0, 1 - given) / len(unset) for x in items], dtype=float)
    w = w / w.sum() if w.sum() > 0 else np.full(len(items), 1 / len(items))
    return [items[int(i)].name for i in rng.choice(len(items), size=n, p=w)]


NOT_SERVED = (
    "a request to a voice assistant that none of these tools can serve (for example a timer, a joke, a translation)"
)


def draft(template: pd.Series, values: dict[str, str]) -> str:
    """The template seed with each argument's value replaced by the drawn one (first occurrence,
    any case): the message the generator rewrites."""
    text = template["text"]
    for k, v in values.items():
        old = str(template["arguments"].get(k, ""))
        if old:
            text = re.sub(re.escape(old), lambda _m, v=v: v, text, count=1, flags=re.I)
    return text


def input_request(
    cfg: RunConfig, cell: dict, values: dict[str, str], draft_text: str | None, shots: pd.DataFrame, seed: int
) -> Request:
    """The generator's request for one message: rewrite the draft (a real seed with the cell's
    values swapped in) in other words, keeping each value word for word; a no-tool cell asks for
    a request the tools do not serve, shown real requests they do."""
    if cell["tool"] == structured.NO_TOOL or draft_text is None:
        examples = "\n".join(f"- {t}" for t in shots["text"])
        names = ", ".join(t.name for t in cfg.task.tools)
        ask = f"Requests the assistant's tools ({names}) serve:\n{examples}\n\nWrite {NOT_SERVED}."
    else:
        keep = " and ".join(f'"{v}"' for v in values.values())
        ask = "Rewrite this request to a voice assistant in other words." + (
            f" Keep {keep} exactly as written." if keep else ""
        )
        if cell.get("difficulty") == "hard":
            ask += " Make it longer and less direct."
        elif cell.get("difficulty") == "easy":
            ask += " Keep it short."
        if cell.get("persona"):
            ask += f" Write it as {cell['persona']} would say it."
        if cell.get("tone"):
            ask += f" Tone: {cell['tone']}."
        ask += f"\nRequest: {draft_text}"
    system = "You rewrite user requests." + (f" Style: {cfg.task.style}" if cfg.task.style else "")
    return Request.chat(
        system,
        f"{ask}\nReply with the new request only.",
        temperature=cfg.prompts.temperature or 0.9,
        top_p=cfg.prompts.top_p or 0.95,
        max_tokens=cfg.prompts.max_tokens,
        seed=seed,
    )


_ECHO = re.compile(r"\brewrite\b|exactly as written|\breply with\b|\brequest only\b", re.I)
_LEAD = re.compile(r"^\s*(?:new |rewritten |the )?(?:request|rewrite|message)\s*:\s*", re.I)


def clean_message(raw: str) -> str:
    """The message in a generator's reply (`clean_text`), without a leading "Request:" label."""
    return _LEAD.sub("", clean_text(_LEAD.sub("", (raw or "").strip()))).strip()


def check_input(text: str, intended: dict, examples: pd.DataFrame) -> str | None:
    """01's verifiable gate on a generated message: `echoes_instructions` when it repeats the
    generator's instructions; `value_missing` when an intended value is not
    in it; `value_unintended` when it carries a value of a real example shown or used as its
    template that is not intended (its answer would then be wrong); else None."""
    if _ECHO.search(text):
        return "echoes_instructions"
    if structured.missing_values(text, intended):
        return "value_missing"
    wanted = {structured.norm(v) for v in intended.values()}
    t = f" {structured.norm(text)} "
    for args in examples["arguments"]:
        for v in args.values():
            n = structured.norm(v)
            if n and n not in wanted and len(n) > 2 and f" {n} " in t:
                return "value_unintended"
    return None


def generate_inputs(cfg: RunConfig, seeds: pd.DataFrame, llm) -> pd.DataFrame:
    """01 for structured tasks, answer first: plan the cells, draw each cell's values (the seeds'
    values and the generator's suggestions), have the generator write the message around them,
    gate it (`check_input`); a cell whose message fails is tried again with a fresh draw and seed,
    up to `prompts.rounds` rounds. Every attempt is a row, with its cell, intended answer and
    reject reason (None when kept)."""
    rng = np.random.default_rng(cfg.seed)
    pool = value_pool(cfg, seeds)
    asks = suggestion_requests(cfg, pool)
    replies = llm.generate(list(asks.values()), desc="01 value suggestions")
    suggested = {k: parse_suggestions(r[0]["text"], pool.get(k)) for k, r in zip(asks, replies)}
    values = {k: list(dict.fromkeys(pool.get(k, []) + suggested.get(k, []))) for k in set(pool) | set(suggested)}
    cells = plan_cells(cfg, seeds, rng)
    by_id = seeds.set_index("id")
    rows: list[dict] = []
    todo = list(range(len(cells)))
    for rnd in range(cfg.prompts.rounds):
        if not todo:
            break
        reqs, made = [], []
        for c in todo:
            cell = cells[c]
            tpl = by_id.loc[cell["template"]] if cell["template"] is not None else None
            chosen = {}
            for a in cell["present"]:
                old = str(tpl["arguments"][a]) if tpl is not None else ""
                options = [v for v in values.get(a, []) if structured.norm(v) != structured.norm(old)] or [old]
                chosen[a] = str(rng.choice(options))
            text = draft(tpl, chosen) if tpl is not None else None
            shots = seeds.sample(
                min(cfg.prompts.examples_per_call, len(seeds)), random_state=int(rng.integers(1 << 31))
            )
            shown = shots if tpl is None else by_id.loc[[cell["template"]]].reset_index()
            reqs.append(input_request(cfg, cell, chosen, text, shots, seed=cfg.seed * 100_003 + rnd * 10_007 + c))
            made.append((c, chosen, text, shown))
        outs = llm.generate(reqs, desc=f"01 answer-first requests, round {rnd + 1}")
        failed = []
        for (c, chosen, text, shown), out in zip(made, outs):
            r = out[0]
            msg = clean_message(r["text"]) if not r.get("error") else ""
            reason = "llm_error" if r.get("error") else ("empty" if not msg else check_input(msg, chosen, shown))
            if reason is not None:
                failed.append(c)
            cell = cells[c]
            rows.append(
                {
                    "id": f"p{c:05d}-r{rnd}",
                    "cell": c,
                    "round": rnd,
                    "text": msg,
                    "raw": r["text"],
                    "draft": text,
                    "tool": cell["tool"],
                    "label": cell["tool"],
                    "arguments": chosen,
                    "template": cell["template"],
                    "difficulty": cell["difficulty"],
                    "persona": cell.get("persona"),
                    "tone": cell.get("tone"),
                    "reject_reason": reason,
                    "keep": reason is None,
                    "cached": r.get("cached", False),
                    "completion_tokens": r.get("completion_tokens"),
                }
            )
        todo = failed
    out = pd.DataFrame(rows)
    out.attrs["suggested"] = suggested
    out.attrs["unfilled"] = len(todo)
    return out


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


def answer_json(tool: str, arguments: dict, with_tool: bool = True) -> str:
    """An answer as the student writes it: compact JSON, arguments in the order given."""
    obj = {"tool": tool, "arguments": arguments} if with_tool else arguments
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


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


def answer_judge_requests(
    cfg: RunConfig, rows: pd.DataFrame, cands: pd.DataFrame, seeds: pd.DataFrame, schema: str
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
                        schema=schema,
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


# ---------------------------------------------------------------- 05: training sets and rewards


SETS = ("seeds_only", "seeds_unfiltered", "seeds_synthetic")


def training_sets(seeds: pd.DataFrame, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The ablation's sets: seeds; seeds + every generated message with text (unfiltered, its
    intended answer as label even where the gates rejected it); seeds + the kept rows."""
    cols = ["text", "tool", "arguments"]
    s = seeds[cols].assign(source="seed")
    raw = rows[rows["text"].astype(bool)][cols].assign(source="synthetic")
    kept = rows[rows["keep"]][cols].assign(source="synthetic")
    return {
        "seeds_only": s.reset_index(drop=True),
        "seeds_unfiltered": pd.concat([s, raw], ignore_index=True),
        "seeds_synthetic": pd.concat([s, kept], ignore_index=True),
    }


def sft_rows(cfg: RunConfig, train: pd.DataFrame) -> pd.DataFrame:
    """Rows for the causal student's SFT: the message and its answer as JSON (`label`)."""
    with_tool = cfg.task.type == "tools"
    return pd.DataFrame(
        {
            "text": train["text"],
            "label": [answer_json(t, a, with_tool) for t, a in zip(train["tool"], train["arguments"])],
        }
    )


def sft_records(cfg: RunConfig, rows: pd.DataFrame) -> list[dict]:
    """04's export of the kept `rows` (id, text, tool, arguments): chat records whose system message
    lists the tools (or fields) and the answer's form, whose assistant turn is the answer as JSON,
    as 05's student learns it; the tool and arguments beside them."""
    system, with_tool = answer_system(cfg), cfg.task.type == "tools"
    return [
        {"id": r.id, "tool": r.tool, "arguments": r.arguments,
         "messages": [{"role": "system", "content": system}, {"role": "user", "content": r.text},
                      {"role": "assistant", "content": answer_json(r.tool, r.arguments, with_tool)}]}
        for r in rows.itertuples()
    ]  # fmt: skip


def dpo_records(cfg: RunConfig, pairs: pd.DataFrame) -> list[dict]:
    """Preference records of 03's pairs of kept rows (id, text: the row's final text, chosen: the
    checked answer, rejected: the worst candidate's), the prompt as `sft_records`'."""
    system = answer_system(cfg)
    return [
        {"id": p.id, "prompt": [{"role": "system", "content": system}, {"role": "user", "content": p.text}],
         "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]}
        for p in pairs.itertuples()
    ]  # fmt: skip


def rewards(cfg: RunConfig) -> list:
    """GRPO's verifiable rewards, graded so that a group of wrong replies still differs (GRPO learns
    nothing from a group whose rewards are all equal, and an early student's tool names are often
    made up): `field_f1`, the F1 of the reply's (argument, value) pairs against the intended
    answer's, read from any JSON object (an unknown tool or argument too), halved for a wrong tool;
    `schema_valid`, 1 for a reply that validates under the schema, else for a JSON object half the
    similarity of its tool name to the nearest known one (extraction: 0.5), else 0."""
    tools = structured.tools_of(cfg)
    with_tool = cfg.task.type == "tools"
    names = [*tools, structured.NO_TOOL]

    def loose(text: str) -> dict | None:
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            return None
        if not isinstance(obj, dict):
            return None
        if not with_tool:
            return {"tool": next(iter(tools)), "arguments": obj}
        args = obj.get("arguments")
        return {"tool": str(obj.get("tool") or structured.NO_TOOL), "arguments": args if isinstance(args, dict) else {}}

    def field_f1(completions, label, **_) -> list[float]:
        out = []
        for c, lab in zip(completions, label):
            got, (want, _w) = loose(_reply(c)), parse(cfg, lab)
            if got is None or want is None:
                out.append(0.0)
                continue
            tp, fp, fn = structured.row_counts(want, got)
            f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            out.append(f1 * (1.0 if got["tool"] == want["tool"] else 0.5))
        return out

    def schema_valid(completions, **_) -> list[float]:
        out = []
        for c in completions:
            text = _reply(c)
            if parse(cfg, text)[0] is not None:
                out.append(1.0)
            elif (got := loose(text)) is None:
                out.append(0.0)
            elif not with_tool:
                out.append(0.5)
            else:
                out.append(0.5 * max(difflib.SequenceMatcher(None, got["tool"], n).ratio() for n in names))
        return out

    schema_valid.weight = 0.2  # GRPO's weight of a format term (causal.fit)
    return [field_f1, schema_valid]


def _reply(completion) -> str:
    return (completion[-1]["content"] if isinstance(completion, list) else str(completion)).strip()


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
