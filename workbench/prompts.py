"""Stage 01: generate task inputs per label from a few real seed examples.

`generate_inputs(cfg, seeds, llm)`:
    in:  seeds with columns id, text, label
    out: one row per generated input with columns
         id, label, text (cleaned), raw (model output as returned), examples (seed ids shown),
         model, seed, prompt_tokens, completion_tokens, latency_s, ttft_s, finish_reason, cached,
         keep_prompts, reject_reason_prompts (None, 'llm_error' or 'empty')
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from workbench.config import RunConfig
from workbench.data import describe_label
from workbench.llm import LLM, Request

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


def generation_requests(cfg: RunConfig, seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per input to generate: label, the seed examples shown (a fresh sample each call)
    and the LLM request, seeded by the run seed and the row number."""
    p = cfg.prompts
    rows = []
    for li, (label, group) in enumerate(seeds.groupby("label", sort=True)):
        for k in range(p.per_label):
            seed = cfg.seed * 1_000_003 + li * 10_007 + k
            rng = np.random.default_rng(seed)
            shown = group.iloc[rng.permutation(len(group))[: p.examples_per_call]]
            user = USER.format(topic=describe_label(label), examples="\n".join(f"- {t}" for t in shown["text"]))
            req = Request.chat(
                SYSTEM.format(domain=cfg.task.domain),
                user,
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                seed=seed,
            )
            rows.append({"id": f"gen-{label}-{k:04d}", "label": label, "examples": list(shown["id"]), "request": req})
    return pd.DataFrame(rows)


def generate_inputs(cfg: RunConfig, seeds: pd.DataFrame, llm: LLM) -> pd.DataFrame:
    plan = generation_requests(cfg, seeds)
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
