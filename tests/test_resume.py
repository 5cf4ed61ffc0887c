"""Crash and resume: a run killed (kill -9) in the middle of generation, judging and training
resumes with the same command, answers the calls it had paid for from the cache, and ends with
the dataset an uninterrupted run gives; interruptions are marked in provenance."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from support import SMOKE_RUN, cache_with_models

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


def _start(runs: Path, cache: Path, log: Path) -> subprocess.Popen:
    """`workbench run` of the smoke config, as a user types it (the same command every time)."""
    cmd = [sys.executable, "-m", "workbench.cli", *SMOKE_RUN, "--runs-dir", str(runs), "--stages", STAGES]
    env = dict(os.environ, WORKBENCH_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
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


def _kill_in(proc, runs: Path, cache: Path, stage: str, log: Path, after_s: float = 0.0) -> None:
    """kill -9 the run once `stage` is running and (for LLM stages) has paid for some calls."""
    start_calls = None
    started = None
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before {stage} could be interrupted:\n{log.read_text()[-3000:]}"
        if _stage(runs, stage).get("status") == "running":
            if start_calls is None:
                start_calls, started = _cached_calls(cache), time.monotonic()
            grew = after_s or _cached_calls(cache) > start_calls
            if grew and time.monotonic() - started >= after_s:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                time.sleep(2)  # the stage's kernel notices its parent is gone within a second and exits
                return
        time.sleep(0.1)
    raise AssertionError(f"{stage} never ran:\n{log.read_text()[-3000:]}")


def _finish(proc, log: Path) -> None:
    assert proc.wait(timeout=1800) == 0, log.read_text()[-5000:]


def _rows(run: Path) -> pd.DataFrame:
    d = pd.read_parquet(run / "artifacts" / "dataset.parquet")
    return d.drop(columns=[c for c in VOLATILE if c in d]).sort_values("id").reset_index(drop=True)


@pytest.mark.slow
def test_kill_9_in_generation_judging_and_training_then_the_same_command_resumes(tmp_path, smoke_run):
    runs, cache = tmp_path / "runs", cache_with_models(tmp_path / "cache")
    logs = [tmp_path / f"attempt{i}.log" for i in range(4)]
    _kill_in(_start(runs, cache, logs[0]), runs, cache, "02_responses", logs[0])
    _kill_in(_start(runs, cache, logs[1]), runs, cache, "03_judge", logs[1])
    _kill_in(_start(runs, cache, logs[2]), runs, cache, "05_train", logs[2], after_s=8.0)
    _finish(_start(runs, cache, logs[3]), logs[3])

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
    runs_dir, _, _ = smoke_run
    ref = _run_dir(runs_dir)
    ref_metrics = json.loads((ref / "metrics.json").read_text())
    assert ref_metrics["02_responses"]["llm"]["cached"] == 0
    pd.testing.assert_frame_equal(_rows(run), _rows(ref))
    print(f"resumed calls answered from the cache: {resumed_from_cache}")


@pytest.mark.slow
def test_local_generation_resumed_after_a_crash_samples_what_an_uninterrupted_run_does(tmp_path):
    """Batches are cut from every request, cached or not, so the rows left to do after a crash
    are sampled in the same company as in a run that never stopped."""
    reqs = [
        Request.chat(
            None, f"Write one sentence about {t}.", temperature=1.0, max_tokens=10, seed=i, n=2 if i % 3 else 1
        )
        for i, t in enumerate(TOPICS)
    ]
    cfg = LLMConfig(batch_size=4)
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
