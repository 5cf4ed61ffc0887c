"""Stage 01: generate task inputs per label from a few real seed examples.

`generate_inputs(cfg, seeds, llm)`:
    in:  seeds with columns id, text, label
    out: one row per generated input with columns
         id, label, persona, tone, difficulty, sentiment, entity, edge_case (the diversity cell; None
         where the config asks for none), text (cleaned), raw (model output as returned), examples (seed ids shown),
         model, seed, prompt_tokens, completion_tokens, latency_s, ttft_s, finish_reason, cached,
         keep_prompts, reject_reason_prompts (None, 'llm_error' or 'empty')
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from workbench.config import RunConfig, Share, allocate, plan_counts
from workbench.data import label_topic
from workbench.llm import LLM, Request

GRID = ["persona", "tone", "difficulty", "sentiment", "entity", "edge_case"]

SYSTEM = "You are a customer of {domain} writing to its support chat."
USER = (
    "Topic: {topic}.\nExamples of messages about this topic:\n{examples}\n"
    "Write one new message about this topic, in your own words. Output only the message."
)

_PREAMBLE = re.compile(r"^(sure|here|certainly|okay|ok|one|a new|new|the|this)\b[^\n]{0,80}:\s*$", re.I)
_LEAD = re.compile(r"^\s*(?:[-*•>]|\d+[.)]|message\s*\d*:|customer\s*\d*:)\s*", re.I)
_QUOTED = re.compile(r"[\"“]([^\"”]{8,})[\"”]")


def clean_text(raw: str) -> str:
    """The message inside a small model's reply: drop preamble lines ("Here is a new message:"),
    bullets and wrapping quotes, keep the first message line, at most two sentences."""
    lines = [ln.strip() for ln in (raw or "").splitlines() if ln.strip()]
    while lines and (_PREAMBLE.match(lines[0]) or lines[0].endswith(":")):
        lines.pop(0)
    if not lines:
        return ""
    line = _LEAD.sub("", lines[0]).strip()
    m = _QUOTED.search(line)
    if m and len(m.group(1)) >= 0.5 * len(line) - 20:
        line = m.group(1)
    line = line.strip(" \"'“”")
    sentences = re.split(r"(?<=[.?!])\s+", line)
    return " ".join(sentences[:2]).strip()


def _split(n: int, items: list[Share], fill_none: bool) -> list[str | None]:
    """`n` values from named shares (largest remainder); unset shares split what is left. With
    `fill_none`, what the shares leave uncovered is None (no entity), else it is spread evenly."""
    if not items:
        return [None] * n
    given = sum(x.share for x in items if x.share is not None)
    unset = [x for x in items if x.share is None]
    rest = max(0.0, 1.0 - given)
    weights = [x.share if x.share is not None else (rest / len(unset) if unset else 0.0) for x in items]
    names: list[str | None] = [x.name for x in items]
    if fill_none and not unset and given < 1:
        weights, names = [*weights, 1.0 - given], [*names, None]
    counts = allocate(n, weights)
    return [name for name, c in zip(names, counts) for _ in range(c)]


def grid(cfg: RunConfig, n: int, rng: np.random.Generator) -> list[dict]:
    """The diversity cells of `n` inputs for one label: persona, tone, difficulty, sentiment,
    entity and edge case in the config's target proportions, shuffled (each dimension on its own)."""
    d = cfg.diversity
    dims = {
        "persona": _split(n, d.personas, False),
        "tone": _split(n, d.tones, False),
        "difficulty": _split(n, [Share(name=k, share=v) for k, v in d.difficulty.items()], False),
        "sentiment": _split(n, [Share(name=k, share=v) for k, v in d.sentiment.items()], False),
        "entity": _split(n, d.entities, True),
    }
    edges = cfg.task.edge_cases
    k_edge = allocate(n, [d.edge_case_share, 1 - d.edge_case_share])[0] if edges else 0
    dims["edge_case"] = [edges[i % len(edges)] for i in range(k_edge)] + [None] * (n - k_edge)
    for key in dims:
        dims[key] = [dims[key][i] for i in rng.permutation(n)]
    return [{key: dims[key][i] for key in dims} for i in range(n)]


_DIFFICULTY = {
    "easy": "Make it easy: short and direct, it names the topic plainly.",
    "medium": "Make it medium: an everyday message with some detail.",
    "hard": "Make it hard: indirect or ambiguous, it never names the topic outright.",
}


def render(cfg: RunConfig, label: str, examples: list[str], cell: dict) -> tuple[str, str]:
    """System and user prompt of one generation call. With no diversity, style, definitions or
    label examples configured this is exactly the spine's prompt (so its cache stays valid)."""
    t = cfg.task
    system = SYSTEM.format(domain=t.domain)
    if cell.get("persona"):
        system = f"You are {cell['persona']}, a customer of {t.domain} writing to its support chat."
    if t.style:
        system += f" Style: {t.style}"
    if t.definitions:
        system += " Terms: " + "; ".join(f"{k}: {v}" for k, v in t.definitions.items())
    spec = t.label(label)
    user = USER.format(topic=label_topic(cfg, label), examples="\n".join(f"- {x}" for x in examples))
    extra = []
    if spec.negative:
        extra.append("Not this topic (do not write like these):\n" + "\n".join(f"- {x}" for x in spec.negative[:3]))
    if cell.get("tone"):
        extra.append(f"Tone: {cell['tone']}.")
    if cell.get("difficulty"):
        extra.append(_DIFFICULTY[cell["difficulty"]])
    if cell.get("sentiment"):
        extra.append(f"Sentiment: {cell['sentiment']}.")
    if cell.get("entity"):
        extra.append(f"Mention {cell['entity']}.")
    if cell.get("edge_case"):
        extra.append(f"Edge case: {cell['edge_case']}.")
    if extra:
        head, tail = user.rsplit("\n", 1)
        user = "\n".join([head, *extra, tail])
    return system, user


def generation_requests(
    cfg: RunConfig, seeds: pd.DataFrame, labels: list[str] | None = None, train_counts: dict | None = None
) -> pd.DataFrame:
    """One row per input to generate: label, diversity cell, the seed examples shown (a fresh sample
    each call; the label's positive examples from the config join the pool) and the LLM request,
    seeded by the run seed and the row number. Rows per label follow the sampling plan."""
    p = cfg.prompts
    labels = labels if labels is not None else sorted(seeds["label"].unique())
    counts = plan_counts(cfg, labels, train_counts)
    rows = []
    for li, label in enumerate(sorted(labels)):  # sorted: row seeds do not depend on the config's order
        group = seeds[seeds["label"] == label]
        pool = list(zip(group["id"], group["text"]))
        pool += [(f"positive-{label}-{i}", x) for i, x in enumerate(cfg.task.label(label).positive)]
        cells = grid(cfg, counts[label], np.random.default_rng([cfg.seed, li]))
        for k, cell in enumerate(cells):
            seed = cfg.seed * 1_000_003 + li * 10_007 + k
            rng = np.random.default_rng(seed)
            shown = [pool[i] for i in rng.permutation(len(pool))[: p.examples_per_call]]
            system, user = render(cfg, label, [x for _, x in shown], cell)
            req = Request.chat(
                system, user, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, seed=seed
            )
            rows.append(
                {
                    "id": f"gen-{label}-{k:04d}",
                    "label": label,
                    **cell,
                    "examples": [i for i, _ in shown],
                    "request": req,
                }
            )
    return pd.DataFrame(rows, columns=["id", "label", *GRID, "examples", "request"])


def generate_inputs(
    cfg: RunConfig, seeds: pd.DataFrame, llm: LLM, labels: list[str] | None = None, train_counts: dict | None = None
) -> pd.DataFrame:
    plan = generation_requests(cfg, seeds, labels, train_counts)
    results = llm.generate(list(plan["request"]), desc="01 inputs")
    out = []
    for (_, row), cands in zip(plan.iterrows(), results):
        c = cands[0]
        text = clean_text(c["text"]) if c["error"] is None else ""
        reason = "llm_error" if c["error"] else ("empty" if not text else None)
        out.append(
            {
                "id": row["id"],
                "label": row["label"],
                **{g: row[g] for g in GRID},
                "text": text,
                "raw": c["text"],
                "examples": row["examples"],
                "model": c["model"],
                "seed": c["seed"],
                "prompt_tokens": c["prompt_tokens"],
                "completion_tokens": c["completion_tokens"],
                "latency_s": c["latency_s"],
                "ttft_s": c["ttft_s"],
                "finish_reason": c["finish_reason"],
                "error": c["error"],
                "cached": c["cached"],
                "keep_prompts": reason is None,
                "reject_reason_prompts": reason,
            }
        )
    return pd.DataFrame(out)


def coverage(cfg: RunConfig, rows: pd.DataFrame) -> pd.DataFrame:
    """Per grid dimension the config sets: each value's target share and the share generated (all
    rows) and kept by this stage."""
    d = cfg.diversity
    targets: dict[str, dict] = {}
    for dim, items in (("persona", d.personas), ("tone", d.tones), ("entity", d.entities)):
        if items:
            n = len(rows) or 1
            targets[dim] = dict(pd.Series(_split(n, items, dim == "entity")).fillna("—").value_counts() / n)
    for dim, shares in (("difficulty", d.difficulty), ("sentiment", d.sentiment)):
        if shares:
            targets[dim] = dict(shares)
    if cfg.task.edge_cases and d.edge_case_share:
        targets["edge_case"] = {"(any edge case)": d.edge_case_share}
    out = []
    kept = rows[rows["keep_prompts"]] if "keep_prompts" in rows else rows
    for dim, target in targets.items():
        for value, share in target.items():
            col = rows[dim].notna() if value == "(any edge case)" else rows[dim].fillna("—") == value
            kcol = col[kept.index]
            out.append(
                {
                    "dimension": dim,
                    "value": value,
                    "target": round(float(share), 3),
                    "generated": round(float(col.mean()), 3) if len(rows) else None,
                    "kept": round(float(kcol.mean()), 3) if len(kept) else None,
                }
            )
    return pd.DataFrame(out, columns=["dimension", "value", "target", "generated", "kept"])
