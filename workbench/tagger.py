"""The fast student of structured tasks, the analogue of classification's probe: the frozen
all-MiniLM-L6-v2 encoder, a linear head over its pooled sentence vector for the tool, and a linear
head over each token's vector for the argument spans (BIO tags, trained on the spans the argument
values mark in their message). Its answer takes each argument's words from the message as
written. Training is seconds on a CPU: the encoder never changes, only the heads learn.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from workbench.embed import encoder
from workbench.structured import NO_TOOL

log = logging.getLogger(__name__)
OUTSIDE = "O"


def token_vectors(texts: list[str], batch_size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each text's token vectors from the frozen encoder (special tokens dropped) and each token's
    (start, end) character offsets in the text."""
    import torch  # torch loads in seconds: only where a model runs

    st = encoder()
    tok, model = st.tokenizer, st[0].auto_model
    vecs: list = [None] * len(texts)
    spans: list = [None] * len(texts)
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            part = [texts[j] for j in idx]
            enc = tok(
                part, padding=True, truncation=True, max_length=128, return_offsets_mapping=True, return_tensors="pt"
            )
            offsets = enc.pop("offset_mapping")
            hidden = model(**enc).last_hidden_state
            for k, j in enumerate(idx):
                keep = (enc["attention_mask"][k] == 1) & ~((offsets[k, :, 0] == 0) & (offsets[k, :, 1] == 0))
                vecs[j] = hidden[k][keep].numpy().astype(np.float32)
                spans[j] = offsets[k][keep].numpy()
    return vecs, spans


def _value_span(text: str, value: str) -> tuple[int, int] | None:
    """Where `value` is in `text`: its first occurrence as whole words (case-insensitive), else as
    any substring; None when absent ("my" is a playlist owner in "add it to my list", not the
    start of "mystery")."""
    v = str(value).strip()
    if not v:
        return None
    m = re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text, re.I)
    if m:
        return m.span()
    i = text.lower().find(v.lower())
    return None if i < 0 else (i, i + len(v))


def bio_tags(text: str, arguments: dict, offsets: np.ndarray) -> list[str]:
    """B-/I-<argument> for the tokens inside each argument's value span, O elsewhere."""
    tags = [OUTSIDE] * len(offsets)
    for name, value in arguments.items():
        span = _value_span(text, value)
        if span is None:
            continue
        inside = [k for k, (s, e) in enumerate(offsets) if s < span[1] and e > span[0]]
        for j, k in enumerate(inside):
            tags[k] = ("B-" if j == 0 else "I-") + name
    return tags


def _fit_linear(x: np.ndarray, y: np.ndarray, classes: int, epochs: int = 300, seed: int = 0):
    """A softmax regression fitted full-batch with L-BFGS (small L2): the weights and bias."""
    import torch  # torch loads in seconds: only where a model runs

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=epochs, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + 1e-4 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()


@dataclass
class Tagger:
    tools: list[str]
    tags: list[str]
    allowed: dict[str, list[str]]  # tool → its argument names
    tool_w: np.ndarray | None
    tool_b: np.ndarray | None
    tag_w: np.ndarray
    tag_b: np.ndarray
    train_rows: int = 0
    train_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def answers(self, texts: list[str]) -> list[dict]:
        """An answer per text: the most likely tool, then the spans its arguments' tags mark."""
        vecs, spans = token_vectors(list(texts))
        out = []
        for text, v, off in zip(texts, vecs, spans):
            if self.tool_w is None:
                tool = self.tools[0]
            else:
                tool = self.tools[int(np.argmax(v.mean(axis=0) @ self.tool_w + self.tool_b))]
            if tool == NO_TOOL:
                out.append({"tool": NO_TOOL, "arguments": {}})
                continue
            ok = {OUTSIDE} | {f"{p}-{a}" for a in self.allowed.get(tool, []) for p in "BI"}
            mask = np.array([0.0 if t in ok else -np.inf for t in self.tags])
            tags = [self.tags[i] for i in np.argmax(v @ self.tag_w + self.tag_b + mask, axis=1)]
            out.append({"tool": tool, "arguments": _spans(text, tags, off)})
        return out


def _spans(text: str, tags: list[str], offsets: np.ndarray) -> dict[str, str]:
    """Arguments from BIO tags: each argument's first span, its words as the text has them (an I-
    tag that follows another argument starts a span too)."""
    args: dict[str, str] = {}
    cur, start, end = None, 0, 0

    def close():
        if cur is not None and cur not in args:
            args[cur] = text[start:end].strip()

    for t, (s, e) in zip(tags, offsets):
        name = None if t == OUTSIDE else t[2:]
        if name is not None and name == cur and t.startswith("I-"):
            end = int(e)
            continue
        close()
        cur, start, end = (name, int(s), int(e)) if name is not None else (None, 0, 0)
    close()
    return {k: v for k, v in args.items() if v}


def train_tagger(rows: pd.DataFrame, tools: dict[str, list[str]], seed: int = 0) -> Tagger:
    """Fit both heads on `rows` (text, tool, arguments): the tool head on the sentence vectors
    (skipped when one tool is all there is), the tag head on every token."""
    t0 = time.perf_counter()
    texts = list(rows["text"])
    vecs, spans = token_vectors(texts)
    names = sorted(tools) + ([NO_TOOL] if (rows["tool"] == NO_TOOL).any() else [])
    tags = [OUTSIDE] + [f"{p}-{a}" for a in sorted({a for v in tools.values() for a in v}) for p in "BI"]
    index = {t: i for i, t in enumerate(tags)}
    xs, ys = [], []
    for text, args, v, off in zip(texts, rows["arguments"], vecs, spans):
        xs.append(v)
        ys += [index.get(t, 0) for t in bio_tags(text, args, off)]
    x, y = np.concatenate(xs), np.array(ys)
    tag_w, tag_b = _fit_linear(x, y, len(tags), seed=seed)
    tool_w = tool_b = None
    if len(names) > 1:
        pooled = np.stack([v.mean(axis=0) for v in vecs])
        tool_w, tool_b = _fit_linear(pooled, np.array([names.index(t) for t in rows["tool"]]), len(names), seed=seed)
    return Tagger(
        names,
        tags,
        {k: list(v) for k, v in tools.items()},
        tool_w,
        tool_b,
        tag_w,
        tag_b,
        train_rows=len(rows),
        train_seconds=time.perf_counter() - t0,
        info={"student": "tagger", "tokens": int(len(y))},
    )
