"""The demand domain's example DAGs (a regression and a multiclass model built from their configs), five
nights each: the first champion; a challenger against it on the same holdout; a bad challenger (a learning
rate too small to learn) rejected; a corrupted day stopped at validation; a promoted model that fails its
smoke test rolled back. Each night asserts the DAG run's task states and the registry (versions, aliases,
tags, audit trail)."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from gd_provider.core.registry import PREVIOUS_CHAMPION_TAG, audit_trail, get_alias_version
from gd_provider.demo.demand import schema
from gd_provider.demo.demand.generator import corrupt, sales_day_path
from tests.harness import airflow_env

from . import demand_fixtures
from .demand_fixtures import demand_night

pytestmark = pytest.mark.dags
demand_home = demand_fixtures.demand_home
demand_mlflow = demand_fixtures.demand_mlflow

# barely moves from the random initialization; without clipping (which its large gradients would trip in the
# training-health gate), so it is the evaluation gate that has to catch the under-trained model
BAD_TRAINING = {"lr": 1e-6, "epochs": 1, "grad_clip_norm": None}
RELEASE = ("evaluate", "register", "promote", "smoke_test")
TIMINGS: dict[str, float] = {}

DOMAINS = {
    "regression": {
        "dag_id": "gd_example_demand_regression",
        "model": "demand_units_regressor",
        "task": "regression",
        "label": schema.LABEL_UNITS,
        "corruption": "nan_units",  # a feed glitch: 20 % of the day's units missing
        "failing_check": ("expect_column_values_to_not_be_null", schema.LABEL_UNITS),
        "metrics": ("r2", "rmse", "mae", "abs_error_p90"),
        # example_dags/configs/demand_regression.yaml's gate, applied by hand
        "values": {"r2": 0.5},
        "higher_is_better": {"r2": True, "rmse": False, "abs_error_p90": False},
        "rel": {"rmse": 0.08, "abs_error_p90": 0.12},
        "abs": {},
    },
    "multiclass": {
        "dag_id": "gd_example_demand_level_multiclass",
        "model": "demand_level_classifier",
        "task": "multiclass",
        "label": schema.LABEL_LEVEL,
        "corruption": "unknown_level",  # 'very_high': a class the model does not declare
        "failing_check": ("expect_column_values_to_be_in_set", schema.LABEL_LEVEL),
        "metrics": ("accuracy", "macro_f1", "log_loss", "recall_low", "recall_normal", "recall_high"),
        # example_dags/configs/demand_level_multiclass.yaml's gate, applied by hand
        "values": {"macro_f1": 0.45, "accuracy": 0.5},
        "higher_is_better": {"macro_f1": True, "accuracy": True},
        "rel": {},
        "abs": {"macro_f1": 0.03, "accuracy": 0.03},
    },
}


def _xcom(dag_id: str, run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == run_id,
                                              XComModel.task_id == task_id, XComModel.key == "return_value").one()
        return row.value


def _policy_by_hand(d: dict, challenger: dict, champion: dict | None) -> bool:
    better = d["higher_is_better"]
    for metric, threshold in d["values"].items():
        if (challenger[metric] < threshold) if better[metric] else (challenger[metric] > threshold):
            return False
    if champion is None:
        return True
    for metric, limit in d["abs"].items():
        worse = champion[metric] - challenger[metric] if better[metric] else challenger[metric] - champion[metric]
        if worse > limit + 1e-12:
            return False
    for metric, limit in d["rel"].items():
        worse = champion[metric] - challenger[metric] if better[metric] else challenger[metric] - champion[metric]
        if worse > limit * abs(champion[metric]) + 1e-12:
            return False
    return True


def _versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _run(key: str, dag_id: str, night: int, conf: dict | None = None) -> dict:
    # a DAG object parsed for this run: dag.test() runs tasks in this process and leaves a run's conf in its
    # tasks' params (Airflow 3.3), so a later run of the same object without that conf would still see it
    dag = airflow_env.load_dag(dag_id)
    started = time.monotonic()
    run = airflow_env.run_dag(dag, demand_night(night), conf)
    TIMINGS[f"{dag.dag_id} night {night}"] = round(time.monotonic() - started, 1)
    print(f"{dag.dag_id} night {night}: {run['state']} in {TIMINGS[f'{dag.dag_id} night {night}']} s")
    return run


def _validation_failures(home, dag_id: str, run_id: str) -> set[tuple[str, str | None]]:
    from gd_provider.operators._common import safe_name

    folder = home / "runs" / dag_id / safe_name(run_id) / "validate"
    reports = [p for p in folder.glob("*.json")]
    assert reports, f"no validation report under {folder}"
    failures = set()
    for path in reports:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "failures" in data:
            failures |= {(f["expectation"], f.get("column")) for f in data["failures"]}
    return failures


@pytest.mark.parametrize("key", list(DOMAINS))
def test_demand_example_five_nights(key, demand_home, demand_mlflow):
    d = DOMAINS[key]
    client, name, dag_id = demand_mlflow, d["model"], d["dag_id"]
    dag = airflow_env.load_dag(dag_id)
    assert dag.task_dict["rollback"].trigger_rule == "one_failed"

    # ---- night 1: the first champion (bootstrap policy: the value thresholds alone)
    run1 = _run(key, dag_id, 1)
    assert run1["state"] == "success", run1
    assert run1["tasks"]["features_fresh"] == "success" and run1["tasks"]["validate"] == "success"
    assert {t: s for t, s in run1["tasks"].items() if s != "success"} == {"rollback": "skipped"}, run1
    assert get_alias_version(client, name, "champion") == "1"
    v1 = client.get_model_version(name, "1")
    assert v1.tags["gd.dag_id"] == dag_id and v1.tags["gd.airflow_run_id"] == run1["run_id"]
    assert v1.tags["gd.blessed"] == "true" and v1.tags[PREVIOUS_CHAMPION_TAG] == "none"
    assert v1.tags["gd.task"] == d["task"]
    assert "store_product_stats:sp_avg_units_28d" in v1.tags["gd.feature_refs"]
    assert v1.tags["gd.feature_service"] == schema.FEATURE_SERVICE
    gate1 = _xcom(dag_id, run1["run_id"], "evaluate")
    assert gate1["blessed"] is True and gate1["champion_version"] in (None, "none")
    assert set(d["metrics"]) <= set(gate1["challenger_metrics"]), gate1
    assert _policy_by_hand(d, gate1["challenger_metrics"], None)
    for metric in d["metrics"]:
        assert float(v1.tags[f"gd.metric.{metric}"]) == pytest.approx(gate1["challenger_metrics"][metric])
    holdout_rows = int(v1.tags["gd.gate.holdout_rows"])
    assert holdout_rows % 300 == 0  # whole days: no day is both trained on and held out

    # ---- night 2: a challenger against champion v1 on the same holdout
    run2 = _run(key, dag_id, 2)
    assert run2["state"] == "success", run2
    assert all(run2["tasks"][t] in ("success", "skipped") for t in RELEASE)
    assert [str(v.version) for v in _versions(client, name)] == ["1", "2"]
    v2 = client.get_model_version(name, "2")
    gate2 = _xcom(dag_id, run2["run_id"], "evaluate")
    assert gate2["champion_version"] == "1", gate2
    assert set(d["metrics"]) <= set(gate2["challenger_metrics"]) and set(d["metrics"]) <= set(gate2["champion_metrics"])
    assert v2.tags["gd.gate.baseline_version"] == "1" and len(v2.tags["gd.gate.holdout_sha256"]) == 64
    assert v2.tags["gd.gate.holdout_sha256"] != v1.tags["gd.gate.holdout_sha256"]  # tonight's holdout, both scored
    assert gate2["blessed"] is _policy_by_hand(d, gate2["challenger_metrics"], gate2["champion_metrics"]), gate2
    assert v2.tags["gd.blessed"] == str(gate2["blessed"]).lower()
    if gate2["blessed"]:
        assert run2["tasks"]["promote"] == "success" and run2["tasks"]["smoke_test"] == "success"
        assert get_alias_version(client, name, "champion") == "2" and v2.tags[PREVIOUS_CHAMPION_TAG] == "1"
    else:
        assert run2["tasks"]["promote"] == "skipped"
        assert get_alias_version(client, name, "champion") == "1" and "FAIL" in v2.tags["gd.gate.reason"]
    champion = get_alias_version(client, name, "champion")

    # ---- night 3: a bad challenger (lr 1e-6, one epoch) passes the health gate, is rejected by the evaluation
    # gate and registered as such; the champion stays
    run3 = _run(key, dag_id, 3, {"training_overrides": BAD_TRAINING})
    assert run3["state"] == "success", run3
    assert run3["tasks"]["health_gate"] == "success" and run3["tasks"]["evaluate"] == "success"
    assert run3["tasks"]["register"] == "success"
    assert run3["tasks"]["promote"] == "skipped" and run3["tasks"]["smoke_test"] == "skipped"
    assert run3["tasks"]["rollback"] == "skipped"
    gate3 = _xcom(dag_id, run3["run_id"], "evaluate")
    assert gate3["blessed"] is False and gate3["champion_version"] == champion
    assert not _policy_by_hand(d, gate3["challenger_metrics"], gate3["champion_metrics"])
    v3 = client.get_model_version(name, "3")
    assert v3.tags["gd.blessed"] == "false" and "FAIL" in v3.tags["gd.gate.reason"]
    assert json.loads(v3.tags["gd.training_overrides"]) == BAD_TRAINING
    assert get_alias_version(client, name, "champion") == champion

    # ---- night 4: a corrupted day of sales stops the run at validation, naming the column
    path = sales_day_path(demand_home.data_dir, demand_night(4) - pd.Timedelta(days=1))
    original = path.read_bytes()
    try:
        pd.read_parquet(path).pipe(corrupt, kind=d["corruption"], seed=4).to_parquet(path, index=False)
        run4 = _run(key, dag_id, 4)
    finally:
        path.write_bytes(original)
    assert run4["state"] == "failed", run4
    assert run4["tasks"]["retrieve_training_set"] == "success" and run4["tasks"]["validate"] == "failed"
    for task in ("drift_check", "train", "evaluate", "register", "promote"):
        assert run4["tasks"][task] == "upstream_failed", (task, run4)
    assert d["failing_check"] in _validation_failures(demand_home.home, dag_id, run4["run_id"])
    assert len(_versions(client, name)) == 3
    assert get_alias_version(client, name, "champion") == champion

    # ---- night 5: promoted, fails its smoke test (an impossible latency budget), rolled back
    # (forced past the gate, whatever it decided tonight: what is exercised is the post-promotion path)
    run5 = _run(key, dag_id, 5, {"smoke_test_max_p95_latency_ms": 0.0001,
                                 "force_promotion_reason": "exercise the smoke test and the rollback"})
    gate5 = _xcom(dag_id, run5["run_id"], "evaluate")
    assert gate5["champion_version"] == champion and gate5["blessed"] is _policy_by_hand(
        d, gate5["challenger_metrics"], gate5["champion_metrics"]), gate5
    assert run5["state"] == "failed", run5
    assert run5["tasks"]["promote"] == "success" and run5["tasks"]["smoke_test"] == "failed"
    assert run5["tasks"]["rollback"] == "success"
    assert [str(v.version) for v in _versions(client, name)] == ["1", "2", "3", "4"]
    assert get_alias_version(client, name, "champion") == champion
    trail = [(e["action"], e["from"], e["to"]) for e in audit_trail(client, name)]
    expected = [("promote", "none", "1")] + ([("promote", "1", "2")] if champion == "2" else [])
    assert trail == [*expected, ("promote", champion, "4"), ("rollback", "4", champion)], trail
    print("timings:", json.dumps(TIMINGS))
