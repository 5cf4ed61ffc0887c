"""One decode loop for every causal model the workbench runs: the embedded model's generation
(stages 01-04, `embedded._LocalModel`) and the scoring and safety replies of causal students (06,
`causal.classify` / `causal.answers`).

`Decoder.decode(prompts, max_new, pick)` runs batches of token-id prompts. At every step
`pick(step, rows, logits)` chooses the next token of each active row (sampling, greedy, a first
token constrained to a set, a label trie, any per-step mask) or None to end the row; the loop only
reads prompts and forwards tokens. What makes it fast on a CPU, each measured in
`benchmarks/embedded.py`:

- **a shared prefix read once**: the tokens every prompt begins with (the chat template, the
  system message, the 77-label list) are read at batch 1, their keys and values kept once, not
  once per row, and attended to by every row with one matmul; they are kept for the next call
  with the same prefix. A row's own tokens go to a cache allocated once per batch, so no step
  copies the cache (transformers' DynamicCache concatenates at every step).
- **prompts read in chunks** of about PREFILL_TOKENS tokens, rows of similar length together:
  less padding, and each chunk's activations stay in the CPU's cache.
- rows that end leave the batch; identical prompts (n candidates) are read once.
- optionally (`int8`, asked for), decoding steps through int8 weights (see `Decoder`).

The fast forward is written here over the model's own modules for Llama-architecture models
(SmolLM2 and every student trained from it): embeddings, RMSNorm, rotary positions, grouped-query
attention, MLP; in float32 it gives transformers' numbers (tests/test_decode.py). A model of
another architecture runs the same loop through transformers' forward (no shared prefix), as does
anything `fast_path` refuses; `ENGINE` is part of the cache's model identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from workbench import precision

log = logging.getLogger(__name__)

# the engine's name in cache keys and throughput records: answers of another engine (or of this
# one before a change that alters its numbers) are another model's answers
ENGINE = "wb-decode-1"


def local_identity(dtype: str) -> str:
    """A local model's precision and decode engine, as cache keys and throughput records name
    them: another precision or engine gives other answers and another speed."""
    return f"{precision.resolve(dtype)}+{ENGINE}"


# rows' own tokens read per forward pass while a batch starts (measured in benchmarks/embedded.py)
PREFILL_TOKENS = 1024

Pick = Callable[[int, list[int], Any], list[int | None]]


def end_id(tok) -> int:
    """The token that ends a chat message: `<|im_end|>` where the tokenizer knows it, else EOS."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return end if isinstance(end, int) and end != tok.unk_token_id else tok.eos_token_id


def load(path, dtype: str = "auto") -> tuple[Decoder, Any]:
    """(Decoder, tokenizer) for the model folder `path` in `dtype` (`precision.resolve`; int8 loads
    float32 weights and quantizes the decoding steps). Padding is the tokenizer's pad token, else
    end of message."""
    import torch  # torch loads in seconds: only where a model runs
    from transformers import AutoModelForCausalLM, AutoTokenizer  # torch loads in seconds: only where a model runs

    got = precision.resolve(dtype)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, precision.load_dtype(got)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_id(tok)
    return Decoder(model, pad, int8=got == "int8"), tok


def quantize(model):
    """A copy of `model` with its linear layers in dynamic int8 (CPU): weights stored as int8,
    activations quantized per call with one scale for the whole input (fbgemm/x86 kernels)."""
    import torch  # torch loads in seconds: only where a model runs

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def fast_path(config) -> str | None:
    """Why this loop's own forward cannot run a model with this config (None: it can)."""
    if getattr(config, "model_type", None) != "llama":
        return f"model_type {getattr(config, 'model_type', None)!r} is not llama"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not silu"
    for field in ("attention_bias", "mlp_bias"):
        if getattr(config, field, False):
            return f"{field} is set"
    scaling = getattr(config, "rope_scaling", None) or {}
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        return f"rope_scaling {scaling}"
    return None


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prefix every prompt shares, leaving each at least one token of its own."""
    first, shortest = prompts[0], min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


class Decoder:
    """A causal LM ready to decode: `model` (a transformers CausalLM, eval mode) and `pad_id`.

    `int8` (CPU only): decoding steps run through an int8 copy of the model; prompts are read in
    the model's own precision. A prompt's activations hold a few tokens (the first one above all)
    whose values are hundreds of times the others'; int8 quantization with one scale per call
    flattens every other token of the prompt, and SmolLM2-135M's next-token distribution then
    moves by a total variation of 0.52 on average (top token as float32's: 50%). A decoding step
    reads one new token per row: 0.20 (85%). Numbers and speed: benchmarks/README.md."""

    def __init__(self, model, pad_id: int, int8: bool = False, min_prefix: int = 8):
        import torch  # torch loads in seconds: only where a model runs

        self.torch = torch
        model = model.eval()
        self.device = next(model.parameters()).device
        if int8 and self.device.type != "cpu":
            raise ValueError("int8 dynamic quantization runs on a CPU only")
        self.model = model
        self.int8 = int8
        self.pad_id = pad_id
        self.min_prefix = min_prefix
        why = fast_path(model.config)
        self.llama = _Llama(model) if why is None else None
        self.steps = self.llama  # the forward of decoding steps
        if int8:
            q = quantize(model)
            if self.llama is not None:
                self.steps = _Llama(q)
            else:
                self.model = q  # transformers' forward: int8 throughout
        if why:
            log.info("decoding through transformers' forward: %s", why)
        self._prefix: tuple[tuple[int, ...], Any] | None = None  # the last shared prefix and its K/V

    @property
    def engine(self) -> str:
        return ENGINE if self.llama is not None else f"{ENGINE}+transformers"

    def decode(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        pick: Pick,
        batch_size: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        """Decode every prompt for at most `max_new` picks. Rows are batched `batch_size` at a time
        (all at once by default), shortest first; the prefix all prompts share is read once.
        `pick(step, rows, logits)`: `rows` are indices into `prompts`, `logits` a [len(rows),
        vocab] tensor; it returns each row's next token, or None where the row ends.
        `on_step(step, active)` after every pick."""
        if not prompts or max_new <= 0:
            return
        shared = common_prefix(prompts) if self.llama is not None else 0
        if shared < self.min_prefix:
            shared = 0
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        bs = batch_size or len(order)
        with self.torch.inference_mode():
            prefix = self._read_prefix(tuple(prompts[0][:shared])) if shared else None
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                self._batch(idx, [list(prompts[i][shared:]) for i in idx], shared, prefix, max_new, pick, on_step)

    # ------------------------------------------------------------ one batch

    def _batch(self, idx, tails, shared, prefix, max_new, pick, on_step) -> None:
        torch = self.torch
        # identical prompts (n candidates of one request) are read once, then their rows repeated
        first: dict[tuple, int] = {}
        rep = [first.setdefault(tuple(t), len(first)) for t in tails]
        uniq = [list(k) for k in first]
        by_len = sorted(range(len(uniq)), key=lambda i: len(uniq[i]))  # chunks of the prefill are slices
        where = {u: r for r, u in enumerate(by_len)}
        uniq, rep = [uniq[u] for u in by_len], [where[u] for u in rep]
        width = max(len(u) for u in uniq)
        dev = self.device
        valid = torch.tensor([[False] * (width - len(u)) + [True] * len(u) for u in uniq], device=dev)
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0) + shared
        if self.llama is not None:
            state = self.llama.empty(len(uniq), width + max_new)
            logits = self._prefill(uniq, width, valid, pos, state, prefix)
        else:
            ids = torch.tensor([[self.pad_id] * (width - len(u)) + u for u in uniq], device=dev)
            logits, state = self._forward(ids, pos, valid, None, prefix)
        if rep != list(range(len(idx))):
            sel = torch.tensor(rep, device=dev)
            logits, valid, pos, state = logits[sel], valid[sel], pos[sel], self._select(state, sel)
        rows = list(idx)
        last = pos[:, -1:]
        for step in range(max_new):
            got = pick(step, rows, logits)
            keep = [k for k, t in enumerate(got) if t is not None]
            if on_step is not None:
                on_step(step, len(keep))
            if not keep or step == max_new - 1:
                break
            nxt = [got[k] for k in keep]
            if len(keep) < len(rows):
                sel = torch.tensor(keep, device=dev)
                valid, last, state = valid[sel], last[sel], self._select(state, sel)
                rows = [rows[k] for k in keep]
            valid = torch.cat([valid, torch.ones(len(rows), 1, dtype=torch.bool, device=dev)], dim=1)
            last = last + 1
            logits, state = self._forward(torch.tensor(nxt, device=dev)[:, None], last, valid, state, prefix, step=True)

    def _prefill(self, uniq, width, valid, pos, state, prefix):
        """Read the rows' own tokens in chunks of about PREFILL_TOKENS, each padded only to its own
        longest row and written right-aligned into the batch's cache: less padding, and each
        chunk's activations stay in the CPU's cache (a whole batch's do not)."""
        torch = self.torch
        logits = []
        k = 0
        while k < len(uniq):  # `uniq` is sorted by length: each chunk is a slice of the batch
            j = k + 1
            while j < len(uniq) and (j - k + 1) * len(uniq[j]) <= PREFILL_TOKENS:
                j += 1
            w = len(uniq[j - 1])
            ids = torch.tensor([[self.pad_id] * (w - len(u)) + u for u in uniq[k:j]], device=self.device)
            part = {"k": [t[k:j] for t in state["k"]], "v": [t[k:j] for t in state["v"]], "n": width - w}
            logits.append(self.llama.forward(ids, pos[k:j, width - w :], valid[k:j], part, prefix))
            k = j
        state["n"] = width
        return torch.cat(logits)

    # ------------------------------------------------------------ forward, either path

    def _forward(self, ids, pos, valid, state, prefix, step: bool = False):
        """Logits of the last position of each row after reading `ids` [B, T] at positions `pos`;
        `valid` [B, columns so far] marks real (not padding) columns."""
        if self.llama is not None:
            return (self.steps if step else self.llama).forward(ids, pos, valid, state, prefix), state
        from transformers import DynamicCache  # torch loads in seconds: only where a model runs

        state = DynamicCache() if state is None else state
        out = self.model(
            input_ids=ids,
            attention_mask=valid.long(),
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{precision.cache_arg(self.model): state},
        )
        return out.logits[:, -1, :].float(), state

    def _select(self, state, sel):
        if self.llama is not None:
            return self.llama.select(state, sel)
        state.batch_select_indices(sel)
        return state

    def _read_prefix(self, prefix: tuple[int, ...]):
        """Keys and values of `prefix` (batch 1), kept for the next call with the same prefix."""
        if self._prefix is not None and self._prefix[0] == prefix:
            return self._prefix[1]
        torch = self.torch
        n = len(prefix)
        state = self.llama.empty(1, n)
        ids = torch.tensor([list(prefix)], device=self.device)
        pos = torch.arange(n, device=self.device)[None]
        self.llama.forward(ids, pos, torch.ones(1, n, dtype=torch.bool, device=self.device), state, None, head=False)
        kv = [(k, v) for k, v in zip(state["k"], state["v"])]
        self._prefix = (prefix, kv)
        return kv


class _Llama:
    """A Llama forward over the model's own modules, with a cache allocated once per batch and a
    shared prefix attended to without copying it per row. Numbers match transformers' forward to
    float rounding (tests/test_decode.py)."""

    def __init__(self, model):
        import torch  # torch loads in seconds: only where a model runs
        from transformers.models.llama import modeling_llama  # torch loads in seconds: only where a model runs

        self.torch = torch
        self.F = torch.nn.functional
        self.rotate = modeling_llama.apply_rotary_pos_emb
        m = model.model
        cfg = model.config
        self.embed, self.layers, self.norm, self.head, self.rotary = (
            m.embed_tokens,
            m.layers,
            m.norm,
            model.lm_head,
            m.rotary_emb,
        )
        self.hq, self.hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.hq
        self.g = self.hq // self.hkv
        self.scale = self.hd**-0.5
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device

    def empty(self, rows: int, columns: int) -> dict:
        torch = self.torch
        shape = (rows, self.hkv, columns, self.hd)
        n = len(self.layers)
        return {
            # zeros, not empty: a chunk's padding columns are never written, and are masked out
            # of attention by adding -inf, which a garbage NaN would survive
            "k": [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)],
            "v": [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)],
            "n": 0,
        }

    def select(self, state: dict, sel) -> dict:
        n = state["n"]  # only the filled columns are copied; the rest stays allocated
        for key in ("k", "v"):
            out = []
            for t in state[key]:
                new = t.new_zeros((len(sel),) + t.shape[1:])
                new[:, :, :n] = t[sel, :, :n]
                out.append(new)
            state[key] = out
        return state

    def forward(self, ids, pos, valid, state: dict, prefix, head: bool = True):
        torch = self.torch
        B, T = ids.shape
        n0 = state["n"]
        n1 = n0 + T
        # who each new token may attend to among the row's own columns: earlier real columns and itself
        cols = torch.arange(n1, device=ids.device)
        now = torch.arange(n0, n1, device=ids.device)
        allowed = (cols[None, :] <= now[:, None])[None] & (valid[:, None, :n1] | (cols[None, :] == now[:, None])[None])
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=ids.device)
        bias.masked_fill_(~allowed, float("-inf"))
        bias = bias[:, None, None]  # [B, 1, 1, T, n1]: the same for every kv head and group
        F = self.F
        x = self.embed(ids)
        cos, sin = self.rotary(x, pos)
        for i, layer in enumerate(self.layers):
            h = self._norm(layer.input_layernorm, x)
            x += self._attention(layer.self_attn, h, cos, sin, state["k"][i], state["v"][i], n0, bias, prefix, i)
            h = self._norm(layer.post_attention_layernorm, x)
            mlp = layer.mlp  # down(silu(gate(h)) * up(h)), in place: fewer passes over [rows, 1536]
            x += mlp.down_proj(F.silu(mlp.gate_proj(h), inplace=True).mul_(mlp.up_proj(h)))
        state["n"] = n1
        if not head:
            return None
        return self.head(self._norm(self.norm, x[:, -1, :])).float()

    def _norm(self, norm, x):
        """transformers' LlamaRMSNorm as torch's one fused op (float32 inside, as theirs)."""
        F = self.F
        return F.rms_norm(x.float(), (x.shape[-1],), norm.weight.float(), norm.variance_epsilon).to(x.dtype)

    def _attention(self, attn, h, cos, sin, K, V, n0, bias, prefix, i):
        torch = self.torch
        B, T, _ = h.shape
        hq, hkv, hd, g = self.hq, self.hkv, self.hd, self.g
        q = attn.q_proj(h).view(B, T, hq, hd).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, hkv, hd).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, hkv, hd).transpose(1, 2)
        q, k = self.rotate(q, k, cos, sin)
        n1 = n0 + T
        K[:, :, n0:n1] = k
        V[:, :, n0:n1] = v
        # query head j*g + r reads kv head j (transformers' repeat_kv): [B, hkv, g*T, hd]
        qg = q.reshape(B, hkv, g * T, hd).float()
        own = (qg @ K[:, :, :n1].float().transpose(-1, -2)) * self.scale
        own = (own.view(B, hkv, g, T, n1) + bias).view(B, hkv, g * T, n1)
        if prefix is None:
            p = torch.softmax(own, dim=-1)
            out = p @ V[:, :, :n1].float()
        else:
            pk, pv = prefix[i]  # [1, hkv, P, hd], read once for every row of every batch
            P = pk.shape[2]
            qp = qg.transpose(0, 1).reshape(hkv, B * g * T, hd)
            pre = (qp @ pk[0].float().transpose(-1, -2)) * self.scale  # [hkv, B*g*T, P]
            pre = pre.view(hkv, B, g * T, P).transpose(0, 1)
            p = torch.softmax(torch.cat([pre, own], dim=-1), dim=-1)
            out = p[..., P:] @ V[:, :, :n1].float()
            pp = p[..., :P].transpose(0, 1).reshape(hkv, B * g * T, P)
            out = out + (pp @ pv[0].float()).view(hkv, B, g * T, hd).transpose(0, 1)
        out = out.to(h.dtype).view(B, hq, T, hd).transpose(1, 2).reshape(B, T, hq * hd)
        return attn.o_proj(out)
