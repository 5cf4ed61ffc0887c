"""Stage 03: an LLM judge scores each row on whether its text fits its label.

`judge_rows(cfg, rows, llm)`:
    in:  rows with id, label, text, keep_prompts
    out: the same rows plus
         judge_raw (the judge's reply), judge_cached, judge_score (0-1, NaN when unparseable or not judged),
         keep_judge, reject_reason_judge (None, 'unparseable', 'low_score', 'llm_error')
Rows already rejected upstream are not sent to the judge (judge_score NaN, keep_judge True:
the judge did not reject them; the earlier stage's reason stands).
"""

from __future__ import annotations

import math
import re

import pandas as pd

from workbench.config import RunConfig
from workbench.data import label_topic
from workbench.llm import LLM, Request

SYSTEM = "You are a strict data-quality reviewer for {domain}."
# Of the wordings tried on the embedded 135M model, this one gets a parseable score most often
# (90% of real Banking77 rows); yes/no and JSON wordings were answered with prose.
USER = (
    'Rate from 1 to 5 how well this customer message matches the topic "{topic}".\n'
    'Message: "{text}"\nReply in the form "Rating: N".'
)
_SCORE = re.compile(r"\b([1-5])\b")


def parse_score(text: str) -> float | None:
    """The first digit 1-5 in the reply, scaled to 0-1; None when there is none."""
    m = _SCORE.search(text or "")
    return (int(m.group(1)) - 1) / 4 if m else None


def judge_rows(cfg: RunConfig, rows: pd.DataFrame, llm: LLM) -> pd.DataFrame:
    j = cfg.judge
    out = rows.copy()
    todo = out.index[out["keep_prompts"]].tolist()
    reqs = [
        Request.chat(
            SYSTEM.format(domain=cfg.task.domain),
            USER.format(text=out.at[i, "text"], topic=label_topic(cfg, out.at[i, "label"])),
            temperature=j.temperature,
            top_p=1.0,
            max_tokens=j.max_tokens,
            seed=cfg.seed,
        )
        for i in todo
    ]
    results = llm.generate(reqs, desc="03 judge")
    out["judge_raw"] = None
    out["judge_score"] = math.nan
    out["keep_judge"] = True
    out["reject_reason_judge"] = None
    out["judge_cached"] = False
    for i, cands in zip(todo, results):
        c = cands[0]
        out.at[i, "judge_cached"] = bool(c["cached"])
        score = parse_score(c["text"])
        out.at[i, "judge_raw"] = c["text"]
        if c["error"]:
            reason = "llm_error"
        elif score is None:
            reason = "unparseable"
        else:
            out.at[i, "judge_score"] = score
            reason = "low_score" if score < j.min_score else None
        out.at[i, "keep_judge"] = reason is None
        out.at[i, "reject_reason_judge"] = reason
    return out
