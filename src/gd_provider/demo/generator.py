"""Seeded generator of synthetic card transactions for fraud detection.

The data has a latent structure that makes the label learnable from the features:

* every card has a latent risk, a typical spend level, a travel propensity and an age;
* every merchant has a category and a latent risk (riskier categories: gaming, electronics, travel);
* a transaction's fraud probability is a logistic function of the card risk, the merchant risk and the
  transaction itself (amount relative to the card's usual spend, foreign, night hour, online, distance),
  with the intercept solved so that the overall fraud rate is ``target_fraud_rate``.

Feature snapshots (``card_stats``, ``merchant_stats``) are daily, stamped 00:00 UTC, and computed only
from transactions of *earlier* days (plus a warm-up period before ``start`` that is simulated but not
returned), so a point-in-time join never leaks the same day's future into training data.

Everything is vectorized numpy; the default config (90k transactions) generates in about a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gd_provider.demo import schema

# dtypes of the feature-view columns (the Feast repo derives its Field types from this).
FEATURE_DTYPES: dict[str, str] = {
    "card_txn_count_7d": "int64",
    "card_avg_amount_7d": "float64",
    "card_std_amount_7d": "float64",
    "card_chargeback_rate_90d": "float64",
    "card_age_days": "int64",
    "card_credit_limit": "float64",
    "card_distinct_merchants_7d": "int64",
    "merchant_fraud_rate_30d": "float64",
    "merchant_avg_amount_30d": "float64",
    "merchant_txn_count_30d": "int64",
    "merchant_risk_score": "float64",
    "merchant_category": "str",
}

# Two optional snapshot features (``GeneratorConfig(extra_features=True)``), appended after the default
# columns of their view: 16 + 2 numeric + 2 categorical = 20 model features with the transaction columns.
# They are derived from the same simulated transactions without drawing random numbers, so every other
# column is identical with or without them. The default demo does not generate them.
EXTRA_CARD_FEATURES = ("card_avg_amount_30d",)
EXTRA_MERCHANT_FEATURES = ("merchant_fraud_rate_7d",)
EXTRA_FEATURE_DTYPES: dict[str, str] = {"card_avg_amount_30d": "float64", "merchant_fraud_rate_7d": "float64"}
EXTRA_FEATURES = EXTRA_CARD_FEATURES + EXTRA_MERCHANT_FEATURES

TRANSACTION_COLUMNS = (
    schema.TRANSACTION_ID,
    "card_id",
    "merchant_id",
    schema.TIMESTAMP,
    "amount",
    "hour_of_day",
    "is_foreign",
    "is_online",
    "distance_from_home_km",
    "channel",
    schema.LABEL,
)

CORRUPTION_KINDS = (
    "nulls",
    "negative_amount",
    "single_class",
    "missing_column",
    "duplicates",
    "label_out_of_range",
)

_WARMUP_DAYS = 30  # simulated before ``start`` so the 7d/30d windows are full on the first day
_CHARGEBACK_WINDOW = 90
_DAY_NS = 86_400 * 10**9

# Per-category parameters, in the order of schema.MERCHANT_CATEGORIES:
# grocery, electronics, travel, gaming, fuel, restaurant, fashion
_CAT_AMOUNT = np.array([0.8, 2.5, 3.0, 0.6, 0.7, 0.6, 1.3])
_CAT_RISK = np.array([-0.6, 0.6, 0.4, 0.8, -0.3, -0.5, 0.1])
_CAT_POPULARITY = np.array([0.25, 0.10, 0.06, 0.08, 0.14, 0.22, 0.15])
# channel probabilities per category, columns in the order of schema.CHANNELS: pos, online, atm, contactless
_CAT_CHANNEL = np.array(
    [
        [0.47, 0.08, 0.05, 0.40],
        [0.35, 0.55, 0.00, 0.10],
        [0.15, 0.80, 0.00, 0.05],
        [0.05, 0.92, 0.00, 0.03],
        [0.52, 0.02, 0.06, 0.40],
        [0.45, 0.15, 0.00, 0.40],
        [0.45, 0.35, 0.00, 0.20],
    ]
)
# relative transaction volume per hour of day (UTC); nights are quiet
_HOUR_WEIGHTS = np.array(
    [0.8, 0.5, 0.4, 0.3, 0.3, 0.5, 1.2, 2.0, 3.0, 4.0, 4.5, 5.0]
    + [5.5, 5.0, 4.5, 4.5, 5.0, 5.5, 6.0, 6.0, 5.5, 4.0, 3.0, 1.8]
)
_NIGHT_HOURS = 6  # hours 0..5 count as night for the fraud model

# fraud logit coefficients
_B_CARD_RISK = 1.0
_B_YOUNG_CARD = 0.4
_B_MERCHANT_RISK = 1.0
_B_AMOUNT_RATIO = 0.9
_B_FOREIGN = 0.9
_B_NIGHT = 1.0
_B_ONLINE = 0.6
_B_DISTANCE = 0.2
_B_CHANNEL = np.array([0.0, 0.0, 0.4, -0.5])  # pos, online (covered by _B_ONLINE), atm, contactless


@dataclass
class GeneratorConfig:
    seed: int = 7
    start: str = "2026-01-01"
    days: int = 60
    n_cards: int = 2000
    n_merchants: int = 200
    txns_per_day: int = 1500
    target_fraud_rate: float = 0.03
    extra_features: bool = False  # add EXTRA_CARD_FEATURES / EXTRA_MERCHANT_FEATURES to the snapshots

    def __post_init__(self) -> None:
        if self.days < 1 or self.n_cards < 1 or self.n_merchants < 1 or self.txns_per_day < 1:
            raise ValueError(f"days, n_cards, n_merchants and txns_per_day must be >= 1: {self!r}")
        if not 0.0 < self.target_fraud_rate < 0.5:
            raise ValueError(f"target_fraud_rate must be in (0, 0.5): {self.target_fraud_rate}")

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
class DemoData:
    transactions: pd.DataFrame
    card_stats: pd.DataFrame
    merchant_stats: pd.DataFrame


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(logit_wo_intercept: np.ndarray, target: float) -> float:
    """Intercept b0 with mean(sigmoid(b0 + z)) == target (bisection; the mean is monotone in b0)."""
    lo, hi = -30.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(mid + logit_wo_intercept).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _window_sums(daily: np.ndarray, snapshot_days: np.ndarray, window: int) -> np.ndarray:
    """For each row of ``daily`` (entities x days) the sum over days [s - window, s) for each s."""
    cum = np.concatenate([np.zeros((daily.shape[0], 1), dtype=daily.dtype), np.cumsum(daily, axis=1)], axis=1)
    lo = np.maximum(snapshot_days - window, 0)
    return cum[:, snapshot_days] - cum[:, lo]


def _daily(entity: np.ndarray, day: np.ndarray, n_entities: int, n_days: int, weights=None) -> np.ndarray:
    flat = entity.astype(np.int64) * n_days + day
    out = np.bincount(flat, weights=weights, minlength=n_entities * n_days)
    return out.reshape(n_entities, n_days)


def generate(config: GeneratorConfig | None = None) -> DemoData:
    """Generate transactions plus daily card and merchant feature snapshots (deterministic per seed)."""
    cfg = config or GeneratorConfig()
    rng = np.random.default_rng(cfg.seed)
    n_c, n_m, per_day = cfg.n_cards, cfg.n_merchants, cfg.txns_per_day
    warm = _WARMUP_DAYS
    n_days = warm + cfg.days  # simulated days; day ``warm`` is ``start``
    sim_start_ns = cfg.start_timestamp.value - warm * _DAY_NS

    # ---- latent card state
    card_risk = rng.normal(0.0, 1.0, n_c)
    card_mu = np.exp(rng.normal(np.log(45.0), 0.5, n_c))  # typical spend
    card_activity = rng.gamma(2.0, 1.0, n_c)
    card_activity /= card_activity.sum()
    card_travel = rng.beta(1.0, 25.0, n_c)
    card_age0 = rng.integers(20, 3650, n_c)  # age in days at the first simulated day
    card_limit = np.round(np.exp(np.log(card_mu) + rng.normal(np.log(60.0), 0.4, n_c)), -2).clip(500, None)
    card_fav = np.empty((n_c, 5), dtype=np.int64)

    # ---- latent merchant state
    merch_cat = rng.choice(len(schema.MERCHANT_CATEGORIES), size=n_m, p=_CAT_POPULARITY)
    merch_risk = rng.normal(0.0, 0.7, n_m) + _CAT_RISK[merch_cat]
    merch_pop = rng.pareto(1.5, n_m) + 1.0
    merch_pop /= merch_pop.sum()
    merch_score_bias = rng.normal(0.0, 0.35, n_m)  # the risk vendor's score is a noisy view of the risk
    card_fav[:] = rng.choice(n_m, size=(n_c, 5), p=merch_pop)

    # ---- transactions (all simulated days, warm-up included)
    n = n_days * per_day
    day = np.repeat(np.arange(n_days, dtype=np.int64), per_day)
    card = rng.choice(n_c, size=n, p=card_activity)
    from_fav = rng.random(n) < 0.6
    merchant = np.where(from_fav, card_fav[card, rng.integers(0, 5, n)], rng.choice(n_m, size=n, p=merch_pop))
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()).astype(np.int64)
    second = rng.integers(0, 3600, n)
    ts_ns = sim_start_ns + day * _DAY_NS + (hour * 3600 + second) * 10**9

    cat = merch_cat[merchant]
    cum_channel = np.cumsum(_CAT_CHANNEL[cat], axis=1)
    cum_channel /= cum_channel[:, -1:]
    channel = np.minimum((rng.random(n)[:, None] > cum_channel).sum(axis=1), len(schema.CHANNELS) - 1)
    is_online = (channel == schema.CHANNELS.index("online")).astype(np.int64)
    is_atm = channel == schema.CHANNELS.index("atm")

    p_foreign = np.clip(
        card_travel[card] + 0.18 * (cat == schema.MERCHANT_CATEGORIES.index("travel")), 0, 0.9
    )
    p_foreign = np.clip(p_foreign + 0.04 * is_online, 0, 0.9)
    is_foreign = (rng.random(n) < p_foreign).astype(np.int64)
    distance = np.where(
        is_foreign == 1,
        np.exp(rng.normal(np.log(1500.0), 0.6, n)),
        np.exp(rng.normal(np.log(6.0), 1.0, n)),
    )
    distance = np.round(distance, 2)

    amount = card_mu[card] * _CAT_AMOUNT[cat] * np.exp(rng.normal(0.0, 0.7, n))
    amount = np.where(is_atm, np.maximum(np.round(amount / 20.0) * 20.0, 20.0), np.round(amount, 2))
    amount = np.maximum(amount, 0.5)

    card_age = card_age0[card] + day
    logit = (
        _B_CARD_RISK * card_risk[card]
        + _B_YOUNG_CARD * (card_age < 90)
        + _B_MERCHANT_RISK * merch_risk[merchant]
        + _B_AMOUNT_RATIO * np.clip(np.log(amount / card_mu[card]), -2.0, 3.0)
        + _B_FOREIGN * is_foreign
        + _B_NIGHT * (hour < _NIGHT_HOURS)
        + _B_ONLINE * is_online
        + _B_DISTANCE * np.log1p(distance)
        + _B_CHANNEL[channel]
    )
    b0 = _solve_intercept(logit, cfg.target_fraud_rate)
    is_fraud = (rng.random(n) < _sigmoid(b0 + logit)).astype(np.int64)

    # deterministic row order: by time, then card
    order = np.lexsort((merchant, card, ts_ns))
    day, card, merchant, hour, ts_ns = day[order], card[order], merchant[order], hour[order], ts_ns[order]
    amount, is_foreign, is_online = amount[order], is_foreign[order], is_online[order]
    distance, channel, is_fraud = distance[order], channel[order], is_fraud[order]

    # ---- daily snapshots for the output days, from earlier days only
    snap = np.arange(warm, n_days, dtype=np.int64)  # simulated day index of each snapshot
    snap_ts = pd.DatetimeIndex(sim_start_ns + snap * _DAY_NS, tz="UTC")

    c_cnt = _daily(card, day, n_c, n_days)
    c_sum = _daily(card, day, n_c, n_days, amount)
    c_sq = _daily(card, day, n_c, n_days, amount * amount)
    c_fraud = _daily(card, day, n_c, n_days, is_fraud)
    cnt7 = _window_sums(c_cnt, snap, 7)
    sum7 = _window_sums(c_sum, snap, 7)
    sq7 = _window_sums(c_sq, snap, 7)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg7 = np.where(cnt7 > 0, sum7 / np.maximum(cnt7, 1), 0.0)
        var7 = np.where(cnt7 > 1, sq7 / np.maximum(cnt7, 1) - avg7 * avg7, 0.0)
    std7 = np.sqrt(np.clip(var7, 0.0, None))

    # 90-day chargeback rate: simulated days in the window plus a pre-history block for the rest of it
    expected_daily = card_activity * per_day
    prior_n = rng.poisson(expected_daily * _CHARGEBACK_WINDOW)
    prior_p = np.clip(cfg.target_fraud_rate * np.exp(_B_CARD_RISK * card_risk - 0.5), 0.0, 0.9)
    prior_f = rng.binomial(prior_n, prior_p)
    frac_prior = np.clip(_CHARGEBACK_WINDOW - snap, 0, None) / _CHARGEBACK_WINDOW
    n90 = _window_sums(c_cnt, snap, _CHARGEBACK_WINDOW) + prior_n[:, None] * frac_prior[None, :]
    f90 = _window_sums(c_fraud, snap, _CHARGEBACK_WINDOW) + prior_f[:, None] * frac_prior[None, :]
    cb90 = np.where(n90 > 0, f90 / np.maximum(n90, 1e-12), 0.0)

    # distinct merchants in [s-7, s): a (card, merchant) pair seen on day d covers snapshots d+1 .. d+7.
    # Per pair (days sorted), each day adds only the snapshots not covered by the pair's previous day;
    # a per-card difference array of those intervals, summed up, counts the covering pairs per snapshot.
    pair_day = np.unique((card * n_m + merchant) * n_days + day)  # sorted by pair, then day
    pd_day = pair_day % n_days
    pd_pair = pair_day // n_days
    first = np.ones(len(pair_day), dtype=bool)
    first[1:] = pd_pair[1:] != pd_pair[:-1]
    prev_end = np.empty_like(pd_day)
    prev_end[0] = 0
    prev_end[1:] = pd_day[:-1] + 8
    cover_start = np.where(first, pd_day + 1, np.maximum(prev_end, pd_day + 1))
    cover_end = pd_day + 8  # exclusive
    new_cover = cover_start < cover_end
    width = n_days + 8
    pd_card = pd_pair[new_cover] // n_m
    delta = np.bincount(pd_card * width + cover_start[new_cover], minlength=n_c * width) - np.bincount(
        pd_card * width + cover_end[new_cover], minlength=n_c * width
    )
    distinct7 = np.cumsum(delta.reshape(n_c, width), axis=1)[:, warm:n_days].astype(np.int64)

    n_snap = len(snap)
    card_stats = pd.DataFrame(
        {
            "card_id": np.tile(np.arange(1, n_c + 1, dtype=np.int64), n_snap),
            schema.TIMESTAMP: np.repeat(snap_ts, n_c),
            "created": np.repeat(snap_ts, n_c),
            "card_txn_count_7d": cnt7.T.ravel().astype(np.int64),
            "card_avg_amount_7d": np.round(avg7.T.ravel(), 4),
            "card_std_amount_7d": np.round(std7.T.ravel(), 4),
            "card_chargeback_rate_90d": np.round(cb90.T.ravel(), 6),
            "card_age_days": (card_age0[None, :] + snap[:, None]).ravel().astype(np.int64),
            "card_credit_limit": np.tile(card_limit.astype(np.float64), n_snap),
            "card_distinct_merchants_7d": distinct7.T.ravel(),
        }
    )
    if cfg.extra_features:
        cnt30c = _window_sums(c_cnt, snap, 30)
        sum30c = _window_sums(c_sum, snap, 30)
        avg30c = np.where(cnt30c > 0, sum30c / np.maximum(cnt30c, 1), 0.0)
        card_stats["card_avg_amount_30d"] = np.round(avg30c.T.ravel(), 4)

    m_cnt = _daily(merchant, day, n_m, n_days)
    m_sum = _daily(merchant, day, n_m, n_days, amount)
    m_fraud = _daily(merchant, day, n_m, n_days, is_fraud)
    cnt30 = _window_sums(m_cnt, snap, 30)
    sum30 = _window_sums(m_sum, snap, 30)
    fr30 = _window_sums(m_fraud, snap, 30)
    m_avg30 = np.where(cnt30 > 0, sum30 / np.maximum(cnt30, 1), 0.0)
    m_rate30 = np.where(cnt30 > 0, fr30 / np.maximum(cnt30, 1), 0.0)
    score = _sigmoid((merch_risk + merch_score_bias)[:, None] + rng.normal(0.0, 0.1, (n_m, n_snap)) - 1.0)
    categories = np.array(schema.MERCHANT_CATEGORIES, dtype=object)
    merchant_stats = pd.DataFrame(
        {
            "merchant_id": np.tile(np.arange(1, n_m + 1, dtype=np.int64), n_snap),
            schema.TIMESTAMP: np.repeat(snap_ts, n_m),
            "created": np.repeat(snap_ts, n_m),
            "merchant_fraud_rate_30d": np.round(m_rate30.T.ravel(), 6),
            "merchant_avg_amount_30d": np.round(m_avg30.T.ravel(), 4),
            "merchant_txn_count_30d": cnt30.T.ravel().astype(np.int64),
            "merchant_risk_score": np.round(score.T.ravel(), 6),
            "merchant_category": np.tile(categories[merch_cat], n_snap),
        }
    )
    if cfg.extra_features:
        cnt7m = _window_sums(m_cnt, snap, 7)
        fr7m = _window_sums(m_fraud, snap, 7)
        merchant_stats["merchant_fraud_rate_7d"] = np.round(
            np.where(cnt7m > 0, fr7m / np.maximum(cnt7m, 1), 0.0).T.ravel(), 6
        )

    # ---- the returned transactions: output days only
    out = day >= warm
    out_day = day[out] - warm
    seq = np.arange(out.sum(), dtype=np.int64) % per_day
    day_str = np.array([d.strftime("%Y%m%d") for d in pd.date_range(cfg.start_timestamp, periods=cfg.days)])
    txn_id = np.char.add(
        np.char.add(np.char.add("tx", day_str[out_day]), "-"), np.char.zfill(seq.astype(str), 6)
    )
    transactions = pd.DataFrame(
        {
            schema.TRANSACTION_ID: txn_id.astype(object),
            "card_id": card[out].astype(np.int64) + 1,
            "merchant_id": merchant[out].astype(np.int64) + 1,
            schema.TIMESTAMP: pd.DatetimeIndex(ts_ns[out], tz="UTC"),
            "amount": amount[out].astype(np.float64),
            "hour_of_day": hour[out],
            "is_foreign": is_foreign[out],
            "is_online": is_online[out],
            "distance_from_home_km": distance[out].astype(np.float64),
            "channel": np.array(schema.CHANNELS, dtype=object)[channel[out]],
            schema.LABEL: is_fraud[out],
        }
    )
    return DemoData(transactions=transactions, card_stats=card_stats, merchant_stats=merchant_stats)


def inject_drift(transactions: pd.DataFrame, strength: float, seed: int = 0) -> pd.DataFrame:
    """Covariate drift: larger amounts, longer distances, more online traffic. ``strength=0`` is identity.

    Labels are left as they are. At strength 1 amounts grow by about 1.5x, distances by about 2x and
    about 40% of the non-online transactions move to the online channel.
    """
    if strength < 0:
        raise ValueError(f"drift strength must be >= 0, got {strength}")
    out = transactions.copy()
    if strength == 0:
        return out
    rng = np.random.default_rng(seed)
    n = len(out)
    if "amount" in out:
        factor = np.exp(0.4 * strength + rng.normal(0.0, 0.2 * strength, n))
        out["amount"] = np.round(out["amount"].to_numpy(dtype=np.float64) * factor, 2)
    if "distance_from_home_km" in out:
        factor = np.exp(0.7 * strength + rng.normal(0.0, 0.3 * strength, n))
        out["distance_from_home_km"] = np.round(
            out["distance_from_home_km"].to_numpy(dtype=np.float64) * factor, 2
        )
    if "channel" in out:
        move = (rng.random(n) < min(0.4 * strength, 0.95)) & (out["channel"].to_numpy() != "online")
        out.loc[move, "channel"] = "online"
        if "is_online" in out:
            out["is_online"] = (out["channel"] == "online").astype(np.int64)
    return out


def corrupt(transactions: pd.DataFrame, kind: str, seed: int = 0) -> pd.DataFrame:
    """A copy of ``transactions`` broken in one way that validation should catch (see CORRUPTION_KINDS)."""
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; valid kinds: {', '.join(CORRUPTION_KINDS)}")
    rng = np.random.default_rng(seed)
    out = transactions.copy()
    n = len(out)
    if kind == "nulls":
        mask = rng.random(n) < 0.3
        out["amount"] = out["amount"].astype(np.float64).mask(mask)
    elif kind == "negative_amount":
        mask = rng.random(n) < 0.1
        out.loc[mask, "amount"] = -out.loc[mask, "amount"].abs()
    elif kind == "single_class":
        out[schema.LABEL] = np.zeros(n, dtype=np.int64)
    elif kind == "missing_column":
        out = out.drop(columns=["distance_from_home_km"])
    elif kind == "duplicates":
        dup = out.sample(frac=0.1, random_state=seed) if n else out
        out = pd.concat([out, dup], ignore_index=True)
    elif kind == "label_out_of_range":
        mask = rng.random(n) < 0.05
        labels = out[schema.LABEL].to_numpy(dtype=np.int64, copy=True)
        labels[mask] = 2
        out[schema.LABEL] = labels
    return out


_DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.parquet$")


def transactions_day_path(data_dir: str | Path, day: str | pd.Timestamp) -> Path:
    """Path of one day's transaction file under ``data_dir`` (``transactions/YYYY-MM-DD.parquet``)."""
    return Path(data_dir) / "transactions" / f"{pd.Timestamp(day).strftime('%Y-%m-%d')}.parquet"


def write_demo_data(data_dir: str | Path, data: DemoData) -> dict[str, str]:
    """Write the demo data as parquet; returns ``{"card_stats", "merchant_stats", "transactions"}`` paths.

    Transactions go to one file per UTC day (``transactions/YYYY-MM-DD.parquet``); day files left from an
    earlier call are removed first so the directory holds exactly this data.
    """
    root = Path(data_dir).resolve()
    tx_dir = root / "transactions"
    tx_dir.mkdir(parents=True, exist_ok=True)
    for old in tx_dir.iterdir():
        if _DAY_FILE.match(old.name):
            old.unlink()
    card_path = root / "card_stats.parquet"
    merchant_path = root / "merchant_stats.parquet"
    data.card_stats.to_parquet(card_path, index=False)
    data.merchant_stats.to_parquet(merchant_path, index=False)
    tx = data.transactions
    days = tx[schema.TIMESTAMP].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d")
    for day_name, part in tx.groupby(days, sort=True):
        part.reset_index(drop=True).to_parquet(tx_dir / f"{day_name}.parquet", index=False)
    return {"card_stats": str(card_path), "merchant_stats": str(merchant_path), "transactions": str(tx_dir)}
