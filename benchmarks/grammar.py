"""Schema-constrained decoding on the embedded model: what the grammar costs and whether every
answer parses. 96 real SNIPS test messages (a seeded sample), the seven tools' answer schema
(plus no tool), greedy, a budget of 48 tokens: the loop without a grammar, then with llguidance's
masks (`Request.strict`). With `--outlines`, also outlines-core's index build for the same schema
(pip install outlines-core first; it is not a dependency). Writes benchmarks/results/grammar.json.

    .venv/bin/python benchmarks/grammar.py [--rows 96] [--outlines]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import precision, structured  # noqa: E402
from workbench.config import LLMConfig  # noqa: E402
from workbench.files import cache_dir  # noqa: E402
from workbench.llm import embedded  # noqa: E402
from workbench.llm.types import Request  # noqa: E402


def _outlines_index_s(schema: str, tok) -> float:
    from outlines_core import Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_of = {chr(c): b for b, c in zip(bs, cs)}
    vocab: dict[bytes, list[int]] = {}
    for t, i in tok.get_vocab().items():
        if i != tok.eos_token_id and all(c in byte_of for c in t):
            vocab.setdefault(bytes(byte_of[c] for c in t), []).append(i)
    t0 = time.perf_counter()
    Index(build_regex_from_schema(schema, whitespace_pattern=""), Vocabulary(tok.eos_token_id, vocab))
    return time.perf_counter() - t0


def main(rows: int = 96, outlines: bool = False) -> dict:
    test = structured.read_split(ROOT / "data" / "snips", "test").sample(rows, random_state=0)
    tools = {k: dict.fromkeys(v, "string") for k, v in structured.tool_arguments(test).items()}
    schema = json.dumps(structured.answer_schema(tools, no_tool=True))
    system = "Call one tool for the user's request, or none. Tools: " + "; ".join(
        f"{k}({', '.join(v)})" for k, v in tools.items()
    )
    local = embedded._LocalModel(LLMConfig(batch_size=48, dtype="float32"), cache_dir())
    spent = {"mask_s": 0.0}
    mask = embedded._Grammar.mask

    def timed_mask(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return mask(self, *a, **kw)
        finally:
            spent["mask_s"] += time.perf_counter() - t0

    embedded._Grammar.mask = timed_mask
    out: dict = {"rows": rows, "capability": precision.facts().get("cpu_capability"), "settings": {}}
    warm = [Request.chat(system, "hello", temperature=0.0, max_tokens=4, schema=schema, strict=True)]
    t0 = time.perf_counter()
    local.run(warm, [0], lambda j, r: None, "warm-up")  # the llguidance tokenizer and the schema compile once
    out["first_strict_call_s"] = round(time.perf_counter() - t0, 2)
    for name, strict in (("free", False), ("llguidance", True)):
        reqs = [
            Request.chat(system, t, temperature=0.0, max_tokens=48, seed=i, schema=schema, strict=strict)
            for i, t in enumerate(test["text"])
        ]
        got: dict[int, dict] = {}
        spent["mask_s"] = 0.0
        t0 = time.perf_counter()
        local.run(reqs, list(range(rows)), lambda j, r, got=got: got.update({j: r[0]}), name)
        s = time.perf_counter() - t0
        answers = [structured.parse_answer(got[j]["text"], tools)[0] for j in range(rows)]
        gold = [{"tool": t, "arguments": a} for t, a in zip(test["tool"], test["arguments"])]
        sc = structured.scores(gold, answers, bootstrap=0)
        tokens = sum(r["completion_tokens"] for r in got.values())
        out["settings"][name] = {
            "seconds": round(s, 1),
            "tokens": tokens,
            "tokens_per_s": round(tokens / s, 1),
            "mask_s": round(spent["mask_s"], 2),
            "parsed": round(sc["parsed"], 3),
            "tool_accuracy": round(sc["tool_accuracy"], 3),
            "slot_f1": round(sc["slot_f1"], 3),
        }
    if outlines:
        out["outlines_core_index_s"] = round(_outlines_index_s(schema, local.tok), 1)
    print(json.dumps(out, indent=1))
    (ROOT / "benchmarks" / "results" / "grammar.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--outlines", action="store_true")
    a = ap.parse_args()
    main(a.rows, a.outlines)
