"""The validate stage's config: derived checks, tolerances and failure mode, checked when the DAG is parsed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gd_provider.dag_factory import ConfigError, build_retraining_dag, load_config

FRAUD = Path(__file__).resolve().parents[2] / "dags" / "configs" / "fraud_detector.yaml"


def _config(validation: dict) -> dict:
    cfg = yaml.safe_load(FRAUD.read_text())
    cfg["validation"] = validation
    return cfg


def test_fraud_config_turns_on_derived_checks():
    dag = build_retraining_dag(FRAUD)
    validate = dag.task_dict["validate"]
    assert validate.feature_service == "fraud_model_v1"
    assert validate.champion_model_name == "fraud_detector" and validate.champion_alias == "champion"
    assert validate.label_column == "is_fraud" and validate.on_failure == "fail"
    assert validate.tolerances["range_widening"] == 10.0 and tuple(validate.tolerances["row_count_band"]) == (0.5, 2.0)
    assert validate.expectations == "gd_provider.demo.expectations:fraud_expectations"
    assert validate.experiment_name == "fraud_detector"
    assert [link.name for link in validate.operator_extra_links] == ["Validation report", "MLflow run"]


def test_defaults_leave_derived_checks_off():
    cfg = build_retraining_dag(_config({"expectations": "gd_provider.demo.expectations:fraud_expectations"}))
    validate = cfg.task_dict["validate"]
    assert validate.feature_service is None and validate.champion_model_name is None
    assert validate.tolerances == {} and validate.on_failure == "fail"
    skip = build_retraining_dag(_config({"champion_checks": True, "on_failure": "skip"})).task_dict["validate"]
    assert skip.expectations is None and skip.on_failure == "skip" and skip.champion_model_name == "fraud_detector"


@pytest.mark.parametrize(
    ("validation", "field"),
    [
        ({}, "give expectations, or turn on schema_checks or champion_checks"),
        ({"champion_checks": True, "tolerances": {"null_rate_slack": 1.5}}, "validation.tolerances.null_rate_slack"),
        ({"champion_checks": True, "tolerances": {"row_count_band": [2, 3]}}, "validation.tolerances.row_count_band"),
        ({"champion_checks": True, "tolerances": {"positive_rate_band": 0.5}}, "validation.tolerances.positive_rate_band"),
        ({"champion_checks": True, "tolerances": {"range_widen": 1}}, "validation.tolerances.range_widen"),
        ({"champion_checks": True, "on_failure": "branch"}, "validation.on_failure"),
    ],
)
def test_bad_validation_configs_name_the_field(tmp_path, validation, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(validation)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_schema_checks_need_a_feature_service():
    cfg = _config({"schema_checks": True})
    cfg["features"].pop("feature_service")
    cfg["features"]["features"] = ["card_stats:card_txn_count_7d"]
    # caught when the config is validated (naming the section), before any DAG is built
    with pytest.raises(ConfigError, match="validation: .*schema_checks needs features.feature_service"):
        build_retraining_dag(cfg)


def test_validation_report_link_is_registered():
    import importlib

    from gd_provider.get_provider_info import get_provider_info

    links = get_provider_info()["extra-links"]
    assert "gd_provider.links.ValidationReportLink" in links
    for path in links:
        module, _, name = path.rpartition(".")
        assert getattr(importlib.import_module(module), name)().name
