"""Operating points, intervals and slices beyond the binary task (issue 13).

* multiclass: argmax, or per-class thresholds (fixed, or chosen on validation for a minimum precision or a
  false-positive-rate budget per class) with a fallback class; the gate's metrics and flip rate at each model's
  own rule;
* regression: a declared business tolerance (``within_tolerance``, and a flip = a prediction moving by more than
  it); a champion trained without one is judged by the challenger's;
* paired bootstrap intervals and slices for every task (the generic path), judged like the binary ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.gate import GateConfigError, GatePolicy
from gd_provider.core.gates.release import decide_release
from gd_provider.core.gates.uncertainty import task_bootstrap
from gd_provider.core.tasks import TaskError, get_task
from gd_provider.core.training.spec import SpecError, TrainingSpec

CLASSES = ["ok", "late", "lost"]
MULTI = get_task("multiclass", {"classes": CLASSES})
REG = get_task("regression")


def _proba(n: int, seed: int, sharpness: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.7, 0.2, 0.1])
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += sharpness
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y.astype(np.float32), e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ multiclass
def test_multiclass_objectives_are_checked_naming_the_field():
    assert MULTI.check_operating_point({}) == {"argmax": True}
    assert MULTI.check_operating_point({"class_thresholds": {"late": 0.6}}) == {"class_thresholds": {"late": 0.6}}
    with pytest.raises(TaskError, match=r"operating_point.class_thresholds: 'gone' is not one of the classes"):
        MULTI.check_operating_point({"class_thresholds": {"gone": 0.5}})
    with pytest.raises(TaskError, match=r"operating_point.min_precision.late: must be a number in \(0, 1\)"):
        MULTI.check_operating_point({"min_precision": {"late": 1.5}})
    with pytest.raises(TaskError, match="every class has a threshold: name the class"):
        MULTI.check_operating_point({"class_thresholds": {"ok": 0.3, "late": 0.3, "lost": 0.3}})
    with pytest.raises(TaskError, match=r"unknown key\(s\) \['max_fpr_total'\]"):
        MULTI.check_operating_point({"max_fpr_total": 0.1})
    with pytest.raises(TaskError, match="give exactly one objective"):
        MULTI.check_operating_point({"class_thresholds": {"late": 0.5}, "min_precision": {"lost": 0.5}})
    # the training spec refuses it at parse time, naming the field: a multiclass FPR budget is per class
    with pytest.raises(SpecError, match=r"'operating_point': task 'multiclass', operating_point.max_fpr: give "
                                        r"\{class: number\} for some of \['ok', 'late', 'lost'\], got 0.1"):
        TrainingSpec(numeric_features=["a"], categorical_features=[], label="y", timestamp_column="ts",
                     task="multiclass", task_options={"classes": CLASSES},
                     operating_point={"max_fpr": 0.1}).validate()


def test_per_class_thresholds_decide_only_when_the_class_is_confident_enough():
    proba = np.array([[0.5, 0.45, 0.05],   # late below its threshold: ok
                      [0.2, 0.75, 0.05],   # late above: late
                      [0.1, 0.3, 0.6],     # lost (no threshold) wins by argmax
                      [0.34, 0.33, 0.33]])
    rule = {"class_thresholds": {"late": 0.7}}
    assert MULTI.decisions(proba).tolist() == [0, 1, 2, 0]
    assert MULTI.decisions(proba, rule).tolist() == [0, 1, 2, 0]
    rule = {"class_thresholds": {"late": 0.7, "ok": 0.6, "lost": 0.7}, "fallback_class": "ok"}
    assert MULTI.decisions(proba, rule).tolist() == [0, 1, 0, 0]  # row 3: nobody confident: the fallback
    assert MULTI.decisions(proba, 0.5).tolist() == [0, 1, 2, 0]  # a binary threshold means nothing here: argmax


def test_a_per_class_precision_target_is_met_on_validation_and_judged_at_the_rule_on_the_holdout():
    y_val, p_val = _proba(6000, seed=1)
    rule = MULTI.choose_operating_point(y_val, p_val, {"min_precision": {"late": 0.85}})
    assert set(rule["class_thresholds"]) == {"late"}
    assert rule["validation"]["precision_late"] >= 0.85
    argmax_precision = MULTI.gate_metrics(y_val, p_val)["precision_late"]
    assert argmax_precision < 0.85  # the rule is what made it precise
    y, p = _proba(6000, seed=2)
    at_rule = MULTI.gate_metrics(y, p, rule)
    assert at_rule["precision_late"] > argmax_precision and at_rule["recall_late"] < MULTI.gate_metrics(y, p)[
        "recall_late"]
    # the gate: each model at its own rule; the flip rate counts rows whose class changes
    policy = GatePolicy.from_dict({"value_thresholds": {"accuracy": 0.3}, "max_abs_regression": {"precision_late": 0.02},
                                   "bootstrap": "bless_if_value_thresholds_pass"}, task=MULTI)
    d = decide_release(MULTI, policy, y, p, p, challenger_threshold=None, champion_threshold=rule)
    assert not d.blessed  # the challenger serves at argmax: 'late' precision falls back far below the champion's
    assert any(r.startswith("precision_late") and r.endswith("FAIL") for r in d.reasons)
    expected_flips = float(np.mean(MULTI.decisions(p) != MULTI.decisions(p, rule)))
    assert d.challenger_metrics["flip_rate"] == pytest.approx(expected_flips) and expected_flips > 0
    assert d.operating_points["champion"] == {"class_thresholds": rule["class_thresholds"], "fallback_class": None}
    no_lost = y_val != 2
    with pytest.raises(TaskError, match=r"operating_point.min_precision.lost: the validation split needs rows of "
                                        r"class 'lost'"):
        MULTI.choose_operating_point(y_val[no_lost], p_val[no_lost], {"min_precision": {"lost": 0.9}})


# ------------------------------------------------------------------------------------------------ regression
def test_a_regression_tolerance_gives_within_tolerance_and_flips_and_is_the_business_s():
    with pytest.raises(TaskError, match=r"operating_point.tolerance.abs: must be a number >= 0"):
        REG.check_operating_point({"tolerance": {"abs": -1}})
    with pytest.raises(TaskError, match="abs and rel are both 0"):
        REG.check_operating_point({"tolerance": {"abs": 0}})
    rng = np.random.default_rng(3)
    y = rng.normal(100, 10, 4000)
    good = y + rng.normal(0, 1.0, len(y))
    bad = y + rng.normal(0, 3.0, len(y))
    rule = REG.choose_operating_point(y, good, {"tolerance": {"abs": 2.0}})
    assert rule["tolerance"] == {"abs": 2.0, "rel": 0.0}
    assert rule["validation"]["within_tolerance"] == pytest.approx(np.mean(np.abs(good - y) <= 2.0))
    assert "within_tolerance" not in REG.gate_metrics(y, good)  # no tolerance: not measured
    policy = GatePolicy.from_dict({"value_thresholds": {"r2": 0.5}, "max_abs_regression": {"within_tolerance": 0.05},
                                   "bootstrap": "bless_if_value_thresholds_pass"}, task=REG)
    # the champion was trained without a tolerance: it is measured with the challenger's
    d = decide_release(REG, policy, y, bad, good, challenger_threshold=rule, champion_threshold=None)
    assert not d.blessed
    assert d.champion_metrics["within_tolerance"] == pytest.approx(np.mean(np.abs(good - y) <= 2.0))
    assert d.challenger_metrics["flip_rate"] == pytest.approx(np.mean(np.abs(bad - good) > 2.0))
    d = decide_release(REG, policy, y, good, good + rng.normal(0, 0.01, len(y)), challenger_threshold=rule)
    assert d.blessed, d.reasons


# ------------------------------------------------------------------------------------- intervals and slices
def test_intervals_and_slices_work_for_every_task_and_name_the_failing_slice():
    rng = np.random.default_rng(4)
    n = 3000
    y = rng.normal(50, 5, n)
    region = np.where(np.arange(n) % 3 == 0, "north", "south")
    champion = y + rng.normal(0, 1.0, n)
    challenger = champion.copy()
    north = region == "north"
    challenger[north] = y[north] + rng.normal(0, 4.0, north.sum())  # worse in one region only
    holdout = pd.DataFrame({"region": region})
    policy = GatePolicy.from_dict({
        "value_thresholds": {"r2": 0.3}, "max_rel_regression": {"rmse": 2.0},
        "bootstrap": "bless_if_value_thresholds_pass",
        "interval": {"confidence": 0.9, "resamples": 200, "judge": "worst_end"},
        "slices": {"columns": ["region"], "min_rows": 100, "max_abs_regression": {"mae": 0.5}},
    }, task=REG)
    d = decide_release(REG, policy, y, challenger, champion, holdout=holdout, champion_version="3")
    assert not d.blessed
    assert d.slices["failed"] == ["region=north"]
    assert any(r.startswith("slice region=north") and "mae" in r and r.endswith("FAIL") for r in d.reasons)
    rmse = d.intervals["change"]["rmse"]
    assert rmse["low"] < rmse["value"] < rmse["high"]


def test_equal_models_are_not_rejected_on_the_worse_interval_end_and_intervals_shrink_with_rows():
    widths = []
    for n in (1000, 4000):
        y, p = _proba(n, seed=5)
        rng = np.random.default_rng(6)
        noise = np.abs(p + rng.normal(0, 0.02, p.shape))
        q = noise / noise.sum(axis=1, keepdims=True)
        boot = task_bootstrap(MULTI, y, p, q, resamples=300, confidence=0.9, seed=1)
        iv = boot.overall["change"]["accuracy"]
        widths.append(iv.high - iv.low)
        assert iv.low <= 0 <= iv.high or abs(iv.value) < 0.01
    assert widths[1] == pytest.approx(widths[0] / 2, rel=0.35)


def test_slice_bounds_name_metrics_of_the_task():
    with pytest.raises(GateConfigError, match=r"slices.worst_slice_floor: metric 'fpr' is not a slice metric"):
        GatePolicy.from_dict({"value_thresholds": {"accuracy": 0.3},
                              "slices": {"columns": ["c"], "worst_slice_floor": {"fpr": 0.1}}}, task=MULTI)
