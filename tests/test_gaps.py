"""Stage 07's second half and the loop: cluster names, the config patch, the next iteration, lineage."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scripted_llm import ScriptedLLM
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from workbench import clusters, driver, gaps, lineage, runs
from workbench.config import ConfigError, RunConfig, load_config, plan_counts
from workbench.driver import iterate
from workbench.runs import RunError

LABELS = ["card_arrival", "card_delivery_estimate", "exchange_rate", "top_up_failed"]


def cfg_for(**gaps_cfg) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": {"name": "t", "labels": LABELS},
            "data": {"dataset": "banking77", "seeds_per_label": 2, "dev_per_label": 2},
            "sampling": {"rows_per_label": 4},
            "gaps": gaps_cfg,
        }
    )


def planted(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two tight groups of dev failures: card_arrival read as card_delivery_estimate (8 rows) and
    exchange_rate read as top_up_failed (5 rows), plus 4 low-judge rows the jury agreed with."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []
    groups = [
        ("dev", "card_arrival", "card_delivery_estimate", 8, "where is my card, it has not come"),
        ("dev", "exchange_rate", "top_up_failed", 5, "what rate do you use to convert"),
        ("low_judge", "top_up_failed", "top_up_failed", 4, "top up money please"),
    ]
    for g, (source, true, pred, n, text) in enumerate(groups):
        centre = np.zeros(16)
        centre[g] = 10.0
        for i in range(n):
            rows.append(
                {"source": source, "id": f"{true}-{i}", "text": f"{text} #{i}", "label": true, "predicted": pred}
            )
            vecs.append(centre + rng.normal(0, 0.1, 16))
    v = np.array(vecs)
    return pd.DataFrame(rows), v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered_planted():
    failures, vectors = planted()
    out = clusters.cluster_failures(failures, vectors, PCA(2, random_state=0), KMeans(3, n_init=10, random_state=0))
    return out, clusters.summarize(out), vectors


SEEDS = pd.DataFrame(
    {
        "id": [f"s{i}" for i in range(8)],
        "label": [x for x in LABELS for _ in range(2)],
        "text": [
            "My card still hasn't arrived",
            "Card not here yet",
            "When will my card be delivered?",
            "How long does card delivery take?",
            "What exchange rate do you use?",
            "Is the rate good for euros?",
            "My top up failed",
            "Top up did not work",
        ],
    }
)


def test_failures_come_from_each_source_once():
    dev = pd.DataFrame({"id": ["d1", "d2", "d3"], "text": ["x", "y", "z"], "label": ["a", "b", "c"]})
    synthetic = pd.DataFrame(
        {
            "id": ["g1", "g2", "g3", "g4", "g5"],
            "text": ["low and relabelled", "relabelled, rejected", "fine", "not judged", "low only"],
            "label": ["a", "a", "b", "b", "c"],
            "keep": [True, False, True, False, True],
            "judge_score": [0.25, 0.75, 1.0, np.nan, 0.0],
            "jury_label": ["b", "c", "b", None, "c"],
        }
    )
    f = gaps.failures(cfg_for(), dev, ["a", "c", "a"], synthetic)
    assert list(zip(f["source"], f["id"], f["predicted"])) == [
        ("dev", "d2", "c"),
        ("dev", "d3", "a"),
        ("low_judge", "g1", "b"),
        ("low_judge", "g5", "c"),
        ("jury", "g2", "c"),
    ]
    only_dev = gaps.failures(cfg_for(sources=["dev"]), dev, ["a", "c", "a"], synthetic)
    assert set(only_dev["source"]) == {"dev"}
    assert list(gaps.failures(cfg_for(sources=["jury"]), dev, ["a", "c", "a"], synthetic)["id"]) == ["g1", "g2"]


def test_summary_names_each_cluster_by_its_most_common_confusion():
    out, summary, _ = clustered_planted()
    pairs = set(zip(summary["dominant_true"], summary["dominant_predicted"]))
    assert pairs == {
        ("card_arrival", "card_delivery_estimate"),
        ("exchange_rate", "top_up_failed"),
        ("top_up_failed", "top_up_failed"),
    }
    assert summary["exemplars"].map(len).between(3, 5).all() and summary["size"].sum() == len(out)


def test_cluster_names_come_from_the_llm_given_each_clusters_exemplars(tmp_path):
    _, summary, _ = clustered_planted()

    def reply(req, i):
        user = req.messages[-1][1]
        if "where is my card" in user:
            return '{"name": "Card not arrived yet", "description": "Customers waiting for a card."}'
        if "what rate" in user:
            return "Here is a possible title:\n\nConversion rate questions\nPeople ask how money is converted."
        return "ok"  # no usable name: the template names the cluster

    llm = ScriptedLLM(reply, tmp_path)
    named = gaps.name_clusters(cfg_for(), llm, summary).set_index("dominant_true")
    assert len(llm.requests) == 3  # one call per cluster, none for noise
    assert named.at["card_arrival", "name"] == "Card not arrived yet"
    assert named.at["card_arrival", "description"] == "Customers waiting for a card."
    assert named.at["exchange_rate", "name"] == "Conversion rate questions"
    assert named.at["exchange_rate", "description"] == "People ask how money is converted."
    assert (
        named.at["top_up_failed", "name_source"] == "template" and "top up failed" in named.at["top_up_failed", "name"]
    )
    sent = "\n".join(r.messages[-1][1] for r in llm.requests)
    assert all(t in sent for t in summary["exemplars"].explode())  # the LLM saw every exemplar


def test_noise_is_kept_and_never_sent_to_the_namer(tmp_path):
    out, _, _ = clustered_planted()
    out.loc[out.index[:3], "cluster"] = -1
    llm = ScriptedLLM(lambda req, i: '{"name": "some name here", "description": ""}', tmp_path)
    named = gaps.name_clusters(cfg_for(), llm, clusters.summarize(out))
    assert named.loc[named["cluster"] == -1, "name"].tolist() == ["noise"] and len(llm.requests) == 3


@pytest.mark.parametrize(
    "text,parsed,expected",
    [
        ('{"name": "Late cards", "description": "x"}', {"name": "Late cards", "description": "x"}, ("Late cards", "x")),
        (
            'Title: "Transfers: What to Expect"\nSentence: about transfers',
            None,
            ("Transfers: What to Expect", "about transfers"),
        ),
        ("Verifying Identity: A Guide", None, ("Verifying Identity: A Guide", "")),
        ("ok", None, None),
        ("", None, None),
        ("word " * 30, None, None),
    ],
)
def test_parse_name(text, parsed, expected):
    assert gaps.parse_name(text, parsed) == expected


def test_a_planted_confusion_yields_edits_with_their_evidence():
    out, summary, vectors = clustered_planted()
    kept = pd.DataFrame({"label": ["card_arrival", "exchange_rate"]})
    far = np.vstack([-np.eye(16)[0], np.eye(16)[1]])  # nothing generated near card_arrival; exchange_rate covered
    edits = gaps.propose(cfg_for(), out, summary, SEEDS, {x: 10 for x in LABELS}, vectors, kept, far)
    by = {(e.kind, e.label): e for e in edits.itertuples()}
    # the larger confusion first, every kind of edit for it
    assert list(edits["label"][:4]) == ["card_arrival"] * 4 and list(edits["id"]) == [
        f"e{i + 1}" for i in range(len(edits))
    ]
    assert (
        by["more_rows", "card_arrival"].value == 4
        and by["more_rows", "card_arrival"].path == "sampling.extra_rows.card_arrival"
    )
    assert by["contrast", "card_arrival"].value == [
        "When will my card be delivered?",
        "How long does card delivery take?",
    ]
    assert "card delivery estimate" in by["definition", "card_arrival"].value
    assert len(by["phrasing", "card_arrival"].value) == 3  # dev rows far from every generated row of the label
    assert ("phrasing", "exchange_rate") not in by  # the generator already wrote rows like these
    ev = by["more_rows", "card_arrival"].evidence
    assert "8 failures (8 dev)" in ev and "8 of 10 dev rows of card_arrival misread, 8 as card_delivery_estimate" in ev
    assert not (edits["label"] == "top_up_failed").any()  # weak rows the jury agreed with: shown, no edit
    assert len(gaps.propose(cfg_for(max_edits=2), out, summary, SEEDS, {}, vectors, kept, far)) == 2
    assert "phrasing" not in set(gaps.propose(cfg_for(), out, summary, SEEDS, {})["kind"])  # no vectors: not proposed


def test_patch_round_trips_and_selection_checks_ids(tmp_path):
    out, summary, vectors = clustered_planted()
    edits = gaps.propose(cfg_for(), out, summary, SEEDS, {x: 5 for x in LABELS})
    text = gaps.patch_yaml(edits, "001-x")
    assert text.startswith("# Config patch proposed by 07_gaps from run 001-x.")
    assert "# e1 · more_rows · cluster" in text
    (tmp_path / "p.yaml").write_text(text)
    back = gaps.load_patch(tmp_path / "p.yaml")
    assert [e["id"] for e in back] == list(edits["id"]) and back[1]["value"] == edits["value"][1]
    assert [e["id"] for e in gaps.select(back, ["e2"], False)] == ["e2"]
    with pytest.raises(ConfigError, match=r"unknown edit ids \['e99'\]"):
        gaps.select(back, ["e99"], False)
    (tmp_path / "bad.yaml").write_text("edits:\n- {id: e1, kind: delete_everything, label: x}\n")
    with pytest.raises(ConfigError, match="bad.yaml: edit 1 needs id, kind"):
        gaps.load_patch(tmp_path / "bad.yaml")


def finished_run(root, name="001-20261122-000000", patch_edits=None) -> "Path":  # noqa: F821
    """A run folder as 07 leaves it (config, provenance, patch), without running the stages."""
    run = root / "t" / name
    (run / "artifacts").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "# my notes survive\ntask:\n  name: t\n  labels: null\ndata:\n  dataset: banking77\nsampling:\n  rows_per_label: 4\n"
    )
    prov = {"run": name, "status": "finished", "parent": None, "stages": {"07_gaps": {"status": "done"}}}
    (run / "provenance.json").write_text(json.dumps(prov))
    edits = pd.DataFrame(patch_edits, columns=gaps.EDIT_COLUMNS)
    (run / "artifacts" / "config_patch.yaml").write_text(gaps.patch_yaml(edits, name))
    return run


EDITS = [
    {"id": "e1", "kind": "more_rows", "cluster": 0, "label": "card_arrival", "other": "card_delivery_estimate",
     "path": "sampling.extra_rows.card_arrival", "value": 4, "evidence": "planted"},
    {"id": "e2", "kind": "definition", "cluster": 0, "label": "card_arrival", "other": "card_delivery_estimate",
     "path": "task.labels.card_arrival.definition", "value": "not a delivery estimate", "evidence": "planted"},
    {"id": "e3", "kind": "contrast", "cluster": 0, "label": "card_arrival", "other": "card_delivery_estimate",
     "path": "task.labels.card_arrival.negative", "value": ["When will my card come?"], "evidence": "planted"},
]  # fmt: skip


def test_iterate_makes_the_next_numbered_run_with_the_accepted_edits(tmp_path):
    parent = finished_run(tmp_path, patch_edits=EDITS)
    run = iterate(parent, ["e1", "e2"])
    assert run.parent == parent.parent and run.name.startswith("002-")
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["parent"] == parent.name and prov["patch"]["accepted"] == ["e1", "e2"]
    text = (run / "config.yaml").read_text()
    assert text.startswith(f"# Iteration after {parent.name}: edits e1, e2") and "# my notes survive" in text
    cfg, _ = load_config(run / "config.yaml")
    labels = cfg.task.label_names()
    assert len(labels) == 77  # null became the dataset's labels, so one of them can carry a definition
    assert cfg.task.label("card_arrival").definition == "not a delivery estimate"
    assert cfg.task.label("card_arrival").negative == []  # e3 was not accepted
    counts = plan_counts(cfg, labels)
    assert counts["card_arrival"] == 8 and counts["exchange_rate"] == 4
    assert lineage.chain(run) == [parent, run]
    diff = lineage.config_diff(parent, run).set_index("field")
    assert diff.at["sampling.extra_rows.card_arrival", "after"] == "4"
    assert diff.at["task.labels.card_arrival.definition", "after"] == "not a delivery estimate"
    again = iterate(parent, accept_all=True)  # another choice from the same parent: the next number
    assert again.name.startswith("003-")
    assert json.loads((again / "provenance.json").read_text())["patch"]["accepted"] == ["e1", "e2", "e3"]


def test_iterate_refuses_what_it_cannot_do(tmp_path):
    parent = finished_run(tmp_path, patch_edits=EDITS)
    with pytest.raises(RunError, match="no edit accepted"):
        iterate(parent, [])
    with pytest.raises(ConfigError, match="unknown edit ids"):
        iterate(parent, ["e7"])
    prov = json.loads((parent / "provenance.json").read_text())
    prov["stages"] = {}
    (parent / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(RunError, match="07_gaps has not finished"):
        iterate(parent, accept_all=True)
    assert [p.name for p in (tmp_path / "t").iterdir()] == [parent.name]  # nothing half-made


def test_cli_iterate_needs_a_choice(tmp_path):
    parent = finished_run(tmp_path, patch_edits=EDITS)
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "iterate", str(parent)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "--accept e1,e2" in proc.stderr and "--accept-all" in proc.stderr


def predictions_run(root, name, parent, correct: np.ndarray, failures: pd.DataFrame) -> "Path":  # noqa: F821
    run = root / "t" / name
    (run / "artifacts").mkdir(parents=True)
    (run / "config.yaml").write_text("task:\n  name: t\n")
    (run / "provenance.json").write_text(json.dumps({"parent": parent, "status": "finished", "patch": {
        "accepted": ["e1"], "edits": [{"id": "e1", "kind": "more_rows", "label": "<script>alert(1)</script>",
                                       "path": "p", "value": 1, "evidence": "x"}]}}))  # fmt: skip
    n = len(correct)
    labels = np.array(["a", "b"] * (n // 2))
    pred = np.where(correct, labels, "z")
    pd.DataFrame({"id": [str(i) for i in range(n)], "label": labels, "pred: probe: seeds_synthetic": pred}).to_parquet(
        run / "artifacts" / "test_predictions_all.parquet"
    )
    failures.to_parquet(run / "artifacts" / "failures.parquet")
    summary = pd.DataFrame(
        {"cluster": [0], "name": ["<img src=x onerror=alert(1)>"], "dominant_true": ["a"], "dominant_predicted": ["z"]}
    )
    summary.to_parquet(run / "artifacts" / "clusters.parquet")
    return run


def test_lineage_reports_the_paired_change_and_the_clusters_that_shrank(tmp_path):
    rng = np.random.default_rng(0)
    before = rng.random(400) < 0.6
    after = before | (rng.random(400) < 0.5)  # fixes about half of the wrong rows, breaks none
    f = pd.DataFrame({"source": ["dev"] * 6, "label": ["a"] * 6, "predicted": ["z"] * 6, "text": ["t"] * 6})
    a = predictions_run(tmp_path, "001-x", None, before, f)
    b = predictions_run(tmp_path, "002-x", "001-x", after, f.head(2))
    ev = lineage.eval_diff(a, b, 500).set_index("model").loc["probe: seeds_synthetic"]
    assert ev["test_rows"] == 400 and ev["change"] == pytest.approx(after.mean() - before.mean())
    assert 0 < ev["change_lo"] < ev["change"] < ev["change_hi"] and ev["verdict"] == "rose"
    cd = lineage.cluster_diff(a, b)
    assert cd[["before", "after", "trend"]].values.tolist() == [[6, 2, "shrank"]]
    pl = lineage.per_label_diff(a, b)
    assert set(pl["label"]) == {"a", "b"} and (pl["change"] >= 0).all()
    page = lineage.write_index(tmp_path / "t").read_text()
    assert "001-x → 002-x" in page and "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_an_iteration_carries_the_rows_of_the_iterations_before_it(tmp_path):
    from workbench.stage import Stage

    def run(name, parent, ids, carried=None):
        r = tmp_path / "t" / name
        (r / "artifacts").mkdir(parents=True)
        (r / "provenance.json").write_text(json.dumps({"parent": parent}))
        df = pd.DataFrame({"id": ids, "text": ids, "label": "a", "keep": [i % 2 == 0 for i in range(len(ids))]})
        df["carried_from"] = carried
        df.to_parquet(r / "artifacts" / "dataset.parquet")
        return r

    run("001-x", None, ["g1", "g2"])
    run("002-x", "001-x", ["g1", "001-x/g1", "001-x/g2"], carried=[None, "001-x", "001-x"])
    third = tmp_path / "t" / "003-x"
    (third / "artifacts").mkdir(parents=True)
    (third / "provenance.json").write_text(json.dumps({"parent": "002-x"}))
    rows = Stage("04_filter", cfg_for(), third).earlier_rows()
    # each ancestor's own rows once (002's copies of 001's rows are not counted twice), verdicts kept
    assert sorted(rows["id"]) == ["001-x/g1", "001-x/g2", "002-x/g1"]
    assert rows.set_index("id").loc["001-x/g2", "keep"] == False  # noqa: E712
    assert set(rows["carried_from"]) == {"001-x", "002-x"}


def test_iterate_on_a_moved_run_and_on_a_busy_one(tmp_path):
    parent = finished_run(tmp_path / "orig", patch_edits=EDITS)
    moved = tmp_path / "elsewhere" / "copy-of-run"
    moved.parent.mkdir()
    parent.rename(moved)
    run = driver.iterate(moved, ["e1"])
    assert run.parent == moved.parent and run.name.startswith("001-")  # beside it, not two levels up
    assert runs.ancestors(run) == [moved]
    lock = runs.RunLock(moved)
    assert lock.acquire()
    try:  # another process holds it (a second lock object on the same folder stands for it)
        with pytest.raises(runs.RunError, match="another process is executing it"):
            driver.iterate(moved, ["e1"])
    finally:
        lock.release()


def test_index_pairs_the_exact_match_of_tool_call_answers_on_the_same_rows(tmp_path):
    """Tool calls and extraction have no labels to pair: the iterations page pairs whether each
    answer on the same test row is exactly right (06's test_answers), as accuracy is paired."""
    import json

    from workbench import lineage

    gold = [("GetWeather", {"city": "Oslo"}), ("RateBook", {"rating_value": "5"}),
            ("GetWeather", {"city": "Bergen"}), ("RateBook", {"object_name": "Dune"})]  # fmt: skip
    wrong = {"tool": "GetWeather", "arguments": {"city": "Paris"}}
    runs = {}
    for name, right in (("001-a", [0, 1]), ("002-b", [0, 1, 2, 3])):
        art = tmp_path / name / "artifacts"
        art.mkdir(parents=True)
        said = [json.dumps({"tool": t, "arguments": a} if i in right else wrong) for i, (t, a) in enumerate(gold)]
        pd.DataFrame({"id": [f"t{i}" for i in range(4)], "text": "x", "tool": [t for t, _ in gold],
                      "arguments": [json.dumps(a) for _, a in gold], "answer: causal: sft": said}).to_parquet(
            art / "test_answers.parquet")  # fmt: skip
        runs[name] = tmp_path / name
    diff = lineage.eval_diff(runs["001-a"], runs["002-b"], bootstrap=200).set_index("model")
    row = diff.loc["causal: sft"]
    assert row["test_rows"] == 4 and row["before"] == 0.5 and row["after"] == 1.0 and row["change"] == 0.5


def test_index_pairs_each_students_wins_against_the_untuned_model_on_the_same_inputs(tmp_path):
    from workbench import lineage

    for name, outcomes in (("001-a", ["rejected", "position", "rejected", "chosen"]),
                           ("002-b", ["chosen", "chosen", "position", "chosen"])):  # fmt: skip
        art = tmp_path / name / "artifacts"
        art.mkdir(parents=True)
        pd.DataFrame({"model": "sft", "row": [f"test-{i}" for i in range(4)], "outcome": outcomes}).to_parquet(
            art / "wins.parquet"
        )
    row = lineage.win_diff(tmp_path / "001-a", tmp_path / "002-b", bootstrap=200).set_index("model").loc["sft"]
    assert row["test_rows"] == 4 and row["before"] == 0.375 and row["after"] == 0.875 and row["change"] == 0.5
    assert row["change_lo"] > 0 and row["verdict"] == "rose"
