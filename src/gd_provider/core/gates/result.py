"""One result shape for every gate: validation, drift, training health, evaluation and smoke test.

``GateResult(gate, passed, reasons, metrics, links)``: what was decided, every check's one-line reason
(``... : pass`` / ``... : FAIL``), the numbers behind it and where to read more. Each gate operator pushes
it as the XCom ``gate`` (also when it fails the task), the run report collects them and the demo prints
them, all with :func:`format_results`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

GATES = ("validation", "drift", "health", "evaluation", "smoke_test")


@dataclass
class GateResult:
    gate: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    # "decided" | "skipped" (a person asked, with the reason in ``reasons``) | "not_applicable" (first night)
    status: str = "decided"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def verdict(self) -> str:
        if self.status != "decided":
            return self.status.upper().replace("_", " ")
        return "PASSED" if self.passed else "FAILED"

    def format(self, indent: str = "  ") -> str:
        lines = [f"{self.gate}: {self.verdict}"]
        lines += [f"{indent}- {r}" for r in self.reasons]
        lines += [f"{indent}{name}: {url}" for name, url in self.links.items() if url]
        return "\n".join(lines)


def format_results(results: list[GateResult | dict[str, Any]], indent: str = "  ") -> str:
    """Every gate's verdict and reasons, in pipeline order."""
    items = [r if isinstance(r, GateResult) else GateResult.from_dict(r) for r in results]
    order = {g: i for i, g in enumerate(GATES)}
    items.sort(key=lambda r: order.get(r.gate, len(order)))
    return "\n".join(r.format(indent) for r in items)
