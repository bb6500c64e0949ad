"""Benchmark of the two data gates of the registry stage (issue: drift gate + evaluation).

1. Drift check on 1M × 20 columns (16 numeric, 4 categorical) with pinned methods, through
   ``core.drift.detect_drift`` (Evidently, sampled with a fixed seed), against a baseline of the same
   per-column statistics computed by hand with SciPy on the same samples. Target: ≤ 15 s wall.
2. Evaluation of two models (challenger + champion) on a 200k-row holdout the way the gate does it —
   MLflow pyfunc models loaded from a registry, scored, metrics computed — against scoring the same two
   torch models directly (preprocessing + forward pass, no MLflow).

Ratios are printed against the baselines measured in the same run; numbers go to
benchmarks/results/gates.json. ``--quick`` shrinks the sizes tenfold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def _frame(n: int, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {f"num_{i:02d}": rng.normal(shift * (i % 3 == 0), 1.0 + 0.1 * i, n) for i in range(16)}
    cats = np.array(["a", "b", "c", "d", "e"])
    for j in range(4):
        p = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
        if shift and j == 0:
            p = p[::-1]
        data[f"cat_{j}"] = cats[rng.choice(5, n, p=p)]
    return pd.DataFrame(data)


def bench_drift(rows: int, sample: int) -> dict:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    from gd_provider.core.drift import detect_drift

    ref, cur = _frame(rows, 0.0, 1), _frame(rows, 0.5, 2)
    numeric = [c for c in ref if c.startswith("num_")]
    categorical = [c for c in ref if c.startswith("cat_")]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = detect_drift(ref, cur, numeric_columns=numeric, categorical_columns=categorical,
                              numeric_method="wasserstein", categorical_method="jensenshannon", threshold=0.1,
                              sample_size=sample, seed=0, out_dir=out)
        ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    rs = ref.sample(n=min(sample, rows), random_state=0)
    cs = cur.sample(n=min(sample, rows), random_state=0)
    scores = {}
    for c in numeric:
        scores[c] = wasserstein_distance(rs[c], cs[c]) / (np.std(rs[c]) or 1.0)
    for c in categorical:
        keys = sorted(set(rs[c]) | set(cs[c]))
        p = rs[c].value_counts(normalize=True).reindex(keys, fill_value=0)
        q = cs[c].value_counts(normalize=True).reindex(keys, fill_value=0)
        scores[c] = float(jensenshannon(p, q))
    baseline = time.perf_counter() - t0
    agree = sum((scores[c] >= 0.1) == report.columns[c]["drifted"] for c in scores)
    return {"rows": rows, "columns": len(numeric) + len(categorical), "sample_size": sample,
            "sampled": report.sampled, "drifted_columns": len(report.drifted_columns),
            "seconds": round(ours, 3), "baseline_seconds": round(baseline, 3),
            "ratio": round(ours / baseline, 2), "target_seconds": 15.0, "baseline_agrees_on_columns": agree}


def _model_dir(path: Path, df: pd.DataFrame, seed: int) -> Path:
    import torch

    from gd_provider.core.training.model import build_model
    from gd_provider.core.training.preprocess import Preprocessor
    from gd_provider.core.training.spec import TrainingSpec
    from gd_provider.demo.pipeline import TRAINING_SPEC

    spec = TrainingSpec.from_dict({**TRAINING_SPEC, "seed": seed})
    pre = Preprocessor.fit(df, spec.numeric_features, spec.categorical_features)
    torch.manual_seed(seed)
    model = build_model(spec, pre.output_dim)
    path.mkdir(parents=True)
    torch.save(model.state_dict(), path / "model.pt")
    (path / "preprocessor.json").write_text(json.dumps(pre.to_dict()))
    (path / "spec.json").write_text(json.dumps(spec.to_dict()))
    df.head(5).to_parquet(path / "input_example.parquet", index=False)
    return path


def _holdout(rows: int) -> pd.DataFrame:
    from gd_provider.demo import schema

    rng = np.random.default_rng(0)
    df = pd.DataFrame({c: rng.gamma(2.0, 10.0, rows) for c in schema.NUMERIC_FEATURES})
    for c in ("hour_of_day", "is_foreign", "is_online", "card_txn_count_7d", "card_age_days",
              "card_distinct_merchants_7d", "merchant_txn_count_30d"):
        df[c] = rng.integers(0, 24, rows).astype("int64")
    df["channel"] = rng.choice(list(schema.CHANNELS), rows)
    df["merchant_category"] = rng.choice(list(schema.MERCHANT_CATEGORIES), rows)
    df[schema.LABEL] = (rng.random(rows) < 0.03).astype("int64")
    return df


def bench_evaluation(rows: int) -> dict:
    import mlflow

    from gd_provider.core.gate import GatePolicy, decide
    from gd_provider.core.tasks import get_task
    from gd_provider.core.training.pyfunc import FraudScorer, GdTorchPyfunc

    task = get_task("binary")  # the gate's metrics are the task's, as the evaluation operator computes them

    df = _holdout(rows)
    y = df.pop("is_fraud").to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        exp = mlflow.create_experiment("bench", artifact_location=f"file://{tmp / 'artifacts'}")
        uris = []
        for seed in (1, 2):
            model_dir = _model_dir(tmp / f"m{seed}", df.head(5000), seed)
            with mlflow.start_run(experiment_id=exp):
                info = mlflow.pyfunc.log_model(name="model", python_model=GdTorchPyfunc(),
                                               artifacts={"model_dir": str(model_dir)},
                                               input_example=df.head(5), pip_requirements=["torch"])
            uris.append(info.model_uri)
        policy = GatePolicy.from_dict({"value_thresholds": {"roc_auc": 0.5}, "max_abs_regression": {"pr_auc": 0.01}},
                                      task=task)
        t0 = time.perf_counter()
        metrics = [task.gate_metrics(y, np.asarray(mlflow.pyfunc.load_model(u).predict(df))) for u in uris]
        decide(metrics[0], metrics[1], policy, champion_version="1", task=task)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        for seed in (1, 2):
            task.gate_metrics(y, FraudScorer(tmp / f"m{seed}").predict_proba(df))
        baseline = time.perf_counter() - t0
    return {"holdout_rows": rows, "models": 2, "seconds": round(ours, 3), "baseline_seconds": round(baseline, 3),
            "ratio": round(ours / baseline, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    results = {"machine": f"{os.cpu_count()} CPUs", "python": sys.version.split()[0]}
    results["drift"] = bench_drift(1_000_000 // scale, 50_000 // scale)
    d = results["drift"]
    print(f"drift      {d['rows']:>9,} rows × {d['columns']} cols (sample {d['sample_size']:,}): "
          f"{d['seconds']:.2f} s (target ≤ {d['target_seconds']} s); hand-written SciPy on the same samples "
          f"{d['baseline_seconds']:.2f} s → ratio {d['ratio']}")
    results["evaluation"] = bench_evaluation(200_000 // scale)
    e = results["evaluation"]
    print(f"evaluation {e['holdout_rows']:>9,} holdout rows × 2 models via MLflow pyfunc: {e['seconds']:.2f} s; "
          f"direct torch scoring {e['baseline_seconds']:.2f} s → ratio {e['ratio']}")
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(f"peak RSS {results['peak_rss_mb']} MB")
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / "gates.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=float))
        print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
