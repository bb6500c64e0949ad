"""Training benchmarks: Ray Train path vs a plain torch loop, and guarded vs unguarded loop.

Run from the project root (about 5-6 minutes on 2 cores with the defaults: 1M rows, 3 epochs):

    MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true RAY_USAGE_STATS_ENABLED=0 \\
        .venv/bin/python benchmarks/bench_training.py [--rows 1000000] [--epochs 3] [--repeats 3]

1. Fit time of ``run_training`` on Ray (1 and 2 CPU workers) vs ``fit_plain`` (the same engine, same data,
   model, batch size and seeds, in this process, with as many torch threads as a Ray worker gets).
   Ray cluster start-up (``ray.init``) and the worker group's start-up are reported separately; the ratio
   that the target (<= 1.15 at one worker) applies to is ``train_loop_s / plain_s``: from the first epoch's
   start to the last epoch's end inside the worker, i.e. including every per-epoch report and checkpoint.
   Diagnostics next to it: ``epoch_compute_s`` (the worker's own epoch time: steps + evaluation, without
   reports and checkpoints) and ``plain_in_ray_task_s`` (``fit_plain`` inside a plain one-CPU Ray task on the
   same arrays): loop >> compute means Train's report/checkpoint path costs; compute ~ task >> plain means
   the worker process itself runs slower (CPU contention on the machine), not Ray Train. (Ray starts its
   workers at niceness 15, this process runs at 0: under contention that is not like for like;
   ``init_local_ray`` now starts the workers at the driver's niceness.)
   Data reach the workers as pre-sharded arrays (``train.npz``, rows ``rank::world_size``), not Ray Data:
   DESIGN.md §8's Ray Data deadlock with two one-CPU workers on two CPUs does not apply; but on a 2-core
   machine the two-worker run shares both cores with the driver and Ray's own processes, so its ratio
   shows the contention, not DDP's overhead.
2. Guarded vs unguarded loop in this process (plain torch, same data): ``fit_plain`` with guards and
   telemetry vs the same engine with both off, and a hand-written minimal loop as a reference.

Every ratio is against a baseline measured in the same run; repeats alternate the variants and the
median is reported (other processes share this machine's two cores). Writes benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gd_provider.core.data import write_dataset
from gd_provider.core.training.loop import (
    TRAIN_ARRAYS,
    VAL_ARRAYS,
    epoch_seed,
    fit_plain,
    load_arrays,
    make_loss,
    make_optimizer,
    seed_everything,
)
from gd_provider.core.training.model import build_model
from gd_provider.core.training.runner import INPUTS_DIR, init_local_ray, run_training
from gd_provider.core.training.spec import TrainingSpec

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
NUMERIC = [f"f{i}" for i in range(16)]
CATEGORICAL = ["channel", "category"]


def synthetic(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    df["channel"] = rng.choice(["web", "pos", "atm", "moto"], n)
    df["category"] = rng.choice([f"c{i}" for i in range(12)], n)
    logit = (
        -3.0 + 1.5 * df["f0"] - 1.0 * df["f1"] + 0.8 * df["f2"] * df["f3"] + 1.2 * (df["channel"] == "moto")
    )
    df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    df["transaction_id"] = [f"t{i:08d}" for i in range(n)]
    df["event_timestamp"] = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(
        np.arange(n) * 10, unit="s"
    )
    return df


def make_spec(epochs: int, **overrides) -> TrainingSpec:
    return TrainingSpec(
        numeric_features=NUMERIC,
        categorical_features=CATEGORICAL,
        label="label",
        timestamp_column="event_timestamp",
        hidden_sizes=(64, 32),
        dropout=0.1,
        optimizer="adam",
        lr=1e-3,
        batch_size=512,
        epochs=epochs,
        seed=42,
    ).with_overrides(overrides)


def reference_loop(spec: TrainingSpec, x, y, xv, yv, pos_weight: float) -> float:
    """A hand-written minimal loop (no telemetry, no guards) with the same work per step and per epoch."""
    from gd_provider.core.training.loop import evaluate

    t0 = time.perf_counter()
    seed_everything(spec.seed)
    model = build_model(spec, x.shape[1])
    opt = make_optimizer(spec, model.parameters())
    loss_fn = make_loss(spec, pos_weight, torch.device("cpu"))
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    xvt, yvt = torch.from_numpy(xv), torch.from_numpy(yv)
    params = list(model.parameters())
    bs = spec.batch_size
    for epoch in range(1, spec.epochs + 1):
        s = epoch_seed(spec.seed, 0, epoch)
        torch.manual_seed(s)
        order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(s))
        for i in range(math.ceil(len(xs) / bs)):
            idx = order[i * bs : (i + 1) * bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip_norm)
            opt.step()
        evaluate(model, xvt, yvt, loss_fn)
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def plain_in_ray_task(spec_dict: dict, inputs: str, threads: int) -> float:
    """``fit_plain`` inside a one-CPU Ray task (diagnostic: the Ray worker process without Ray Train)."""
    torch.set_num_threads(threads)
    spec = TrainingSpec.from_dict(spec_dict)
    x, y = load_arrays(Path(inputs) / TRAIN_ARRAYS)
    xv, yv = load_arrays(Path(inputs) / VAL_ARRAYS)
    pos_weight = float((len(y) - y.sum()) / y.sum())
    fit_plain(spec.with_overrides(epochs=1), x[:5000], y[:5000], xv[:1000], yv[:1000], pos_weight=pos_weight)
    return fit_plain(spec, x, y, xv, yv, pos_weight=pos_weight).seconds


def epoch_walls(run_state: dict) -> list[float]:
    """Wall time of each epoch in the worker, its report and checkpoint included."""
    tl = run_state.get("timeline", {})
    starts = tl.get("epoch_started_unix") or {}
    if not starts or "last_epoch_ended_unix" not in tl:
        return []
    bounds = [starts[k] for k in sorted(starts, key=int)] + [tl["last_epoch_ended_unix"]]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--guard-repeats", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    work = Path(tempfile.mkdtemp(prefix="gd_bench_"))
    t = time.perf_counter()
    manifest = write_dataset(
        synthetic(args.rows),
        str(work / "data.parquet"),
        sort_by=["event_timestamp", "transaction_id"],
        timestamp_column="event_timestamp",
        label_column="label",
    )
    print(
        f"dataset: {args.rows} rows x {len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical "
        f"({time.perf_counter() - t:.1f} s to generate)"
    )
    spec = make_spec(args.epochs)
    out: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_start": os.getloadavg(),
        },
        "data": {
            "rows": args.rows,
            "epochs": args.epochs,
            "batch_size": spec.batch_size,
            "model": f"mlp {list(spec.hidden_sizes)}",
            "optimizer": spec.optimizer,
        },
    }

    ray_runs: dict[str, list[dict]] = {"1": [], "2": []}
    plain_times: list[float] = []
    task_times: list[float] = []
    threads = 1
    inputs = None
    if not args.skip_ray:
        import ray

        t = time.perf_counter()
        init_local_ray()
        out["ray_init_s"] = time.perf_counter() - t
        print(f"ray.init (cluster start-up): {out['ray_init_s']:.1f} s")
        try:
            for rep in range(args.repeats):
                for workers in (1, 2):
                    s = spec.with_overrides(num_workers=workers, cpus_per_worker=1.0)
                    r = run_training(
                        manifest, s, storage_path=str(work / "ray"), run_name=f"w{workers}_{rep}"
                    )
                    assert r.status == "completed", r.error
                    threads = r.run_state.get("timeline", {}).get("torch_threads", threads)
                    inputs = inputs or Path(r.run_dir) / INPUTS_DIR
                    row = {
                        "fit_s": r.timings["fit_s"],
                        "worker_startup_s": r.timings.get("worker_startup_s"),
                        "train_loop_s": r.timings.get("train_loop_s"),
                        "epoch_compute_s": sum(h["epoch_seconds"] for h in r.history),
                        "epoch_wall_s": epoch_walls(r.run_state),
                        "prepare_s": r.timings.get("prepare_s"),
                        "val_roc_auc": r.metrics["val_roc_auc"],
                        "steps": r.health["steps"],
                    }
                    ray_runs[str(workers)].append(row)
                    print(
                        f"  ray {workers} worker(s) rep {rep}: fit {row['fit_s']:.1f} s = start-up "
                        f"{row['worker_startup_s']:.1f} s + loop {row['train_loop_s']:.2f} s "
                        f"(compute {row['epoch_compute_s']:.2f} s), val AUC {row['val_roc_auc']:.4f}"
                    )
                    if workers == 1:
                        # the plain baseline right after, on the very arrays the workers trained on
                        x, y = load_arrays(inputs / TRAIN_ARRAYS)
                        xv, yv = load_arrays(inputs / VAL_ARRAYS)
                        pos_weight = float((len(y) - y.sum()) / y.sum())
                        torch.set_num_threads(threads)
                        if rep == 0:  # warm-up (imports, allocator), like a worker's start-up
                            fit_plain(
                                spec.with_overrides(epochs=1),
                                x[:5000],
                                y[:5000],
                                xv[:1000],
                                yv[:1000],
                                pos_weight=pos_weight,
                            )
                        fit = fit_plain(spec, x, y, xv, yv, pos_weight=pos_weight)
                        plain_times.append(fit.seconds)
                        print(
                            f"  plain torch ({threads} thread(s)) rep {rep}: {fit.seconds:.2f} s, "
                            f"val AUC {fit.history[-1]['val_roc_auc']:.4f}"
                        )
                        task = ray.remote(num_cpus=1)(plain_in_ray_task)
                        task_times.append(ray.get(task.remote(spec.to_dict(), str(inputs), threads)))
                        print(f"  plain torch in a 1-CPU Ray task rep {rep}: {task_times[-1]:.2f} s")
        finally:
            ray.shutdown()
        plain = median(plain_times)
        out["plain_s"] = plain
        out["plain_runs_s"] = plain_times
        out["plain_in_ray_task_s"] = median(task_times)
        out["plain_in_ray_task_runs_s"] = task_times
        out["torch_threads"] = threads
        out["ray"] = {}
        for workers, rows in ray_runs.items():
            loop = median([r["train_loop_s"] for r in rows])
            out["ray"][f"{workers}_worker"] = {
                "runs": rows,
                "fit_s": median([r["fit_s"] for r in rows]),
                "worker_startup_s": median([r["worker_startup_s"] for r in rows]),
                "train_loop_s": loop,
                "epoch_compute_s": median([r["epoch_compute_s"] for r in rows]),
                "ratio_vs_plain_excl_startup": loop / plain,
                "ratio_compute_vs_plain": median([r["epoch_compute_s"] for r in rows]) / plain,
                "ratio_vs_plain_excl_startup_min": min(r["train_loop_s"] for r in rows) / min(plain_times),
                "ratio_vs_plain_incl_worker_startup": median([r["fit_s"] for r in rows]) / plain,
            }
        print("\nRay path vs plain torch (median of repeats; ratio = train_loop_s / plain_s):")
        print(f"  plain torch: {plain:.2f} s; the same in a 1-CPU Ray task: {out['plain_in_ray_task_s']:.2f} s "
              f"({out['plain_in_ray_task_s'] / plain:.3f})")
        for key, v in out["ray"].items():
            print(
                f"  {key}: loop {v['train_loop_s']:.2f} s (compute {v['epoch_compute_s']:.2f} s) -> ratio "
                f"{v['ratio_vs_plain_excl_startup']:.3f} "
                f"(target <= 1.15 at 1 worker); with worker start-up {v['fit_s']:.1f} s -> "
                f"{v['ratio_vs_plain_incl_worker_startup']:.2f}"
            )

    # ------------------------------------------------------------------ guarded vs unguarded
    if inputs is None:
        s = spec.with_overrides(num_workers=1)
        from gd_provider.core.training.preprocess import Preprocessor, split_by_time

        df = pd.read_parquet(manifest.uri)
        train, val, _ = split_by_time(
            df, s.timestamp_column, s.validation_fraction, s.holdout_fraction, key_columns=s.key_columns
        )
        pre = Preprocessor.fit(train, s.numeric_features, s.categorical_features)
        x, y = pre.transform(train), train["label"].to_numpy("float32")
        xv, yv = pre.transform(val), val["label"].to_numpy("float32")
    else:
        x, y = load_arrays(inputs / TRAIN_ARRAYS)
        xv, yv = load_arrays(inputs / VAL_ARRAYS)
    pos_weight = float((len(y) - y.sum()) / y.sum())
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {"guarded": [], "unguarded": [], "reference": []}
    if inputs is None:  # no Ray run warmed this process up
        fit_plain(
            spec.with_overrides(epochs=1), x[:5000], y[:5000], xv[:1000], yv[:1000], pos_weight=pos_weight
        )
    for rep in range(args.guard_repeats):
        for variant in ("guarded", "unguarded", "reference"):
            if variant == "reference":
                elapsed = reference_loop(spec, x, y, xv, yv, pos_weight)
            else:
                on = variant == "guarded"
                elapsed = fit_plain(
                    spec, x, y, xv, yv, pos_weight=pos_weight, guarded=on, telemetry=on
                ).seconds
            times[variant].append(elapsed)
            print(f"  {variant} rep {rep}: {elapsed:.2f} s")
    g, u, ref = (median(times[k]) for k in ("guarded", "unguarded", "reference"))
    gmin, umin, refmin = (min(times[k]) for k in ("guarded", "unguarded", "reference"))
    out["guards"] = {
        "times": times,
        "guarded_s": g,
        "unguarded_s": u,
        "reference_loop_s": ref,
        "ratio_guarded_vs_unguarded": g / u,
        "ratio_guarded_vs_unguarded_min": gmin / umin,
        "ratio_unguarded_vs_reference": u / ref,
        "ratio_unguarded_vs_reference_min": umin / refmin,
        "sync_every_k_steps": spec.sync_every_k_steps,
    }
    print(
        f"\nguarded {g:.2f} s vs unguarded {u:.2f} s (median) -> ratio {g / u:.3f}, best-of "
        f"{len(times['guarded'])}: {gmin / umin:.3f} (target <= 1.05); unguarded engine vs hand-written "
        f"loop: {u / ref:.3f} (best-of: {umin / refmin:.3f})"
    )
    out["machine"]["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
