"""The demand domain's generator, data contract, expectations and training specs (no Feast, no Airflow)."""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gd_provider.demo.demand import schema  # noqa: E402
from gd_provider.demo.demand.generator import (  # noqa: E402
    CORRUPTION_KINDS,
    FEATURE_DTYPES,
    SALE_COLUMNS,
    SNAPSHOT_FILES,
    DemandConfig,
    corrupt,
    generate,
    sales_day_path,
    write_demand_data,
)

SMALL = DemandConfig(seed=5, days=12, n_stores=4, n_products=6)


@pytest.fixture(scope="module")
def data():
    return generate(DemandConfig())


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def joined(d) -> pd.DataFrame:
    """The training set the Feast point-in-time join gives (each sale with its day's 00:00 snapshots)."""
    sales = d.sales.assign(_day=d.sales[schema.TIMESTAMP].dt.floor("D"))

    def snap(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(columns=["created"]).rename(columns={schema.TIMESTAMP: "_day"})

    out = (sales.merge(snap(d.product_stats), on=["product_id", "_day"], how="left")
           .merge(snap(d.store_stats), on=["store_id", "_day"], how="left")
           .merge(snap(d.store_product_stats), on=["store_id", "product_id", "_day"], how="left"))
    return out.drop(columns=["_day"])


def test_shapes_dtypes_and_keys(small):
    sales = small.sales
    assert tuple(sales.columns) == SALE_COLUMNS
    assert len(sales) == SMALL.days * SMALL.n_stores * SMALL.n_products
    assert sales[schema.SALE_ID].is_unique
    assert not sales.duplicated([*schema.ENTITY_KEYS, schema.TIMESTAMP]).any()
    assert str(sales[schema.TIMESTAMP].dt.tz) == "UTC"
    assert (sales[schema.TIMESTAMP].dt.hour == 21).all()  # a day's sales stamped at the store's close
    assert sales[schema.TIMESTAMP].min() == SMALL.start_timestamp + pd.Timedelta(hours=21)
    assert sales[schema.TIMESTAMP].max() < SMALL.end_timestamp
    assert sales[schema.LABEL_UNITS].dtype == np.float64
    assert (sales[schema.LABEL_UNITS] >= 0).all() and (sales[schema.LABEL_UNITS] % 1 == 0).all()
    assert set(sales[schema.LABEL_LEVEL]) <= set(schema.DEMAND_LEVELS)
    for frame, keys in ((small.product_stats, ["product_id"]), (small.store_stats, ["store_id"]),
                        (small.store_product_stats, ["store_id", "product_id"])):
        assert len(frame) == SMALL.days * int(np.prod([frame[k].nunique() for k in keys]))
        assert (frame[schema.TIMESTAMP] == frame["created"]).all()
        assert (frame[schema.TIMESTAMP].dt.hour == 0).all()
        assert not frame.duplicated([*keys, schema.TIMESTAMP]).any()
        for col in frame.columns.difference([*keys, schema.TIMESTAMP, "created"]):
            expected = object if FEATURE_DTYPES[col] == "str" else np.dtype(FEATURE_DTYPES[col])
            assert frame[col].dtype == expected, col
    assert set(small.product_stats["category"]) <= set(schema.CATEGORIES)
    assert set(small.store_stats["region"]) <= set(schema.REGIONS)


def test_deterministic_per_seed(small):
    again = generate(SMALL)
    pd.testing.assert_frame_equal(small.sales, again.sales)
    pd.testing.assert_frame_equal(small.store_product_stats, again.store_product_stats)
    other = generate(DemandConfig(seed=6, days=12, n_stores=4, n_products=6))
    assert not other.sales[schema.LABEL_UNITS].equals(small.sales[schema.LABEL_UNITS])


def test_config_is_checked():
    with pytest.raises(ValueError, match="must be >= 1"):
        DemandConfig(days=0)
    with pytest.raises(ValueError, match="promo_rate"):
        DemandConfig(promo_rate=1.5)


def test_snapshots_use_earlier_days_only(data):
    """A snapshot at day d 00:00 averages days d-7 .. d-1 (d-28 .. d-1): never the day's own sales."""
    sales = data.sales.assign(day=data.sales[schema.TIMESTAMP].dt.floor("D"))
    pair = sales[(sales.store_id == 3) & (sales.product_id == 7)].set_index("day")[schema.LABEL_UNITS]
    snaps = data.store_product_stats
    snaps = snaps[(snaps.store_id == 3) & (snaps.product_id == 7)].set_index(schema.TIMESTAMP)
    for day in pair.index[28:31]:
        prev7 = pair[(pair.index >= day - pd.Timedelta(days=7)) & (pair.index < day)]
        prev28 = pair[(pair.index >= day - pd.Timedelta(days=28)) & (pair.index < day)]
        assert snaps.loc[day, "sp_avg_units_7d"] == pytest.approx(prev7.mean(), abs=1e-4)
        assert snaps.loc[day, "sp_avg_units_28d"] == pytest.approx(prev28.mean(), abs=1e-4)
    product = sales[sales.product_id == 7].groupby("day")[schema.LABEL_UNITS].mean()
    psnap = data.product_stats[data.product_stats.product_id == 7].set_index(schema.TIMESTAMP)
    day = product.index[20]
    prev = product[(product.index >= day - pd.Timedelta(days=7)) & (product.index < day)]
    assert psnap.loc[day, "product_avg_units_7d"] == pytest.approx(prev.mean(), abs=1e-4)


def test_demand_level_is_units_against_the_pairs_28_day_average(data):
    df = joined(data)
    ratio = df[schema.LABEL_UNITS] / np.maximum(df["sp_avg_units_28d"], 0.5)
    expected = np.where(ratio < schema.LOW_RATIO, "low", np.where(ratio > schema.HIGH_RATIO, "high", "normal"))
    assert (df[schema.LABEL_LEVEL].to_numpy() == expected).all()
    shares = df[schema.LABEL_LEVEL].value_counts(normalize=True)
    assert set(shares.index) == set(schema.DEMAND_LEVELS)
    assert shares.min() > 0.1 and shares.max() < 0.6  # no class is rare, none dominates


def test_labels_are_learnable_from_the_features(data):
    """A linear model on the features, fitted on the older days, explains the units of the latest days."""
    df = joined(data)
    x = pd.get_dummies(df[list(schema.FEATURES)], columns=list(schema.CATEGORICAL_FEATURES), dtype=float)
    x = np.column_stack([x.to_numpy(dtype=float), np.ones(len(x))])
    y = df[schema.LABEL_UNITS].to_numpy()
    late = df[schema.TIMESTAMP] >= df[schema.TIMESTAMP].max() - pd.Timedelta(days=3)
    coef, *_ = np.linalg.lstsq(x[~late], y[~late], rcond=None)
    resid = y[late] - x[late] @ coef
    r2 = 1 - (resid**2).sum() / ((y[late] - y[late].mean()) ** 2).sum()
    assert r2 > 0.6
    # promotions (a lower price) sell more
    assert df.loc[df.promo == 1, schema.LABEL_LEVEL].eq("high").mean() > 2 * df.loc[
        df.promo == 0, schema.LABEL_LEVEL].eq("high").mean()


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_corruptions(small, kind):
    bad = corrupt(small.sales, kind)
    sales = small.sales
    if kind == "nan_units":
        assert bad[schema.LABEL_UNITS].isna().mean() > 0.1
    elif kind == "negative_units":
        assert (bad[schema.LABEL_UNITS] < 0).any()
    elif kind == "unknown_level":
        assert "very_high" in set(bad[schema.LABEL_LEVEL])
    elif kind == "missing_column":
        assert "price" not in bad.columns
    elif kind == "duplicates":
        assert len(bad) > len(sales) and bad[schema.SALE_ID].duplicated().any()
    pd.testing.assert_frame_equal(sales, generate(SMALL).sales)  # the input is left alone
    with pytest.raises(ValueError, match="unknown corruption kind"):
        corrupt(sales, "typo")


def test_write_layout(tmp_path, small):
    stale = tmp_path / "sales" / "1999-01-01.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    paths = write_demand_data(tmp_path, small)
    assert not stale.exists()
    days = sorted(p.name for p in (tmp_path / "sales").iterdir())
    assert len(days) == SMALL.days and days[0] == f"{SMALL.start}.parquet"
    first = pd.read_parquet(sales_day_path(tmp_path, SMALL.start))
    assert len(first) == SMALL.n_stores * SMALL.n_products and tuple(first.columns) == SALE_COLUMNS
    for view, name in SNAPSHOT_FILES.items():
        assert paths[view] == str(tmp_path / name)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), getattr(small, view))


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_training_specs(task):
    spec = schema.training_spec(task, epochs=2)
    assert spec.task == task and spec.label == schema.LABELS[task] and spec.epochs == 2
    assert spec.key_columns == schema.KEY_COLUMNS
    plugin = spec.task_plugin()
    if task == "multiclass":
        assert plugin.output_width == 3 and spec.task_options["classes"] == list(schema.DEMAND_LEVELS)
    else:
        assert spec.loss == "mse" and {"rmse", "r2"} <= set(plugin.metrics)
    with pytest.raises(ValueError, match="regression and a multiclass"):
        schema.training_spec("binary")


def test_feast_refs_cover_the_features():
    joined_features = {ref.split(":")[1] for ref in schema.FEAST_FEATURE_REFS}
    assert joined_features == set(schema.FEAST_JOINED)
    assert set(schema.FEATURES) == set(schema.SALE_NUMERIC) | joined_features


def test_expectations_pass_on_clean_data_and_name_the_broken_column(small):
    from gd_provider.core.quality import validate_dataframe
    from gd_provider.demo.demand.expectations import level_expectations, units_expectations

    df = joined(small)
    end = SMALL.end_timestamp.isoformat()
    for suite in (units_expectations, level_expectations):
        report = validate_dataframe(df, suite(end))
        assert report.success, report.summary()

    def failing(frame, suite):
        report = validate_dataframe(frame, suite(end))
        assert not report.success
        return {(f["expectation"], f.get("column")) for f in report.failures}

    nan = df.assign(units_sold=corrupt(small.sales, "nan_units")[schema.LABEL_UNITS].to_numpy())
    assert ("expect_column_values_to_not_be_null", "units_sold") in failing(nan, units_expectations)
    neg = df.assign(units_sold=corrupt(small.sales, "negative_units")[schema.LABEL_UNITS].to_numpy())
    assert ("expect_column_values_to_be_between", "units_sold") in failing(neg, units_expectations)
    unknown = df.assign(demand_level=corrupt(small.sales, "unknown_level")[schema.LABEL_LEVEL].to_numpy())
    assert ("expect_column_values_to_be_in_set", "demand_level") in failing(unknown, level_expectations)
    assert validate_dataframe(unknown, units_expectations(end)).success  # the other model's label: not its business
    late = df.assign(event_timestamp=df[schema.TIMESTAMP] + pd.Timedelta(days=1))
    assert ("expect_column_values_to_be_between", schema.TIMESTAMP) in failing(late, units_expectations)


@pytest.mark.parametrize("name", ["demand_regression", "demand_level_multiclass"])
def test_the_example_configs_validate(name):
    """The example DAGs' configs (an invalid one would be an import error of every DAG test's DagBag)."""
    from pathlib import Path

    from gd_provider.dag_factory import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "example_dags" / "configs" / f"{name}.yaml")
    task = "regression" if name == "demand_regression" else "multiclass"
    assert cfg.training["task"] == task and cfg.training["label"] == schema.LABELS[task]
    assert cfg.feast_conn_id == "feast_demand" and cfg.features.feature_service == schema.FEATURE_SERVICE
    assert cfg.training["key_columns"] == list(schema.KEY_COLUMNS)
    assert set(cfg.training["numeric_features"]) == set(schema.NUMERIC_FEATURES)
    assert set(cfg.training["categorical_features"]) == set(schema.CATEGORICAL_FEATURES)
    assert cfg.freshness.feature_views == list(schema.VIEWS)
