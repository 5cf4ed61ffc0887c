"""One client generating `--rows` chat completions against an OpenAI-compatible endpoint.

    python benchmarks/clients.py CLIENT --url URL --rows 2000 --concurrency 64 --out DIR

CLIENT is `workbench` (the workbench's own generation path: `LLM.generate` with its cache and
its row writer) or a peer: `openai_async` (AsyncOpenAI + semaphore), `openai_threads` (the sync
client in a thread pool), `curator` (bespokelabs-curator), `litellm` (`batch_completion`),
`distilabel` (`OpenAILLM` + `TextGeneration`). Peers run with their default retry settings, as
a user would start with them. Every client asks for the same rows (one distinct prompt each)
and writes one JSON line per row it got to DIR/rows.jsonl.

Prints one JSON line: client, rows_ok, rows_lost, seconds (the generation call alone, not
imports or start-up), peak_rss_mb (the process's high-water mark), errors (first three).
`benchmarks/endpoint.py` runs each client in its own process, so imports and memory do not mix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

MODEL = "sim-model"
KEY = "sk-bench-not-a-secret"
MAX_TOKENS = 16


def prompts(rows: int) -> list[str]:
    return [f"Write one short customer message about a card payment, number {i}." for i in range(rows)]


def run_workbench(url: str, texts: list[str], conc: int, out: Path) -> Callable[[], tuple[list, list]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from workbench.config import LLMConfig
    from workbench.llm import LLM, Request

    os.environ["WB_BENCH_KEY"] = KEY
    first, *replicas = url.split(",")  # several URLs: the replicas of one model (llm.replicas)
    cfg = LLMConfig(
        provider="openai",
        model=MODEL,
        base_url=first,
        replicas=replicas,
        api_key_env="WB_BENCH_KEY",
        max_concurrency=conc,
        max_retries=8,
    )
    llm = LLM(cfg, out / "cache")

    def go() -> tuple[list, list]:
        reqs = [Request.chat(None, t, temperature=0.7, max_tokens=MAX_TOKENS, seed=i) for i, t in enumerate(texts)]
        ok, errors = [], []
        with open(out / "rows.jsonl", "w") as f:

            def on_result(i: int, rows: list[dict]) -> None:  # what stage 02 does with each answer
                for r in rows:
                    f.write(json.dumps(r) + "\n")
                    (errors if r["error"] else ok).append(r["error"] or i)

            llm.generate(reqs, desc="workbench", on_result=on_result)
        return ok, errors

    return go


def run_openai_async(url: str, texts: list[str], conc: int, out: Path) -> Callable[[], tuple[list, list]]:
    import asyncio

    import openai

    async def main() -> tuple[list, list]:
        client = openai.AsyncOpenAI(base_url=url, api_key=KEY)
        sem = asyncio.Semaphore(conc)
        ok, errors = [], []

        async def one(i: int, t: str) -> None:
            async with sem:
                try:
                    r = await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": t}], max_tokens=MAX_TOKENS, seed=i
                    )
                    ok.append(r.choices[0].message.content)
                except Exception as e:  # noqa: BLE001 - a lost row, whatever the reason
                    errors.append(repr(e))

        await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
        await client.close()
        return ok, errors

    return lambda: asyncio.run(main())


def run_openai_threads(url: str, texts: list[str], conc: int, out: Path) -> Callable[[], tuple[list, list]]:
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=url, api_key=KEY)
    ok: list = []
    errors: list = []

    def one(it: tuple[int, str]) -> None:
        i, t = it
        try:
            r = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": t}], max_tokens=MAX_TOKENS, seed=i
            )
            ok.append(r.choices[0].message.content)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    def go() -> tuple[list, list]:
        with ThreadPoolExecutor(conc) as ex:
            list(ex.map(one, enumerate(texts)))
        return ok, errors

    return go


def run_litellm(url: str, texts: list[str], conc: int, out: Path) -> Callable[[], tuple[list, list]]:
    import litellm

    def go() -> tuple[list, list]:
        res = litellm.batch_completion(
            model=f"openai/{MODEL}",
            messages=[[{"role": "user", "content": t}] for t in texts],
            api_base=url,
            api_key=KEY,
            max_tokens=MAX_TOKENS,
            max_workers=conc,
        )
        ok = [r for r in res if not isinstance(r, Exception)]
        errors = [repr(r) for r in res if isinstance(r, Exception)]
        return ok, errors

    return go


class _Quarters:
    """Stands in for tiktoken's cl100k_base (a download this offline machine cannot make):
    about one token per four characters, and cheaper than the real encoder."""

    def encode(self, text: str, **_kw) -> list[int]:
        return [0] * (len(text) // 4 + 1)


def run_curator(url: str, texts: list[str], conc: int, out: Path) -> Callable[[], tuple[list, list]]:
    import tiktoken

    tiktoken.get_encoding = lambda name: _Quarters()
    tiktoken.encoding_for_model = lambda name: _Quarters()
    os.environ.update(
        TELEMETRY_ENABLED="false", CURATOR_CACHE_DIR=str(out / "curator"), CURATOR_DISABLE_RICH_DISPLAY="1"
    )
    from bespokelabs import curator

    llm = curator.LLM(
        model_name=MODEL,
        backend="openai",
        backend_params={
            "base_url": url,
            "api_key": KEY,
            "max_requests_per_minute": 10_000_000,
            "max_tokens_per_minute": 10_000_000_000,
            "max_concurrent_requests": conc,
            "require_all_responses": False,
        },
        generation_params={"max_tokens": MAX_TOKENS},
    )

    def go() -> tuple[list, list]:
        ds = llm(texts)
        data = ds.dataset if hasattr(ds, "dataset") else ds
        ok = [r for r in data["response"] if r]
        return ok, [f"missing: {len(texts) - len(ok)}"] if len(ok) < len(texts) else []

    return go


def run_distilabel(url: str, texts: list[str], conc: int, out: Path) -> Callable[[], tuple[list, list]]:
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    with Pipeline(name="bench", cache_dir=str(out / "distilabel")) as pipe:
        load = LoadDataFromDicts(data=[{"instruction": t} for t in texts], batch_size=conc)
        gen = TextGeneration(
            llm=OpenAILLM(model=MODEL, base_url=url, api_key=KEY, generation_kwargs={"max_new_tokens": MAX_TOKENS}),
            input_batch_size=conc,
        )
        load >> gen

    def go() -> tuple[list, list]:
        ds = pipe.run(use_cache=False)
        rows = ds["default"]["train"]
        ok = [g for g in rows["generation"] if g]
        return ok, [f"missing: {len(texts) - len(ok)}"] if len(ok) < len(texts) else []

    return go


def peak_rss_mb() -> float:
    """This program's resident-memory high-water mark. Not getrusage's ru_maxrss: Linux keeps that
    across exec, so a child started by a large parent would report the parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CLIENTS = {
    "workbench": run_workbench,
    "openai_async": run_openai_async,
    "openai_threads": run_openai_threads,
    "curator": run_curator,
    "litellm": run_litellm,
    "distilabel": run_distilabel,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("client", choices=sorted(CLIENTS))
    ap.add_argument("--url", required=True, help="base URL; the workbench client takes several, comma-separated")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    texts = prompts(a.rows)
    go = CLIENTS[a.client](a.url, texts, a.concurrency, a.out)  # imports and set-up, not timed
    t0, c0 = time.perf_counter(), time.process_time()
    ok, errors = go()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = peak_rss_mb()
    print(
        json.dumps(
            {
                "client": a.client,
                "rows_ok": len(ok),
                "rows_lost": a.rows - len(ok),
                "seconds": round(seconds, 3),
                "cpu_ms_per_row": round(1000 * cpu / max(1, len(ok)), 3),
                "peak_rss_mb": round(rss, 1),
                "errors": [str(e)[:200] for e in errors[:3]],
            }
        ),
        flush=True,
    )
    # leave without the interpreter's teardown: a peer's leftover threads (litellm's) can keep a
    # finished process alive for minutes, and nothing after the timed call is measured
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
