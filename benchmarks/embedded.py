"""The embedded model's generation speed: the engine (`workbench.llm.decode`) against today's loop
before it (`benchmarks/baseline_loop.py`), in one run, on the demo's own batch shape.

    .venv/bin/python benchmarks/embedded.py [--prompts 96] [--batch-size 48] [--single 4]

The requests are the demo's stage-01 requests (configs/banking77.yaml, round 0: its system
message, three real seed examples, temperature 0.9, at most 40 new tokens), the first `--prompts`
of them, through `LLM(provider="local")` as stage 01 sends them, `--batch-size` rows per pass. Each
setting gets a fresh temporary call cache, so nothing is answered from it; the model is loaded
and warmed up (one small batch) before the clock starts. Settings:

- `baseline@<dtype>`: the loop before the engine at the dtype `auto` resolves to here (float32 on a
  CPU without native bf16), and at bfloat16 where that differs (the benchmark's old default);
- `engine@<the same dtype>` and `engine@int8` (decoding steps through int8 weights, asked for only);
- `engine@int8, one at a time`: the first `--single` prompts at batch 1.

Reports generated tokens/s per setting, the engine's speed-up over the baseline at the same
(default) precision and with int8 steps, and the CPU.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def demo_requests(n: int) -> list:
    """The first `n` of the demo's stage-01 requests (round 0)."""
    from workbench import data, prompts
    from workbench.config import load_config

    cfg, _ = load_config(ROOT / "configs" / "banking77.yaml")
    plan = prompts.generation_requests(cfg, data.seeds(cfg), data.labels(cfg), data.label_counts(cfg))
    return list(plan["request"][:n])


def measure(reqs: list, batch_size: int, dtype: str, baseline: bool) -> dict:
    import torch

    from workbench.cache import Cache
    from workbench.config import LLMConfig
    from workbench.files import cache_dir
    from workbench.llm import LLM

    cfg = LLMConfig(provider="local", batch_size=batch_size, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(cfg, cache_dir())  # the converted model comes from the shared cache…
        llm.cache = Cache(Path(tmp) / "warm.sqlite")  # …the calls do not
        if baseline:
            from baseline_loop import BaselineModel

            llm._local = BaselineModel(cfg, cache_dir())
        llm.generate(reqs[:4], desc="warm-up")  # first calls set up kernels and threads
        llm.cache = Cache(Path(tmp) / "calls.sqlite")
        t0 = time.perf_counter()
        out = llm.generate(reqs, desc=f"{'baseline' if baseline else 'engine'}@{dtype} batch {batch_size}")
        seconds = time.perf_counter() - t0
    rows = [r for rs in out for r in rs]
    tokens = sum(r["completion_tokens"] for r in rows)
    return {
        "loop": "baseline" if baseline else "engine",
        "dtype": llm._local.dtype,
        "batch_size": batch_size,
        "rows": len(rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "stopped_at_end_of_message": sum(r["finish_reason"] == "stop" for r in rows),
        "load_s": round(llm._local.load_s, 2),
        "threads": torch.get_num_threads(),
    }


def run(n_prompts: int = 96, batch_size: int = 48, n_single: int = 4) -> dict:
    from workbench import precision

    reqs = demo_requests(n_prompts)
    auto = precision.resolve("auto")
    settings = [(auto, True), (auto, False), ("int8", False)]
    if auto != "bfloat16":
        settings.insert(1, ("bfloat16", True))
    got = [measure(reqs, batch_size, dtype, baseline) for dtype, baseline in settings]
    single = measure(reqs[:n_single], 1, "int8", False)
    base = got[0]
    engine = next(g for g in got if g["loop"] == "engine" and g["dtype"] == auto)
    int8 = next(g for g in got if g["loop"] == "engine" and g["dtype"] == "int8")
    return {
        "model": "smollm2-135m-instruct",
        "requests": "configs/banking77.yaml stage 01, round 0",
        "cpu": precision.facts()["cpu_capability"],
        "native_bf16": precision.facts()["native_bf16"],
        "settings": got,
        "one_at_a_time": single,
        "baseline": f"baseline@{base['dtype']}",
        "speedup": round(engine["tokens_per_s"] / base["tokens_per_s"], 2),
        "speedup_int8": round(int8["tokens_per_s"] / base["tokens_per_s"], 2),
        "batched_over_single": round(int8["tokens_per_s"] / single["tokens_per_s"], 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--single", type=int, default=4)
    a = ap.parse_args()
    print(json.dumps(run(a.prompts, a.batch_size, a.single), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
