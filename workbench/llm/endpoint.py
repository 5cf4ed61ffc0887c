"""An OpenAI-compatible endpoint: the preflight check, request bodies, answers as rows, and the
runner that keeps `max_concurrency` requests in flight with retries and backpressure.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import random
import re
import time
from typing import Any

from workbench.config import ConfigError, LLMConfig
from workbench.files import progress
from workbench.llm import http
from workbench.llm.limits import _RETRY_STATUS, _Concurrency, _Rate, _retry_after, _token_cost
from workbench.llm.types import Request
from workbench.llm.wire import (  # noqa: F401 (the batch API reads replies as the endpoint does)
    _SSE,
    _BadReply,
    _chat_body,
    _choice_rows,
    _completion_rows,
    _count,
    _error_rows,
    _FewerChoices,
    _headers,
    _json,
    _query,
    _redact,
    _url,
)

log = logging.getLogger(__name__)


def _run_async(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside Jupyter's running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


def _endpoint_key(cfg: LLMConfig) -> str:
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(
            f"{cfg.where}.api_key_env: environment variable {cfg.api_key_env} is not set; export it with the "
            "endpoint's key (any non-empty value for servers that need none)"
        )
    if not cfg.base_url:
        raise ConfigError(
            f"{cfg.where}.base_url: required when its provider is 'openai' (e.g. http://localhost:8000/v1)"
        )
    return key


def _pool(cfg: LLMConfig, url: str, key: str, field: str, timeout_s: float | None = None) -> http.Pool:
    try:
        return http.Pool(_url(cfg, url, field), _headers(cfg, key), timeout_s=timeout_s, query=_query(cfg))
    except ValueError as e:
        raise ConfigError(f"{cfg.where}.{field}: {e}") from None


def _safe_url(url: str) -> str:
    """`url` without its query string (it may carry a key)."""
    return url.split("?", 1)[0]


class EndpointError(RuntimeError):
    """The endpoint refuses every request for a reason retrying cannot fix (the key, the model
    name, a parameter): the call stops at once, and the message says which config field to fix."""


def _fatal(cfg: LLMConfig, e: http.HTTPStatus, url: str, key: str) -> EndpointError:
    msg = _redact(str(e), key)
    url = _safe_url(url)
    if 300 <= e.status < 400:
        return EndpointError(
            f"{cfg.where}.base_url: {url} redirects ({msg}); redirects are not followed (a POST would be re-sent "
            "elsewhere with the key): set base_url to the address it names"
        )
    if http.is_html(e.body):
        return EndpointError(
            f"{cfg.where}.base_url: {url} answered {msg}; check base_url (the API's address, usually ending in /v1) and any "
            "proxy between here and the endpoint (HTTPS_PROXY, NO_PROXY)"
        )
    if e.status in (401, 403):
        return EndpointError(
            f"{cfg.where}.api_key_env: {url} refused the key in ${cfg.api_key_env} ({msg}); export the endpoint's key in "
            f"{cfg.api_key_env}, or name the variable that holds it in llm.api_key_env"
        )
    if e.status == 404:
        return EndpointError(
            f"{cfg.where}.model / {cfg.where}.base_url: {url} answered {msg} for model {cfg.model!r}; check the model name the "
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
        pool = _pool(cfg, url, key, name, timeout_s)

        async def probe(pool: http.Pool = pool) -> bytes:
            try:
                return await pool.get("/models")
            finally:
                await pool.close()

        url = _safe_url(url)
        try:
            raw = _run_async(probe())
        except http.Transport as e:
            raise ConfigError(
                f"{cfg.where}.{name}: cannot reach {url} ({_redact(str(e), key)}); is the server running, and is the URL "
                "right (scheme, host, port, /v1)?"
            ) from None
        except http.HTTPStatus as e:
            if e.status == 404:  # a server that does not list its models: nothing to check here
                log.warning("%s: GET /models answered 404; the model name is checked by the first call", url)
                continue
            raise ConfigError(str(_fatal(cfg, e, url, key))) from None
        if http.is_html(raw):
            raise ConfigError(
                f"{cfg.where}.{name}: {url}/models answered an HTML page, not the API's JSON; check base_url (usually ending "
                "in /v1) and any proxy in between (HTTPS_PROXY, NO_PROXY)"
            )
        try:
            ids = [m["id"] for m in json.loads(raw)["data"]]
        except (ValueError, KeyError, TypeError):
            log.warning("%s: GET /models answered something else than a model list; not checked", url)
            continue
        if cfg.model not in ids:
            raise ConfigError(
                f"{cfg.where}.model: {cfg.model!r} is not served by {url}; it serves {', '.join(ids[:20]) or 'nothing'}"
            )
        served = served or ids
    return served


def _adaptation(e: Exception) -> tuple[str, str] | None:
    """What a 400 says to change: ("token_field", …) when max_tokens is refused (reasoning models),
    ("drop", field) when a sampling field or its value is refused, ("split_n", "n") when n > 1 is;
    None otherwise."""
    if not isinstance(e, http.HTTPStatus) or e.status != 400:
        return None
    msg = str(e).lower()
    if "max_tokens" in msg and ("max_completion_tokens" in msg or "unsupported parameter" in msg):
        return ("token_field", "max_completion_tokens")
    if re.search(r"(^|[\s'\"(:])n([\s'\")=:]|$)", msg) and re.search(
        r"at most 1|must be 1|only 1|not supported|unsupported", msg
    ):
        return ("split_n", "n")
    for field in ("temperature", "top_p", "seed"):
        if f"'{field}'" in msg and ("unsupported" in msg or "not supported" in msg or "only the default" in msg):
            return ("drop", field)
    return None


# statuses worth another attempt: rate limits, timeouts, conflicts and server errors


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
        urls = [("base_url", cfg.base_url)] + [(f"replicas[{i}]", u) for i, u in enumerate(cfg.replicas)]
        self.pools = [_pool(cfg, url, key, name) for name, url in urls]
        self.cfg, self.stats = cfg, stats
        self.limits: list[_Concurrency] = []
        # what the endpoint turned out to need, learnt from its answers (said once in the log)
        self.token_field = "max_tokens"
        self.drop: frozenset = frozenset()
        self.split_n = False  # it ignores n: one request per candidate
        self.lessons = 0  # changes made so far (a request sent before one is sent again)

    async def run(self, reqs: list[Request], done: Any, desc: str) -> None:
        loop = asyncio.get_running_loop()
        ready = collections.deque(range(len(reqs)))
        attempts = [0] * len(reqs)
        left = len(reqs)
        wake = asyncio.Event()
        bar = progress(total=len(reqs), desc=desc, unit="req")
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
            sent[j] = self.lessons  # what the endpoint had taught when this request went out

            def alive() -> None:  # a stream that still sends pieces is not late: timeout_s is its idle limit
                if me in deadline:
                    deadline[me] = loop.time() + self.cfg.timeout_s

            try:
                return await self._once(reqs[j], pool, alive)
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
            change = _adaptation(e)
            if change is not None and (self._adapt(*change, e) or sent[j] < self.lessons):
                loop.call_soon(requeue, j)  # sent again, as the endpoint asks: not an attempt
                return None
            if isinstance(e, _FewerChoices):  # the endpoint ignores n: the same lesson as a 400 refusing it
                said = f"answered {e.got} of the n={reqs[j].n} candidates asked for (it ignores n)"
                self._adapt("split_n", "n", said)
                loop.call_soon(requeue, j)
                return None
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
                except (http.Transport, http.HTTPStatus, _BadReply, _FewerChoices) as e:
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
        sent = [0] * len(reqs)
        first_error: list[str | None] = [None]

        def record() -> None:
            nonlocal left
            while unrecorded and not failed:
                j, result = unrecorded.popleft()
                if isinstance(result, tuple):  # (body, latency) of a plain answer, read here
                    raw, latency = result
                    try:
                        obj = _json(raw)
                        result = self._complete(reqs[j], _completion_rows(self.cfg, reqs[j], obj, latency))
                    except (_BadReply, _FewerChoices) as e:
                        result = fail(j, e)
                        if result is None:
                            continue
                    except Exception as e:  # anything else in an answer fails its row, never the loop
                        result = fail(j, _BadReply(f"unreadable answer ({type(e).__name__}: {e})"))
                        if result is None:
                            continue
                if result[0]["error"] is None:
                    answered[0] += 1
                elif first_error[0] is None:
                    first_error[0] = result[0]["error"]
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
            if not answered[0] and len(reqs) >= 5:
                raise EndpointError(
                    f"{_safe_url(self.cfg.base_url)}: every one of the {len(reqs)} requests failed (the first: "
                    f"{first_error[0]}); nothing was answered, so the stage stops here"
                )
        finally:
            for t in workers:
                t.cancel()
            sweeper.cancel()
            bar.close()
            for pool in self.pools:
                await pool.close()

    def _adapt(self, what: str, value: str, why: Exception | str) -> bool:
        """Change the requests as the endpoint asks (True), once, saying so; False when that change
        was already made. `why`: the refusal (a 400), or what the endpoint did (a string)."""
        if what == "split_n" and not self.split_n:
            self.split_n = True
        elif what == "token_field" and self.token_field != value:
            self.token_field = value
        elif what == "drop" and value not in self.drop:
            self.drop = self.drop | {value}
        else:
            return False
        self.lessons += 1
        url = _safe_url(self.cfg.base_url)
        if isinstance(why, str):
            log.warning("%s %s: from now on one request per candidate", url, why)
            return True
        now = {"token_field": f"{value} instead of max_tokens", "drop": f"no {value}",
               "split_n": "one request per candidate (n=1)"}[what]  # fmt: skip
        log.warning("%s refused a request (%s): sending %s from now on", url, why, now)
        return True

    def _body(self, req: Request, n: int | None = None, seed: int | None = None) -> bytes:
        if n is not None:
            req = dataclasses.replace(req, n=n, seed=seed)
        return json.dumps(_chat_body(self.cfg, req, self.cfg.stream, self.token_field, self.drop)).encode()

    def _complete(self, req: Request, rows: list[dict]) -> list[dict]:
        """`rows` when every candidate came back; _FewerChoices when the endpoint ignored n."""
        got = sum(r["error"] is None for r in rows)
        if req.n > 1 and 1 <= got < req.n:
            raise _FewerChoices(got)
        return rows

    async def _once(self, req: Request, pool: http.Pool, alive: Any = None) -> list[dict] | tuple[bytes, float]:
        if self.split_n and req.n > 1:  # one request per candidate, each with its own seed, at once
            parts = await asyncio.gather(*(self._one(req, pool, alive, i) for i in range(req.n)))
            rows = []
            for i, part in enumerate(parts):
                if isinstance(part, tuple):
                    part = _completion_rows(self.cfg, dataclasses.replace(req, n=1, seed=req.seed + i),
                                            _json(part[0]), part[1])  # fmt: skip
                row = dict(part[0], candidate=i, seed=req.seed + i)
                rows.append(row)
            return rows
        return await self._one(req, pool, alive)

    async def _one(self, req: Request, pool: http.Pool, alive: Any, i: int | None = None):
        """One request: all n candidates, or (i given) candidate i alone with n=1 and seed + i."""
        body = self._body(req) if i is None else self._body(req, n=1, seed=req.seed + i)
        sent = req if i is None else dataclasses.replace(req, n=1, seed=req.seed + i)
        t0 = time.perf_counter()
        texts: dict[int, str] = {}
        finish: dict[int, str | None] = {}
        ttft: dict[int, float] = {}
        usage: dict | None = None
        if not self.cfg.stream:
            raw = await pool.post("/chat/completions", body)
            return raw, time.perf_counter() - t0  # parsed by the caller, after its next request went out
        events = _SSE()

        def piece(data: bytes) -> None:
            nonlocal usage
            if alive is not None:
                alive()
            try:
                objs = list(events.feed(data))
            except ValueError as e:
                raise _BadReply(f"unreadable stream event: {e}") from None
            for obj in objs:
                if not isinstance(obj, dict):
                    raise _BadReply(f"unreadable stream event: {str(obj)[:120]}")
                if obj.get("error"):  # a provider's failure mid-stream: the row fails, whatever came before
                    raise _BadReply(f"error in the stream: {http.error_message(json.dumps(obj).encode())}")
                if obj.get("usage"):
                    usage = obj["usage"]
                for c in obj.get("choices") or ():
                    k = c.get("index", 0)
                    delta = c.get("delta") or {}
                    text = delta.get("content") or (json.dumps(delta["tool_calls"]) if delta.get("tool_calls") else "")
                    if text:
                        ttft.setdefault(k, time.perf_counter() - t0)
                        texts[k] = texts.get(k, "") + text
                    if c.get("finish_reason"):
                        finish[k] = c["finish_reason"]

        await pool.post("/chat/completions", body, piece)
        latency = time.perf_counter() - t0
        if not events.done and not finish:
            raise _BadReply("stream ended without [DONE] or a finish_reason")
        try:
            rows = _choice_rows(self.cfg, sent, texts, finish, ttft, usage, latency)
        except Exception as e:
            raise _BadReply(f"unreadable answer ({type(e).__name__}: {e})") from None
        return rows if i is not None else self._complete(req, rows)
