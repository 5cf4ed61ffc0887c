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
are not cached. Unparseable JSON is data: the raw text is kept and `parsed` is None."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from workbench.cache import Cache
from workbench.config import LLMConfig
from workbench.llm.batch import _BatchRunner
from workbench.llm.decode import local_identity
from workbench.llm.embedded import _LocalModel
from workbench.llm.endpoint import _OpenAIRunner, _run_async, _safe_url
from workbench.llm.types import Request, cache_key, parse_json

log = logging.getLogger(__name__)


class LLM:
    """The one entry point. `cache_dir` holds the call cache and converted local models."""

    def __init__(self, cfg: LLMConfig, cache_dir: str | Path, on_stats: Any = None):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.cache = Cache(self.cache_dir / "llm.sqlite")
        self._local: _LocalModel | None = None
        self._load_s = 0.0  # seconds the embedded model took to load (torch, transformers, weights)
        # seconds: wall time spent on calls the cache did not answer (the stage's LLM time, for
        # estimates); load_seconds: loading the embedded model, which only such calls need
        self.stats = {"calls": 0, "cached": 0, "errors": 0, "retries": 0, "truncated": 0, "seconds": 0.0,
                      "load_seconds": 0.0}  # fmt: skip
        self.on_stats = on_stats  # called with `stats` after every generate (a stage records them)

    @property
    def identity(self) -> str:
        """The model as the cache sees it: the local model's dtype (resolved: `auto` is whatever this
        machine runs) changes its answers; for an endpoint, which server answers (another server
        with a model of the same name is another model), without its query string; `llm.extra_body`
        (hashed) where it is set."""
        if self.cfg.provider == "local":
            return f"{self.cfg.model}@{local_identity(self.cfg.dtype)}"
        ident = f"{self.cfg.model}@{_safe_url(self.cfg.base_url or '').rstrip('/')}"
        if self.cfg.extra_body:  # fields added to every body change the answers: another entry
            body = json.dumps(self.cfg.extra_body, sort_keys=True, default=str)
            ident += "+" + hashlib.sha256(body.encode()).hexdigest()[:16]
        return ident

    def cached_count(self, requests: list[Request]) -> int:
        """How many of `requests` the cache answers (no call made)."""
        keys = list({cache_key(self.cfg.provider, self.identity, r) for r in requests})
        return len(self.cache.get_many(keys))

    def calibrate(self, requests: list[Request], batch_size: int) -> dict | None:
        """This machine's speed for the embedded model (`_LocalModel.calibrate`); None for an endpoint."""
        if self.cfg.provider != "local":
            return None
        self._load()
        t0 = time.perf_counter()
        found = self._local.calibrate(requests, batch_size)
        self.stats["seconds"] = round(self.stats.get("seconds", 0.0) + time.perf_counter() - t0, 2)  # LLM time
        return {**found, "load_s": round(self._load_s, 2)}

    def _load(self) -> None:
        """Load the embedded model once (torch, transformers and the weights), its seconds kept in
        `_load_s` and counted in stats["load_seconds"]."""
        if self._local is not None:
            return
        t0 = time.perf_counter()
        self._local = _LocalModel(self.cfg, self.cache_dir)
        self._load_s = time.perf_counter() - t0
        self.stats["load_seconds"] = round(self.stats.get("load_seconds", 0.0) + self._load_s, 2)

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
            started = time.perf_counter()
            try:
                if local:
                    self._load()
                    started = time.perf_counter()  # the model's load is counted apart (load_seconds)
                    self._local.run(requests, todo, done, desc, save)
                elif self.cfg.batch_api:
                    _BatchRunner(self.cfg, self.stats, self.cache_dir).run(reqs, [keys[i] for i in todo], done, desc)
                else:
                    _run_async(_OpenAIRunner(self.cfg, self.stats).run(reqs, done, desc))
            finally:
                save()  # also when interrupted: what was paid for is kept
                writer.shutdown(wait=True)
                self.stats["seconds"] = round(self.stats.get("seconds", 0.0) + time.perf_counter() - started, 2)
        cut = [
            (r, req) for req, k in zip(requests, keys) if k in fresh for r in fresh[k] if r["finish_reason"] == "length"
        ]
        if cut:  # answers stopped by max_tokens: counted, and said, since JSON cut this way does not parse
            self.stats["truncated"] = self.stats.get("truncated", 0) + len(cut)
            structured = sum(bool(req.json or req.schema) for _, req in cut)
            log.warning(
                "%s: %d answers were cut at max_tokens (finish_reason length)%s",
                desc,
                len(cut),
                f"; {structured} of them were to be JSON, which does not parse once cut: raise the stage's max_tokens"
                if structured
                else "",
            )
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


def generate_by(llms: dict[str, LLM], requests: list[Request], names: list[str], desc: str = "") -> list[list[dict]]:
    """Each request answered by the model `names` gives it (a jury of different models: `llms` by
    name), in the order of `requests`."""
    out: list = [None] * len(requests)
    for name, llm in llms.items():
        at = [k for k, n in enumerate(names) if n == name]
        if at:
            for k, res in zip(at, llm.generate([requests[k] for k in at], desc=f"{desc} ({name})")):
                out[k] = res
    missing = sorted({names[k] for k, r in enumerate(out) if r is None})
    if missing:
        raise KeyError(f"no model named {missing} among {sorted(llms)}")
    return out


def generate_each(
    llms: dict[str, LLM], requests: list[Request], names: list[str], desc: str = ""
) -> dict[str, list[list[dict]]]:
    """Every request answered by each model of `names` (a jury where each model answers all): the
    answers by model name, each list in the order of `requests`."""
    got = generate_by(llms, requests * len(names), [n for n in names for _ in requests], desc)
    return {n: got[m * len(requests) : (m + 1) * len(requests)] for m, n in enumerate(names)}
