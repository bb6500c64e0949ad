"""Operating point on the validation split (objectives, calibration) and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from gd_provider.core.gates.uncertainty import paired_bootstrap
from gd_provider.core.tasks.operating_point import (
    OperatingPoint,
    OperatingPointError,
    check_objective,
    choose_operating_point,
    expected_calibration_error,
)


def _data(n=40000, rate=0.03, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(float)
    z = rng.normal(0, 1, n) + 2.2 * y
    raw = 1 / (1 + np.exp(-(0.8 * z + 1.0)))  # over-confident in the positive direction: flags far too many
    return y, raw


@pytest.mark.parametrize("budget", [0.01, 0.02, 0.05])
def test_fpr_budget_is_met_on_validation_with_the_best_recall(budget):
    y, raw = _data()
    op = choose_operating_point(y, raw, {"max_fpr": budget})
    pred = raw >= op.threshold
    fpr = np.sum(pred & (y == 0)) / np.sum(y == 0)
    assert fpr <= budget and op.validation["fpr"] == pytest.approx(fpr)
    # no threshold within the budget has a higher recall (brute force over every distinct score)
    best = max(np.sum((raw >= t) & (y == 1)) for t in np.unique(raw)
               if np.sum((raw >= t) & (y == 0)) / np.sum(y == 0) <= budget)
    assert np.sum(pred & (y == 1)) == best


def test_precision_target_and_cost_objectives():
    y, raw = _data()
    op = choose_operating_point(y, raw, {"min_precision": 0.5})
    assert op.validation["precision"] >= 0.5
    cheap_fn = choose_operating_point(y, raw, {"costs": {"fp": 1, "fn": 1}})
    dear_fn = choose_operating_point(y, raw, {"costs": {"fp": 1, "fn": 50}})
    assert dear_fn.threshold < cheap_fn.threshold  # missing fraud costs more: flag more
    rate = choose_operating_point(y, raw, {"target_positive_rate": 0.03})
    assert rate.validation["positive_rate"] <= 0.03 + 1e-9 and rate.validation["positive_rate"] > 0.025


@pytest.mark.parametrize("kind", ["platt", "isotonic", "temperature"])
def test_calibration_lowers_ece_and_round_trips(kind):
    y, raw = _data()
    op = choose_operating_point(y, raw, {"max_fpr": 0.02, "calibration": kind})
    assert op.validation["ece_after"] < op.validation["ece_before"]
    back = OperatingPoint.from_dict(op.to_dict())
    assert np.array_equal(back.decide(back.scores(raw)), op.decide(op.scores(raw)))
    assert expected_calibration_error(y, op.scores(raw)) == pytest.approx(op.validation["ece_after"])


@pytest.mark.parametrize("bad", [{"max_fpr": 0}, {"max_fpr": 1.5}, {"max_fpr": 0.1, "min_precision": 0.5},
                                 {"fpr": 0.1}, {"costs": {"fp": 1}}, {"max_fpr": 0.1, "calibration": "magic"}])
def test_bad_objectives_are_named(bad):
    with pytest.raises(OperatingPointError, match="operating_point"):
        check_objective(bad)


def test_an_unreachable_objective_says_so():
    y, raw = _data()
    raw[np.flatnonzero(y == 0)[:50]] = 0.9999999  # the 50 highest scores are negatives: precision stays low
    with pytest.raises(OperatingPointError, match="min_precision=0.999"):
        choose_operating_point(y, raw, {"min_precision": 0.999})


def test_bootstrap_counts_match_a_row_bootstrap_and_shrink_with_size():
    rng = np.random.default_rng(3)

    def make(n):
        y = (rng.random(n) < 0.1).astype(int)
        z = rng.normal(size=n) + 1.5 * y
        return y, (z > 1.0).astype(int), (z + rng.normal(scale=0.3, size=n) > 1.0).astype(int)

    y, dc, dh = make(5000)
    result = paired_bootstrap(y, dc, dh, resamples=2000, seed=1)
    # a plain row bootstrap of the FPR change gives the same interval (within Monte Carlo error)
    deltas = []
    for _ in range(2000):
        i = rng.integers(0, len(y), len(y))
        neg = y[i] == 0
        deltas.append(dh[i][neg].mean() - dc[i][neg].mean())
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    change = result.overall["change"]["fpr"]
    assert change.low == pytest.approx(lo, abs=0.003) and change.high == pytest.approx(hi, abs=0.003)
    widths = []
    for n in (2000, 8000, 32000):
        r = paired_bootstrap(*make(n), resamples=1000, seed=2).overall["change"]["fpr"]
        widths.append(r.high - r.low)
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.3) and widths[1] / widths[2] == pytest.approx(2.0, rel=0.3)
