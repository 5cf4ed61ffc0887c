"""The filter ablation's paired differences in accuracy."""

import math

import numpy as np
import pandas as pd
import pytest

from workbench import evaluate


def test_paired_delta_is_the_difference_on_the_same_rows_with_an_interval_around_it():
    y = np.array(["a", "b", "a", "b"] * 50)
    a = y.copy()
    b = y.copy()
    b[:40] = "x"  # b is wrong on 40 of 200 rows, a on none
    delta, lo, hi = evaluate.paired_delta(y, a, b, n=500, seed=0)
    assert delta == pytest.approx(0.2) and lo < delta < hi and lo > 0
    same, lo0, hi0 = evaluate.paired_delta(y, a, a, n=500)
    assert same == 0 and lo0 == hi0 == 0  # identical predictions: no difference on any resample
    assert math.isnan(evaluate.paired_delta(y, a, b, n=0)[1])


def test_ablation_compares_the_students_that_ran():
    y = np.array(["a", "b"] * 10)
    preds = {"probe: seeds_only": y, "probe: seeds_synthetic": np.array(["a"] * 20)}
    t = evaluate.ablation(y, preds, n=100)
    assert list(t["comparison"]) == ["seeds + filtered − seeds only"] and t["delta_accuracy"].iloc[0] == -0.5


def test_contamination_counts_planted_copies(tmp_path):
    from workbench.config import load_config

    cfg, _ = load_config("configs/smoke.yaml")
    test = pd.DataFrame(
        {
            "id": ["t1", "t2", "t3"],
            "text": [
                "My card has not arrived yet, when will it come?",
                "What exchange rate do you use for euros?",
                "Why was I charged for a cash withdrawal?",
            ],
        }
    )
    synthetic = pd.DataFrame(
        {
            "id": ["s1", "s2", "s3"],
            "text": [
                "my card has NOT arrived yet when will it come",  # exact after normalization
                "What exchange rate do you use for euros today?",  # near-duplicate
                "How do I top up with Apple Pay?",  # unrelated
            ],
        }
    )
    summary, rows = evaluate.contamination(cfg, synthetic, test, tmp_path, real=test.iloc[:1])
    assert summary["synthetic_rows"] == 3 and summary["exact"] == 1 and summary["near_duplicates"] == 2
    syn = rows[rows["source"] == "synthetic"].set_index("id")
    assert syn.at["s1", "nearest_test_cosine"] > 0.95 and syn.at["s3", "nearest_test_cosine"] < 0.8
    assert syn.at["s2", "nearest_test_text"] == test.at[1, "text"]
    assert summary["real_cosine_p50"] > 0.99  # a real row is its own nearest test row here
