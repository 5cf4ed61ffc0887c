"""Stage 02: candidate responses, N per prompt, streamed as rows with their metadata.

For classification the response is a label. Candidate 0 is the intended label (the generator was
asked for a message about it; source 'intended_label', no LLM call). Candidates 1..N are the
model's blind answers: it sees the message and `responses.choices` labels (the intended one and
its nearest labels by meaning, in a shuffled order) and names one, all N sampled in one request
(`n`, seeds seed..seed+N-1). The embedded model's first token is constrained to an option
number, so its answer always parses; an endpoint gets a JSON schema. These blind answers are
the LLM's votes in the jury (03) and the wrong ones are the rejected side of DPO pairs.

`label_shortlists(cfg, labels, k, cache_dir)` → {label: [label, k-1 nearest labels]}
`row_options(cfg, rows, shortlists)` → the labels each row's question shows, shuffled per row
`candidate_requests(cfg, rows, options_per_row)` → one Request per row (`n` = responses.candidates)
`generate_candidates(cfg, rows, llm, shortlists, on_row=None)`:
    in:  rows from 01 (id, label, text, keep_prompts, …); rows not kept get no candidates
    out: one row per candidate: id ('<prompt id>/c<k>'), prompt_id, label (intended), prompt
         (the message), options (the labels shown), response (raw text), response_label (the label
         it names, None when unparseable), source ('intended_label' or 'model'), candidate,
         provider, model, seed, prompt_tokens, completion_tokens, latency_s, ttft_s,
         finish_reason, error, cached, arrived_s (seconds since the stage started)
    `on_row(row)` is called for each candidate row as it arrives (the notebook streams them to
    candidates.jsonl and a live view).
`attach_responses(rows, cands)` → the prompt rows plus response (the intended label),
    response_source, candidates (model answers), model_agreement (share naming the intended label)
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from workbench.config import RunConfig
from workbench.data import label_topic
from workbench.embed import embed
from workbench.llm import LLM, Request

SYSTEM = "You sort {domain} messages by topic."
USER = 'Message: "{text}"\nWhich topic is this message about?\n{options}\nAnswer with the number only.'
_NUMBER = re.compile(r"\b(\d{1,2})\b")


def label_shortlists(cfg: RunConfig, labels: list[str], k: int, cache_dir) -> dict[str, list[str]]:
    """Each label with its k-1 nearest labels (cosine of MiniLM embeddings of their topics)."""
    k = min(k, len(labels))
    vecs = embed([label_topic(cfg, lab) for lab in labels], cache_dir)
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    return {lab: [lab] + [labels[j] for j in np.argsort(-sims[i])[: k - 1]] for i, lab in enumerate(labels)}


def _options(cfg: RunConfig, row_seed: int, shortlist: list[str]) -> list[str]:
    rng = np.random.default_rng([cfg.seed, row_seed])
    return [shortlist[i] for i in rng.permutation(len(shortlist))]


def _row_seed(row_id: str) -> int:
    return zlib.crc32(row_id.encode())


def row_options(cfg: RunConfig, rows: pd.DataFrame, shortlists: dict[str, list[str]]) -> list[list[str]]:
    """The labels each row's question shows, in its own seeded order."""
    return [_options(cfg, _row_seed(i), shortlists[lab]) for i, lab in zip(rows["id"], rows["label"])]


def candidate_requests(cfg: RunConfig, rows: pd.DataFrame, options_per_row: list[list[str]]) -> list[Request]:
    r = cfg.responses
    out = []
    for text, options in zip(rows["text"], options_per_row):
        listing = "\n".join(f"{i + 1}. {label_topic(cfg, lab)}" for i, lab in enumerate(options))
        schema = {
            "type": "object",
            "properties": {"choice": {"type": "integer", "enum": list(range(1, len(options) + 1))}},
            "required": ["choice"],
        }
        out.append(
            Request.chat(
                SYSTEM.format(domain=cfg.task.domain),
                USER.format(text=text, options=listing),
                temperature=r.temperature,
                top_p=r.top_p,
                max_tokens=r.max_tokens,
                seed=cfg.seed,
                n=r.candidates,
                schema=json.dumps(schema),
                first_tokens=tuple(str(i + 1) for i in range(len(options))),
            )
        )
    return out


def parse_choice(text: str, parsed: dict | None, options: list[str]) -> str | None:
    """The label a reply names: {"choice": k}, a leading option number, or an option's exact name."""
    if isinstance(parsed, dict) and isinstance(parsed.get("choice"), int) and 1 <= parsed["choice"] <= len(options):
        return options[parsed["choice"] - 1]
    m = _NUMBER.search(text or "")
    if m and 1 <= int(m.group(1)) <= len(options):
        return options[int(m.group(1)) - 1]
    named = [o for o in options if o.lower() in (text or "").lower()]
    return named[0] if len(named) == 1 else None


def generate_candidates(
    cfg: RunConfig,
    rows: pd.DataFrame,
    llm: LLM,
    shortlists: dict[str, list[str]],
    on_row: Callable[[dict], Any] | None = None,
) -> pd.DataFrame:
    """N blind candidates per kept prompt, plus candidate 0, the intended label.

    Columns: `rows` is 01's (id, text, label, keep_prompts). Out, one row per candidate: id,
    prompt_id, label, prompt, options, response (raw), response_label (the option it names, None when
    none), source (intended_label or model), candidate, the call's metadata (provider, model, seed,
    prompt_tokens, completion_tokens, latency_s, ttft_s, finish_reason, error, cached) and arrived_s.
    `on_row` gets each candidate row as it arrives."""
    if cfg.task.type != "classification":  # check_runnable refuses other kinds before any stage runs
        raise ValueError(f"task.type {cfg.task.type!r}: responses are implemented for classification only")
    todo = rows[rows["keep_prompts"]].reset_index(drop=True)
    options_per_row = row_options(cfg, todo, shortlists)
    reqs = candidate_requests(cfg, todo, options_per_row)
    t0 = time.perf_counter()
    out: list[dict] = []

    def emit(row: dict) -> None:
        out.append(row)
        if on_row is not None:
            on_row(row)

    for _, row in todo.iterrows():  # candidate 0: the intended label, known without a call
        emit(_base(row) | {"id": f"{row['id']}/c0", "response": row["label"], "response_label": row["label"]}
             | {"source": "intended_label", "candidate": 0, "provider": None, "model": None, "seed": None}
             | {"prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0, "ttft_s": None}
             | {"finish_reason": None, "error": None, "cached": False, "arrived_s": 0.0})  # fmt: skip

    records = todo[["id", "label", "text"]].to_dict("records")  # iloc per answer costs more than the call

    def arrived(i: int, cands: list[dict]) -> None:
        row, options = records[i], options_per_row[i]
        now = time.perf_counter() - t0
        for c in cands:
            k = c["candidate"] + 1
            emit(
                _base(row)
                | {
                    "id": f"{row['id']}/c{k}",
                    "options": options,
                    "response": c["text"],
                    "response_label": None if c["error"] else parse_choice(c["text"], c["parsed"], options),
                    "source": "model",
                    "candidate": k,
                }
                | {f: c[f] for f in _META}
                | {"arrived_s": now}
            )

    llm.generate(reqs, desc="02 candidates", on_result=arrived)
    cols = ["id", "prompt_id", "label", "prompt", "options", "response", "response_label", "source", "candidate"]
    frame = pd.DataFrame(out, columns=cols + _META + ["arrived_s"])
    order = frame["prompt_id"].map({pid: i for i, pid in enumerate(todo["id"])})
    return frame.assign(_o=order).sort_values(["_o", "candidate"]).drop(columns="_o").reset_index(drop=True)


_META = ["provider", "model", "seed", "prompt_tokens", "completion_tokens", "latency_s", "ttft_s"] + [
    "finish_reason",
    "error",
    "cached",
]


def _base(row: pd.Series | dict) -> dict:
    return {"prompt_id": row["id"], "label": row["label"], "prompt": row["text"], "options": None}


def attach_responses(rows: pd.DataFrame, cands: pd.DataFrame) -> pd.DataFrame:
    """01's rows with their candidates summed up.

    Columns: `rows` as 01 left them, `cands` as generate_candidates returns. Out: `rows` with response
    (the intended label), response_source, candidates (the model's answers) and model_agreement (the
    share of them naming the intended label)."""
    out = rows.copy()
    out["response"] = out["label"]
    out["response_source"] = "intended_label"
    model = cands[cands["source"] == "model"]
    agree = (model["response_label"] == model["label"]).groupby(model["prompt_id"]).mean()
    out["candidates"] = out["id"].map(model.groupby("prompt_id").size()).fillna(0).astype(int)
    out["model_agreement"] = out["id"].map(agree)
    return out


def throughput(cands: pd.DataFrame) -> dict:
    """Figures for the live view and the report: rows, tokens/s, TTFT and latency percentiles, errors."""
    m = cands[cands["source"] == "model"]
    fresh = m[~m["cached"].astype(bool)]
    span = float(fresh["arrived_s"].max()) if len(fresh) else 0.0
    tokens = int(fresh["completion_tokens"].fillna(0).sum())
    ttft = fresh["ttft_s"].dropna().astype(float)
    return {
        "rows": len(m),
        "cached": int(m["cached"].astype(bool).sum()),
        "errors": int(m["error"].notna().sum()),
        "unparseable": int((m["error"].isna() & m["response_label"].isna()).sum()),
        "completion_tokens": tokens,
        "prompt_tokens": int(fresh["prompt_tokens"].fillna(0).sum()),
        "tokens_per_s": round(tokens / span, 1) if span > 0 else None,
        "requests_per_s": round(fresh["prompt_id"].nunique() / span, 2) if span > 0 else None,
        "ttft_p50_s": round(float(ttft.median()), 3) if len(ttft) else None,
        "ttft_p90_s": round(float(ttft.quantile(0.9)), 3) if len(ttft) else None,
        "latency_p50_s": round(float(fresh["latency_s"].dropna().median()), 3) if len(fresh) else None,
    }


def per_request(cands: pd.DataFrame) -> pd.DataFrame:
    """One row per LLM request (all candidates of a prompt): completion tokens summed, cached."""
    m = cands[cands["source"] == "model"]
    return m.groupby("prompt_id", sort=False).agg(
        completion_tokens=("completion_tokens", "sum"), cached=("cached", "first")
    )
