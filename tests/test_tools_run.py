"""A structured run end to end: `workbench run configs/snips-smoke.yaml` (two SNIPS tools, a few
generated requests, short training) through notebooks/tools/, against the session's simulated
endpoint (it writes the requests and the candidates) with the tiny model as judge and causal
student: every stage writes its artifacts, 03's checks reject what they should, the untuned
model's constrained answers parse, the report shows the table, the reject pile and the clusters,
and only 06 reads the real test files."""

import json

import pandas as pd
import pytest

from workbench.runs import STAGES


@pytest.fixture(scope="module")
def root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def load(run, name):
    return pd.read_parquet(run / "artifacts" / f"{name}.parquet")


@pytest.mark.slow
def test_every_stage_ran_from_the_tools_notebooks(tools_run):
    run, _ = tools_run
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "finished"
    assert [s for s in STAGES if prov["stages"][s]["status"] == "done"] == STAGES
    page = (run / "report" / "01_prompts.html").read_text()
    assert "Values the generator suggested" in page  # the structured flow's section, on the one 01 page
    assert "Critic" not in page
    for name in ["seeds", "dev", "prompts", "candidates", "judged", "pairs", "dataset", "training", "evaluation",
                 "test_answers", "ablation", "per_slot", "failures", "clusters", "edits"]:  # fmt: skip
        assert (run / "artifacts" / f"{name}.parquet").is_file(), name


@pytest.mark.slow
def test_rows_keep_their_reasons_and_answers_parse(tools_run):
    run, _ = tools_run
    rows = load(run, "dataset")
    prompts = load(run, "prompts")
    assert len(rows) == len(prompts)  # nothing dropped: every attempt is a row of the dataset
    assert rows.loc[~rows["keep"], "reject_reason"].notna().all()
    assert rows.loc[rows["keep"], "reject_reason"].isna().all()
    kept = rows[rows["keep"]]
    assert len(kept), "no generated request survived"
    for text, args in zip(kept["text"], kept["arguments"]):  # 03's check holds for what trains
        for v in json.loads(args).values():
            assert str(v).lower() in text.lower()
    # 04's exports: the kept rows as chat records answering in JSON, their pairs, a datasets folder, a card
    export = run / "artifacts" / "export"
    sft = [json.loads(x) for x in (export / "sft.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sft] == list(kept["id"])
    for r, (_, row) in zip(sft, kept.iterrows()):
        system, user, answer = r["messages"]
        assert user == {"role": "user", "content": row["text"]} and "Tools:" in system["content"]
        assert json.loads(answer["content"]) == {"tool": row["tool"], "arguments": json.loads(row["arguments"])}
    pairs = load(run, "pairs")
    dpo = [json.loads(x) for x in (export / "dpo.jsonl").read_text().splitlines()]
    assert len(dpo) == pairs["id"].isin(kept["id"]).sum() and all(d["chosen"] != d["rejected"] for d in dpo)
    from datasets import load_from_disk

    hf = load_from_disk(str(export / "hf"))
    assert len(hf) == len(sft) and json.loads(hf[0]["arguments"]) == sft[0]["arguments"]
    card = (export / "README.md").read_text()
    assert f"kept: {len(kept)}" in card and f"DPO pairs: {len(dpo)}" in card and "Licence of the seed examples" in card
    cands = load(run, "candidates")
    assert cands["schema_valid"].all()  # decoded under the schema: every candidate parses
    streamed = (run / "artifacts" / "candidates.jsonl").read_text().splitlines()  # 02's live view wrote each
    assert len(streamed) == len(cands) and (cands["arrived_s"] >= 0).all()
    table = load(run, "evaluation").set_index("model")
    assert table.loc["causal: untuned (schema-constrained)", "parsed"] == 1.0
    groups = set(table["group"])
    assert groups == {"baseline", "synthetic", "reference"}
    assert {"tagger: seeds_only", "tagger: seeds_unfiltered", "tagger: seeds_synthetic", "tagger: reference",
            "tagger: reference_as_many", "causal: sft", "causal: dpo", "causal: grpo"} <= set(table.index)  # fmt: skip
    assert (table["slot_f1_lo"] <= table["slot_f1"]).all() and (table["slot_f1"] <= table["slot_f1_hi"]).all()
    assert table.loc["tagger: seeds_only", "test_rows"] == 24  # 12 per tool
    assert table.loc["causal: sft", "test_rows"] == 6  # causal_test_per_label: 3


@pytest.mark.slow
def test_only_06_reads_the_test_files(tools_run):
    _, log = tools_run
    opened = [line.split("\t") for line in log.read_text().splitlines()] if log.is_file() else []
    assert opened, "the audit hook saw no read of the SNIPS test files: it is not working"
    assert {stage for _, stage, _ in opened} == {"06_evaluate"}, opened


@pytest.mark.slow
def test_the_report_shows_the_table_the_rejects_and_the_clusters(tools_run):
    run, _ = tools_run
    page = (run / "report.html").read_text()
    for shown in ["Slot F1 on the real test rows", "tagger: seeds_synthetic", "causal: untuned (schema-constrained)",
                  "reject_reason", "Failure clusters", "slot_f1_lo", "Candidates arriving"]:  # fmt: skip
        assert shown in page, shown
    assert "Traceback" not in page
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["07_gaps"]["dev_rows"] == 12
    # the judge scored every candidate of the rows that passed the checks, each judgment parsed
    gaps_page = (run / "report" / "07_gaps.html").read_text()  # the review: in a saved page, the command
    edits = pd.read_parquet(run / "artifacts" / "edits.parquet")
    assert len(edits) and f"workbench iterate {run} --accept e1" in gaps_page
    filter_page = (run / "report" / "04_filter.html").read_text()  # the reject pile's drop-down, the card
    assert "updatemenus" in filter_page and "Dataset card" in filter_page and "Reject pile by reason" in filter_page
    judge_page = (run / "report" / "03_judge.html").read_text()
    assert "The judge on the answers" in judge_page and "judge_correctness_rationale" in judge_page
    assert metrics["03_judge"]["judged_candidates"] > 0 and metrics["03_judge"]["judge_unparsed"] == 0
    assert metrics["06_evaluate"]["test_rows"] == 24
    # the task's iterations page (written after the run; a failure there is only a warning in the log)
    index = (run.parent / "index.html").read_text()
    assert "tagger: seeds_synthetic slot F1" in index and run.name in index
