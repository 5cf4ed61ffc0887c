"""The filter ablation's paired differences in accuracy."""

import math

import numpy as np
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
