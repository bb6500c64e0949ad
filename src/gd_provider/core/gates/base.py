"""The gate contract: one small interface for every check that can stop a model from shipping.

A gate is a subclass of :class:`Gate`: options (checked when the DAG is parsed) and ``judge(inputs)``
returning a :class:`~gd_provider.core.gates.result.GateResult` (``passed``, one line per check in ``reasons``
ending ``: pass`` / ``: FAIL``, the numbers behind it, links). ``inputs`` (:class:`GateInputs`) is plain data
the pipeline passes between tasks: the dataset manifest, the training manifest, the model's name - URIs, never
frames. A built-in gate is named (``health``); your own is named by import path (``my_pkg.gates:MaxNullShare``)
in a config's ``gates`` list or :class:`gd_provider.operators.gate.GateOperator`, which runs it, logs its
reasons, pushes its result, and fails (or skips) the task when it does not pass. The validation, drift,
evaluation and smoke gates need services (Feast, MLflow) and run in their own operators, reporting the same
result shape; the training-health gate is a :class:`Gate` (:class:`HealthGate`).

Plain Python: no Airflow import (it runs wherever the core runs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gd_provider.core.gates.result import GateResult


class GateError(ValueError):
    """A gate is unknown, is not a :class:`Gate`, or its options are invalid; the message names it."""


@dataclass
class GateInputs:
    """What a gate may judge: manifests passed between the pipeline's tasks (URIs and numbers)."""

    dataset: Mapping[str, Any] | None = None  # the retrieval's dataset manifest (uri, sha256, rows, stats ...)
    training: Mapping[str, Any] | None = None  # the training manifest (model_uri, metrics, health, ...)
    model_name: str | None = None
    alias: str = "champion"
    run: Mapping[str, Any] = field(default_factory=dict)  # dag_id, run_id, logical_date (when known)

    def read_dataset(self) -> Any:
        """The dataset as a pandas DataFrame (``core.data.read_dataset``, its digest verified)."""
        from gd_provider.core.data import read_dataset

        if not self.dataset:
            raise GateError("this gate reads the dataset, but no dataset manifest was given to it")
        return read_dataset(dict(self.dataset))


class Gate(ABC):
    """One check. Set ``name`` (how reasons and results call it) and ``options`` (keys and defaults), implement
    :meth:`judge`; override :meth:`check_options` to refuse bad options naming the field."""

    name: ClassVar[str] = "gate"
    options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise GateError(f"gate {self.name!r}: unknown option(s) {unknown}; it takes "
                            f"{sorted(self.options) or 'no options'}")
        self.config: dict[str, Any] = {**self.options, **options}
        self.check_options()

    def check_options(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`GateError` naming the first bad option."""

    @abstractmethod
    def judge(self, inputs: GateInputs) -> GateResult:
        """The verdict on ``inputs``. Raise :class:`GateError` when the inputs cannot be judged (that fails the
        task: a check that could not run is never a pass)."""


class HealthGate(Gate):
    """The training-health gate: the run's telemetry summary (``training["health"]``) against
    :class:`~gd_provider.core.training.health.HealthThresholds` (its fields are the options)."""

    name = "health"

    def __init__(self, **options: Any) -> None:
        from gd_provider.core.training.health import HealthThresholds

        try:
            self.thresholds = HealthThresholds.from_value(options or None)
        except (TypeError, ValueError) as exc:
            raise GateError(f"gate 'health': {exc}") from None
        self.config = self.thresholds.to_dict()

    def judge(self, inputs: GateInputs) -> GateResult:
        from gd_provider.core.training.health import assess_health

        health = (inputs.training or {}).get("health")
        ok, reasons = assess_health(health, self.thresholds)
        numbers = {k: v for k, v in (health or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        return GateResult("health", ok, reasons, numbers)  # assess_health's PASS/FAIL/NOTE lines


BUILTIN_GATES: dict[str, type[Gate]] = {"health": HealthGate}


def gate_class(name: str) -> type[Gate]:
    """The class of a built-in gate name or of a user's gate by import path ``package.module:Class``."""
    if name in BUILTIN_GATES:
        return BUILTIN_GATES[name]
    from gd_provider.core.tasks import IMPORT_PATH, import_object

    if not isinstance(name, str) or not IMPORT_PATH.match(name):
        raise GateError(f"unknown gate {name!r}; choose one of {sorted(BUILTIN_GATES)} or give a Gate subclass "
                        "by import path 'package.module:Class'")

    try:
        cls = import_object(name, "gate")
    except ValueError as exc:
        raise GateError(str(exc)) from None
    if not (isinstance(cls, type) and issubclass(cls, Gate)):
        raise GateError(f"gate {name!r}: {cls!r} is not a subclass of gd_provider.core.gates.base.Gate")
    return cls


def make_gate(name: str, options: Mapping[str, Any] | None = None) -> Gate:
    """A gate instance with its options checked (raises :class:`GateError` naming the gate and the field)."""
    if options is not None and not isinstance(options, Mapping):
        raise GateError(f"gate {name!r}: options must be a mapping, got {type(options).__name__}")
    return gate_class(name)(**dict(options or {}))


def failed_reasons(result: GateResult) -> list[str]:
    """The reasons of a result that say FAIL."""
    return [r for r in result.reasons if r.endswith("FAIL") or r.startswith("FAIL")]
