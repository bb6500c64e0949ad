"""The DAG factory: configs → DAGs, with errors that name the file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from gd_provider.dag_factory import ConfigError, build_dags_from_folder, build_retraining_dag, load_config

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "dags" / "configs" / "fraud_detector.yaml"


def _config(**changes) -> dict:
    cfg = yaml.safe_load(FRAUD.read_text())
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split(".")
        for key in path:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return cfg


def test_fraud_config_builds_the_nightly_dag():
    dag = build_retraining_dag(FRAUD)
    assert dag.dag_id == "gd_nightly_fraud_retraining"
    assert [t.task_id for t in dag.tasks] == [
        "features_fresh", "retrieve_training_set", "validate", "drift_check", "train", "health_gate", "evaluate", "register",
        "promote", "smoke_test", "rollback", "run_report"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert set(dag.params) >= {"training_overrides", "drift_policy", "skip_drift_reason", "force_promotion_reason",
                               "as_of", "smoke_test_max_p95_latency_ms"}
    assert dag.task_dict["rollback"].trigger_rule == "one_failed"
    assert dag.task_dict["run_report"].trigger_rule == "all_done"
    assert dag.task_dict["validate"].upstream_task_ids == {"retrieve_training_set"}
    assert dag.task_dict["train"].upstream_task_ids >= {"drift_check"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"training.lr": -1.0}, ("training.lr: must be > 0",)),
        ({"model_name": None}, "model_name"),
        ({"gate.value_thresholds": {}, "gate.max_abs_regression": {}, "gate.max_rel_regression": {}}, "gate"),
        ({"drift.policy": "ignore"}, "drift.policy"),
        ({"features.lookback_days": 0}, "features.lookback_days"),
        ({"features.partition_rows": 0}, "features.partition_rows"),
        ({"schedule": {"cron": "@daily", "assets": ["x"]}}, "schedule"),
        ({"surprise": 1}, "surprise"),
        ({"training.momentun": 0.9}, ("training.momentun: unknown spec key",)),
    ],
)
def test_bad_configs_name_the_file_and_field(tmp_path, changes, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(**changes)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for part in (field,) if isinstance(field, str) else field:
        assert part in message, (part, message)


def test_partition_rows_reach_the_retrieval_task():
    assert build_retraining_dag(FRAUD).task_dict["retrieve_training_set"].partition_rows == 1_000_000
    dag = build_retraining_dag(_config(**{"features.partition_rows": 250_000}))
    assert dag.task_dict["retrieve_training_set"].partition_rows == 250_000


def test_asset_scheduled_config():
    dag = build_retraining_dag(_config(schedule={"assets": ["feast://gd_fraud/card_stats",
                                                            "feast://gd_fraud/merchant_stats"]}))
    uris = {a.uri for a in dag.timetable.asset_condition.objects}
    assert uris == {"feast://gd_fraud/card_stats", "feast://gd_fraud/merchant_stats"}


def test_a_broken_config_does_not_break_the_others(tmp_path):
    (tmp_path / "a_good.yaml").write_text(yaml.safe_dump(_config(dag_id="good_one")))
    (tmp_path / "b_bad.yaml").write_text(yaml.safe_dump(_config(dag_id="bad_one", **{"training.epochs": 0})))
    namespace: dict = {}
    with pytest.warns(UserWarning, match="b_bad.yaml"):
        errors = build_dags_from_folder(tmp_path, namespace)
    assert list(namespace) == ["good_one"]
    assert list(errors) == [str(tmp_path / "b_bad.yaml")] and "epochs" in errors[str(tmp_path / "b_bad.yaml")]


def test_airflow_reports_the_broken_config_as_an_import_error(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    for name in ("retraining_dags.py", "retraining_config_check.py"):
        shutil.copy(ROOT / "dags" / name, dags / name)
    (dags / "configs" / "good.yaml").write_text(yaml.safe_dump(_config(dag_id="good_one")))
    (dags / "configs" / "broken.yaml").write_text(yaml.safe_dump(_config(dag_id="bad_one", **{"training.lr": 0})))
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dags) == {"good_one"}
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("retraining_config_check.py")
    assert "broken.yaml" in message and "training" in message and "lr" in message


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"freshness.feature_service": "fraud_model_v1"}, ("freshness", "feature_views", "feature_service")),
        ({"features.feature_service": None, "features.features": ["card_stats:card_txn_count_7d"]},
         ("validation", "schema_checks", "features.feature_service")),
        ({"validation.expectations": "no/such/suite.yaml"}, ("validation.expectations", "no/such/suite.yaml")),
    ],
)
def test_cross_field_errors_are_caught_by_load_config(tmp_path, changes, fields):
    """Found when the config is validated (the earliest gate), not while the DAG is being built."""
    path = tmp_path / "cross.yaml"
    path.write_text(yaml.safe_dump(_config(**changes)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    for field in fields:
        assert field in str(err.value)


def test_any_build_error_is_a_config_error_naming_the_file(tmp_path, monkeypatch):
    import gd_provider.factory.loader as factory  # where the DAG builder looks its stages up

    def boom(*args, **kwargs):
        raise RuntimeError("operator rejected an argument")

    monkeypatch.setattr(factory, "release_stage", boom)
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(_config()))
    with pytest.raises(ConfigError, match=r"fraud\.yaml: .*RuntimeError: operator rejected an argument"):
        build_retraining_dag(path)


def _fails_to_build(dag_id: str, monkeypatch) -> None:
    """Make building ``dag_id`` raise a plain exception after some of its tasks exist (as an operator's
    own argument check would), whatever the config validation lets through."""
    import gd_provider.factory.loader as factory  # where the DAG builder looks its stages up

    real = factory.release_stage

    def release_stage(cfg, *args, **kwargs):
        if cfg.dag_id == dag_id:
            raise RuntimeError("operator rejected an argument")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(factory, "release_stage", release_stage)


def test_an_exception_while_building_one_dag_does_not_break_the_others(tmp_path, monkeypatch):
    (tmp_path / "a_bad.yaml").write_text(yaml.safe_dump(_config(dag_id="bad_one")))
    (tmp_path / "b_good.yaml").write_text(yaml.safe_dump(_config(dag_id="good_one")))
    (tmp_path / "c_twin.yaml").write_text(yaml.safe_dump(_config(dag_id="good_one")))
    _fails_to_build("bad_one", monkeypatch)
    namespace: dict = {}
    with pytest.warns(UserWarning, match="a_bad.yaml"):
        errors = build_dags_from_folder(tmp_path, namespace)
    assert list(namespace) == ["good_one"]
    assert namespace["good_one"].auto_register is False  # registered through the namespace only
    assert sorted(errors) == [str(tmp_path / "a_bad.yaml"), str(tmp_path / "c_twin.yaml")]
    assert "RuntimeError: operator rejected an argument" in errors[str(tmp_path / "a_bad.yaml")]
    assert "dag_id" in errors[str(tmp_path / "c_twin.yaml")] and "b_good.yaml" in errors[str(tmp_path / "c_twin.yaml")]


def _dag_folder(tmp_path: Path) -> Path:
    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    for name in ("retraining_dags.py", "retraining_config_check.py"):
        shutil.copy(ROOT / "dags" / name, dags / name)
    (dags / "configs" / "good.yaml").write_text(yaml.safe_dump(_config(dag_id="good_one")))
    return dags


def test_airflow_reports_cross_field_and_build_errors_as_import_errors(tmp_path, monkeypatch):
    """A config that validates field by field but cannot be built must not take the other DAGs with it,
    must not leave a half-built DAG behind, and must show in the UI as an import error naming the file."""
    from airflow.dag_processing.dagbag import DagBag

    dags = _dag_folder(tmp_path)
    configs = dags / "configs"
    (configs / "both_selectors.yaml").write_text(yaml.safe_dump(
        _config(dag_id="bad_fresh", **{"freshness.feature_service": "fraud_model_v1"})))
    (configs / "no_service.yaml").write_text(yaml.safe_dump(_config(
        dag_id="bad_schema", **{"features.feature_service": None, "features.features": ["card_stats:x"]})))
    (configs / "no_suite.yaml").write_text(yaml.safe_dump(
        _config(dag_id="bad_suite", **{"validation.expectations": "missing_suite.yaml"})))
    (configs / "half_built.yaml").write_text(yaml.safe_dump(_config(dag_id="bad_build")))
    _fails_to_build("bad_build", monkeypatch)
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dags) == {"good_one"}
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("retraining_config_check.py")
    lines = message.splitlines()
    assert any("both_selectors.yaml" in line and "freshness" in line for line in lines), message
    assert any("no_service.yaml" in line and "schema_checks" in line for line in lines), message
    assert any("no_suite.yaml" in line and "validation.expectations" in line for line in lines), message
    assert any("half_built.yaml" in line and "operator rejected an argument" in line for line in lines), message


def test_a_relative_expectations_file_is_next_to_its_config_whatever_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "suite.json").write_text('[{"type": "expect_column_to_exist", "kwargs": {"column": "amount"}}]')
    (folder / "model.yaml").write_text(yaml.safe_dump(_config(**{"validation.expectations": "suite.json"})))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the dag-processor's and the workers' working directory
    cfg = load_config(folder / "model.yaml")
    assert cfg.validation.expectations == str(folder.resolve() / "suite.json")
    (folder / "bad.yaml").write_text(yaml.safe_dump(_config(**{"validation.expectations": "missing.json"})))
    with pytest.raises(ConfigError, match=r"bad.yaml.*missing.json.*neither 'module:function' nor an existing file"):
        load_config(folder / "bad.yaml")


def test_a_misspelled_drift_method_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(**{"drift.numeric_method": "wasserstien"})))
    with pytest.raises(ConfigError, match=r"bad.yaml: drift: .*'wasserstien' is not a drift method for numeric"):
        load_config(path)


def test_a_required_check_that_would_never_run_is_a_config_error(tmp_path):
    import yaml

    from gd_provider.dag_factory import ConfigError, load_config

    data = yaml.safe_load(FRAUD.read_text())
    data["training"]["sensitivity"] = {"enabled": False}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"health: require_sensitivity_pass is true but training.sensitivity.enabled "
                                          "is false"):
        load_config(path)


def test_a_metric_measured_at_an_operating_point_needs_one_declared(tmp_path):
    """regression's within_tolerance / flip_rate exist only at a declared tolerance: refused when parsed."""
    cfg = yaml.safe_load((ROOT / "example_dags" / "configs" / "demand_regression.yaml").read_text())
    cfg["gate"]["value_thresholds"]["within_tolerance"] = 0.6
    path = tmp_path / "demand.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"gate.value_thresholds: within_tolerance is measured at the regression "
                                          r"task's operating point: declare training.operating_point \(tolerance"):
        load_config(path)
    cfg["training"]["operating_point"] = {"tolerance": {"abs": 3.0, "rel": 0.1}}
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path).training["operating_point"] == {"tolerance": {"abs": 3.0, "rel": 0.1}}
    # per-class thresholds for the multiclass example, refused naming the class when it is not one
    multi = yaml.safe_load((ROOT / "example_dags" / "configs" / "demand_level_multiclass.yaml").read_text())
    multi["training"]["operating_point"] = {"min_precision": {"hgih": 0.8}}
    path.write_text(yaml.safe_dump(multi))
    with pytest.raises(ConfigError, match=r"operating_point.min_precision: 'hgih' is not one of the classes"):
        load_config(path)
