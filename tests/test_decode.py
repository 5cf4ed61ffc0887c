"""The one decode loop (`workbench.llm.decode`) on the embedded SmolLM2-135M: its own Llama forward
gives transformers' numbers (float32), the shared prefix and the chunked prefill change nothing,
the transformers fallback decodes the same, seeded sampling is stable run to run and across a
resume, and per-step masks hold. The embedded model itself where its numbers are what is tested (a
random model's near-uniform logits would let a wrong forward pass or sampler agree by chance); the
tiny one where only the mechanism is (the masks)."""

from __future__ import annotations

import pytest

from workbench.config import LLMConfig
from workbench.files import cache_dir
from workbench.llm import decode
from workbench.llm.types import Request

SYSTEM = "You are the support assistant of an online bank. Answer briefly and politely. " * 3
TEXTS = [
    "How do I reset my card PIN?",
    "My transfer did not arrive",
    "hi",
    "Can I top up with a cheque, I am abroad",
    "How do I reset my card PIN?",  # the same prompt twice: read once, its rows repeated
]


@pytest.fixture(scope="module")
def model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.llm import local_model_dir

    path = local_model_dir("smollm2-135m-instruct", cache_dir())
    tok = AutoTokenizer.from_pretrained(path)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = []
    for t in TEXTS:
        ids = tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}],
            add_generation_prompt=True,
            tokenize=True,
        )
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return m, tok, prompts


def _greedy(dec: decode.Decoder, prompts, max_new: int = 10, batch_size=None) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompts]

    def pick(step, rows, logits):
        toks = logits.argmax(-1).tolist()
        for r, t in zip(rows, toks):
            out[r].append(t)
        return toks

    dec.decode(prompts, max_new, pick, batch_size)
    return out


def test_own_forward_matches_transformers(model, monkeypatch):
    """float32: the first logits match transformers' forward, and greedy decoding matches
    transformers' generate token for token, with the shared prefix, chunked prefill (a few rows
    per chunk), batches of 2, and repeated prompts. The embedded model: the forward written here
    is for its architecture and sizes, and its peaked logits make a greedy match meaningful."""
    import torch

    m, tok, prompts = model
    dec = decode.Decoder(m, tok.pad_token_id)
    assert dec.llama is not None and decode.common_prefix(prompts) >= 30  # the system message is shared
    first = {}

    def pick(step, rows, logits):
        first.update({r: logits[k] for k, r in enumerate(rows)})
        return [None] * len(rows)

    dec.decode(prompts, 1, pick)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            want = m(torch.tensor([p])).logits[0, -1]
            assert torch.allclose(first[i], want, atol=1e-3), (i, float((first[i] - want).abs().max()))
        ref = [m.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p) :].tolist() for p in prompts]
    monkeypatch.setattr(decode, "PREFILL_TOKENS", 40)  # two rows' tails per chunk at most
    for bs in (None, 2):
        got = _greedy(decode.Decoder(m, tok.pad_token_id), prompts, batch_size=bs)
        assert got == ref, bs


def test_transformers_fallback_decodes_the_same(model):
    """A model the fast forward does not take decodes through transformers' own forward, the same
    tokens (the embedded model, for the same reason as above)."""
    m, tok, prompts = model
    fast = _greedy(decode.Decoder(m, tok.pad_token_id), prompts)
    slow = decode.Decoder(m, tok.pad_token_id)
    slow.llama = None  # what a model of another architecture gets
    assert slow.engine.endswith("+transformers")
    assert _greedy(slow, prompts) == fast


def test_int8_steps_stay_close_to_float32(model):
    """int8: the prompt is read in float32 (the first token's logits are float32's exactly), and
    the next step's distribution, through int8 weights, stays near float32's. The embedded model:
    how far quantization moves its distribution is what is measured."""
    m, tok, prompts = model
    got = {}
    for int8 in (False, True):
        logits = {}

        def pick(step, rows, lg, logits=logits):
            logits.update({(step, r): lg[k] for k, r in enumerate(rows)})
            return lg.argmax(-1).tolist()

        decode.Decoder(m, tok.pad_token_id, int8=int8).decode(prompts, 2, pick)
        got[int8] = logits
    tv, same = [], 0
    for i in range(len(prompts)):
        assert (got[False][0, i] - got[True][0, i]).abs().max() < 1e-3
        a, b = got[False][1, i].softmax(-1), got[True][1, i].softmax(-1)
        tv.append(float((a - b).abs().sum() / 2))
        same += int(a.argmax() == b.argmax())
    assert sum(tv) / len(tv) < 0.35 and same >= 3, (tv, same)


def _local(dtype: str = "int8"):
    from workbench.llm.embedded import _LocalModel

    return _LocalModel(LLMConfig(batch_size=3, dtype=dtype), cache_dir())


def _requests() -> list[Request]:
    return [
        Request.chat(SYSTEM, t, temperature=0.9, top_p=0.95, max_tokens=12, seed=7 + i) for i, t in enumerate(TEXTS)
    ]


def _texts(local, reqs, todo=None) -> dict[int, list[str]]:
    got: dict[int, list[str]] = {}
    todo = list(range(len(reqs))) if todo is None else todo
    local.run(reqs, todo, lambda j, rows: got.update({todo[j]: [r["text"] for r in rows]}), "test")
    return got


def test_seeded_sampling_is_stable_run_to_run_and_across_a_resume():
    """The same requests and seeds give the same samples from a fresh load, and a run that only
    does the requests a crash left (the rest cached) samples exactly what the whole run did. The
    embedded model: its samples are what a resumed run keeps."""
    reqs = _requests()
    whole = _texts(_local(), reqs)
    assert _texts(_local(), reqs) == whole
    assert _texts(_local(), reqs, todo=[3, 4]) == {3: whole[3], 4: whole[4]}
    other = [Request.chat(SYSTEM, t, temperature=0.9, top_p=0.95, max_tokens=12, seed=99) for t in TEXTS]
    assert _texts(_local(), other) != whole  # the seed matters
    assert len({tuple(v) for v in whole.values()}) > 1


def test_a_step_mask_holds_and_first_tokens_are_scored(tiny):
    """`allow(item, step)` limits each step's tokens; `first_tokens` records the allowed strings'
    probabilities (judge ratings) and constrains the first token (the tiny model: the mechanism)."""
    from workbench.llm.embedded import _Item, _LocalModel

    local = _LocalModel(LLMConfig(model=str(tiny), batch_size=3, dtype="float32"), cache_dir())
    digits = [local.tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    items = [_Item(0, 0, s, ids) for s, ids in enumerate(local.tok(["Count:", "Numbers please"])["input_ids"])]
    local._generate(items, 1.0, 1.0, 6, allow=lambda it, step: digits)
    for it in items:
        assert it.out and set(it.out) <= set(digits), local.tok.decode(it.out)
    rated = [_Item(0, 0, 5, local._prompt_ids(_requests()[0]))]
    local._generate(rated, 1.0, 1.0, 1, first_tokens=("1", "2", "3", "4", "5"))
    probs = rated[0].first_probs
    assert set(probs) == {"1", "2", "3", "4", "5"} and abs(sum(probs.values()) - 1) < 1e-3
    assert local.tok.decode(rated[0].out) in probs
