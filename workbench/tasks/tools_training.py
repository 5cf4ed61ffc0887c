"""Tool calls' and extraction's 05: the training sets (seeds only, unfiltered, kept), the SFT rows
and the exports' records (the answer as JSON after a system message listing the tools or fields),
the DPO records, and GRPO's verifiable rewards (field F1, schema validity); `tasks.tools` is the
type's module."""

from __future__ import annotations

import difflib
import json

import pandas as pd

from workbench import structured
from workbench.config import RunConfig
from workbench.tasks.tools_answer import answer_json, answer_system, parse

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
