"""The drift methods (Evidently stattests) usable per column kind, without importing Evidently.

Lets a DAG file or a config reject an unknown or misapplied method when it is parsed, without the
seconds-long Evidently import. ``tests/unit/test_drift.py`` checks this table against Evidently's own
registry, so an Evidently upgrade that adds or drops a method fails the tests instead of drifting apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NUMERIC_METHODS = frozenset({
    "anderson", "cramer_von_mises", "ed", "empirical_mmd", "es", "hellinger", "jensenshannon", "kl_div", "ks",
    "mannw", "psi", "t_test", "wasserstein",
})
CATEGORICAL_METHODS = frozenset({
    "TVD", "chisquare", "fisher_exact", "g_test", "hellinger", "jensenshannon", "kl_div", "psi", "z",
})
_KINDS = {"numeric": NUMERIC_METHODS, "categorical": CATEGORICAL_METHODS}


def check_drift_method(method: Any, kind: str, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when ``method`` is not a drift method for ``kind`` columns."""
    allowed = _KINDS[kind]
    if method not in allowed:
        other = "categorical" if kind == "numeric" else "numeric"
        hint = f" (it is a {other} method)" if method in _KINDS[other] else ""
        raise ValueError(f"{where}: {method!r} is not a drift method for {kind} columns{hint}; use one of "
                         f"{sorted(allowed)}")


def check_drift_settings(
    *,
    numeric_method: str,
    categorical_method: str,
    numeric_columns: list[str] | tuple[str, ...] = (),
    categorical_columns: list[str] | tuple[str, ...] = (),
    per_column: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The methods of a drift check, including ``per_column`` overrides of known columns."""
    check_drift_method(numeric_method, "numeric", "numeric_method")
    check_drift_method(categorical_method, "categorical", "categorical_method")
    numeric = set(numeric_columns)
    for column, override in (per_column or {}).items():
        if isinstance(override, Mapping) and "method" in override and (numeric or categorical_columns):
            kind = "numeric" if column in numeric else "categorical"
            check_drift_method(override["method"], kind, f"per_column[{column!r}].method")
