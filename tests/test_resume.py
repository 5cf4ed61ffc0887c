"""Crash and resume: a run killed (kill -9) in the middle of generation, judging and training
resumes with the same command, answers the calls it had paid for from the cache, and ends with
the dataset an uninterrupted run gives; interruptions are marked in provenance. The run is the
session's smoke run's command (the simulated endpoint as generator, the tiny model as judge and
student), so that run is the uninterrupted reference."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from support import QUIET_S, cache_with_models, endpoint_env, endpoint_run, newest_change, run_bounded

from workbench.cache import Cache
from workbench.config import LLMConfig
from workbench.llm import LLM, Request

TOPICS = ["the sea", "a bank card", "rain", "exchange rates", "a lost wallet", "coffee", "trains", "a cat",
          "winter", "an ATM", "music", "a top-up that failed", "bread", "mountains", "a refund", "stars"]  # fmt: skip


class Crash(Exception):
    pass


ROOT = Path(__file__).resolve().parent.parent
STAGES = "00_task,01_prompts,02_responses,03_judge,04_filter,05_train"
# columns that say how a row was made (timings, cache hits), not what it is
VOLATILE = ("latency_s", "ttft_s", "cached", "critique_cached", "arrived_s")


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # noqa: SIM115


def _run_dir(runs: Path) -> Path | None:
    found = sorted((runs / "smoke").glob("[0-9]*-*")) if (runs / "smoke").is_dir() else []
    return found[-1] if found else None


def _stage(runs: Path, name: str) -> dict:
    run = _run_dir(runs)
    try:
        return json.loads((run / "provenance.json").read_text())["stages"].get(name, {}) if run else {}
    except (OSError, ValueError):
        return {}


def _cached_calls(cache: Path) -> int:
    path = cache / "llm.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0
    finally:
        db.close()


def _calls_saved(runs: Path, cache: Path):
    """Ready once the stage has saved calls to the cache (an LLM stage saves its answers in batches)."""
    start = _cached_calls(cache)  # when the stage is first seen running
    return lambda: _cached_calls(cache) > start


def _trained_one(runs: Path, cache: Path):
    """Ready once 05 has saved its first student (SFT), with the others still to train."""
    return lambda: bool(list((_run_dir(runs) / "artifacts").glob("causal/*/merged/config.json")))


def _kill_in(proc, runs: Path, cache: Path, stage: str, log: Path, ready) -> None:
    """kill -9 the run once `stage` is running and `ready()` (made for this stage) says it has done
    part of its work. Waits as long as the run makes progress (output or files), however slow."""
    check, last, seen = None, time.monotonic(), None
    while True:
        assert proc.poll() is None, f"the run ended before {stage} could be interrupted:\n{log.read_text()[-3000:]}"
        if _stage(runs, stage).get("status") == "running":
            check = check or ready(runs, cache)
            if check():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                time.sleep(2)  # the stage's kernel notices its parent is gone within a second and exits
                return
        now = (log.stat().st_size, newest_change(runs))
        if now != seen:
            last, seen = time.monotonic(), now
        assert time.monotonic() - last < QUIET_S, (
            f"no progress for {QUIET_S} s before {stage}:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.1)


def _rows(run: Path) -> pd.DataFrame:
    d = pd.read_parquet(run / "artifacts" / "dataset.parquet")
    return d.drop(columns=[c for c in VOLATILE if c in d]).sort_values("id").reset_index(drop=True)


@pytest.mark.slow
def test_kill_9_in_generation_judging_and_training_then_the_same_command_resumes(tmp_path, smoke_run, sim, tiny):
    runs, cache = tmp_path / "runs", cache_with_models(tmp_path / "cache")
    # one request at a time, so 02's answers are saved (every half second) several times before it ends
    cmd = endpoint_run(ROOT / "configs" / "smoke.yaml", runs, sim, tiny) + [
        "--stages", STAGES, "--set", "llm.max_concurrency=1"]  # fmt: skip
    env = endpoint_env(cache, PYTHONUNBUFFERED="1")
    logs = [tmp_path / f"attempt{i}.log" for i in range(4)]
    procs = [_start(cmd, env, logs[0])]
    try:
        _kill_in(procs[-1], runs, cache, "02_responses", logs[0], _calls_saved)
        procs.append(_start(cmd, env, logs[1]))
        _kill_in(procs[-1], runs, cache, "03_judge", logs[1], _calls_saved)
        procs.append(_start(cmd, env, logs[2]))
        _kill_in(procs[-1], runs, cache, "05_train", logs[2], _trained_one)
        procs.append(_start(cmd, env, logs[3]))
        code, output = run_bounded(cmd, env, logs[3], watch=(runs,), proc=procs[-1])
    finally:  # a failed check leaves no run behind
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert code == 0, output[-5000:]

    runs_made = sorted((runs / "smoke").glob("[0-9]*-*"))
    assert len(runs_made) == 1, runs_made  # every attempt resumed the same run
    run = runs_made[0]
    for log in logs[1:]:
        assert f"resuming {run}" in log.read_text()
    prov = json.loads((run / "provenance.json").read_text())
    assert [a["from_stage"] for a in prov["attempts"]] == ["00_task", "02_responses", "03_judge", "05_train"]
    for stage in ("02_responses", "03_judge", "05_train"):
        assert prov["stages"][stage]["status"] == "done"
        assert len(prov["stages"][stage]["interrupted"]) == 1, prov["stages"][stage]
    assert prov["status"] == "partial"  # the stages asked for are done
    # calls paid for before each kill were answered from the cache when the stage ran again
    metrics = json.loads((run / "metrics.json").read_text())
    resumed_from_cache = {s: metrics[s]["llm"]["cached"] for s in ("02_responses", "03_judge")}
    assert all(v > 0 for v in resumed_from_cache.values()), metrics
    # nothing half-written: no temporary file left, every table readable, the model saved whole
    assert [p for p in run.rglob("*") if ".tmp" in p.name] == []
    for p in (run / "artifacts").glob("*.parquet"):
        pd.read_parquet(p)
    assert list((run / "artifacts").rglob("merged/config.json"))

    # the same command, never interrupted, on an empty cache (the session's smoke run): the same dataset
    ref = smoke_run.run
    ref_metrics = json.loads((ref / "metrics.json").read_text())
    assert ref_metrics["02_responses"]["llm"]["cached"] == 0
    pd.testing.assert_frame_equal(_rows(run), _rows(ref))
    print(f"resumed calls answered from the cache: {resumed_from_cache}")


def test_local_generation_resumed_after_a_crash_samples_what_an_uninterrupted_run_does(tmp_path, tiny):
    """Batches are cut from every request, cached or not, so the rows left to do after a crash
    are sampled in the same company as in a run that never stopped (the tiny model: the batching
    is what is tested; test_decode checks the embedded model's samples across a resume)."""
    reqs = [
        Request.chat(
            None, f"Write one sentence about {t}.", temperature=1.0, max_tokens=10, seed=i, n=2 if i % 3 else 1
        )
        for i, t in enumerate(TOPICS)
    ]
    cfg = LLMConfig(model=str(tiny), batch_size=4, dtype="float32")
    ref = LLM(cfg, cache_with_models(tmp_path / "a")).generate(reqs)

    crashed = LLM(cfg, cache_with_models(tmp_path / "b"))
    seen = []

    def on_result(i, rows):
        seen.append(i)
        if len(seen) == 7:
            raise Crash

    with pytest.raises(Crash):
        crashed.generate(reqs, on_result=on_result)
    saved = len(Cache(tmp_path / "b" / "llm.sqlite"))
    assert 0 < saved < len(reqs)

    resumed = LLM(cfg, tmp_path / "b")
    out = resumed.generate(reqs)
    assert resumed.stats["cached"] == saved
    assert [[r["text"] for r in rows] for rows in out] == [[r["text"] for r in rows] for rows in ref]
