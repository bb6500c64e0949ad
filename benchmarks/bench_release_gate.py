"""Benchmark of the release decision at the operating point (issue: release decisions).

The gate on a 1M-row holdout: both models' decision metrics at their own thresholds, the flip rate, a
paired bootstrap with 1,000 resamples (count metrics exact through a multinomial over the
(slice, label, champion decision, challenger decision) cells; ROC/PR AUC by an m-out-of-n bootstrap of 200
resamples), 20 slices with per-slice bounds, a worst-slice floor and a gap cap
(``core.gates.release.decide_release``), against a baseline measured in the same run: scoring the holdout
alone (the two models' forward passes, a 20-feature MLP each, plus their metrics: what the gate costs without
intervals or slices). Target: ≤ 10 s on 2 cores. ``--rows`` changes the size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--slices", type=int, default=20)
    args = parser.parse_args()

    import torch

    from gd_provider.core.gate import GatePolicy
    from gd_provider.core.gates.release import decide_release
    from gd_provider.core.models import mlp
    from gd_provider.core.tasks import get_task

    task = get_task("binary")
    rng = np.random.default_rng(0)
    n = args.rows
    x = rng.normal(size=(n, 20)).astype(np.float32)
    y = (rng.random(n) < 0.03).astype(np.float64)
    x[:, 0] += 2.0 * y
    holdout = pd.DataFrame({"segment": rng.integers(0, args.slices, n).astype(str)})
    torch.manual_seed(0)
    models = [mlp(20, 1, hidden_sizes=(64, 32), dropout=0.0).eval() for _ in range(2)]
    for m in models:
        with torch.no_grad():
            m.body[0].weight[:, 0] += 0.5  # both rank on the informative feature

    def score(model: torch.nn.Module) -> np.ndarray:
        with torch.no_grad():
            out = torch.cat([model(torch.from_numpy(x[i:i + 65536])) for i in range(0, n, 65536)])
        return task.scores(out.double().numpy(), {})

    t0 = time.perf_counter()
    champion, challenger = score(models[0]), score(models[1])
    th_c = float(np.quantile(champion[y == 0], 0.98))
    th_h = float(np.quantile(challenger[y == 0], 0.98))
    task.gate_metrics(y, champion, th_c)
    task.gate_metrics(y, challenger, th_h)
    baseline = time.perf_counter() - t0

    policy = GatePolicy.from_dict({
        "value_thresholds": {"roc_auc": 0.5, "flip_rate": 0.5}, "max_rel_regression": {"fpr": 0.1},
        "max_abs_regression": {"pr_auc": 0.05, "recall": 0.05},
        "interval": {"confidence": 0.95, "resamples": 1000, "judge": "worst_end"},
        "slices": {"columns": ["segment"], "min_rows": 1000, "max_abs_regression": {"fpr": 0.02, "recall": 0.1},
                   "worst_slice_floor": {"recall": 0.0}, "max_gap": {"fpr": 0.5}},
    }, task=task)
    t0 = time.perf_counter()
    decision = decide_release(task, policy, y, challenger, champion, challenger_threshold=th_h,
                              champion_threshold=th_c, champion_version="1", holdout=holdout)
    gate = time.perf_counter() - t0
    result = {"rows": n, "slices": args.slices, "resamples": 1000, "scoring_alone_s": round(baseline, 3),
              "gate_s": round(gate, 3), "gate_over_scoring": round(gate / baseline, 2), "target_s": 10.0,
              "within_target": gate <= 10.0, "judged_slices": len(decision.slices["judged"])}
    print(json.dumps(result, indent=1))
    out = ROOT / "benchmarks" / "results" / "release_gate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
