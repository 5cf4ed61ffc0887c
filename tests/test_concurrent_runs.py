"""Two runs of one config started at the same moment, in two processes, sharing one cache: each
gets its own run folder, both finish with the same data, and the cache stays whole (a third run
is answered from it entirely). The smoke config against the session's simulated endpoint, the tiny
model criticising in 01 (so both processes write local and endpoint answers to the cache), 00-02."""

import json
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from support import cache_with_models, endpoint_env, endpoint_run, run_bounded

ROOT = Path(__file__).resolve().parent.parent
STAGES = "00_task,01_prompts,02_responses"


@pytest.mark.slow
def test_two_runs_of_one_config_at_once_get_their_own_folders_and_leave_the_cache_whole(tmp_path, sim, tiny):
    cache = cache_with_models(tmp_path / "cache")
    env = endpoint_env(cache)
    runs = tmp_path / "runs"
    cmd = endpoint_run(ROOT / "configs" / "smoke.yaml", runs, sim, tiny) + ["--stages", STAGES]
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    procs = [
        subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # noqa: SIM115
        for log in logs[:2]
    ]
    outs = [run_bounded(cmd, env, log, watch=(runs,), proc=p) for p, log in zip(procs, logs)]
    assert [code for code, _ in outs] == [0, 0], "\n\n".join(o[-3000:] for _, o in outs)
    made = sorted((runs / "smoke").glob("[0-9]*-*"))
    assert [m.name[:4] for m in made] == ["001-", "002-"]
    for m in made:
        prov = json.loads((m / "provenance.json").read_text())
        assert prov["status"] == "partial" and len(prov["attempts"]) == 1  # neither took the other's run
    # the shared cache is whole
    db = sqlite3.connect(cache / "llm.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    # same config and seed: the same prompts and judgments in both
    for name in ("prompts", "responses"):
        a, b = (pd.read_parquet(m / "artifacts" / f"{name}.parquet") for m in made)
        assert a["text"].tolist() == b["text"].tolist()
    # a third run is answered from the cache alone: every call the two made is in it, readable
    code, output = run_bounded(cmd, env, logs[2], watch=(runs,))
    assert code == 0, output[-3000:]
    last = sorted((runs / "smoke").glob("[0-9]*-*"))[-1]
    metrics = json.loads((last / "metrics.json").read_text())
    for stage in ("01_prompts", "02_responses"):
        calls = metrics[stage]["llm"]
        assert calls["calls"] > 0 and calls["cached"] == calls["calls"], (stage, calls)
