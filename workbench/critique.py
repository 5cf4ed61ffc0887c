"""Stage 01's prompt critic: an LLM labels each generated prompt with defect classes and routes it.

`critique(cfg, rows, todo, llm, systems, writer)` (llm: the critic; writer: the generator, which
writes the rewrites; default the critic) adds, for the rows in `todo`:
    critique_raw, critique_parsed (bool), critique_defects (comma-separated), critique_reason,
    critique_action (keep / rewrite / drop; None when unparseable), original_text (the text the
    critic saw), rewritten (bool), recritique_raw, recritique_action,
    keep_critique, reject_reason_critique (the defect class the critic named, or 'llm_error')

A rewrite is a fresh generator call told the critic's reason; the rewrite is critiqued once more,
and kept only if that second critique keeps it (or cannot be parsed). An unparseable critique is
data: the raw reply is kept, the row is counted and passes on to the gates (the critic did not
reject it). Endpoints get the reply's JSON schema as `response_format`; the embedded model sees it
in the prompt.
"""

from __future__ import annotations

import json

import pandas as pd

from workbench.config import RunConfig
from workbench.data import label_topic
from workbench.llm import LLM, Request, clean_text

DEFECTS = ("vague", "redundant", "mis-scoped", "unrealistic")
ACTIONS = ("keep", "rewrite", "drop")
DESCRIBE = {
    "vague": "too vague: it does not say what happened or what the customer wants",
    "redundant": "redundant: it repeats what other messages already say",
    "mis-scoped": "mis-scoped: it is outside {domain}",
    "unrealistic": "unrealistic: customers do not write like this",
}
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "defects": {"type": "array", "items": {"enum": list(DEFECTS)}},
            "reason": {"type": "string"},
            "action": {"enum": list(ACTIONS)},
        },
        "required": ["defects", "reason", "action"],
        "additionalProperties": False,
    }
)
SYSTEM = "You review synthetic customer messages for a training set about {domain}. Be strict and brief."
USER = (
    "Topic the message should be about: {topic}.\n"
    "Other messages written for this topic:\n{others}\n"
    'Message to review: "{text}"\n\n'
    "Defect classes: " + "; ".join(DESCRIBE.values()) + ".\n"
    "List the defects the message has ([] if none), give a one-sentence reason, and choose an action: "
    "keep (no defect), rewrite (fixable), drop (not fixable).\n"
    'Reply with JSON only, like {{"defects": ["vague"], "reason": "...", "action": "rewrite"}}.'
)
REWRITE = (
    'A reviewer said this customer message is {defects}: {reason}\nMessage: "{text}"\n'
    "Rewrite it as a customer of {domain} would, about the topic {topic}, fixing that. Output only the message."
)


def parse(parsed: dict | None) -> dict | None:
    """The critique as {defects, reason, action}, or None when the reply does not follow the schema."""
    if not isinstance(parsed, dict):
        return None
    defects, reason, action = parsed.get("defects"), parsed.get("reason"), parsed.get("action")
    if isinstance(defects, str):
        defects = [defects]
    if defects is None or not isinstance(defects, list) or action not in ACTIONS or not isinstance(reason, str):
        return None
    defects = [d for d in defects if d not in ("none", "")]
    if any(d not in DEFECTS for d in defects):
        return None
    if action != "keep" and not defects:
        return None  # a rewrite or drop must say what is wrong
    return {"defects": defects, "reason": reason.strip(), "action": action}


def _requests(cfg: RunConfig, rows: pd.DataFrame, todo: list, seed: int) -> list[Request]:
    p = cfg.prompts
    domain = cfg.task.domain
    reqs = []
    for i in todo:
        label = rows.at[i, "label"]
        peers = rows[(rows["label"] == label) & (rows.index != i) & (rows["text"].fillna("") != "")]
        others = "\n".join(f"- {t}" for t in peers["text"].head(3)) or "- (none yet)"
        user = USER.format(topic=label_topic(cfg, label), others=others, text=rows.at[i, "text"], domain=domain)
        reqs.append(
            Request.chat(
                SYSTEM.format(domain=domain),
                user,
                temperature=0.0,
                top_p=1.0,
                max_tokens=p.critic_max_tokens,
                seed=seed,
                json=True,
                schema=SCHEMA,
            )
        )
    return reqs


def critique(
    cfg: RunConfig, rows: pd.DataFrame, todo: list, llm: LLM, systems: dict, writer: LLM | None = None
) -> None:
    """Critique rows[todo] in place with `llm` (the critic). `systems[row id]` is the generator's system
    prompt of the row, reused for its rewrite, which `writer` (the generator; default `llm`) writes."""
    for col, default in (
        ("critique_raw", None),
        ("critique_cached", False),
        ("critique_tokens", 0),
        ("critique_parsed", False),
        ("critique_defects", None),
        ("critique_reason", None),
        ("critique_action", None),
        ("original_text", None),
        ("rewritten", False),
        ("recritique_raw", None),
        ("recritique_action", None),
        ("keep_critique", True),
        ("reject_reason_critique", None),
    ):
        if col not in rows:
            rows[col] = default
        elif isinstance(default, bool):  # rows of a new round arrive with NaN here
            rows[col] = rows[col].fillna(default).astype(bool)
    if not todo:
        return
    results = llm.generate(_requests(cfg, rows, todo, cfg.seed), desc="01 critique")
    rewrite = []
    for i, cands in zip(todo, results):
        c = cands[0]
        rows.at[i, "original_text"] = rows.at[i, "text"]
        rows.at[i, "critique_raw"] = c["text"]
        rows.at[i, "critique_cached"] = bool(c["cached"])
        rows.at[i, "critique_tokens"] = int(c.get("completion_tokens") or 0)
        if c["error"]:
            rows.at[i, "keep_critique"] = False
            rows.at[i, "reject_reason_critique"] = "llm_error"
            continue
        got = parse(c["parsed"])
        if got is None:
            continue
        rows.at[i, "critique_parsed"] = True
        rows.at[i, "critique_defects"] = ",".join(got["defects"]) or None
        rows.at[i, "critique_reason"] = got["reason"]
        rows.at[i, "critique_action"] = got["action"]
        if got["action"] == "drop":
            rows.at[i, "keep_critique"] = False
            rows.at[i, "reject_reason_critique"] = got["defects"][0]
        elif got["action"] == "rewrite":
            rewrite.append(i)
    if not rewrite:
        return
    p, domain = cfg.prompts, cfg.task.domain
    reqs = [
        Request.chat(
            systems[rows.at[i, "id"]],
            REWRITE.format(
                defects=rows.at[i, "critique_defects"].replace(",", ", "),
                reason=rows.at[i, "critique_reason"],
                text=rows.at[i, "text"],
                domain=domain,
                topic=label_topic(cfg, rows.at[i, "label"]),
            ),
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            seed=int(rows.at[i, "seed"]) + 1,
        )
        for i in rewrite
    ]

    redo = []
    for i, cands in zip(rewrite, (writer or llm).generate(reqs, desc="01 rewrite")):
        text = clean_text(cands[0]["text"]) if cands[0]["error"] is None else ""
        if not text:
            rows.at[i, "keep_critique"] = False
            rows.at[i, "reject_reason_critique"] = rows.at[i, "critique_defects"].split(",")[0]
            continue
        rows.at[i, "text"] = text
        rows.at[i, "rewritten"] = True
        redo.append(i)
    for i, cands in zip(redo, llm.generate(_requests(cfg, rows, redo, cfg.seed + 1), desc="01 re-critique")):
        c = cands[0]
        rows.at[i, "recritique_raw"] = c["text"]
        got = parse(c["parsed"]) if c["error"] is None else None
        if got is None:
            continue
        rows.at[i, "recritique_action"] = got["action"]
        if got["action"] != "keep":
            rows.at[i, "keep_critique"] = False
            rows.at[i, "reject_reason_critique"] = got["defects"][0]
