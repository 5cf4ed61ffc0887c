"""The per-row cost of the cache and of writing rows: a re-run answered entirely from the cache.

    .venv/bin/python benchmarks/cache_rerun.py [--rows 2000]

Generates `--rows` rows against the simulated endpoint (benchmarks/simserver.py, 10 ms latency)
into a fresh cache, then runs the same requests again with a new `LLM` object (as a re-run of a
stage does) and writes every row to JSONL, as stage 02 does. The second call is timed: every
row comes from SQLite, none from the server (its request count is checked).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(rows: int = 2000) -> dict:
    from workbench.config import LLMConfig
    from workbench.llm import LLM, Request

    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "simserver.py"),
            "--latency",
            "0.01",
            "--concurrency",
            "256",
            "--max-seconds",
            "300",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().split()[1]
        os.environ["WB_BENCH_KEY"] = "sk-bench-not-a-secret"
        cfg = LLMConfig(provider="openai", model="sim", base_url=url, api_key_env="WB_BENCH_KEY", max_concurrency=64)
        reqs = [Request.chat(None, f"cached row {i}", max_tokens=16, seed=i) for i in range(rows)]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            LLM(cfg, tmp).generate(reqs, desc="fill")
            fill_s = time.perf_counter() - t0
            llm = LLM(cfg, tmp)
            t0 = time.perf_counter()
            with open(Path(tmp) / "rows.jsonl", "w") as f:

                def write(i: int, got: list[dict]) -> None:
                    for r in got:
                        f.write(json.dumps(r) + "\n")

                out = llm.generate(reqs, desc="re-run", on_result=write)
            rerun_s = time.perf_counter() - t0
        with urllib.request.urlopen(url + "/stats", timeout=10) as r:
            served = json.loads(r.read())["answered"]
    finally:
        proc.kill()
        proc.wait()
    return {
        "rows": rows,
        "first_run_s": round(fill_s, 3),
        "rerun_s": round(rerun_s, 3),
        "rerun_us_per_row": round(1e6 * rerun_s / rows, 1),
        "rows_from_cache": sum(r[0]["cached"] for r in out),
        "server_answers": served,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    print(json.dumps(run(ap.parse_args().rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
