"""DataValidationOperator with real GE, a real MLflow champion (embedded SQLite store) and a real Feast repo:
checks derived from the champion's training data and from the feature service, failure modes, report links."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from gd_provider.core import registry
from gd_provider.core.data import write_dataset
from gd_provider.core.lineage import DATASET_SHA256, DATASET_URI
from gd_provider.links import MlflowRunLink, ValidationReportLink
from gd_provider.operators.validation import DataValidationOperator

from ..support import FakeTI, fake_context, register_scorer

pytestmark = pytest.mark.integration
MODEL = "validation_model"
BASIC = [{"type": "expect_column_to_exist", "kwargs": {"column": "amount"}, "meta": {"gd_check": "exists"}}]
TOLERANCES = {"null_rate_slack": 0.02, "range_widening": 1.0, "row_count_band": [0.5, 2.0]}


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "transaction_id": [f"t{seed}-{i}" for i in range(n)],
            "card_id": rng.integers(1, 50, n),
            "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"),
            "amount": rng.gamma(2.0, 60.0, n),
            "distance_from_home_km": rng.exponential(10.0, n),
            "channel": rng.choice(["pos", "online", "atm"], n),
            "is_fraud": (np.arange(n) % 20 == 0).astype("int64"),
        }
    )


def _manifest(df: pd.DataFrame, path: Path) -> dict:
    return write_dataset(df, str(path), entity_keys=["card_id"], timestamp_column="event_timestamp",
                         label_column="is_fraud").to_dict()


@pytest.fixture
def client(mlflow_config):
    return mlflow_config.client()


@pytest.fixture
def champion(client, mlflow_config, gd_home):
    """v1 is the champion, trained (its lineage says) on champion.parquet."""
    experiment = registry.ensure_experiment(client, MODEL, mlflow_config.artifact_root)
    ref = write_dataset(_frame(2000, seed=1), str(gd_home / "champion.parquet"))
    v = register_scorer(client, experiment, MODEL, "d/r1", {DATASET_URI: ref.uri, DATASET_SHA256: ref.sha256})
    registry.promote(client, MODEL, v, actor="scheduler", reason="first")
    return v


def _op(dataset: dict, **kw) -> DataValidationOperator:
    kw.setdefault("expectations", BASIC)
    return DataValidationOperator(task_id="validate", dataset=dataset, **kw)


def test_first_night_without_champion_skips_derived_checks_and_says_so(gd_home, client):
    dataset = _manifest(_frame(1000), gd_home / "night.parquet")
    ctx = fake_context()
    out = _op(dataset, champion_model_name=MODEL, tolerances=TOLERANCES).execute(ctx)
    assert out["success"] is True and out["evaluated"] == 1
    assert out["champion_checks"] == {"status": "no_champion", "model": MODEL, "alias": "champion"}
    note, window = out["notes"]
    assert note.startswith(f"champion-derived checks SKIPPED: {MODEL} has no 'champion' version yet")
    # a dataset written without the retrieval operator: its window checks did not run, and the report says so
    assert window.startswith("window checks NOT RUN: the dataset manifest has no retrieval statistics")
    payload = json.loads(Path(out["report"]["json"]).read_text())
    assert payload["notes"] == [note, window] and f"Note: {note}" in payload["summary"]
    assert html.escape(note) in Path(out["report"]["html"]).read_text()


def test_champion_profile_catches_drifted_null_rate_and_out_of_range_values(gd_home, client, champion):
    ok = _manifest(_frame(1500, seed=2), gd_home / "ok.parquet")
    out = _op(ok, champion_model_name=MODEL, tolerances=TOLERANCES).execute(fake_context())
    assert out["success"] is True, out
    assert out["champion_checks"]["status"] == "derived" and out["champion_checks"]["version"] == champion
    assert out["evaluated"] == 1 + out["champion_checks"]["checks"]
    assert "checks derived from the training data of validation_model v1 (2000 rows" in out["notes"][0]

    night = _frame(1500, seed=3)
    night.loc[night.index[:300], "distance_from_home_km"] = np.nan  # 20 % nulls; the champion had none
    night.loc[night.index[7], "amount"] = -25.0  # the champion's amounts were never negative
    bad = _manifest(night, gd_home / "bad.parquet")
    ti = FakeTI(task_id="validate")
    with pytest.raises(AirflowFailException) as exc:
        _op(bad, champion_model_name=MODEL, tolerances=TOLERANCES).execute(fake_context(ti=ti))
    message = str(exc.value)
    assert "2 of " in message and "expectations failed" in message
    assert ("expect_column_values_to_not_be_null(distance_from_home_km) [champion_profile:null_rate]: "
            "300 of 1500 rows unexpected (20.00%), at most 2.00% allowed") in message
    assert ("expect_column_values_to_be_between(amount) [champion_profile:value_range]: 1 of 1500 rows "
            "unexpected (0.07%), e.g. [-25.0]") in message
    # the report went to an MLflow run of the experiment, with both links pushed
    run_url = ti.xcoms[("validate", MlflowRunLink().xcom_key)]
    report_url = ti.xcoms[("validate", ValidationReportLink().xcom_key)]
    assert report_url == f"{run_url}/artifactPath/validation.html"
    run_id = run_url.rsplit("/", 1)[1]
    assert {a.path for a in client.list_artifacts(run_id)} == {"validation.html", "validation.json"}
    assert client.get_run(run_id).data.metrics["failed"] == 2.0


def test_skip_mode_and_local_link_without_mlflow(gd_home, client, champion):
    night = _frame(1500, seed=4)
    night["is_fraud"] = 0  # single class, positive rate 0
    bad = _manifest(night, gd_home / "bad.parquet")
    ti = FakeTI(task_id="validate")
    op = _op(bad, champion_model_name=MODEL, on_failure="skip", log_to_mlflow=False)
    with pytest.raises(AirflowSkipException) as exc:
        op.execute(fake_context(ti=ti))
    assert "[champion_profile:both_classes]: missing values [1]" in str(exc.value)
    assert "[champion_profile:positive_rate]: observed 0.0" in str(exc.value)
    link = ti.xcoms[("validate", ValidationReportLink().xcom_key)]
    assert link.startswith("file://") and link.endswith("/validate/validation.html")
    assert Path(link.removeprefix("file://")).is_file()
    assert ("validate", MlflowRunLink().xcom_key) not in ti.xcoms


def test_tampered_champion_data_is_refused(gd_home, client, champion):
    path = client.get_model_version(MODEL, champion).tags[DATASET_URI]
    _frame(10, seed=9).to_parquet(path)
    dataset = _manifest(_frame(500), gd_home / "night.parquet")
    with pytest.raises(AirflowFailException, match="changed since it was written"):
        _op(dataset, champion_model_name=MODEL).execute(fake_context())


def test_schema_checks_from_a_real_feature_service(gd_home):
    from gd_provider.demo import schema
    from gd_provider.demo.feature_repo import create_feature_repo
    from gd_provider.demo.generator import GeneratorConfig, generate, write_demo_data

    data_dir = gd_home / "feature_repo" / "data"
    write_demo_data(data_dir, generate(GeneratorConfig(seed=3, days=3, n_cards=20, n_merchants=5, txns_per_day=20)))
    create_feature_repo(gd_home / "feature_repo", data_dir)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({c: rng.random(50) for c in (*schema.CARD_FEATURES, *schema.MERCHANT_NUMERIC)})
    df["merchant_category"] = "grocery"
    out = _op(_manifest(df.assign(card_id=1, event_timestamp=pd.Timestamp("2026-01-01", tz="UTC"), is_fraud=0),
                        gd_home / "ok.parquet"),
              expectations=None, feature_service=schema.FEATURE_SERVICE, log_to_mlflow=False).execute(fake_context())
    assert out["success"] is True
    n_features = len(schema.CARD_FEATURES) + len(schema.MERCHANT_NUMERIC) + 1
    assert out["evaluated"] == 2 * n_features
    assert out["notes"][0] == (f"{2 * n_features} schema checks derived from feature service 'fraud_model_v1' "
                               f"({n_features} features)")
    assert out["notes"][1:] == [n for n in out["notes"] if n.startswith("window checks NOT RUN")]

    broken = df.drop(columns=["merchant_risk_score"]).assign(card_age_days=df["card_age_days"].astype(str))
    with pytest.raises(AirflowFailException) as exc:
        _op(_manifest(broken.assign(card_id=1, event_timestamp=pd.Timestamp("2026-01-01", tz="UTC"), is_fraud=0),
                      gd_home / "bad.parquet"),
            expectations=None, feature_service=schema.FEATURE_SERVICE, log_to_mlflow=False).execute(fake_context())
    message = str(exc.value)
    assert "expect_column_to_exist(merchant_risk_score) [schema:exists]: column 'merchant_risk_score' not found" in message
    assert "expect_column_values_to_be_in_type_list(card_age_days) [schema:dtype_numeric]" in message
    with pytest.raises(AirflowFailException, match="unknown feature service 'nope'"):
        _op(_manifest(df.assign(card_id=1, event_timestamp=pd.Timestamp("2026-01-01", tz="UTC"), is_fraud=0),
                      gd_home / "x.parquet"),
            expectations=None, feature_service="nope", log_to_mlflow=False).execute(fake_context())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_failure": "maybe"}, r"on_failure must be one of \['fail', 'skip', 'branch'\], got 'maybe'"),
        ({"on_failure": "branch"}, "on_failure='branch' needs branch_on_fail"),
        ({"branch_on_fail": "quarantine"}, "branch_on_pass/branch_on_fail need on_failure='branch'"),
        ({"expectations": None}, "give expectations, feature_service or champion_model_name"),
        ({"champion_model_name": "m", "tolerances": {"nul_rate_slack": 0.1}}, r"unknown tolerances \['nul_rate_slack'\]"),
        ({"tolerances": {"null_rate_slack": 0.1}}, "tolerances apply to champion-derived checks"),
    ],
)
def test_bad_arguments_fail_when_the_dag_is_parsed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _op({"uri": "x", "sha256": "y", "rows": 0, "columns": {}}, **kwargs)


def test_two_validation_tasks_in_one_run_keep_their_reports_and_mlflow_runs_apart(gd_home, client):
    """E.g. a check of the raw data and one of the training set in the same DAG run: each task gets its own
    report folder and MLflow run, and a retry of one task updates its own run only."""
    dataset = _manifest(_frame(500), gd_home / "night.parquet")
    raw = DataValidationOperator(task_id="validate_raw", dataset=dataset, expectations=BASIC)
    train = DataValidationOperator(task_id="validate_training_set", dataset=dataset, expectations=BASIC)
    first = raw.execute(fake_context(ti=FakeTI(task_id="validate_raw")))
    second = train.execute(fake_context(ti=FakeTI(task_id="validate_training_set")))
    run_folder = gd_home / "runs" / "test_dag" / "manual__test"
    assert Path(first["report"]["json"]).parent == run_folder / "validate_raw"
    assert Path(second["report"]["json"]).parent == run_folder / "validate_training_set"
    assert first["mlflow_run_id"] != second["mlflow_run_id"]
    retry = raw.execute(fake_context(ti=FakeTI(task_id="validate_raw")))
    assert retry["mlflow_run_id"] == first["mlflow_run_id"]
    tags = {t: client.get_run(r).data.tags["gd.task"] for t, r in
            (("raw", first["mlflow_run_id"]), ("train", second["mlflow_run_id"]))}
    assert tags == {"raw": "validate_raw", "train": "validate_training_set"}
