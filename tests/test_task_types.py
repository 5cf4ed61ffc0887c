"""Every task type end to end through the one set of nine notebooks, each feature a stage has
checked for every shape at once: the run of each type's config at test size (the session's runs,
against the simulated endpoint with the tiny model) ran every stage from notebooks/, marked rows
without dropping any, exported SFT and DPO JSONL, a datasets folder and a card, and its pages show
00's pre-run estimate, the reject pile's drop-down, 02's live stream and throughput, 03's calibration and disagreement
queue, 04's card, 05's students, 07's clusters with the review's command and 99's lineage.

A type's own checks (refusals, slot scores, ROUGE-L, the label jury) stay in its module:
test_smoke, test_tools_run, test_reply, test_summarization; conftest.TYPE_RUNS puts each type's
test here on the worker that makes that run."""

import json
from pathlib import Path

import pandas as pd
import pytest
from support import notebook_source

from workbench import tasks
from workbench.config import load_config
from workbench.runs import STAGES

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"classification": "smoke_run", "tools": "tools_run", "extraction": "extract_run", "reply": "reply_run",
         "summarization": "summaries_run"}  # fmt: skip
FLOW = {"classification": "classification", "tools": "structured", "extraction": "structured", "reply": "text",
        "summarization": "text"}  # fmt: skip


def the_run(request, kind: str) -> Path:
    run = request.getfixturevalue(KINDS[kind])
    return run.run if hasattr(run, "run") else run[0] if isinstance(run, tuple) else run


def page(run: Path, stage: str) -> str:
    return (run / "report" / f"{stage}.html").read_text()


def features(run: Path, kind: str) -> None:
    """What every type's run must have; an AssertionError names the first feature missing."""
    cfg = load_config(run / "config.yaml")[0]
    assert cfg.task.type == kind and tasks.of(cfg).FLOW == FLOW[kind]
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "finished" and [s for s in STAGES if prov["stages"][s]["status"] == "done"] == STAGES
    for nb in sorted((run / "notebooks").glob("*.ipynb")):  # the one set, whatever the type
        assert notebook_source(nb).parent == (ROOT / "notebooks").resolve(), nb.name
    art = run / "artifacts"
    rows = pd.read_parquet(art / "dataset.parquet")
    assert rows["keep"].any() and rows.loc[~rows["keep"], "reject_reason"].notna().all()
    assert rows.loc[rows["keep"], "reject_reason"].isna().all()
    # 04's exports, for every type: SFT records of the kept rows, DPO pairs, a datasets folder, a card
    export = art / "export"
    sft = [json.loads(x) for x in (export / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == rows["keep"].sum() and all(r["messages"][-1]["role"] == "assistant" for r in sft)
    dpo = [json.loads(x) for x in (export / "dpo.jsonl").read_text().splitlines()]
    assert all({"prompt", "chosen", "rejected"} <= set(d) and d["chosen"] != d["rejected"] for d in dpo)
    from datasets import load_from_disk

    assert len(load_from_disk(str(export / "hf"))) == len(sft)
    card = (export / "README.md").read_text()
    assert f"DPO pairs: {len(dpo)}" in card and "Licence" in card
    # 02 streamed each model candidate as it arrived; the page and the report show the throughput
    cands = pd.read_parquet(art / "candidates.parquet")
    model = cands[cands["source"] == "model"]
    streamed = [json.loads(x) for x in (art / "candidates.jsonl").read_text().splitlines()]
    assert sum(r.get("source") == "model" for r in streamed) == len(model) > 0
    assert (model["arrived_s"] >= 0).all()
    for stage in ("02_responses", "99_report"):
        assert "Candidates arriving" in page(run, stage), stage
    # 00's pre-run estimate, one row per stage and the total; each page sets it beside the time taken
    estimate = pd.read_parquet(art / "estimate.parquet")
    assert list(estimate["stage"]) == [*STAGES, "total"] and estimate["llm_calls"].iloc[-1] > 0
    assert "Pre-run estimate" in page(run, "00_task")
    # the reject pile's drop-down wherever a stage rejected something, every page free of errors
    for stage in STAGES:
        assert "Traceback" not in page(run, stage) and "Error" not in page(run, stage).split("</style>")[-1], stage
    assert "updatemenus" in page(run, "04_filter") and "Dataset card" in page(run, "04_filter")
    judged = pd.read_parquet(art / "judged.parquet")
    if judged["reject_reason_judge"].notna().any():
        assert "updatemenus" in page(run, "03_judge").split("Reject pile of the judge")[1]
    # 03: the judge's calibration and the disagreement queue (or why there is none)
    assert "Can this judge be trusted?" in page(run, "03_judge") and "Disagreement queue" in page(run, "03_judge")
    # 05: the students' table; 07: the clusters and the review's command (or that there is no edit)
    training = pd.read_parquet(art / "training.parquet")
    assert len(training) and all(str(s) in page(run, "05_train") for s in training["student"])
    edits = pd.read_parquet(art / "edits.parquet")
    gaps = page(run, "07_gaps")
    assert "Config patch for the next iteration" in gaps
    assert f"workbench iterate {run} --accept e1" in gaps if len(edits) else "No edit proposed" in gaps
    # 99: the lineage section (a first iteration says so)
    assert "Lineage: this iteration against its parent" in page(run, "99_report")
    assert "First iteration: no parent run." in page(run, "99_report")


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_type_runs_the_nine_notebooks_with_every_feature(kind, request):
    features(the_run(request, kind), kind)
