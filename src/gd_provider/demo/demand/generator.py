"""Seeded generator of synthetic daily unit sales per store and product (the demand domain).

The latent structure makes both labels learnable from the features:

* every product has a category, a base price, a base demand and a price elasticity (by category);
* every store has a region, a traffic level (its size and footfall follow it) and a small price level;
* every store-product pair has an affinity (regional taste);
* a day's expected units are ``base demand x store traffic x affinity x day-of-week x holiday x daily store
  shock x (price / base price) ** -elasticity x promo display uplift``; units sold are Poisson around it.

Feature snapshots (``product_stats``, ``store_stats``, ``store_product_stats``) are daily, stamped 00:00
UTC, and computed only from *earlier* days (a 28-day warm-up before ``start`` is simulated and not
returned), so the point-in-time join never leaks a day's own sales into its features. ``demand_level``
compares a day's units with the pair's 28-day average known that morning (``sp_avg_units_28d``).

The default config (12 stores x 25 products x 40 days = 12,000 sale rows) generates in well under a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gd_provider.demo.demand import schema

# dtypes of the feature-view columns (the Feast repo derives its Field types from this).
FEATURE_DTYPES: dict[str, str] = {
    "base_price": "float64",
    "product_avg_units_7d": "float64",
    "product_avg_units_28d": "float64",
    "category": "str",
    "store_size_sqm": "float64",
    "footfall_7d": "float64",
    "store_avg_units_7d": "float64",
    "region": "str",
    "sp_avg_units_7d": "float64",
    "sp_avg_units_28d": "float64",
}

SALE_COLUMNS = (
    schema.SALE_ID,
    "store_id",
    "product_id",
    schema.TIMESTAMP,
    *schema.SALE_NUMERIC,
    schema.LABEL_UNITS,
    schema.LABEL_LEVEL,
)

CORRUPTION_KINDS = ("nan_units", "negative_units", "unknown_level", "missing_column", "duplicates")

_WARMUP_DAYS = 28
_DAY_NS = 86_400 * 10**9
_CLOSE_HOUR = 21  # a day's sales are stamped at the store's close, 21:00 UTC

# per category, in the order of schema.CATEGORIES: grocery, beverages, snacks, household, personal_care
_CAT_PRICE = np.array([3.0, 2.2, 1.8, 6.5, 5.0])
_CAT_DEMAND = np.array([35.0, 45.0, 30.0, 12.0, 15.0])
_CAT_ELASTICITY = np.array([1.2, 1.8, 2.2, 1.0, 1.5])
_CAT_SHARE = np.array([0.3, 0.2, 0.2, 0.15, 0.15])
_DOW = np.array([0.9, 0.85, 0.9, 0.95, 1.1, 1.35, 1.2])  # Monday .. Sunday
_HOLIDAY_UPLIFT = 1.4
_PROMO_UPLIFT = 1.2  # display / flyer effect on top of the price effect
_PROMO_DISCOUNTS = np.array([0.1, 0.2, 0.3])


@dataclass
class DemandConfig:
    seed: int = 11
    start: str = "2026-01-01"
    days: int = 40
    n_stores: int = 12
    n_products: int = 25
    promo_rate: float = 0.08  # share of (product, day) on promotion (all stores)
    markdown_rate: float = 0.05  # share of (store, product, day) with a 5 % markdown outside promotions
    holiday_rate: float = 0.05

    def __post_init__(self) -> None:
        if self.days < 1 or self.n_stores < 1 or self.n_products < 1:
            raise ValueError(f"days, n_stores and n_products must be >= 1: {self!r}")
        for name in ("promo_rate", "markdown_rate", "holiday_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1): {getattr(self, name)}")

    @property
    def start_timestamp(self) -> pd.Timestamp:
        ts = pd.Timestamp(self.start)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ts.normalize()

    @property
    def end_timestamp(self) -> pd.Timestamp:
        """Exclusive end: 00:00 UTC of the day after the last generated day."""
        return self.start_timestamp + pd.Timedelta(days=self.days)


@dataclass
class DemandData:
    sales: pd.DataFrame
    product_stats: pd.DataFrame
    store_stats: pd.DataFrame
    store_product_stats: pd.DataFrame


def _window_mean(cum: np.ndarray, snap: np.ndarray, window: int) -> np.ndarray:
    """Mean over days [s - window, s) along the last axis of the day-cumulated ``cum`` (leading zero)."""
    lo = np.maximum(snap - window, 0)
    return (cum[..., snap] - cum[..., lo]) / np.maximum(snap - lo, 1)


def _cumulate(daily: np.ndarray) -> np.ndarray:
    zeros = np.zeros((*daily.shape[:-1], 1), dtype=np.float64)
    return np.concatenate([zeros, np.cumsum(daily, axis=-1, dtype=np.float64)], axis=-1)


def generate(config: DemandConfig | None = None) -> DemandData:
    """Generate sale rows plus the three daily feature snapshots (deterministic per seed)."""
    cfg = config or DemandConfig()
    rng = np.random.default_rng(cfg.seed)
    n_s, n_p, warm = cfg.n_stores, cfg.n_products, _WARMUP_DAYS
    n_days = warm + cfg.days  # simulated days; day ``warm`` is ``start``
    sim_start = cfg.start_timestamp - pd.Timedelta(days=warm)
    sim_start_ns = sim_start.value

    # ---- latent product / store / pair state
    category = rng.choice(len(schema.CATEGORIES), size=n_p, p=_CAT_SHARE)
    base_price = np.round(np.exp(rng.normal(np.log(_CAT_PRICE[category]), 0.35)), 2).clip(0.29, None)
    base_demand = np.exp(rng.normal(np.log(_CAT_DEMAND[category]), 0.45))
    elasticity = _CAT_ELASTICITY[category] * np.exp(rng.normal(0.0, 0.1, n_p))
    region = rng.integers(0, len(schema.REGIONS), n_s)
    traffic = np.exp(rng.normal(0.0, 0.35, n_s))
    size_sqm = np.round(900.0 * traffic * np.exp(rng.normal(0.0, 0.12, n_s)), -1)
    price_level = np.exp(rng.normal(0.0, 0.03, n_s))
    affinity = np.exp(rng.normal(0.0, 0.25, (n_s, n_p)))

    # ---- calendar
    dates = pd.date_range(sim_start, periods=n_days, freq="D")
    dow = dates.dayofweek.to_numpy()
    holiday = (rng.random(n_days) < cfg.holiday_rate).astype(np.int64)
    day_factor = _DOW[dow] * np.where(holiday == 1, _HOLIDAY_UPLIFT, 1.0)  # (D,)
    shock = np.exp(rng.normal(0.0, 0.05, (n_s, n_days)))  # weather, local events: store-wide

    # ---- prices: promotions per (product, day) in every store, markdowns per (store, product, day)
    promo_pd = rng.random((n_p, n_days)) < cfg.promo_rate
    promo_discount = _PROMO_DISCOUNTS[rng.integers(0, len(_PROMO_DISCOUNTS), (n_p, n_days))]
    markdown = rng.random((n_s, n_p, n_days)) < cfg.markdown_rate
    promo = np.broadcast_to(promo_pd[None], (n_s, n_p, n_days))
    discount = np.where(promo, promo_discount[None], np.where(markdown, 0.05, 0.0))
    price = np.round(base_price[None, :, None] * price_level[:, None, None] * (1.0 - discount), 2)

    # ---- demand
    rel_price = price / base_price[None, :, None]
    lam = (
        base_demand[None, :, None]
        * traffic[:, None, None]
        * affinity[:, :, None]
        * day_factor[None, None, :]
        * shock[:, None, :]
        * rel_price ** (-elasticity[None, :, None])
        * np.where(promo, _PROMO_UPLIFT, 1.0)
    )
    units = rng.poisson(lam).astype(np.float64)  # (S, P, D)
    footfall = np.round(1500.0 * traffic[:, None] * day_factor[None, :] * shock * np.exp(rng.normal(0, 0.03, (n_s, n_days))))

    # ---- daily snapshots for the output days, from earlier days only
    snap = np.arange(warm, n_days, dtype=np.int64)
    snap_ts = pd.DatetimeIndex(sim_start_ns + snap * _DAY_NS, tz="UTC")
    n_snap = len(snap)
    cum_sp = _cumulate(units)
    sp7 = _window_mean(cum_sp, snap, 7)  # (S, P, n_snap)
    sp28 = _window_mean(cum_sp, snap, 28)
    cum_p = _cumulate(units.mean(axis=0))
    p7, p28 = _window_mean(cum_p, snap, 7), _window_mean(cum_p, snap, 28)  # (P, n_snap)
    s7 = _window_mean(_cumulate(units.mean(axis=1)), snap, 7)  # (S, n_snap)
    foot7 = _window_mean(_cumulate(footfall), snap, 7)

    categories = np.array(schema.CATEGORIES, dtype=object)
    regions = np.array(schema.REGIONS, dtype=object)
    product_ids = np.arange(1, n_p + 1, dtype=np.int64)
    store_ids = np.arange(1, n_s + 1, dtype=np.int64)
    product_stats = pd.DataFrame({
        "product_id": np.tile(product_ids, n_snap),
        schema.TIMESTAMP: np.repeat(snap_ts, n_p),
        "created": np.repeat(snap_ts, n_p),
        "base_price": np.tile(base_price, n_snap).astype(np.float64),
        "product_avg_units_7d": np.round(p7.T.ravel(), 4),
        "product_avg_units_28d": np.round(p28.T.ravel(), 4),
        "category": np.tile(categories[category], n_snap),
    })
    store_stats = pd.DataFrame({
        "store_id": np.tile(store_ids, n_snap),
        schema.TIMESTAMP: np.repeat(snap_ts, n_s),
        "created": np.repeat(snap_ts, n_s),
        "store_size_sqm": np.tile(size_sqm, n_snap).astype(np.float64),
        "footfall_7d": np.round(foot7.T.ravel(), 2),
        "store_avg_units_7d": np.round(s7.T.ravel(), 4),
        "region": np.tile(regions[region], n_snap),
    })
    # pair rows in (day, store, product) order
    store_product_stats = pd.DataFrame({
        "store_id": np.tile(np.repeat(store_ids, n_p), n_snap),
        "product_id": np.tile(np.tile(product_ids, n_s), n_snap),
        schema.TIMESTAMP: np.repeat(snap_ts, n_s * n_p),
        "created": np.repeat(snap_ts, n_s * n_p),
        "sp_avg_units_7d": np.round(sp7.transpose(2, 0, 1).ravel(), 4),
        "sp_avg_units_28d": np.round(sp28.transpose(2, 0, 1).ravel(), 4),
    })

    # ---- the returned sales: output days only, (day, store, product) order
    def out(a: np.ndarray) -> np.ndarray:  # (S, P, D) -> rows of the output days
        return a[:, :, warm:].transpose(2, 0, 1).ravel()

    full = (n_s, n_p, n_days)
    units_out = out(units)
    baseline = np.round(sp28.transpose(2, 0, 1).ravel(), 4)
    ratio = units_out / np.maximum(baseline, 0.5)
    levels = np.array(schema.DEMAND_LEVELS, dtype=object)
    level = levels[np.where(ratio < schema.LOW_RATIO, 0, np.where(ratio > schema.HIGH_RATIO, 2, 1))]
    day_idx = out(np.broadcast_to(np.arange(n_days)[None, None, :], full))
    store_idx = out(np.broadcast_to(np.arange(n_s)[:, None, None], full))
    product_idx = out(np.broadcast_to(np.arange(n_p)[None, :, None], full))
    day_str = np.array([d.strftime("%Y%m%d") for d in dates], dtype=object)
    sale_id = [f"s{day_str[d]}-{s + 1:03d}-{p + 1:04d}" for d, s, p in zip(day_idx, store_idx, product_idx, strict=True)]
    sales = pd.DataFrame({
        schema.SALE_ID: np.array(sale_id, dtype=object),
        "store_id": store_idx.astype(np.int64) + 1,
        "product_id": product_idx.astype(np.int64) + 1,
        schema.TIMESTAMP: pd.DatetimeIndex(sim_start_ns + day_idx * _DAY_NS + _CLOSE_HOUR * 3600 * 10**9, tz="UTC"),
        "price": out(price).astype(np.float64),
        "discount_pct": np.round(out(discount) * 100.0, 1),
        "promo": out(promo).astype(np.int64),
        "day_of_week": dow[day_idx].astype(np.int64),
        "is_holiday": holiday[day_idx].astype(np.int64),
        schema.LABEL_UNITS: units_out,
        schema.LABEL_LEVEL: level,
    })
    return DemandData(sales=sales, product_stats=product_stats, store_stats=store_stats,
                      store_product_stats=store_product_stats)


def corrupt(sales: pd.DataFrame, kind: str, seed: int = 0) -> pd.DataFrame:
    """A copy of ``sales`` broken in one way that validation should catch (see CORRUPTION_KINDS).

    ``nan_units``: 20 % of ``units_sold`` missing (a feed glitch); ``negative_units``: returns netted into
    10 % of the rows; ``unknown_level``: 5 % of ``demand_level`` is ``"very_high"``, a class the multiclass
    model does not declare; ``missing_column``: no ``price``; ``duplicates``: 10 % of the rows twice."""
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; valid kinds: {', '.join(CORRUPTION_KINDS)}")
    rng = np.random.default_rng(seed)
    out = sales.copy()
    n = len(out)
    if kind == "nan_units":
        out[schema.LABEL_UNITS] = out[schema.LABEL_UNITS].astype(np.float64).mask(rng.random(n) < 0.2)
    elif kind == "negative_units":
        mask = rng.random(n) < 0.1
        out.loc[mask, schema.LABEL_UNITS] = -out.loc[mask, schema.LABEL_UNITS].abs() - 1.0
    elif kind == "unknown_level":
        out.loc[rng.random(n) < 0.05, schema.LABEL_LEVEL] = "very_high"
    elif kind == "missing_column":
        out = out.drop(columns=["price"])
    elif kind == "duplicates":
        dup = out.sample(frac=0.1, random_state=seed) if n else out
        out = pd.concat([out, dup], ignore_index=True)
    return out


_DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.parquet$")
SNAPSHOT_FILES = {
    schema.PRODUCT_VIEW: "product_stats.parquet",
    schema.STORE_VIEW: "store_stats.parquet",
    schema.STORE_PRODUCT_VIEW: "store_product_stats.parquet",
}


def sales_day_path(data_dir: str | Path, day: str | pd.Timestamp) -> Path:
    """Path of one day's sales file under ``data_dir`` (``sales/YYYY-MM-DD.parquet``)."""
    return Path(data_dir) / "sales" / f"{pd.Timestamp(day).strftime('%Y-%m-%d')}.parquet"


def write_demand_data(data_dir: str | Path, data: DemandData) -> dict[str, str]:
    """Write the data as parquet; returns the paths of the three snapshot files and the sales folder.

    Sales go to one file per UTC day (``sales/YYYY-MM-DD.parquet``, the label source); day files left from
    an earlier call are removed first, so the folder holds exactly this data."""
    root = Path(data_dir).resolve()
    sales_dir = root / "sales"
    sales_dir.mkdir(parents=True, exist_ok=True)
    for old in sales_dir.iterdir():
        if _DAY_FILE.match(old.name):
            old.unlink()
    paths = {}
    for view, name in SNAPSHOT_FILES.items():
        getattr(data, view).to_parquet(root / name, index=False)
        paths[view] = str(root / name)
    days = data.sales[schema.TIMESTAMP].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d")
    for day_name, part in data.sales.groupby(days, sort=True):
        part.reset_index(drop=True).to_parquet(sales_dir / f"{day_name}.parquet", index=False)
    paths["sales"] = str(sales_dir)
    return paths
