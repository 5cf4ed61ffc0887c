"""Today's loop before issue 22, frozen for `benchmarks/embedded.py` to measure the engine against
in the same run: the transformers forward with a DynamicCache (concatenated at every step), every
row's prompt read and cached whole, float weights. Not used by the workbench.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from workbench import precision
from workbench.config import LLMConfig
from workbench.llm.embedded import _Item, _LocalModel, _sample


class BaselineModel(_LocalModel):
    """`_LocalModel` with the decode loop it had before the engine: same batching, same rows."""

    def __init__(self, cfg: LLMConfig, cache_dir: Path):
        if cfg.dtype == "int8":
            raise ValueError("the loop before the engine had no int8")
        super().__init__(cfg, cache_dir)  # the same tokenizer, weights, stop ids and pad id
        self.model = self.decoder.model
        self.cache_arg = precision.cache_arg(self.model)
        self.pad_id = self.decoder.pad_id

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
