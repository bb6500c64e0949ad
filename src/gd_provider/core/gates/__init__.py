"""Release gates: one contract (:class:`Gate`, :class:`GateInputs`), one result shape (:class:`GateResult`)."""

from gd_provider.core.gates.base import (
    BUILTIN_GATES,
    Gate,
    GateError,
    GateInputs,
    HealthGate,
    failed_reasons,
    gate_class,
    make_gate,
)
from gd_provider.core.gates.result import GateResult, format_results

__all__ = ["BUILTIN_GATES", "Gate", "GateError", "GateInputs", "GateResult", "HealthGate", "failed_reasons",
           "format_results", "gate_class", "make_gate"]
