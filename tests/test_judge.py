"""Judge, jury and pairs: agreement statistics on published examples, aggregation on fixed votes,
best/worst pairs with the margin, unparseable judge replies kept raw, the blind label jury."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scripted_llm import ScriptedLLM
from support import SEEDS, prompt_rows

from workbench import judge
from workbench.config import RunConfig


def test_fleiss_kappa_reproduces_the_published_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories → kappa 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert judge.fleiss_kappa(np.array(table)) == pytest.approx(0.210, abs=5e-4)
    assert judge.fleiss_kappa(np.array([[3, 0], [0, 3], [3, 0]])) == pytest.approx(1.0)


def test_krippendorff_alpha_reproduces_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, missing values
    nan = math.nan
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    assert judge.krippendorff_alpha(np.array(data), "nominal") == pytest.approx(0.743, abs=5e-4)
    assert judge.krippendorff_alpha(np.array(data), "interval") == pytest.approx(0.849, abs=5e-4)


def test_votes_aggregate_by_majority_or_mean_and_ties_abstain():
    p = [np.array([0.6, 0.4, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.9, 0.1])]
    votes = [judge.vote(x) for x in p]
    assert votes == [0, 1, 1]
    assert judge.aggregate(votes, p, "majority") == 1
    assert judge.aggregate([0, 1, None], p, "majority") is None  # 1 of 2 cast is not more than half
    assert judge.aggregate([0, 1, None], p, "mean") == 1  # mean of the two that voted: (0.3, 0.7, 0)
    close = [np.array([0.51, 0.49]), np.array([0.51, 0.49]), np.array([0.0, 1.0])]
    assert judge.aggregate([0, 0, 1], close, "majority") == 0 and judge.aggregate([0, 0, 1], close, "mean") == 1
    assert judge.vote(np.array([0.5, 0.5])) is None and judge.vote(np.zeros(3)) is None


def test_kappa_from_votes_uses_rows_where_every_juror_voted():
    votes = pd.DataFrame({"probe": ["a", "b", "a", "b"], "knn": ["a", "b", "a", None], "llm": ["a", "b", "a", "a"]})
    assert judge.kappa_from_votes(votes) == pytest.approx(1.0)
    votes.loc[2, "llm"] = "b"
    assert judge.kappa_from_votes(votes) < 1.0


def cands(scores):
    rows = []
    for pid, ss in scores.items():
        for k, s in enumerate(ss):
            rows.append({"prompt_id": pid, "id": f"{pid}/c{k}", "candidate": k, "prompt": "msg", "label": "a"})
            rows[-1].update(response_label=f"lab{k}", score=s)
    return pd.DataFrame(rows)


def test_best_and_worst_pairs_respect_the_margin():
    c = cands({"p1": [1.0, 0.0, 1.0], "p2": [1.0, 0.75, 1.0], "p3": [0.5, float("nan"), 0.0], "p4": [1.0, 1.0]})
    pairs = judge.preference_pairs(c, margin=0.5).set_index("prompt_id")
    assert pairs.loc["p1", "best_id"] == "p1/c0" and pairs.loc["p1", "worst_id"] == "p1/c1"
    assert pairs.loc["p1", "pair"] and pairs.loc["p1", "rejected"] == "lab1"
    assert not pairs.loc["p2", "pair"] and pd.isna(pairs.loc["p2", "worst_id"])  # margin 0.25 < 0.5
    assert pairs.loc["p3", "pair"] and pairs.loc["p3", "margin"] == 0.5  # the unscored candidate is skipped
    assert not pairs.loc["p4", "pair"]  # all equal: a best row, no pair
    assert judge.preference_pairs(c, margin=0.2).set_index("prompt_id").loc["p2", "pair"]


def test_unparseable_judge_replies_are_kept_raw_and_rejected(tmp_path):
    replies = {0: "4 - clearly about a card that has not arrived", 1: "I cannot rate this message."}
    llm = ScriptedLLM(lambda req, i: replies[i], tmp_path)
    cfg = RunConfig.model_validate({"task": {"labels": ["card_arrival", "lost_or_stolen_card"]}})
    cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"rubric": ["correctness"], "jury": []})})
    rows = prompt_rows(["Where is my card? It was due last week", "My card is late"], ["card_arrival"] * 2)
    out, judgments = judge.judge_rows(cfg, rows, pd.DataFrame(), SEEDS, llm, tmp_path)
    assert out.loc[0, "judge_correctness"] == 0.75 and out.loc[0, "keep_judge"]
    assert out.loc[0, "judge_correctness_rationale"] == "clearly about a card that has not arrived"
    assert out.loc[1, "reject_reason_judge"] == "unparseable" and not out.loc[1, "keep_judge"]
    assert judgments.loc[1, "raw"] == "I cannot rate this message." and math.isnan(judgments.loc[1, "score"])
    assert 'Message: "My card is late"' in llm.requests[1].messages[-1][1]
    assert "still has not arrived" in llm.requests[0].messages[-1][1]  # the label's real example anchors it


def test_the_jury_relabels_blind_and_rejects_a_label_mismatch(tmp_path):
    cfg = RunConfig.model_validate({"task": {"labels": ["card_arrival", "lost_or_stolen_card"]}})
    cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"rubric": [], "jury": ["probe", "knn", "llm"]})})
    rows = prompt_rows(
        ["My card was stolen from my bag this morning", "Has my new card been posted yet? Still not here"],
        ["card_arrival", "card_arrival"],  # the first is planted under the wrong label
    )
    c = pd.DataFrame(
        {"prompt_id": ["r0", "r0", "r1", "r1"], "source": "model"}
        | {"response_label": ["lost_or_stolen_card", "lost_or_stolen_card", "card_arrival", None]}
    )
    out, _ = judge.judge_rows(cfg, rows, c, SEEDS, ScriptedLLM(lambda r, i: "", tmp_path), tmp_path)
    assert json.loads(out.loc[0, "jury_votes"]) == dict.fromkeys(["probe", "knn", "llm"], "lost_or_stolen_card")
    assert out.loc[0, "reject_reason_judge"] == "label_mismatch" and out.loc[0, "jury_unanimous"]
    assert out.loc[1, "keep_judge"] and out.loc[1, "jury_label"] == "card_arrival"
    assert judge.juror_agreement(out).set_index("juror")["agrees_with_intended"].to_dict() == dict.fromkeys(
        ["probe", "knn", "llm"], 0.5
    )


def test_a_jury_of_different_judge_models_votes_labels_blind(tmp_path):
    """`judge.jury: [judges]`: each model of roles.judge names a label under the label list's schema;
    their votes are jurors beside each other, aggregated and measured like the others."""
    ep = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
    cfg = RunConfig.model_validate(
        {"task": {"labels": ["card_arrival", "lost_or_stolen_card"]}, "models": {"a": ep | {"model": "a"},
         "b": ep | {"model": "b"}}, "roles": {"judge": ["a", "b"]}, "judge": {"rubric": [], "jury": ["judges"]}}
    )  # fmt: skip
    rows = prompt_rows(["My card was stolen from my bag", "Has my new card been posted yet?"], ["card_arrival"] * 2)
    # model a reads the message; model b always says card_arrival
    a = ScriptedLLM(lambda r, i: json.dumps({"label": "lost_or_stolen_card" if "stolen from" in r.messages[-1][1]
                                                       else "card_arrival"}), tmp_path)  # fmt: skip
    b = ScriptedLLM(lambda r, i: json.dumps({"label": "card_arrival"}), tmp_path)
    out, _ = judge.judge_rows(cfg, rows, pd.DataFrame(), SEEDS, {"a": a, "b": b}, tmp_path)
    assert len(a.requests) == len(b.requests) == 2  # one blind call per message and model
    req = a.requests[0]
    assert req.strict and json.loads(req.schema)["properties"]["label"]["enum"] == ["card_arrival",
                                                                                   "lost_or_stolen_card"]  # fmt: skip
    assert "card_arrival" not in req.messages[-1][1].split("Categories")[0]  # not told the intended label
    assert json.loads(out.loc[0, "jury_votes"]) == {"judge:a": "lost_or_stolen_card", "judge:b": "card_arrival"}
    assert out.loc[0, "reject_reason_judge"] == "uncertain" and not out.loc[0, "jury_unanimous"]  # 1 against 1
    assert out.loc[1, "keep_judge"] and out.loc[1, "jury_label"] == "card_arrival" and out.loc[1, "jury_unanimous"]
    agree = judge.juror_agreement(out).set_index("juror")["agrees_with_intended"].to_dict()
    assert agree == {"judge:a": 0.5, "judge:b": 1.0}


def _pairwise_alpha(ratings, metric):
    """Krippendorff's alpha by its definition: every ordered pair of values (the old n × n form)."""
    r = np.asarray(ratings, dtype=float)
    units = [u[~np.isnan(u)] for u in r.T]
    units = [u for u in units if len(u) >= 2]

    def delta(a, b):
        return (a - b) ** 2 if metric == "interval" else (a != b).astype(float)

    n = sum(len(u) for u in units)
    d_o = sum(delta(u[:, None], u[None, :]).sum() / (len(u) - 1) for u in units) / n
    allv = np.concatenate(units)
    return 1 - d_o / (delta(allv[:, None], allv[None, :]).sum() / (n * (n - 1)))


@pytest.mark.parametrize("metric", ["interval", "nominal"])
def test_the_closed_form_alpha_equals_the_pairwise_definition(metric):
    rng = np.random.default_rng(0)
    r = rng.integers(1, 6, size=(3, 400)).astype(float)
    r[rng.random(r.shape) < 0.2] = np.nan  # missing votes, and some units left with one value
    assert judge.krippendorff_alpha(r, metric) == pytest.approx(_pairwise_alpha(r, metric), rel=1e-9)


def test_alpha_over_10000_rows_and_3_jurors_needs_no_n_by_n_matrix():
    import tracemalloc

    r = np.random.default_rng(1).integers(1, 6, size=(3, 10_000)).astype(float)
    tracemalloc.start()
    judge.krippendorff_alpha(r, "interval"), judge.krippendorff_alpha(r, "nominal")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6  # the pairwise form: 7 GB per temporary array
