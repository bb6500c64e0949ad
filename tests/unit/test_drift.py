"""Drift check with pinned methods (Evidently 0.7.23) and the go/no-go policies."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gd_provider.core.drift import (  # noqa: E402
    POLICIES,
    DriftConfigError,
    DriftReport,
    apply_drift_policy,
    detect_drift,
)
from gd_provider.demo import schema  # noqa: E402

NUMERIC = ["amount", "distance_from_home_km", "card_avg_amount_7d", "merchant_risk_score"]
CATEGORICAL = ["channel", "merchant_category"]


def make_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "distance_from_home_km": rng.exponential(10, n),
            "card_avg_amount_7d": rng.gamma(4.0, 5.0, n),
            "merchant_risk_score": rng.beta(2, 5, n),
            "channel": rng.choice(list(schema.CHANNELS), n, p=[0.4, 0.3, 0.1, 0.2]),
            "merchant_category": rng.choice(list(schema.MERCHANT_CATEGORIES), n),
            schema.LABEL: (rng.random(n) < 0.05).astype(int),  # not a drift column
        }
    )


def drift(ref: pd.DataFrame, cur: pd.DataFrame, **kwargs) -> DriftReport:
    return detect_drift(ref, cur, numeric_columns=NUMERIC, categorical_columns=CATEGORICAL, **kwargs)


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return make_frame(3000, seed=1)


def test_same_distribution_has_no_drift(ref):
    report = drift(ref, make_frame(3000, seed=2))
    assert report.drifted_columns == []
    assert report.share_drifted == 0.0 and not report.dataset_drift
    assert set(report.columns) == set(NUMERIC + CATEGORICAL)
    for name, col in report.columns.items():
        assert col["method"] == ("wasserstein" if name in NUMERIC else "jensenshannon")
        assert col["threshold"] == 0.1
        assert 0 <= col["score"] < 0.1
    assert report.method == "num=wasserstein,cat=jensenshannon"
    assert not report.sampled and report.reference_rows == 3000 and report.current_rows == 3000
    json.dumps(report.to_dict())


def test_shifted_numeric_column_drifts(ref):
    cur = make_frame(3000, seed=2)
    cur["amount"] = cur["amount"] * 2.0
    report = drift(ref, cur)
    assert report.drifted_columns == ["amount"]
    assert report.columns["amount"]["drifted"] and report.columns["amount"]["score"] > 0.1
    assert report.share_drifted == pytest.approx(1 / 6)
    assert not report.dataset_drift


def test_shifted_categorical_and_dataset_drift(ref):
    cur = make_frame(3000, seed=2)
    cur["amount"] *= 2.0
    cur["distance_from_home_km"] += 20
    cur["card_avg_amount_7d"] *= 3
    cur["channel"] = "atm"
    report = drift(ref, cur)
    assert set(report.drifted_columns) == {"amount", "distance_from_home_km", "card_avg_amount_7d", "channel"}
    assert report.dataset_drift  # 4/6 >= 0.5
    assert not drift(ref, cur, drift_share=0.8).dataset_drift


def test_method_pinned_regardless_of_reference_size():
    cur = make_frame(500, seed=3)
    small = drift(make_frame(500, seed=4), cur)
    large = drift(make_frame(5000, seed=4), cur)
    for name in NUMERIC + CATEGORICAL:
        assert small.columns[name]["method"] == large.columns[name]["method"]
        assert small.columns[name]["threshold"] == large.columns[name]["threshold"] == 0.1
    assert {c["method"] for c in small.columns.values()} == {"wasserstein", "jensenshannon"}


def test_sampling_is_deterministic():
    ref, cur = make_frame(4000, seed=5), make_frame(2500, seed=6)
    a = drift(ref, cur, sample_size=1000, seed=7)
    b = drift(ref, cur, sample_size=1000, seed=7)
    c = drift(ref, cur, sample_size=1000, seed=8)
    assert a.sampled and a.reference_rows == 4000 and a.current_rows == 2500
    assert a.reference_sample_rows == a.current_sample_rows == 1000
    assert {k: v["score"] for k, v in a.columns.items()} == {k: v["score"] for k, v in b.columns.items()}
    assert {k: v["score"] for k, v in a.columns.items()} != {k: v["score"] for k, v in c.columns.items()}
    # No sampling when frames are small enough.
    full = drift(ref, cur, sample_size=5000)
    assert not full.sampled and full.reference_sample_rows == 4000


def test_per_column_override(ref):
    cur = make_frame(3000, seed=2)
    cur["amount"] *= 1.3
    report = drift(
        ref, cur, per_column={"amount": {"method": "ks", "threshold": 0.05}, "channel": {"threshold": 0.3}}
    )
    assert report.columns["amount"]["method"] == "ks" and report.columns["amount"]["threshold"] == 0.05
    assert report.columns["amount"]["drifted"]  # p-value below 0.05
    assert report.columns["amount"]["score"] < 0.05
    assert report.columns["channel"] == {
        **report.columns["channel"],
        "method": "jensenshannon",
        "threshold": 0.3,
    }
    assert "amount=ks@0.05" in report.method


def test_config_errors(ref):
    with pytest.raises(DriftConfigError, match="card_age_days"):
        detect_drift(ref, ref, numeric_columns=["amount", "card_age_days"], categorical_columns=[])
    with pytest.raises(DriftConfigError, match="current.*'channel'"):
        drift(ref, ref.drop(columns=["channel"]))
    with pytest.raises(DriftConfigError, match="no_such_test"):
        drift(ref, ref, numeric_method="no_such_test")
    with pytest.raises(DriftConfigError, match="per_column"):
        drift(ref, ref, per_column={"not_a_column": {"threshold": 0.2}})
    with pytest.raises(DriftConfigError, match="all-null"):
        drift(ref, ref.assign(amount=np.nan))
    with pytest.raises(DriftConfigError, match="Inf"):
        drift(ref, ref.assign(amount=np.inf))


def test_writes_html_and_json(ref, tmp_path):
    report = drift(ref, make_frame(1000, seed=9), out_dir=tmp_path / "drift")
    assert report.html_path and report.json_path
    assert Path(report.html_path).read_text()[:500].lstrip().lower().startswith("<!doctype html>")
    payload = json.loads(Path(report.json_path).read_text())
    assert set(payload["columns"]) == set(NUMERIC + CATEGORICAL)
    assert "evidently" in payload and payload["dataset_drift"] == report.dataset_drift


def _report(drifted: list[str], n_cols: int = 4, drift_share: float = 0.5) -> DriftReport:
    names = ["amount", "channel", "distance_from_home_km", "merchant_category"][:n_cols]
    share = len(drifted) / n_cols
    return DriftReport(
        share_drifted=share,
        drifted_columns=drifted,
        dataset_drift=share >= drift_share,
        columns={
            n: {
                "method": "wasserstein",
                "score": 0.5 if n in drifted else 0.01,
                "threshold": 0.1,
                "drifted": n in drifted,
            }
            for n in names
        },
        method="num=wasserstein,cat=jensenshannon",
        reference_rows=100,
        current_rows=100,
        sampled=False,
        drift_share=drift_share,
    )


@pytest.mark.parametrize(
    ("policy", "drifted", "proceed", "level"),
    [
        ("retrain", [], True, "ok"),
        ("retrain", ["amount", "channel"], True, "ok"),
        ("warn", [], True, "ok"),
        ("warn", ["amount"], True, "warn"),
        ("warn", ["amount", "channel"], True, "warn"),
        ("block", [], True, "ok"),
        ("block", ["amount"], True, "warn"),
        ("block", ["amount", "channel"], False, "block"),
    ],
)
def test_policies(policy, drifted, proceed, level):
    decision = apply_drift_policy(_report(drifted), policy)
    assert (decision.proceed, decision.level) == (proceed, level)
    assert f"share {len(drifted) / 4:.2f}" in decision.message
    for col in drifted:
        assert col in decision.message
    if policy == "retrain" and drifted:
        assert "reason to retrain" in decision.message


def test_unknown_policy():
    with pytest.raises(ValueError, match="retrain, warn, block"):
        apply_drift_policy(_report([]), "panic")
    assert POLICIES == ("retrain", "warn", "block")


def test_static_drift_method_table_matches_evidentlys_registry():
    """The parse-time table (no Evidently import) lists exactly what Evidently accepts per column kind."""
    from evidently.core.datasets import ColumnType
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    from gd_provider.core.drift_methods import CATEGORICAL_METHODS, NUMERIC_METHODS

    registered = {kind: {name for name, by_type in _registered_stat_tests.items() if kind in by_type}
                  for kind in (ColumnType.Numerical, ColumnType.Categorical)}
    assert registered[ColumnType.Numerical] == NUMERIC_METHODS
    assert registered[ColumnType.Categorical] == CATEGORICAL_METHODS


def test_drift_methods_are_checked_when_the_dag_is_parsed():
    from gd_provider.operators.drift import DriftCheckOperator

    kwargs = {"task_id": "drift", "dataset": {}, "model_name": "m", "numeric_columns": ["amount"],
              "categorical_columns": ["channel"]}
    with pytest.raises(ValueError, match=r"numeric_method: 'wasserstien' is not a drift method"):
        DriftCheckOperator(**kwargs, numeric_method="wasserstien")
    with pytest.raises(ValueError, match=r"categorical_method: 'ks' .* \(it is a numeric method\)"):
        DriftCheckOperator(**kwargs, categorical_method="ks")
    with pytest.raises(ValueError, match=r"per_column\['channel'\].method: 'wasserstein'"):
        DriftCheckOperator(**kwargs, per_column={"channel": {"method": "wasserstein"}})
    DriftCheckOperator(**kwargs, per_column={"amount": {"method": "ks", "threshold": 0.05}})
