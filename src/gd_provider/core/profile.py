"""Expectations derived from a feature service's schema and from the champion's training-data profile.

Plain Python (pandas; Feast only imported by :func:`feature_service_schema`), no Airflow import.

* :func:`profile_dataframe` summarizes a training dataset: rows, and per column its dtype, dtype family,
  null fraction, min/max (numeric) or the set of values (few distinct values), and the label's summary of
  the task (:meth:`gd_provider.core.tasks.Task.label_profile`: binary classes and positive rate, multiclass
  class shares, regression mean / std / range).
* :func:`schema_expectations` turns a feature service's schema (feature name → Feast type name) into
  "column exists" and "dtype family" checks.
* :func:`profile_expectations` turns the champion's profile and :class:`Tolerances` into null-rate,
  value-range, category-set, row-count and label checks (the label's through the task:
  :meth:`~gd_provider.core.tasks.Task.profile_label_expectations`; binary when no task is given).

Every derived expectation carries ``meta.gd_check`` = ``"<origin>:<check>"`` (origin ``schema`` or
``champion_profile``, e.g. ``champion_profile:null_rate``) and ``meta.gd_origin``, so a failing one says
where it came from in the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from gd_provider.core.tasks import Task

__all__ = [
    "DTYPE_FAMILIES",
    "FEAST_TYPE_FAMILIES",
    "ColumnProfile",
    "LABEL_TOLERANCES",
    "DataProfile",
    "ProfileError",
    "Tolerances",
    "dtype_family",
    "feature_service_schema",
    "profile_dataframe",
    "profile_expectations",
    "schema_expectations",
    "tolerance_problems",
]

SCHEMA = "schema"
CHAMPION = "champion_profile"

# Dtype names that Great Expectations 1.24 accepts in ``expect_column_values_to_be_in_type_list``; object
# columns are checked value by value ("str", "bool"). A family is what we accept for one logical type: an
# int feature with a missing value comes back from a join as float64, so the numeric family holds every
# int/float dtype. Timestamps have no family here: GE reports a tz-aware column as "Timestamp" but fails it
# whatever the list holds, so datetime columns get the existence check only.
DTYPE_FAMILIES: dict[str, list[str]] = {
    "numeric": ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64"],
    "bool": ["bool", "boolean"],
    "string": ["str", "object", "string"],
}
FEAST_TYPE_FAMILIES: dict[str, str] = {
    "Int32": "numeric",
    "Int64": "numeric",
    "Float32": "numeric",
    "Float64": "numeric",
    "Bool": "bool",
    "String": "string",
    "UnixTimestamp": "datetime",
}
"""Feast primitive type names (``str(field.dtype)``) → dtype family. Arrays, bytes, maps: no dtype check."""


class ProfileError(ValueError):
    """A profile, a schema or the tolerances are malformed."""


def dtype_family(dtype: Any) -> str | None:
    """The family of a pandas dtype: numeric, bool, string, datetime; ``None`` for anything else."""
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        return "string"
    return None


# --------------------------------------------------------------------------------------------- profile


@dataclass
class ColumnProfile:
    dtype: str
    family: str | None
    null_fraction: float
    min: float | None = None
    max: float | None = None
    values: list[Any] | None = None
    """Distinct non-null values, sorted, when there are at most ``max_categories`` of them."""


@dataclass
class DataProfile:
    rows: int
    columns: dict[str, ColumnProfile]
    label_column: str | None = None
    positive_rate: float | None = None
    """Binary labels only (kept for compatibility; ``label_profile`` is what the checks read)."""
    label_classes: list[Any] | None = None
    """Binary: the label's classes; multiclass: the declared classes present (compatibility)."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the profile comes from (e.g. model name, version, dataset uri + sha256)."""
    label_profile: dict[str, Any] | None = None
    """The task's summary of the label (:meth:`gd_provider.core.tasks.Task.label_profile`)."""
    task: str | None = None
    """The task that summarized the label (its name or import path)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataProfile:
        known = {f.name for f in fields(cls)}
        if not {"rows", "columns"} <= set(data):
            raise ProfileError(f"a profile needs 'rows' and 'columns', got keys {sorted(data)}")
        cols = {str(k): ColumnProfile(**v) for k, v in dict(data["columns"]).items()}
        return cls(**{**{k: v for k, v in data.items() if k in known}, "columns": cols})


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def profile_dataframe(
    df: pd.DataFrame,
    *,
    label_column: str | None = None,
    max_categories: int = 50,
    source: Mapping[str, Any] | None = None,
    task: Task | None = None,
) -> DataProfile:
    """Profile ``df``: rows; per column dtype, family, null fraction, finite min/max (numeric) and the
    distinct values when there are at most ``max_categories`` (strings, bools, small-int codes); for
    ``label_column`` the ``task``'s summary of it (``label_profile``; binary when None: its classes and
    positive rate, also kept as ``label_classes`` / ``positive_rate``)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"profile_dataframe needs a pandas DataFrame, got {type(df).__name__}")
    if label_column is not None and label_column not in df.columns:
        raise ProfileError(f"label column {label_column!r} not in the dataset (columns: {list(df.columns)})")
    rows = len(df)
    columns: dict[str, ColumnProfile] = {}
    for name in df.columns:
        s = df[name]
        family = dtype_family(s.dtype)
        nulls = int(s.isna().sum())
        prof = ColumnProfile(dtype=str(s.dtype), family=family, null_fraction=nulls / rows if rows else 0.0)
        if family == "numeric":
            values = s.to_numpy(dtype="float64", na_value=np.nan)
            finite = values[np.isfinite(values)]
            if finite.size:
                prof.min, prof.max = float(finite.min()), float(finite.max())
        if family in ("string", "bool") or (family == "numeric" and pd.api.types.is_integer_dtype(s.dtype)):
            uniques = s.dropna().unique()
            if len(uniques) <= max_categories:
                try:
                    prof.values = sorted(_py(v) for v in uniques)
                except TypeError:  # mixed types: keep the order seen
                    prof.values = [_py(v) for v in uniques]
        columns[str(name)] = prof
    profile = DataProfile(rows=rows, columns=columns, label_column=label_column, source=dict(source or {}))
    if label_column is not None:
        from gd_provider.core.tasks import BinaryTask, MulticlassTask, get_task

        task = task if task is not None else get_task("binary")
        profile.task = task.to_dict()["task"]
        profile.label_profile = _jsonable(task.label_profile(df[label_column]))
        if isinstance(task, BinaryTask):
            profile.label_classes = list(profile.label_profile.get("classes") or [])
            profile.positive_rate = profile.label_profile.get("positive_rate")
        elif isinstance(task, MulticlassTask):
            profile.label_classes = list(profile.label_profile.get("present") or [])
    return profile


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return _py(value)


# ------------------------------------------------------------------------------------------ tolerances


@dataclass(frozen=True)
class Tolerances:
    """How far the new data may stray from the champion's training data before validation fails.

    * ``null_rate_slack``: a column may have up to the champion's null fraction + this (absolute).
    * ``range_widening``: numeric bounds are the champion's [min, max] widened by this fraction of its
      range on each side; a column that was never negative stays bounded below by 0.
    * ``row_count_band``: rows within ``[lo * champion rows, hi * champion rows]``.
    * ``positive_rate_band``: the label's mean within ``[rate / f, rate * f]`` (``f`` = this factor) or,
      when ``positive_rate_abs`` is set, within ``rate ± positive_rate_abs``.
    * ``category_sets``: values of low-cardinality columns must be ones the champion saw.
    * ``label_mean_shift_std`` (regression): the label's mean within the champion's mean ± this many of its
      standard deviations.
    * ``range_mostly``: the share of a column's values that must lie in its widened range (default 1.0:
      every value; 0.999 lets one value in a thousand stray without failing the night) and of a
      low-cardinality column's values that must be categories the champion saw.
    """

    null_rate_slack: float = 0.02
    range_widening: float = 1.0
    row_count_band: tuple[float, float] = (0.5, 2.0)
    positive_rate_band: float = 3.0
    positive_rate_abs: float | None = None
    category_sets: bool = True
    label_mean_shift_std: float = 1.0
    range_mostly: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        mostly = self.range_mostly
        if isinstance(mostly, bool) or not isinstance(mostly, int | float) or not 0.5 <= mostly <= 1.0:
            problems.append(f"range_mostly must be a share in [0.5, 1], got {mostly}")
        if not 0.0 <= self.null_rate_slack <= 1.0:
            problems.append(f"null_rate_slack must be in [0, 1], got {self.null_rate_slack}")
        if not (math.isfinite(self.range_widening) and self.range_widening >= 0):
            problems.append(f"range_widening must be a finite number >= 0, got {self.range_widening}")
        band = tuple(self.row_count_band)
        if len(band) != 2 or not 0 <= band[0] <= 1 <= band[1]:
            problems.append(f"row_count_band must be (lo, hi) with 0 <= lo <= 1 <= hi, got {self.row_count_band}")
        if not self.positive_rate_band >= 1:
            problems.append(f"positive_rate_band must be a factor >= 1, got {self.positive_rate_band}")
        if self.positive_rate_abs is not None and not 0 <= self.positive_rate_abs <= 1:
            problems.append(f"positive_rate_abs must be in [0, 1], got {self.positive_rate_abs}")
        shift = self.label_mean_shift_std
        if isinstance(shift, bool) or not isinstance(shift, int | float) or not (math.isfinite(shift) and shift >= 0):
            problems.append(f"label_mean_shift_std must be a finite number >= 0, got {shift}")
        if problems:
            raise ProfileError("bad tolerances: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Tolerances:
        data = dict(data or {})
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ProfileError(
                f"unknown tolerance(s) {sorted(unknown)}; known: {sorted(f.name for f in fields(cls))}"
            )
        if "row_count_band" in data:
            data["row_count_band"] = tuple(data["row_count_band"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ProfileError(f"bad tolerances {data!r}: {exc}") from exc


# The label-only tolerances and their defaults: each task reads some (``Task.profile_tolerances``).
LABEL_TOLERANCES: dict[str, Any] = {"positive_rate_band": 3.0, "positive_rate_abs": None, "label_mean_shift_std": 1.0}


def tolerance_problems(task: Task | None, tolerances: Mapping[str, Any]) -> list[str]:
    """``["<key>: ..."]`` for each label-only tolerance in ``tolerances`` that ``task`` (None: binary) does not
    read and that is not at its default (``positive_rate_band`` for a regression label)."""
    from gd_provider.core.tasks import get_task

    task = task if task is not None else get_task("binary")
    reads = tuple(getattr(task, "profile_tolerances", ()))
    return [f"{key}: the {task.name} task's label checks do not read it (they read {list(reads) or 'none'})"
            for key, default in LABEL_TOLERANCES.items()
            if key in tolerances and key not in reads and tolerances[key] != default]


# -------------------------------------------------------------------------------------- expectations


def _exp(etype: str, origin: str, check: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": etype, "kwargs": kwargs, "meta": {"gd_check": f"{origin}:{check}", "gd_origin": origin}}


def feature_service_schema(store: Any, name: str) -> dict[str, str]:
    """``{feature name: Feast type name}`` of a feature service in a ``feast.FeatureStore``."""
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(name, allow_cache=False)
    except FeatureServiceNotFoundException as exc:
        known = sorted(s.name for s in store.list_feature_services())
        raise ProfileError(f"unknown feature service {name!r} (known: {', '.join(known) or 'none'})") from exc
    schema = {f.name: str(f.dtype) for p in service.feature_view_projections for f in p.features}
    if not schema:
        raise ProfileError(f"feature service {name!r} has no features")
    return schema


def schema_expectations(schema: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each feature of the schema must exist, with a dtype of its Feast type's family (an ``Int64``
    feature may come back as float64 when a row has no value, so ints and floats form one family).
    Feast types without a dtype family (timestamps, arrays, bytes, maps) get the existence check only."""
    if not isinstance(schema, Mapping) or not schema:
        raise ProfileError(f"the feature-service schema must be a non-empty {{name: feast type}} dict, got {schema!r}")
    exps = [_exp("expect_column_to_exist", SCHEMA, "exists", column=name) for name in schema]
    for name, feast_type in schema.items():
        family = FEAST_TYPE_FAMILIES.get(str(feast_type))
        if family in DTYPE_FAMILIES:
            exps.append(
                _exp("expect_column_values_to_be_in_type_list", SCHEMA, f"dtype_{family}", column=name,
                     type_list=list(DTYPE_FAMILIES[family]))
            )
    return exps


def _round(value: float, direction: str) -> float:
    """``value`` to 6 significant digits, rounded outward (``"down"`` for a lower bound, ``"up"`` for an
    upper one), so a bound never excludes a value that the champion's own data holds."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    exponent = math.floor(math.log10(abs(value))) - 5
    rounding = ROUND_FLOOR if direction == "down" else ROUND_CEILING
    return float(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(exponent), rounding=rounding))


def profile_expectations(
    profile: DataProfile,
    tolerances: Tolerances | None = None,
    *,
    columns: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    task: Task | None = None,
) -> list[dict[str, Any]]:
    """Checks that the new data looks like the champion's training data (``profile``), within
    ``tolerances``: row count, and for each profiled column (``columns``, default all, minus ``exclude``):
    exists, dtype family, null rate, numeric range, category set; for the label (unless in ``exclude``, even
    when ``columns`` does not name it) the ``task``'s checks against the champion's labels
    (:meth:`~gd_provider.core.tasks.Task.profile_label_expectations`; binary when None: classes and positive
    rate, checks ``label_values``, ``both_classes``, ``positive_rate``).
    """
    tol = tolerances or Tolerances()
    if profile.rows <= 0:
        raise ProfileError("the champion's profile has no rows: nothing to derive bounds from")
    wanted = list(profile.columns) if columns is None else list(columns)
    unknown = [c for c in wanted if c not in profile.columns]
    if unknown:
        raise ProfileError(f"columns {unknown} are not in the champion's profile (has: {list(profile.columns)})")
    skip = set(exclude)
    lo, hi = tol.row_count_band
    exps = [
        _exp("expect_table_row_count_to_be_between", CHAMPION, "row_count",
             min_value=int(math.floor(lo * profile.rows)), max_value=int(math.ceil(hi * profile.rows)))
    ]
    label = profile.label_column
    for name in wanted:
        if name in skip:
            continue
        col = profile.columns[name]
        exps.append(_exp("expect_column_to_exist", CHAMPION, "exists", column=name))
        if col.family in DTYPE_FAMILIES:
            exps.append(_exp("expect_column_values_to_be_in_type_list", CHAMPION, f"dtype_{col.family}",
                             column=name, type_list=list(DTYPE_FAMILIES[col.family])))
        allowed_nulls = min(1.0, col.null_fraction + tol.null_rate_slack)
        if allowed_nulls < 1.0:
            kwargs: dict[str, Any] = {"column": name}
            if allowed_nulls > 0:
                kwargs["mostly"] = round(1.0 - allowed_nulls, 6)
            exps.append(_exp("expect_column_values_to_not_be_null", CHAMPION, "null_rate", **kwargs))
        if name == label:
            continue
        if col.family == "numeric" and col.min is not None and col.max is not None:
            span = col.max - col.min
            widen = tol.range_widening * (span if span > 0 else max(abs(col.max), 1.0))
            low = col.min - widen
            if col.min >= 0:
                low = max(low, 0.0)
            exps.append(_exp("expect_column_values_to_be_between", CHAMPION, "value_range", column=name,
                             min_value=_round(low, "down"), max_value=_round(col.max + widen, "up"),
                             **_mostly(tol)))
        elif tol.category_sets and col.values is not None and col.family in ("string", "bool"):
            exps.append(_exp("expect_column_values_to_be_in_set", CHAMPION, "category_set", column=name,
                             value_set=list(col.values), **_mostly(tol)))
    if label is not None and label not in skip:
        exps += _label_expectations(profile, label, tol, task)
    return exps


def _label_expectations(profile: DataProfile, label: str, tol: Tolerances, task: Task | None) -> list[dict[str, Any]]:
    from gd_provider.core.tasks import get_task

    task = task if task is not None else get_task("binary")
    summary = profile.label_profile
    if summary is None:  # a profile from before tasks: only the binary summary was kept
        if profile.label_classes is None:
            return []
        summary = {"classes": list(profile.label_classes), "positive_rate": profile.positive_rate}

    def make(etype: str, check: str, **kwargs: Any) -> dict[str, Any]:
        return _exp(etype, CHAMPION, check, **kwargs)

    return list(task.profile_label_expectations(label, summary, tol, make))


def _mostly(tol: Tolerances) -> dict[str, float]:
    return {"mostly": float(tol.range_mostly)} if tol.range_mostly < 1.0 else {}


def derive_expectations(
    *,
    schema: Mapping[str, str] | None = None,
    profile: DataProfile | None = None,
    tolerances: Tolerances | None = None,
    columns: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    task: Task | None = None,
) -> list[dict[str, Any]]:
    """Schema checks (when ``schema``) followed by champion-profile checks (when ``profile``)."""
    exps: list[dict[str, Any]] = []
    if schema is not None:
        exps += schema_expectations(schema)
    if profile is not None:
        exps += profile_expectations(profile, tolerances, columns=columns, exclude=exclude, task=task)
    return exps
