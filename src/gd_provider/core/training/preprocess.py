"""Deterministic time-based splits and a tiny, JSON-serializable feature preprocessor.

The preprocessor is fitted on the training split only (no peeking at validation/holdout statistics),
saved next to the model, and reused unchanged at scoring time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

UNKNOWN = "__unknown__"
_FORMAT_VERSION = 1


class PreprocessError(ValueError):
    """Input data does not fit the preprocessor (e.g. a column is missing)."""


# ---------------------------------------------------------------------------------------------- splitting
def sort_for_split(df: pd.DataFrame, timestamp_column: str, key_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Rows in a canonical order: by timestamp, ties broken by the key columns (which must be in ``df``).

    Stable (mergesort), so rows that tie on everything keep their input order.
    """
    if timestamp_column not in df.columns:
        raise PreprocessError(
            f"timestamp column {timestamp_column!r} is not in the data (columns: {list(df.columns)})"
        )
    missing = [c for c in key_columns if c not in df.columns]
    if missing:
        raise PreprocessError(
            f"key column(s) {missing} (training.key_columns) not in the data (columns: {list(df.columns)})"
        )
    keys = [timestamp_column] + [c for c in key_columns if c != timestamp_column]
    return df.sort_values(keys, kind="mergesort").reset_index(drop=True)


def check_tie_order(ordered: pd.DataFrame, timestamp_column: str, key_columns: Sequence[str] = ()) -> None:
    """Without key columns, rows sharing a timestamp have no canonical order: the order within each part
    (and so the holdout's digest and the order rows are trained in) would follow how the dataset happened
    to be read. Raise ``PreprocessError`` asking for key columns unless no timestamp repeats, or the rows
    sharing each timestamp are identical in every column (then their order cannot matter).

    ``ordered``: sorted by :func:`sort_for_split`. With key columns, their order is the user's word."""
    if key_columns:
        return
    ts = ordered[timestamp_column]
    tied_mask = ts.duplicated(keep=False).to_numpy()
    if not tied_mask.any():
        return
    tied = ordered[tied_mask]
    try:
        identical = bool(tied.drop_duplicates()[timestamp_column].is_unique)
    except TypeError:  # unhashable cell values (lists): cannot tell, so not identical
        identical = False
    if identical:
        return
    example = ts[tied_mask].iat[0]
    raise PreprocessError(
        f"{int(tied_mask.sum())} of {len(ts)} rows share their timestamp with other rows that differ from them "
        f"(e.g. {timestamp_column} = {example}) and no key columns are given, so their order - and with it the "
        "holdout's digest and the order rows are trained in - would depend on how the dataset was read; give "
        "training.key_columns (columns that order rows sharing a timestamp, e.g. an id)"
    )


# Bumped when split_by_time assigns rows differently: part of a training run's fingerprint, so a run
# directory trained under another rule is never resumed with this one's arrays.
# 2: rows sharing a timestamp are never split between train / validation / holdout.
SPLIT_VERSION = 2


def split_sizes(n: int, validation_fraction: float, holdout_fraction: float) -> tuple[int, int, int]:
    """(train, val, holdout) row counts for ``n`` rows; holdout and validation are rounded down."""
    n_holdout = int(math.floor(n * holdout_fraction))
    n_val = int(math.floor(n * validation_fraction))
    return n - n_val - n_holdout, n_val, n_holdout


def split_by_time(
    df: pd.DataFrame,
    timestamp_column: str,
    validation_fraction: float,
    holdout_fraction: float,
    *,
    key_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split into (train, val, holdout) by time: train is the oldest rows, holdout the latest.

    Sizes follow :func:`split_sizes`, except that rows sharing a timestamp are never split between two
    parts: a boundary inside such a group moves back to the group's first row (the later part takes the
    whole group), or, when that would leave the earlier part empty, past its last row. So every training
    row is strictly older than every validation row, and every validation row strictly older than every
    holdout row - with daily timestamps, no day is both trained on and held out. Deterministic for the
    same rows in any input order (stable sort by timestamp, then by the key columns, e.g.
    ``transaction_id``): a key column missing from ``df`` is an error, and so are rows sharing a timestamp
    without key columns to order them (see :func:`check_tie_order`). Each part has a fresh 0..n-1 index.
    """
    if not 0 < validation_fraction < 1 or not 0 <= holdout_fraction < 1:
        raise PreprocessError(
            f"fractions out of range: validation_fraction={validation_fraction!r}, holdout_fraction={holdout_fraction!r}"
        )
    ordered = sort_for_split(df, timestamp_column, key_columns)
    n_train, n_val, _ = split_sizes(len(ordered), validation_fraction, holdout_fraction)
    ts = ordered[timestamp_column]
    nominal = n_train + n_val
    end_val = _at_time_change(ts, nominal, lo=n_train, what="holdout")
    try:
        end_train = _at_time_change(ts, min(n_train, end_val), lo=0, hi=end_val, what="validation split")
    except PreprocessError:
        # moving the holdout's start back left no room between training and validation: move it past its
        # tie group instead (a smaller holdout) when rows remain after it
        if not 0 < nominal < len(ts):
            raise
        later = int(ts.searchsorted(ts.iat[nominal], side="right"))
        if later <= end_val or later >= len(ts):
            raise
        end_val = later
        end_train = _at_time_change(ts, min(n_train, end_val), lo=0, hi=end_val, what="validation split")
    check_tie_order(ordered, timestamp_column, key_columns)
    train = ordered.iloc[:end_train].reset_index(drop=True)
    val = ordered.iloc[end_train:end_val].reset_index(drop=True)
    holdout = ordered.iloc[end_val:].reset_index(drop=True)
    return train, val, holdout


def _at_time_change(ts: pd.Series, boundary: int, *, lo: int, hi: int | None = None, what: str) -> int:
    """``boundary`` (a row index into the sorted timestamps ``ts``) moved to where the timestamp changes:
    back to the first row of its tie group when that keeps rows before it and after ``lo``, else forward
    past the group when rows are left before ``hi``."""
    hi = len(ts) if hi is None else hi
    if boundary <= 0 or boundary >= hi or ts.iat[boundary - 1] != ts.iat[boundary]:
        return boundary
    value = ts.iat[boundary]
    start = int(ts.searchsorted(value, side="left"))
    if start > lo:
        return start
    end = int(ts.searchsorted(value, side="right"))
    if end < hi:
        return end
    raise PreprocessError(
        f"cannot split by time: the rows around the start of the {what} all share the timestamp {value} "
        f"(rows {start}..{end - 1} of {len(ts)}), and rows with one timestamp are never split; use finer "
        "timestamps, more rows or other fractions"
    )


def frame_digest(df: pd.DataFrame, key_columns: Sequence[str] = ()) -> tuple[str, str]:
    """sha256 identifying a set of rows, and what it was computed from.

    Uses the key columns present (e.g. transaction ids) when there are any, else every column's values.
    The frame's order matters, so pass frames in their canonical (split) order.
    """
    keys = [c for c in key_columns if c in df.columns]
    basis = keys if keys else list(df.columns)
    hashed = pd.util.hash_pandas_object(df[basis], index=False).to_numpy()
    h = hashlib.sha256()
    h.update(",".join(basis).encode())
    h.update(np.ascontiguousarray(hashed, dtype="<u8").tobytes())
    return h.hexdigest(), ("keys:" if keys else "rows:") + ",".join(basis)


# ---------------------------------------------------------------------------------------------- features
def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PreprocessError(f"{what}: missing column(s) {missing} (have {sorted(map(str, df.columns))})")


def _numeric_matrix(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        series = df[col]
        if series.dtype == bool or pd.api.types.is_bool_dtype(series.dtype):
            series = series.astype("float64")
        try:
            out[:, j] = pd.to_numeric(series, errors="raise").astype("float64").to_numpy(na_value=np.nan)
        except (ValueError, TypeError) as exc:
            raise PreprocessError(f"numeric feature {col!r} has non-numeric values: {exc}") from exc
    out[~np.isfinite(out)] = np.nan
    return out


def _category_strings(series: pd.Series) -> pd.Series:
    """Categories as strings; missing values become None (they go to the unknown bucket)."""
    return series.astype("object").where(series.notna(), None).map(lambda v: None if v is None else str(v))


class Preprocessor:
    """Standardize numeric columns (train mean/std, missing -> 0) and one-hot categoricals (+ unknown)."""

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        means: Sequence[float],
        stds: Sequence[float],
        categories: dict[str, list[str]],
    ):
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.means = np.asarray(means, dtype=np.float64)
        self.stds = np.asarray(stds, dtype=np.float64)
        self.categories = {c: list(categories[c]) for c in self.categorical}
        self._index = {c: {v: i for i, v in enumerate(vals)} for c, vals in self.categories.items()}

    @classmethod
    def fit(cls, train_df: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> Preprocessor:
        _require_columns(train_df, [*numeric, *categorical], "cannot fit the preprocessor")
        if len(train_df) == 0:
            raise PreprocessError("cannot fit the preprocessor on an empty frame")
        x = _numeric_matrix(train_df, numeric)
        with np.errstate(all="ignore"):
            means = np.nanmean(x, axis=0) if x.shape[1] else np.zeros(0)
            stds = np.nanstd(x, axis=0) if x.shape[1] else np.zeros(0)
        means = np.where(np.isfinite(means), means, 0.0)
        stds = np.where(np.isfinite(stds) & (stds > 1e-12), stds, 1.0)
        categories = {}
        for col in categorical:
            values = _category_strings(train_df[col]).dropna().unique().tolist()
            categories[col] = sorted(v for v in values if v != UNKNOWN)
        return cls(numeric, categorical, means.tolist(), stds.tolist(), categories)

    @property
    def output_dim(self) -> int:
        return len(self.numeric) + sum(len(v) + 1 for v in self.categories.values())

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for col in self.categorical:
            names += [f"{col}={v}" for v in self.categories[col]] + [f"{col}={UNKNOWN}"]
        return names

    @property
    def input_columns(self) -> list[str]:
        return self.numeric + self.categorical

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Feature matrix (float32, ``len(df) x output_dim``); unseen/missing categories -> unknown."""
        _require_columns(df, self.input_columns, "cannot transform")
        n = len(df)
        out = np.zeros((n, self.output_dim), dtype=np.float32)
        if self.numeric:
            x = (_numeric_matrix(df, self.numeric) - self.means) / self.stds
            out[:, : len(self.numeric)] = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        offset = len(self.numeric)
        rows = np.arange(n)
        for col in self.categorical:
            index = self._index[col]
            unknown = len(index)
            codes = _category_strings(df[col]).map(
                lambda v, index=index, unknown=unknown: index.get(v, unknown)
            )
            out[rows, offset + codes.to_numpy(dtype=np.int64)] = 1.0
            offset += unknown + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _FORMAT_VERSION,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "means": [float(v) for v in self.means],
            "stds": [float(v) for v in self.stds],
            "categories": self.categories,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        version = data.get("version")
        if version != _FORMAT_VERSION:
            raise PreprocessError(
                f"unsupported preprocessor format version {version!r} (expected {_FORMAT_VERSION})"
            )
        try:
            pre = cls(data["numeric"], data["categorical"], data["means"], data["stds"], data["categories"])
        except KeyError as exc:
            raise PreprocessError(f"preprocessor state lacks {exc.args[0]!r}") from exc
        if len(pre.means) != len(pre.numeric) or len(pre.stds) != len(pre.numeric):
            raise PreprocessError(
                "preprocessor state is inconsistent: means/stds do not match numeric columns"
            )
        return pre

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocessor) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Preprocessor(numeric={len(self.numeric)}, categorical={self.categorical}, output_dim={self.output_dim})"
