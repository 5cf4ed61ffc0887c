"""Requests, the rows they return, their cache key, and reading what a model wrote."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, fields
from typing import Any

EMBEDDED_MODEL = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Request:
    """One chat call. `n` candidates share the request; candidate i is sampled with seed + i."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), …): hashable and order-preserving
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0
    n: int = 1
    json: bool = False  # parse a JSON object out of the reply into `parsed`
    schema: str | None = None  # JSON schema (as JSON text): endpoints constrain the reply to it
    # The embedded model's first token is drawn only from these strings' first tokens (e.g. "1".."5"),
    # so a rating or a choice always parses; endpoints get `schema` instead and ignore this.
    first_tokens: tuple[str, ...] | None = None
    # the reply must validate against `schema`: the embedded model decodes under the schema's
    # grammar (llguidance masks every token that would break it); endpoints get `schema` as their
    # response_format either way (sent non-strict: OpenAI's strict mode refuses optional properties)
    strict: bool = False

    @staticmethod
    def chat(system: str | None, user: str, **kw: Any) -> Request:
        msgs = ((("system", system),) if system else ()) + (("user", user),)
        return Request(messages=msgs, **kw)

    @staticmethod
    def rating(
        system: str, user: str, *, temperature: float, max_tokens: int, seed: int, schema: str | None = None
    ) -> Request:
        """A judge's 1-5 rating with a reason (`read_rating` reads it): top_p 1, the JSON schema
        {score, rationale} for endpoints, and on the embedded model the first token is one of
        "1".."5" (its probabilities give the expected rating)."""
        schema = RATING_SCHEMA if schema is None else schema
        return Request.chat(
            system,
            user,
            temperature=temperature,
            top_p=1.0,
            max_tokens=max_tokens,
            seed=seed,
            schema=schema,
            first_tokens=("1", "2", "3", "4", "5"),
        )

    def openai_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


RATING_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}, "rationale": {"type": "string"}},
        "required": ["score", "rationale"],
    }
)
_SCORE = re.compile(r"\b([1-5])\b")


def read_rating(text: str, parsed: dict | None, first_probs: dict | None = None) -> tuple[float | None, str | None]:
    """(score in 0-1, rationale) from {"score", "rationale"}, or from "N ... reason" (with the
    embedded model: the expected rating under its first-token probabilities of 1-5);
    (None, None) when there is no score."""
    if isinstance(parsed, dict) and parsed.get("score") in (1, 2, 3, 4, 5):
        return (parsed["score"] - 1) / 4, str(parsed.get("rationale") or "").strip() or None
    m = _SCORE.search(text or "")
    if not m:
        return None, None
    rest = (text[m.end() :]).lstrip(" ./5:-–—)").strip() or None
    if first_probs and sum(first_probs.values()) > 0:
        total = sum(first_probs.values())
        return sum((int(k) - 1) / 4 * p for k, p in first_probs.items()) / total, rest
    return (int(m.group(1)) - 1) / 4, rest


def parse_json(text: str) -> dict | None:
    """The first JSON object in `text`, or None. Tolerates prose and code fences around it."""
    if not text:
        return None
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                obj, _ = dec.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


# the key's fields in sorted order: the JSON is the same as json.dumps(..., sort_keys=True) gave
_KEY_FIELDS = tuple(sorted({f.name for f in fields(Request)} | {"provider", "model"}))


def cache_key(provider: str, model: str, req: Request) -> str:
    # fields added later are left out while unset, so keys of earlier calls stay valid; the
    # values are read directly (dataclasses.asdict deep-copies, and cost more than the hash)
    payload = {}
    for k in _KEY_FIELDS:
        v = provider if k == "provider" else model if k == "model" else getattr(req, k)
        if not ((v is None and k in ("schema", "first_tokens")) or (v is False and k == "strict")):
            payload[k] = v
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _row(provider: str, model: str, seed: int, candidate: int, text: str, **kw: Any) -> dict:
    row = {
        "provider": provider,
        "model": model,
        "seed": seed,
        "candidate": candidate,
        "text": text,
        "parsed": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "latency_s": None,
        "ttft_s": None,
        "finish_reason": None,
        "first_probs": None,
        "error": None,
        "cached": False,
    }
    row.update(kw)
    return row


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


def history_turns(history) -> list[dict]:
    """A row's earlier turns ({role, content} dicts, customer first, alternating) from its `history`
    column (JSON text); none for a single-turn row (None, '', NaN)."""
    if not isinstance(history, str) or not history.strip():
        return []
    return json.loads(history)
