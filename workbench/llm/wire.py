"""What goes over the wire to an OpenAI-compatible endpoint and back: the chat request's body, the
rows read from a completion (one per choice, with usage, latency and finish reason) or from a
stream's server-sent events, and the rows of a failed call."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from workbench.config import ConfigError, LLMConfig
from workbench.config.models import ENV_REF
from workbench.llm import http
from workbench.llm.types import Request, _row

log = logging.getLogger(__name__)


def _chat_body(
    cfg: LLMConfig, req: Request, stream: bool, token_field: str = "max_tokens", drop: frozenset = frozenset()
) -> dict[str, Any]:
    """The request body: `token_field` is max_tokens, or max_completion_tokens for reasoning models
    that reject it; `drop` the sampling fields such a model refuses; `llm.extra_body` on top."""
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": req.openai_messages(),
        "temperature": req.temperature,
        "top_p": req.top_p,
        token_field: req.max_tokens,
        "seed": req.seed,
        "n": req.n,
    }
    for k in drop:
        body.pop(k, None)
    if req.schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": json.loads(req.schema), "strict": False},
        }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(cfg.extra_body)
    return body


def _completion_rows(cfg: LLMConfig, req: Request, obj: Any, latency: float | None) -> list[dict]:
    """The rows of one chat.completion object; _BadReply when it is not one."""
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    try:
        if isinstance(obj, dict) and obj.get("error") and not obj.get("choices"):
            raise _BadReply(
                f"the endpoint answered an error with status 200: {http.error_message(json.dumps(obj).encode())}"
            )
        for c in obj["choices"]:
            i = int(c.get("index", 0))
            msg = c["message"]
            text = msg.get("content") or ""
            if not text and msg.get("tool_calls"):  # a tool call is the answer: kept as its JSON
                text = json.dumps(msg["tool_calls"])
            texts[i] = text
            finish[i] = c.get("finish_reason")
        usage = obj.get("usage")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise _BadReply(f"unreadable answer ({type(e).__name__}): {str(obj)[:120]}") from None
    return _choice_rows(cfg, req, texts, finish, {}, usage, latency)


def _count(x: Any) -> int | None:
    """A token count as the API promises it (a non-negative integer), else None."""
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def _choice_rows(cfg, req: Request, texts: dict, finish: dict, ttft: dict, usage: dict | None, latency) -> list[dict]:
    usage = usage if isinstance(usage, dict) else None
    ptok = _count(usage.get("prompt_tokens")) if usage else None
    ctok = _count(usage.get("completion_tokens")) if usage else None
    key = os.environ.get(cfg.api_key_env, "")
    if len(key) >= 8:  # an endpoint that echoes the key never gets it into a row, nor the cache
        texts = {i: t.replace(key, "[API_KEY]") for i, t in texts.items()}
    # usage counts all n candidates together; each row gets its share
    share = round(ctok / req.n) if ctok is not None else None
    return [  # the fields of _row, built directly: this runs once per answer, on the event loop
        {
            "provider": "openai",
            "model": cfg.model,
            "seed": req.seed + i,
            "candidate": i,
            "text": texts.get(i, ""),
            "parsed": None,
            "prompt_tokens": ptok,
            "completion_tokens": share,
            "latency_s": latency,
            "ttft_s": ttft.get(i),
            "finish_reason": finish.get(i),
            "first_probs": None,
            "error": None if i in texts else "endpoint returned fewer choices than n",
            "cached": False,
        }
        for i in range(req.n)
    ]


def _error_rows(cfg: LLMConfig, req: Request, msg: str) -> list[dict]:
    """The n rows of a request that failed for good, each carrying `msg` (with the key redacted:
    an endpoint that echoes the key back never gets it into a row)."""
    msg = _redact(msg, os.environ.get(cfg.api_key_env, ""))
    return [_row("openai", cfg.model, req.seed + i, i, "", error=msg) for i in range(req.n)]


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        if http.is_html(raw):
            raise _BadReply(
                "the endpoint answered an HTML page, not the API's JSON (a proxy or a wrong base_url)"
            ) from None
        raise _BadReply(f"unreadable answer (not JSON): {raw[:120]!r}") from None


class _FewerChoices(Exception):
    """An answer with fewer choices than the n asked for: an endpoint that ignores n."""

    def __init__(self, got: int):
        self.got = got
        super().__init__(f"endpoint returned {got} choices, fewer than n")


class _BadReply(Exception):
    """A 200 answer that is not the JSON the API promises (truncated, not JSON, wrong shape)."""


class _SSE:
    """Server-sent events from body pieces: yields each `data:` JSON object; `done` after [DONE]."""

    def __init__(self) -> None:
        self.buf = b""
        self.done = False

    def feed(self, data: bytes):
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            yield json.loads(payload)


def _redact(text: str, key: str) -> str:
    """`text` with `key` replaced by ***. A placeholder key of a few characters (`x`, `EMPTY`, for a
    server that checks none) is no secret, and replacing it would garble the message."""
    return text.replace(key, "***") if len(key) >= 8 else text


# ---------------------------------------------------------------- headers and query, ${VAR} read when sent


def _env(value: str, field: str) -> str:
    """`value` with each ${VAR} read from the environment (the config and the run's files keep the
    reference, never the secret)."""

    def env(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"{field}: environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    return ENV_REF.sub(env, value)


def _headers(cfg: LLMConfig, key: str) -> dict[str, str]:
    """The key in `api_key_header` (Bearer for Authorization), then `llm.headers` with each ${VAR}
    read from the environment."""
    out = {cfg.api_key_header: f"Bearer {key}" if cfg.api_key_header.lower() == "authorization" else key}
    for name, value in cfg.headers.items():
        value = _env(value, f"{cfg.where}.headers.{name}")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{cfg.where}.headers.{name}: the value contains a line break or NUL")
        out[name] = value
    return out


def _query(cfg: LLMConfig) -> dict[str, str]:
    """`llm.query` with each ${VAR} read from the environment."""
    return {k: _env(v, f"{cfg.where}.query.{k}") for k, v in cfg.query.items()}


def _url(cfg: LLMConfig, url: str, field: str) -> str:
    """`url` (the model's `field`) with each ${VAR} of its query string read from the environment."""
    base, _, query = url.partition("?")
    return f"{base}?{_env(query, f'{cfg.where}.{field}')}" if query else url
