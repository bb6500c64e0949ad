"""The release-side checks go through the task: the gate's metrics, the smoke test's score checks, the label
checks of validation (real Great Expectations) and of the champion profile, and the config errors that name
the task and the field when a check does not fit the task."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from gd_provider.core.gate import (  # noqa: E402
    HIGHER_IS_BETTER,
    SMOKE_DEFAULTS,
    GateConfigError,
    GatePolicy,
    decide,
    smoke_option_problems,
)
from gd_provider.core.profile import Tolerances, profile_dataframe, profile_expectations, tolerance_problems  # noqa: E402
from gd_provider.core.quality import ValidationConfigError, default_expectations, validate_dataframe  # noqa: E402
from gd_provider.core.tasks import get_task  # noqa: E402
from gd_provider.dag_factory import ConfigError, build_retraining_dag, load_config  # noqa: E402

FRAUD = Path(__file__).resolve().parents[2] / "dags" / "configs" / "fraud_detector.yaml"
REGRESSION = get_task("regression")
MULTICLASS = get_task("multiclass", {"classes": ["ok", "late", "lost"]})
BINARY = get_task("binary")


# ----------------------------------------------------------------------------------------------- the gate
def test_binary_remains_the_default_and_keeps_its_directions():
    today = {"roc_auc": True, "pr_auc": True, "precision": True, "recall": True, "f1": True,
             "fpr": False, "log_loss": False, "ece": False, "positive_rate": False, "flip_rate": False}
    assert today == HIGHER_IS_BETTER == dict(BINARY.metrics)
    policy = GatePolicy.from_dict({"value_thresholds": {"roc_auc": 0.7}})
    assert policy == GatePolicy.from_dict({"value_thresholds": {"roc_auc": 0.7}}, task=BINARY)
    with pytest.raises(GateConfigError, match=r"value_thresholds: metric 'rmse' is not a binary metric; binary "
                                              r"metrics are \['ece', 'f1', 'flip_rate', 'fpr', 'log_loss'"):
        GatePolicy.from_dict({"value_thresholds": {"rmse": 0.7}})


def test_regression_gate_on_rmse_and_r2_with_change_bounds():
    policy = GatePolicy.from_dict({"value_thresholds": {"rmse": 2.0, "r2": 0.5},
                                   "max_abs_regression": {"rmse": 0.1}, "max_rel_regression": {"r2": 0.05}},
                                  task=REGRESSION)
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    good = REGRESSION.gate_metrics(y, y + np.array([0.1, -0.1, 0.1, -0.1, 0.1, -0.1]))
    champion = REGRESSION.gate_metrics(y, y + 0.05)
    first = decide(good, None, policy, task=REGRESSION)
    assert first.blessed and "rmse 0.1000 <= 2.0000: pass" in first.reasons[0]  # lower is better: <=
    assert "r2 0.9966 >= 0.5000: pass" in first.reasons[1]
    # rmse 0.05 -> 0.1 is a worsening of 0.05, within 0.1; r2 loses < 1 %: blessed
    assert decide(good, champion, policy, champion_version="4", task=REGRESSION).blessed
    worse = REGRESSION.gate_metrics(y, y + np.array([0.9, -0.9, 0.9, -0.9, 0.9, -0.9]))
    d = decide(worse, champion, policy, champion_version="4", task=REGRESSION)
    assert not d.blessed
    assert any(r.startswith("rmse 0.9000 vs champion v4 0.0500") and r.endswith("FAIL") for r in d.reasons)
    assert any(r.startswith("r2 ") and "relative worsening" in r and r.endswith("FAIL") for r in d.reasons)
    # directions may be given as a mapping too
    assert not decide(worse, champion, policy, champion_version="4", task=dict(REGRESSION.metrics)).blessed
    # without the task the policy is a binary one, and refused
    with pytest.raises(GateConfigError, match="'rmse' is not a binary metric"):
        decide(good, champion, policy)


def test_multiclass_gate_on_accuracy_macro_f1_and_a_class_recall():
    policy = GatePolicy.from_dict({"value_thresholds": {"accuracy": 0.6, "recall_late": 0.5},
                                   "max_abs_regression": {"macro_f1": 0.05}}, task=MULTICLASS)
    y = np.array([0, 0, 1, 1, 2, 2], dtype=np.float32)
    right = np.eye(3)[[0, 0, 1, 1, 2, 2]] * 0.8 + 0.2 / 3
    misses_late = np.eye(3)[[0, 0, 0, 0, 2, 2]] * 0.8 + 0.2 / 3
    champion = MULTICLASS.gate_metrics(y, right)
    assert champion["accuracy"] == 1.0 and champion["recall_late"] == 1.0
    assert decide(champion, champion, policy, champion_version="1", task=MULTICLASS).blessed
    challenger = MULTICLASS.gate_metrics(y, misses_late)
    d = decide(challenger, champion, policy, champion_version="1", task=MULTICLASS)
    assert not d.blessed
    assert "accuracy 0.6667 >= 0.6000: pass" in d.reasons
    assert "recall_late 0.0000 >= 0.5000: FAIL" in d.reasons
    assert any(r.startswith("macro_f1") and r.endswith("FAIL") for r in d.reasons)


@pytest.mark.parametrize(
    ("task", "data", "message"),
    [
        (REGRESSION, {"value_thresholds": {"roc_auc": 0.7}},
         r"value_thresholds: metric 'roc_auc' is not a regression metric; regression metrics are \['abs_error_p50'"),
        (REGRESSION, {"value_thresholds": {"r2": 0.1}, "max_rel_regression": {"pr_auc": 0.1}},
         "max_rel_regression: metric 'pr_auc' is not a regression metric"),
        (MULTICLASS, {"max_abs_regression": {"recall_unknown": 0.1}},
         r"max_abs_regression: metric 'recall_unknown' is not a multiclass metric; multiclass metrics are "
         r"\['accuracy', 'flip_rate', 'log_loss', 'macro_f1', 'precision_late', 'precision_lost', 'precision_ok', "
         r"'recall_late', 'recall_lost', 'recall_ok'\]"),
        (MULTICLASS, {"value_thresholds": {"accuracy": 0.5}, "decision_threshold": 0.3},
         "decision_threshold: applies to the binary task only, not to the multiclass task"),
        (REGRESSION, {"value_thresholds": {"rmse": "low"}}, "value_thresholds: rmse must be a finite number"),
    ],
)
def test_a_policy_that_does_not_fit_its_task_is_refused_naming_task_and_field(task, data, message):
    with pytest.raises(GateConfigError, match=message):
        GatePolicy.from_dict(data, task=task)


def test_the_gate_operator_checks_its_policy_against_the_task_when_parsed():
    from gd_provider.operators.registry import ModelEvaluationGateOperator

    kwargs = {"task_id": "evaluate", "dataset": {}, "training": {}, "model_name": "m"}
    op = ModelEvaluationGateOperator(**kwargs, policy={"value_thresholds": {"r2": 0.2}}, task="regression")
    assert op.task == "regression"
    with pytest.raises(ValueError, match="evaluate: invalid gate policy for the regression task: value_thresholds: "
                                         "metric 'roc_auc' is not a regression metric"):
        ModelEvaluationGateOperator(**kwargs, policy={"value_thresholds": {"roc_auc": 0.7}}, task="regression")
    with pytest.raises(ValueError, match=r"evaluate: task 'multiclass', task_options.classes"):
        ModelEvaluationGateOperator(**kwargs, policy={"value_thresholds": {"accuracy": 0.7}}, task="multiclass")


# ------------------------------------------------------------------------------------------ smoke test
def test_smoke_problems_per_task_with_the_configs_options():
    options = dict(SMOKE_DEFAULTS)
    # binary: the positive rate at the threshold, and its change vs the previous champion
    low = np.full(100, 0.1)
    assert BINARY.smoke_problems(low, low, options, 0.5) == []
    flagged = np.r_[np.full(60, 0.9), np.full(40, 0.1)]
    problems = BINARY.smoke_problems(flagged, low, options, 0.5)
    assert any("rate 0.6000 outside [0.0, 0.5]" in p for p in problems)
    assert any("change above 0.05" in p for p in problems)
    assert BINARY.smoke_summary(flagged, 0.5) == {"positive_rate": 0.6}
    # multiclass: probabilities, and each class's predicted share vs the previous champion
    before = np.eye(3)[[0] * 80 + [1] * 10 + [2] * 10]
    assert MULTICLASS.smoke_problems(before, before, options) == []
    after = np.eye(3)[[0] * 50 + [1] * 40 + [2] * 10]
    moved = MULTICLASS.smoke_problems(after, before, options)
    assert len(moved) == 1 and "'ok' -0.3000" in moved[0] and "'late' +0.3000" in moved[0]
    assert "sum to 1" in MULTICLASS.smoke_problems(after * 2, None, options)[0]
    assert MULTICLASS.smoke_summary(after)["class_shares"] == {"ok": 0.5, "late": 0.4, "lost": 0.1}
    # regression: bounds on every prediction, and the mean's shift in the previous champion's std
    rng = np.random.default_rng(0)
    prev = rng.normal(10, 2, 200)
    assert REGRESSION.smoke_problems(prev + 0.5, prev, {**options, "prediction_bounds": (0, 30)}) == []
    shifted = REGRESSION.smoke_problems(prev + 5, prev, {**options, "prediction_bounds": (0, 15)})
    assert any("predictions outside [0, 15]" in p for p in shifted)
    assert any("standard deviations, above 1.0" in p for p in shifted)
    assert "NaN/inf" in REGRESSION.smoke_problems(np.r_[prev, np.nan], None, options)[0]


def test_smoke_options_a_task_does_not_read_are_refused_unless_at_their_default():
    assert smoke_option_problems(REGRESSION, SMOKE_DEFAULTS) == []  # defaults: ignored
    assert smoke_option_problems(BINARY, {"positive_rate_bounds": (0.0, 0.9), "max_positive_rate_change": 0.1}) == []
    problems = smoke_option_problems(REGRESSION, {"positive_rate_bounds": [0.0, 0.9], "prediction_bounds": (0, 1)})
    assert problems == ["positive_rate_bounds: the regression task does not read it (its smoke-test options: "
                        "['prediction_bounds', 'max_mean_shift_std'])"]
    assert smoke_option_problems(BINARY, {"max_class_share_change": 0.3})[0].startswith(
        "max_class_share_change: the binary task does not read it")

    from gd_provider.operators.registry import ModelSmokeTestOperator

    kwargs = {"task_id": "smoke_test", "dataset": {}, "model_name": "m"}
    assert ModelSmokeTestOperator(**kwargs, task="regression", prediction_bounds=(0, 100)).prediction_bounds == (0, 100)
    with pytest.raises(ValueError, match="smoke_test: smoke-test options for the regression task: "
                                         "positive_rate_bounds: the regression task does not read it"):
        ModelSmokeTestOperator(**kwargs, task="regression", positive_rate_bounds=(0, 1))


# ---------------------------------------------------------------------------------- label expectations
def _failed(frame: pd.DataFrame, exps: list[dict]) -> set[tuple[str, str]]:
    report = validate_dataframe(frame, exps)
    return {(f["check"], f["column"]) for f in report.failures}


def test_regression_label_expectations_refuse_strings_and_nans_naming_the_column():
    exps = REGRESSION.label_expectations("delay_min")
    assert _failed(pd.DataFrame({"delay_min": [1.5, 2.0, 30.0]}), exps) == set()
    report = validate_dataframe(pd.DataFrame({"delay_min": ["1.5", "late", "3"]}), exps)
    assert not report.success
    assert {(f["check"], f["column"]) for f in report.failures} == {("task:numeric_label", "delay_min")}
    assert "delay_min" in report.summary()
    assert _failed(pd.DataFrame({"delay_min": [1.5, np.nan, 3.0]}), exps) == {("task:regression_label_not_null",
                                                                                "delay_min")}


def test_multiclass_label_expectations_refuse_an_undeclared_class_and_nans():
    exps = MULTICLASS.label_expectations("status")
    assert _failed(pd.DataFrame({"status": ["ok", "late", "lost", "ok"]}), exps) == set()
    report = validate_dataframe(pd.DataFrame({"status": ["ok", "late", "stolen"]}), exps)
    assert [(f["check"], f["column"]) for f in report.failures] == [("task:declared_classes", "status")]
    assert "stolen" in report.summary()
    assert _failed(pd.DataFrame({"status": ["ok", None, "late"]}), exps) == {("task:multiclass_label_not_null",
                                                                              "status")}


def test_binary_label_expectations_refuse_nans_and_other_values():
    exps = BINARY.label_expectations("is_fraud")
    assert _failed(pd.DataFrame({"is_fraud": [0, 1, 0]}), exps) == set()
    assert _failed(pd.DataFrame({"is_fraud": [0.0, np.nan, 1.0]}), exps) == {("task:binary_label_not_null", "is_fraud")}
    assert _failed(pd.DataFrame({"is_fraud": [0, 2, 1]}), exps) == {("task:binary_label", "is_fraud")}


def test_default_expectations_label_checks_follow_the_task():
    base = {"required_columns": ["x"], "numeric_columns": ["x"], "label_column": "y"}
    binary = default_expectations(**base)
    assert default_expectations(**base, task=BINARY) == binary  # binary: today's checks, today's names
    assert {e["meta"]["gd_check"] for e in binary if e["kwargs"].get("column") == "y"} >= {"binary_label",
                                                                                          "both_classes"}
    regression = default_expectations(**base, task=REGRESSION)
    checks = {e["meta"]["gd_check"] for e in regression if e["kwargs"].get("column") == "y"}
    assert "task:numeric_label" in checks and "binary_label" not in checks and "both_classes" not in checks
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [10.5, 20.0, 7.25]})
    assert validate_dataframe(frame, regression).success and not validate_dataframe(frame, binary).success
    with pytest.raises(ValidationConfigError, match="positive_rate_bounds applies to a binary label"):
        default_expectations(**base, task=REGRESSION, positive_rate_bounds=(0, 0.5))


# ------------------------------------------------------------------------------ champion-profile labels
def _by_check(exps: list[dict]) -> dict[str, dict]:
    return {e["meta"]["gd_check"]: e for e in exps if e["kwargs"].get("column") == "y"}


def test_regression_champion_profile_checks_the_label_range_and_mean():
    rng = np.random.default_rng(1)
    champion = pd.DataFrame({"x": rng.normal(size=500), "y": rng.normal(20.0, 4.0, 500)})
    prof = profile_dataframe(champion, label_column="y", task=REGRESSION)
    assert prof.task == "regression" and prof.label_classes is None and prof.positive_rate is None
    assert prof.label_profile["mean"] == pytest.approx(20.0, abs=0.5)
    tol = Tolerances(range_widening=0.5, label_mean_shift_std=0.5)
    exps = profile_expectations(prof, tol, task=REGRESSION)
    checks = _by_check(exps)
    assert {"champion_profile:label_range", "champion_profile:label_mean"} <= set(checks)
    assert not any("positive_rate" in c or "label_values" in c for c in checks)
    same = pd.DataFrame({"x": rng.normal(size=500), "y": rng.normal(20.0, 4.0, 500)})
    assert validate_dataframe(same, exps).success
    shifted = same.assign(y=same["y"] + 6.0)  # 1.5 std: over the 0.5 std allowed
    assert ("champion_profile:label_mean", "y") in _failed(shifted, exps)
    # a profile restored from its dict gives the same checks
    from gd_provider.core.profile import DataProfile

    assert profile_expectations(DataProfile.from_dict(prof.to_dict()), tol, task=REGRESSION) == exps


def test_multiclass_champion_profile_checks_the_classes_it_saw():
    champion = pd.DataFrame({"x": np.arange(90.0), "y": ["ok", "late", "lost"] * 30})
    prof = profile_dataframe(champion, label_column="y", task=MULTICLASS)
    assert prof.label_profile["present"] == ["ok", "late", "lost"]
    exps = profile_expectations(prof, Tolerances(), task=MULTICLASS)
    assert set(_by_check(exps)) >= {"champion_profile:champion_classes"}
    assert validate_dataframe(champion.iloc[::-1].reset_index(drop=True), exps).success
    no_lost = champion[champion["y"] != "lost"].reset_index(drop=True)
    no_lost = pd.concat([no_lost, no_lost.iloc[:30]], ignore_index=True)  # same row count
    assert ("champion_profile:champion_classes", "y") in _failed(no_lost, exps)


def test_binary_champion_profile_checks_are_unchanged():
    df = pd.DataFrame({"x": np.arange(300.0), "y": (np.arange(300) % 7 == 0).astype("int64")})
    prof = profile_dataframe(df, label_column="y")
    assert prof.label_classes == [0, 1] and prof.positive_rate == pytest.approx(43 / 300) and prof.task == "binary"
    tol = Tolerances(positive_rate_band=3.0)
    exps = profile_expectations(prof, tol)
    assert exps == profile_expectations(prof, tol, task=BINARY)
    checks = _by_check(exps)
    assert {"champion_profile:label_values", "champion_profile:both_classes", "champion_profile:positive_rate"} <= set(
        checks)
    rate = 43 / 300
    bounds = checks["champion_profile:positive_rate"]["kwargs"]
    # 6 significant digits rounded outward, as before tasks
    assert bounds["min_value"] == 0.0477777 and bounds["max_value"] == 0.430001
    assert bounds["min_value"] <= rate / 3 and bounds["max_value"] >= rate * 3 - 1e-12
    # a profile saved before tasks (no label_profile) still gives the binary checks
    old = {**prof.to_dict(), "label_profile": None}
    old.pop("task")
    from gd_provider.core.profile import DataProfile

    assert profile_expectations(DataProfile.from_dict(old), tol) == exps


def test_label_tolerances_of_another_task_are_refused_unless_at_their_default():
    assert tolerance_problems(REGRESSION, {"label_mean_shift_std": 2.0, "positive_rate_band": 3.0}) == []
    assert tolerance_problems(BINARY, {"positive_rate_abs": 0.02}) == []
    assert tolerance_problems(REGRESSION, {"positive_rate_abs": 0.02}) == [
        "positive_rate_abs: the regression task's label checks do not read it (they read ['label_mean_shift_std'])"]
    assert tolerance_problems(MULTICLASS, {"label_mean_shift_std": 0.5})[0].startswith("label_mean_shift_std: the "
                                                                                       "multiclass task's")


# -------------------------------------------------------------------------------------------- configs
def _config(task: str, task_options: dict | None = None, **sections) -> dict:
    cfg = yaml.safe_load(FRAUD.read_text())
    cfg["training"]["task"] = task
    if task != "binary":
        cfg["training"].pop("operating_point", None)  # the binary serving rule
    if task_options is not None:
        cfg["training"]["task_options"] = task_options
    cfg["gate"] = {"value_thresholds": {"r2": 0.1}} if task == "regression" else (
        {"value_thresholds": {"accuracy": 0.5}} if task == "multiclass" else cfg["gate"])
    for name, value in sections.items():
        cfg[name] = value
    return cfg


@pytest.mark.parametrize(
    ("task", "options", "sections", "expected"),
    [
        ("binary", None, {"gate": {"value_thresholds": {"mae": 0.1}}},
         "gate.value_thresholds: metric 'mae' is not a binary metric; binary metrics are ['ece', 'f1'"),
        ("regression", None, {"gate": {"value_thresholds": {"roc_auc": 0.7}}},
         "gate.value_thresholds: metric 'roc_auc' is not a regression metric; regression metrics are"),
        ("multiclass", {"classes": [0, 1, 2]}, {"gate": {"max_abs_regression": {"recall_3": 0.1}}},
         "gate.max_abs_regression: metric 'recall_3' is not a multiclass metric"),
        ("regression", None, {"gate": {"value_thresholds": {"r2": 0.1}, "decision_threshold": 0.3}},
         "gate.decision_threshold: applies to the binary task only, not to the regression task"),
        ("regression", None, {"smoke_test": {"positive_rate_bounds": [0.0, 0.9]}},
         "smoke_test.positive_rate_bounds: the regression task does not read it"),
        ("multiclass", {"classes": [0, 1]}, {"smoke_test": {"max_mean_shift_std": 3.0}},
         "smoke_test.max_mean_shift_std: the multiclass task does not read it"),
        ("binary", None, {"smoke_test": {"prediction_bounds": [0, 1]}},
         "smoke_test.prediction_bounds: the binary task does not read it"),
    ],
)
def test_config_errors_name_the_file_the_field_and_the_task(tmp_path, task, options, sections, expected):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(task, options, **sections)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: {expected}" in str(err.value)


def test_config_label_tolerances_of_another_task_name_the_field(tmp_path):
    cfg = _config("regression")
    cfg["validation"]["tolerances"]["positive_rate_abs"] = 0.01
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="config.yaml: validation.tolerances.positive_rate_abs: the regression task's "
                                          "label checks do not read it"):
        load_config(path)


def test_the_factory_wires_the_task_into_the_checks():
    cfg = _config("regression", None, smoke_test={"prediction_bounds": [0, 1], "max_mean_shift_std": 2.0},
                  validation={**yaml.safe_load(FRAUD.read_text())["validation"],
                              "tolerances": {"label_mean_shift_std": 0.5}})
    dag = build_retraining_dag(cfg)
    t = dag.task_dict
    for task_id in ("validate", "drift_check", "evaluate", "smoke_test"):
        assert (t[task_id].task, t[task_id].task_options) == ("regression", {}), task_id
    assert t["validate"].tolerances == {"label_mean_shift_std": 0.5}
    smoke = t["smoke_test"]
    assert smoke.prediction_bounds == (0, 1) and smoke.max_mean_shift_std == 2.0
    assert smoke.training.operator is t["train"]  # the task of what this run trained
    multi = build_retraining_dag(_config("multiclass", {"classes": ["a", "b"]},
                                         smoke_test={"max_class_share_change": 0.2})).task_dict
    assert multi["evaluate"].task_options == {"classes": ["a", "b"]}
    assert multi["smoke_test"].max_class_share_change == 0.2
    fraud = build_retraining_dag(FRAUD).task_dict
    assert fraud["smoke_test"].task == "binary" and fraud["validate"].task == "binary"
