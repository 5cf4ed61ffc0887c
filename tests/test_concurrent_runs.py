"""Two runs of one config started at the same moment, in two processes, sharing one cache: each
gets its own run folder, both finish with the same data, and the cache stays whole (a third run
is answered from it entirely)."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import cache_with_models, simserver

ROOT = Path(__file__).resolve().parent.parent
STAGES = "00_task,01_prompts,02_responses,03_judge"


def _cmd(runs: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", "run", str(ROOT / "configs" / "smoke.yaml"), "--runs-dir", str(runs),
            "--stages", STAGES, "--set", "llm.provider=openai", "--set", f"llm.base_url={url}",
            "--set", "llm.model=sim", "--set", "llm.api_key_env=WB_CONC_KEY"]  # fmt: skip


@pytest.mark.slow
def test_two_runs_of_one_config_at_once_get_their_own_folders_and_leave_the_cache_whole(tmp_path):
    cache = cache_with_models(tmp_path / "cache")
    env = dict(os.environ, WB_CONC_KEY="sk-conc", WORKBENCH_CACHE=str(cache), HF_HUB_OFFLINE="1")
    runs = tmp_path / "runs"
    with simserver(replies="plausible", latency=0.02, max_seconds=900) as url:
        procs = [
            subprocess.Popen(_cmd(runs, url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=900)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
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
        for name in ("prompts", "judged"):
            a, b = (pd.read_parquet(m / "artifacts" / f"{name}.parquet") for m in made)
            assert a["text"].tolist() == b["text"].tolist()
        # a third run is answered from the cache alone: every call the two made is in it, readable
        third = subprocess.run(_cmd(runs, url), capture_output=True, text=True, env=env, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    last = sorted((runs / "smoke").glob("[0-9]*-*"))[-1]
    metrics = json.loads((last / "metrics.json").read_text())
    for stage in ("01_prompts", "02_responses", "03_judge"):
        calls = metrics[stage]["llm"]
        assert calls["calls"] > 0 and calls["cached"] == calls["calls"], (stage, calls)
