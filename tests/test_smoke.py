"""The chain end to end: `workbench run configs/smoke.yaml` against the simulated endpoint with the
tiny model as judge, critic, refusal judge, namer and student (the session's shared smoke run,
`smoke_run` in conftest.py): every stage's artifacts, the report, its pages offline, and the test
split read by 06 alone."""

import json

import pandas as pd
import pytest

ARTIFACTS = [
    "seeds",
    "prompts",
    "candidates",
    "responses",
    "judged",
    "judgments",
    "scored_candidates",
    "pairs",
    "dataset",
    "evaluation",
    "ablation",
    "test_predictions",
    "failures",
    "clusters",
]


def runs_in(folder):
    return [p for p in folder.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_only_06_reads_the_test_split(smoke_run):
    """The test split never steers generation or failure analysis: of every process of the run,
    only 06_evaluate's kernel opens test.csv (and it does, so the audit itself is shown to work)."""
    log = smoke_run.audit
    opened = [line.split("\t") for line in log.read_text().splitlines()] if log.is_file() else []
    assert opened, "the audit hook saw no read of test.csv at all: it is not working"
    assert {stage for _, stage, _ in opened} == {"06_evaluate"}, opened


@pytest.mark.slow
def test_smoke_run_leaves_every_artifact(smoke_run):
    runs_dir, stdout = smoke_run.runs_dir, smoke_run.output
    [run] = runs_in(runs_dir / "smoke")
    assert f"run folder: {run}" in stdout and f"report:     {run / 'report.html'}" in stdout
    assert "IPKernelApp" not in stdout and "without encryption" not in stdout  # quiet: no kernel transport warning
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "finished" and prov["finished"]
    assert [s for s, v in prov["stages"].items() if v["status"] == "done"] == [
        "00_task",
        "01_prompts",
        "02_responses",
        "03_judge",
        "04_filter",
        "05_train",
        "06_evaluate",
        "07_gaps",
        "99_report",
    ]
    for name in ARTIFACTS:
        assert (run / "artifacts" / f"{name}.parquet").is_file(), name
    for student in ["seeds_only", "seeds_unfiltered", "seeds_synthetic"]:
        assert (run / "artifacts" / "students" / f"{student}.joblib").is_file()
    assert (run / "config.yaml").read_text().startswith("# Smoke config")

    rows = pd.read_parquet(run / "artifacts" / "dataset.parquet")
    generated = pd.read_parquet(run / "artifacts" / "prompts.parquet")
    assert len(rows) == len(generated) and generated["slot"].nunique() == 5 * 6  # marks, never drops
    m = json.loads((run / "metrics.json").read_text())["01_prompts"]
    assert m["target"] == 30 and m["kept"] + m["missing"] == 30 and m["kept"] == generated["keep_prompts"].sum()
    assert generated.loc[~generated["keep_prompts"], "reject_reason_prompts"].notna().all()
    assert m["critiques_parsed"] + m["critiques_unparseable"] > 0 and "contamination_dev" in m
    assert rows.loc[~rows["keep"], "reject_reason"].notna().all()
    assert {"model", "seed", "prompt_tokens", "completion_tokens", "latency_s", "ttft_s", "raw"} <= set(
        generated.columns
    )
    assert (generated["model"] == "sim").all() and generated["completion_tokens"].gt(0).all()  # the generator's

    metrics = json.loads((run / "metrics.json").read_text())
    table = pd.DataFrame(metrics["06_evaluate"]["table"])
    assert list(table["model"]) == [
        "probe: zero-shot",
        "causal: zero-shot",
        "probe: seeds_only",
        "probe: seeds_unfiltered",
        "probe: seeds_synthetic",
        "causal: sft",
        "causal: dpo",
        "causal: grpo",
        "probe: reference",
        "causal: reference",
    ]
    assert list(table["group"]).count("reference") == 2 and (table["test_rows"] == 5 * 4).all()
    assert table.set_index("model").loc[["causal: zero-shot", "causal: sft"], "refusal_rate"].between(0, 1).all()
    # 05: each causal method trained its steps and wrote an adapter, a merged model and a curve
    training = pd.read_parquet(run / "artifacts" / "training.parquet")
    causal = training[training["student"] == "causal"].set_index("model")
    assert list(causal.index) == ["sft", "dpo", "grpo", "reference"]
    assert list(causal["steps"]) == [3, 2, 2, 3]
    for name in causal.index:
        assert (run / "artifacts" / "causal" / name / "merged" / "config.json").is_file()
        assert (run / "artifacts" / "causal" / name / "adapter" / "adapter_config.json").is_file()
    assert causal.at["reference", "train_rows"] == 24
    # 06: safety before/after on 6 AdvBench instructions, and the contamination check
    safety = pd.read_parquet(run / "artifacts" / "safety.parquet")
    assert len(safety) == 6 * 5 and safety["reply"].notna().all() and safety["refused"].isin([True, False]).all()
    contam = metrics["06_evaluate"]["contamination"]
    assert contam["synthetic_rows"] == rows["keep"].sum() and contam["test_rows"] == 3080
    ablation = pd.DataFrame(metrics["06_evaluate"]["ablation"])
    assert not ablation["comparison"].str.contains("reference").any()
    # 02: the intended label and 3 blind model candidates per kept prompt, each with its metadata
    cands = pd.read_parquet(run / "artifacts" / "candidates.parquet")
    model = cands[cands["source"] == "model"]
    assert len(model) == 3 * m["kept"] and (cands["source"] == "intended_label").sum() == m["kept"]
    assert model["completion_tokens"].gt(0).all() and model["ttft_s"].notna().all() and model["seed"].notna().all()
    assert len((run / "artifacts" / "candidates.jsonl").read_text().splitlines()) == len(cands)
    assert model["response_label"].notna().all()  # the endpoint answers the option schema: {"choice": k}
    # 03: every kept prompt judged on the rubric and by the jury; 04: the exports
    judged = pd.read_parquet(run / "artifacts" / "judged.parquet")
    live = judged[judged["keep_prompts"]]
    assert live["jury_votes"].notna().all() and live["judge_correctness"].notna().all()
    assert set(live["reject_reason_judge"].dropna()) <= {"label_mismatch", "uncertain", "unparseable", "low_score"}
    assert "fleiss_kappa" in metrics["03_judge"]
    alpha = metrics["03_judge"]["krippendorff_alpha"]  # two rubric jurors on the smoke config
    assert set(alpha) == {"correctness", "formatting", "policy_compliance"} and all(
        -1 <= a <= 1 for a in alpha.values()
    )
    calib = pd.read_parquet(run / "artifacts" / "calibration.parquet")  # the judge's AUC on known rows
    calib = calib.set_index("judge")  # each model of the jury, and their mean; the endpoint scores every row
    assert list(calib.index) == ["llm", "tiny", "jury (mean)"] and calib.at["llm", "good"] == 8
    assert (calib["good"] + calib["bad"] + calib["unscored"] == 2 * 8).all()
    assert 0 <= metrics["03_judge"]["calibration_auc"] <= 1
    export = run / "artifacts" / "export"
    sft = export / "sft.jsonl"
    assert len(sft.read_text().splitlines()) == rows["keep"].sum() and (export / "hf").is_dir()
    assert "Licence of the seed examples" in (export / "README.md").read_text()
    assert table["accuracy"].between(0, 1).all() and (table["accuracy_lo"] <= table["accuracy"]).all()
    assert metrics["06_evaluate"]["test_rows"] == 5 * 20
    # 07: failures clustered and named, the config patch, and the task's lineage page
    g = metrics["07_gaps"]
    assert g["dev_rows"] == 5 * 8 and g["failures"] == sum(g["failures_by_source"].values())
    clusters = pd.read_parquet(run / "artifacts" / "clusters.parquet")
    assert clusters["name"].str.len().gt(0).all() and set(clusters["name_source"]) <= {"llm", "template"}
    assert clusters["size"].sum() == g["failures"]  # noise included, not hidden
    patch = (run / "artifacts" / "config_patch.yaml").read_text()
    assert patch.startswith("# Config patch proposed by 07_gaps") and g["edits"] == patch.count("\n- {")
    assert (runs_dir / "smoke" / "index.html").is_file()


@pytest.mark.slow
def test_smoke_report_is_offline_and_complete(smoke_run):
    runs_dir = smoke_run.runs_dir
    [run] = runs_in(runs_dir / "smoke")
    html = (run / "report.html").read_text()
    for heading in [
        "Before / after on the real test split",
        "Filter ablation",
        "Contamination check",
        "Safety before/after",
        "training curves (causal student)",
        "Candidates (02): throughput",
        "Judge and jury (03)",
        "Funnel and reject pile",
        "Failure clusters",
    ]:
        assert heading in html
    assert "probe: seeds_synthetic" in html
    assert "plotly.js v" in html  # plotly.js inline
    assert html.count("Plotly.newPlot") >= 6  # accuracy, contamination, safety, curves, funnel, cluster map
    assert "open_stage(" not in html  # code cells hidden
    for stage in ["00_task", "01_prompts", "02_responses", "03_judge", "04_filter", "06_evaluate", "07_gaps", "index"]:
        assert f"href='report/{stage}.html'" in html
        assert (run / "report" / f"{stage}.html").is_file()


@pytest.mark.slow
def test_stage_pages_show_no_info_line_no_warning_twice_and_their_time(smoke_run):
    """Each executed notebook: no INFO line and no repeated line among its stderr outputs, its log
    file in logs/, and its last cell's table of the estimate beside the time the stage took."""
    import nbformat

    runs_dir = smoke_run.runs_dir
    [run] = runs_in(runs_dir / "smoke")
    estimate = pd.read_parquet(run / "artifacts" / "estimate.parquet").set_index("stage")
    for nb_path in sorted((run / "notebooks").glob("*.ipynb")):
        stage = nb_path.stem
        nb = nbformat.read(nb_path, as_version=4)
        outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        err = [x for o in outs if o.get("name") == "stderr" for x in o["text"].splitlines() if x.strip()]
        assert not [x for x in err if " INFO " in x or x.startswith("INFO")], (stage, err)
        assert len(err) == len(set(err)), (stage, err)
        assert (run / "logs" / f"{stage}.log").is_file(), stage
        last = nb.cells[-1].outputs[0]["data"]["text/html"]
        assert "took / estimated" in last and stage in last, stage
        took = json.loads((run / "metrics.json").read_text())[stage]["timing"]["seconds"]
        assert took > 0 and stage in estimate.index
