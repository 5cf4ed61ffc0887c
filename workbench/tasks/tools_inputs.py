"""Tool calls' and extraction's 01, answer first: the argument values are drawn before the message
is written (from the seeds' values and the generator's suggestions), the generator rewrites a
seed with them, and the message is checked against the intended answer (`value_missing`,
`value_unintended`, `echoes_instructions`); `tasks.tools` is the type's module."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd

from workbench import critique, structured
from workbench.config import RunConfig, plan_counts
from workbench.llm.types import Request, clean_text

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
    real = structured.reference_rows(cfg, None)["tool"].value_counts().to_dict() if proportional else None
    counts = plan_counts(cfg, names, real)
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


def generate_inputs(cfg: RunConfig, seeds: pd.DataFrame, llm, critic=None) -> pd.DataFrame:
    """01 for structured tasks, answer first: plan the cells, draw each cell's values (the seeds'
    values and the generator's suggestions), have the generator write the message around them,
    gate it (`check_input`), then, with a `critic` (`prompts.critique`), have the critic keep,
    rewrite or drop each message that passed (`critique.critique`; a rewrite is gated again, so
    one that loses a value is `value_missing`); a cell whose message fails is tried again with a
    fresh draw and seed, up to `prompts.rounds` rounds. Every attempt is a row, with its cell,
    intended answer and reject reason (None when kept)."""
    rng = np.random.default_rng(cfg.seed)
    pool = value_pool(cfg, seeds)
    asks = suggestion_requests(cfg, pool)
    t0 = time.perf_counter()
    replies = llm.generate(list(asks.values()), desc="01 value suggestions")
    seconds = {"suggestions": time.perf_counter() - t0, "messages": 0.0, "critique": 0.0}
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
            req, chosen, text, shown = cell_request(cfg, cells[c], c, rnd, values, seeds, by_id, rng)
            reqs.append(req)
            made.append((c, chosen, text, shown))
        t0 = time.perf_counter()
        outs = llm.generate(reqs, desc=f"01 answer-first requests, round {rnd + 1}")
        seconds["messages"] += time.perf_counter() - t0
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
        if critic is not None:
            t0 = time.perf_counter()
            failed += criticise(cfg, rows[-len(made) :], [m[3] for m in made], critic, llm)
            seconds["critique"] += time.perf_counter() - t0
        todo = sorted(set(failed))
    out = pd.DataFrame(rows)
    out.attrs["suggested"] = suggested
    out.attrs["unfilled"] = len(todo)
    # how long each kind of call took, and the suggestions' calls: the estimate's measurements
    out.attrs["seconds"] = seconds
    out.attrs["suggestion_calls"] = [{"cached": bool(r[0].get("cached")), "completion_tokens": r[0].get("completion_tokens")}
                                     for r in replies]  # fmt: skip
    return out


def cell_request(
    cfg: RunConfig,
    cell: dict,
    c: int,
    rnd: int,
    values: dict[str, list[str]],
    seeds: pd.DataFrame,
    by_id: pd.DataFrame,
    rng,
) -> tuple[Request, dict[str, str], str | None, pd.DataFrame]:
    """The generator's request for cell `c` in round `rnd`: each argument the cell's template has
    drawn from `values` (another value than the template's own where there is one), the template
    with them swapped in (`draft`), and `prompts.examples_per_call` seeds shown. Returns the
    request, the values drawn, the draft and the real rows the message is checked against.
    `by_id`: the seeds indexed by id, made once by the caller."""
    tpl = by_id.loc[cell["template"]] if cell["template"] is not None else None
    chosen = {}
    for a in cell["present"]:
        old = str(tpl["arguments"][a]) if tpl is not None else ""
        options = [v for v in values.get(a, []) if structured.norm(v) != structured.norm(old)] or [old]
        chosen[a] = str(rng.choice(options))
    text = draft(tpl, chosen) if tpl is not None else None
    shots = seeds.sample(min(cfg.prompts.examples_per_call, len(seeds)), random_state=int(rng.integers(1 << 31)))
    shown = shots if tpl is None else by_id.loc[[cell["template"]]].reset_index()
    req = input_request(cfg, cell, chosen, text, shots, seed=cfg.seed * 100_003 + rnd * 10_007 + c)
    return req, chosen, text, shown


def planned_requests(cfg: RunConfig, seeds: pd.DataFrame) -> pd.DataFrame:
    """01's requests as far as they are known before it runs (the pre-run estimate's): one value
    suggestion per argument, and round 1's message per cell drawn from the seeds' and the config's
    values (the run draws from the suggestions too: other words, the same size). Columns: part
    (suggestion or message), label (the argument or the cell's tool), request."""
    rng = np.random.default_rng(cfg.seed)
    pool = value_pool(cfg, seeds)
    by_id = seeds.set_index("id")
    rows = [("suggestion", k, r) for k, r in suggestion_requests(cfg, pool).items()]
    for c, cell in enumerate(plan_cells(cfg, seeds, rng)):
        rows.append(("message", cell["tool"], cell_request(cfg, cell, c, 0, pool, seeds, by_id, rng)[0]))
    return pd.DataFrame(rows, columns=["part", "label", "request"])


def criticise(cfg: RunConfig, batch: list[dict], shown: list[pd.DataFrame], critic, writer) -> list[int]:
    """The critic on a round's messages that passed the checks (`critique.critique`: keep, rewrite
    or drop, with its defects and reason on the row); a rewrite (by `writer`, the generator) is
    checked again against the intended values. Updates `batch`'s rows in place; returns the cells
    that lost their message."""
    frame = pd.DataFrame(batch).assign(seed=[cfg.seed + r["cell"] for r in batch])
    todo = [i for i in frame.index if frame.at[i, "keep"]]
    system = "You rewrite user requests." + (f" Style: {cfg.task.style}" if cfg.task.style else "")
    critique.critique(cfg, frame, todo, critic, dict.fromkeys(frame["id"], system), writer=writer)
    lost = []
    for i in todo:
        row = batch[i]
        row |= {c: frame.at[i, c] for c in frame.columns if c.startswith(("critique_", "recritique_"))}
        row |= {"original_text": frame.at[i, "original_text"], "rewritten": bool(frame.at[i, "rewritten"])}
        reason = None if frame.at[i, "keep_critique"] else frame.at[i, "reject_reason_critique"]
        if row["rewritten"]:  # the rewrite is the row's text, kept or not (the original stays beside it)
            row["text"] = clean_message(frame.at[i, "text"])
            reason = reason or check_input(row["text"], row["arguments"], shown[i])
        if reason is not None:
            row["reject_reason"], row["keep"] = reason, False
            lost.append(row["cell"])
    return lost
