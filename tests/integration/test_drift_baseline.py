"""Baseline mode of the drift check, with real Evidently and a real MLflow store: a column that moves every
night is ordinary, the same score on a column that never moves is unusual."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gd_provider.core import registry
from gd_provider.core.data import write_dataset
from gd_provider.core.drift_baseline import DriftBaseline, DriftBaselineError, judge_against_baseline
from gd_provider.core.lineage import DATASET_SHA256, DATASET_URI
from gd_provider.core.tracking import drift_score_history, log_check_run
from gd_provider.links import ReportLink
from gd_provider.operators.drift import DriftCheckOperator

from ..support import fake_context, register_scorer

pytestmark = pytest.mark.integration


def test_judging_against_history_and_bad_settings():
    settings = DriftBaseline(nights=10, k=3.0, min_nights=5)
    history = {"temperature": [0.30, 0.35, 0.28, 0.33, 0.31], "amount": [0.01, 0.02, 0.01, 0.015, 0.012],
               "new": [0.1]}
    verdicts = judge_against_baseline({"temperature": 0.34, "amount": 0.2, "new": 0.3}, history, settings,
                                      fixed={"temperature": True, "amount": True, "new": True})
    assert verdicts["temperature"]["drifted"] is False and verdicts["temperature"]["basis"] == "baseline"
    assert verdicts["amount"]["drifted"] is True and verdicts["amount"]["limit"] < 0.05
    assert verdicts["new"] == {"score": 0.3, "drifted": True, "basis": "fixed_threshold", "nights": 1}
    with pytest.raises(DriftBaselineError, match="min_nights"):
        DriftBaseline.from_dict({"nights": 3, "min_nights": 5})
    with pytest.raises(DriftBaselineError, match="unknown key"):
        DriftBaseline.from_dict({"window": 3})


def _frame(n: int, shift_season: float, shift_amount: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) * 60, "s"),
        "temperature": rng.normal(shift_season, 1.0, n),
        "amount": rng.normal(shift_amount, 1.0, n),
        "is_fraud": (rng.random(n) < 0.1).astype(int),
    })


def test_the_operator_flags_only_what_is_unusual_for_the_column(gd_home, mlflow_config, monkeypatch):
    from gd_provider.hooks.mlflow import MlflowHook

    client = MlflowHook().get_conn()
    name = "weather_model"
    experiment = registry.ensure_experiment(client, name, MlflowHook().get_config().artifact_root)
    ref = write_dataset(_frame(4000, 0.0, 0.0, 1), str(gd_home / "ref.parquet"))
    version = register_scorer(client, experiment, name, "d/r0", {DATASET_URI: ref.uri, DATASET_SHA256: ref.sha256})
    registry.promote(client, name, version, actor="scheduler", reason="first")
    # six past nights: temperature always moves (seasons), amount never does
    for night in range(6):
        log_check_run(client, experiment, run_key=f"d/past{night}", kind="drift_check", task="drift_check",
                      metrics={"drift_score.temperature": 0.45 + 0.02 * night, "drift_score.amount": 0.02})
    assert len(drift_score_history(client, experiment, exclude_run_key="d/none")["temperature"]) == 6

    tonight = write_dataset(_frame(4000, 0.5, 0.0, 2), str(gd_home / "cur.parquet")).to_dict()  # a usual night
    kw = dict(task_id="drift_check", dataset=tonight, model_name=name, numeric_columns=["temperature", "amount"],
              policy="block", threshold=0.1, drift_share=0.5, prediction_drift=False)
    with pytest.raises(Exception, match="drift gate blocked"):  # the fixed threshold blocks an ordinary night
        DriftCheckOperator(**kw).execute(fake_context(run_id="n1"))
    context = fake_context(run_id="n2")
    out = DriftCheckOperator(**kw, baseline={"nights": 10, "k": 3.0, "min_nights": 5}).execute(context)
    # the report link is the MLflow UI's view of the logged HTML report: an http link the Airflow UI shows
    link = context["ti"].xcoms[("task", ReportLink().xcom_key)]
    assert link.startswith("http") and "/artifactPath/" in link and link.endswith(".html") and link == out["report_url"]
    assert out["status"] == "ok" and out["drifted_columns"] == []
    assert out["baseline"]["columns"]["temperature"]["basis"] == "baseline"
    assert out["baseline"]["columns"]["temperature"]["score"] > 0.1  # above the fixed threshold, yet usual

    unusual = write_dataset(_frame(4000, 0.5, 0.6, 3), str(gd_home / "odd.parquet")).to_dict()
    with pytest.raises(Exception, match="drift gate blocked") as err:
        DriftCheckOperator(**{**kw, "dataset": unusual, "drift_share": 0.5},
                           baseline={"nights": 10, "k": 3.0, "min_nights": 5}).execute(fake_context(run_id="n3"))
    assert "amount" in str(err.value)
