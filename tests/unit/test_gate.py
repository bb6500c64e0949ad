import numpy as np
import pytest

from gd_provider.core.gate import GateConfigError, GatePolicy, classification_metrics, decide

METRICS = {"roc_auc": 0.90, "pr_auc": 0.40, "precision": 0.5, "recall": 0.5, "f1": 0.5, "fpr": 0.01,
           "log_loss": 0.1, "ece": 0.02}


def test_refuses_to_bless_without_any_threshold():
    with pytest.raises(GateConfigError, match="no threshold"):
        decide(METRICS, None, GatePolicy())


def test_unknown_metric_and_bootstrap_are_named():
    with pytest.raises(GateConfigError, match="'auc'"):
        GatePolicy(value_thresholds={"auc": 0.5}).validate()
    with pytest.raises(GateConfigError, match="bootstrap"):
        GatePolicy(value_thresholds={"roc_auc": 0.5}, bootstrap="yolo").validate()
    with pytest.raises(GateConfigError, match="unknown fields"):
        GatePolicy.from_dict({"value_threshold": {}})


def test_bootstrap_blesses_first_model_on_value_thresholds():
    d = decide(METRICS, None, GatePolicy(value_thresholds={"roc_auc": 0.8}))
    assert d.blessed and any("bootstrap" in r for r in d.reasons)
    d = decide(METRICS, None, GatePolicy(value_thresholds={"roc_auc": 0.95}))
    assert not d.blessed and "roc_auc 0.9000 >= 0.9500: FAIL" in d.reasons[0]


def test_bootstrap_reject_and_comparison_only_policy_do_not_bless_first_model():
    assert not decide(METRICS, None, GatePolicy(value_thresholds={"roc_auc": 0.5}, bootstrap="reject")).blessed
    d = decide(METRICS, None, GatePolicy(max_abs_regression={"roc_auc": 0.0}))
    assert not d.blessed and "no value threshold" in d.reasons[0]


def test_signed_change_thresholds_against_champion():
    policy = GatePolicy(value_thresholds={"roc_auc": 0.8}, max_abs_regression={"pr_auc": 0.02})
    champion = {**METRICS, "pr_auc": 0.41}
    assert decide(METRICS, champion, policy, champion_version="3").blessed  # 0.01 worse: within 0.02
    champion = {**METRICS, "pr_auc": 0.45}
    d = decide(METRICS, champion, policy, champion_version="3")
    assert not d.blessed
    assert any("pr_auc" in r and "champion v3" in r and "FAIL" in r for r in d.reasons)
    # lower-is-better metrics regress upwards
    policy = GatePolicy(max_rel_regression={"fpr": 0.10})
    assert not decide({**METRICS, "fpr": 0.012}, METRICS, policy, champion_version="1").blessed
    assert decide({**METRICS, "fpr": 0.0105}, METRICS, policy, champion_version="1").blessed


def test_classification_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["fpr"] == pytest.approx(0.5)


def test_classification_metrics_rejects_bad_scores():
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="single class"):
        classification_metrics(np.array([1, 1]), np.array([0.1, 0.2]))


def test_holdout_must_be_the_one_training_held_out():
    import pandas as pd

    from gd_provider.core.gate import HoldoutMismatchError, verify_holdout
    from gd_provider.core.training.preprocess import frame_digest

    holdout = pd.DataFrame({"transaction_id": ["a", "b", "c"], "amount": [1.0, 2.0, 3.0]})
    keys = ["transaction_id"]
    digest, basis = frame_digest(holdout, keys)
    recorded = {"rows": 3, "sha256": digest, "sha256_basis": basis}
    verify_holdout(recorded, rows=3, sha256=frame_digest(holdout.copy(), keys)[0])  # same rows: accepted
    other = frame_digest(holdout.iloc[[0, 1]], keys)[0]
    with pytest.raises(HoldoutMismatchError, match=rf"digest over keys:transaction_id\): sha256 {other} vs training's"):
        verify_holdout(recorded, rows=2, sha256=other)
    with pytest.raises(HoldoutMismatchError, match="2 rows vs training's 3"):
        verify_holdout(recorded, rows=2, sha256=digest)
    for missing in (None, {}, {"rows": 3}):
        with pytest.raises(HoldoutMismatchError, match="records no holdout digest"):
            verify_holdout(missing, rows=3, sha256=digest)


def test_the_gate_operator_checks_its_policy_when_the_dag_is_parsed():
    from gd_provider.operators.registry import ModelEvaluationGateOperator

    kwargs = {"task_id": "evaluate", "dataset": {}, "training": {}, "model_name": "m"}
    with pytest.raises(ValueError, match="evaluate: invalid gate policy: .*no threshold"):
        ModelEvaluationGateOperator(**kwargs, policy={})
    with pytest.raises(ValueError, match="value_thresholds: metric 'auc' is not a binary metric"):
        ModelEvaluationGateOperator(**kwargs, policy={"value_thresholds": {"auc": 0.7}})


def test_an_empty_holdout_is_named_as_such():
    with pytest.raises(ValueError, match="the holdout is empty"):
        classification_metrics(np.array([]), np.array([]))
