"""The embedded model's generation speed: batched against one prompt at a time.

    .venv/bin/python benchmarks/embedded.py [--prompts 96] [--single 6] [--max-tokens 40]

SmolLM2-135M-Instruct through `LLM(provider="local")`, as stage 01 and 02 call it: real
Banking77 seed texts as prompts ("Rewrite this customer message…"), sampled at temperature 0.8,
at most `--max-tokens` new tokens each. Batched: `llm.batch_size` rows per forward pass (each row
stops at its end of message and leaves the batch, KV cache, prompts sorted by length). One at a
time: the same code with batch_size 1 on the first `--single` prompts. The call cache is a fresh
temporary folder, so nothing is answered from it; the converted model comes from the workbench
cache (converting it is timed separately the first time).

Reports generated tokens/s for both, the speed-up, the time to load the model, and the threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prompts(n: int) -> list[str]:
    import pandas as pd

    seeds = pd.read_csv(ROOT / "data" / "banking77" / "train.csv").sample(n, random_state=0)
    return [f"Rewrite this customer message in other words, keeping its meaning:\n{t}" for t in seeds["text"]]


def measure(texts: list[str], batch_size: int, max_tokens: int, threads: int | None, dtype: str) -> dict:
    import torch

    from workbench.cache import Cache
    from workbench.config import LLMConfig
    from workbench.files import cache_dir
    from workbench.llm import LLM, Request, local_model_dir

    t0 = time.perf_counter()
    local_model_dir("smollm2-135m-instruct", cache_dir())  # converted once per machine
    convert_s = time.perf_counter() - t0
    cfg = LLMConfig(provider="local", batch_size=batch_size, threads=threads, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(cfg, cache_dir())  # the converted model comes from the shared cache…
        llm.cache = Cache(Path(tmp) / "calls.sqlite")  # …the calls do not
        reqs = [Request.chat(None, t, temperature=0.8, max_tokens=max_tokens, seed=i) for i, t in enumerate(texts)]
        t1 = time.perf_counter()
        out = llm.generate(reqs, desc=f"batch {batch_size}")
        seconds = time.perf_counter() - t1
    rows = [r for rs in out for r in rs]
    tokens = sum(r["completion_tokens"] for r in rows)
    load_s = llm._local.load_s if llm._local else None
    return {
        "batch_size": batch_size,
        "rows": len(rows),
        "tokens": tokens,
        "seconds": round(seconds - (load_s or 0), 2),
        "tokens_per_s": round(tokens / (seconds - (load_s or 0)), 1),
        "stopped_at_end_of_message": sum(r["finish_reason"] == "stop" for r in rows),
        "load_s": round(load_s, 2) if load_s else None,
        "convert_s": round(convert_s, 2),
        "threads": torch.get_num_threads(),
    }


def run(n_prompts=96, n_single=6, max_tokens=40, batch_size=96, dtype="bfloat16", threads=None) -> dict:
    texts = prompts(n_prompts)
    batched = measure(texts, batch_size, max_tokens, threads, dtype)
    single = measure(texts[:n_single], 1, max_tokens, threads, dtype)
    return {
        "model": f"smollm2-135m-instruct@{dtype}",
        "max_tokens": max_tokens,
        "batched": batched,
        "one_at_a_time": single,
        "speedup": round(batched["tokens_per_s"] / single["tokens_per_s"], 1),
        "load_s": batched["load_s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--single", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    print(json.dumps(run(a.prompts, a.single, a.max_tokens, a.batch_size, a.dtype, a.threads), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
