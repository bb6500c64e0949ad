"""GPU benchmark: samples/s of plain torch, the guarded loop and the Ray Train path, fp32 and bf16 autocast.

Needs only torch and numpy (plus Ray for the Ray path): no Airflow, pandas, pyarrow or scikit-learn, so it
runs on a bare accelerator image with ``PYTHONPATH=<bundle>:src`` (see ``benchmarks/gpu.sh``). The data are
generated here with numpy and live on the device for every variant.

    python benchmarks/bench_gpu.py                 # cuda (skips without one), 2M rows, writes results/gpu.json
    python benchmarks/bench_gpu.py --device cpu --rows 100000 --out /tmp/gpu_cpu.json   # code-path check

Variants, each for every precision (``fp32``, ``bf16`` = ``torch.autocast(<device>, bfloat16)``), on the same
data, model (MLP), optimizer (Adam), batch size, gradient clipping and per-epoch validation:

* ``plain``: a hand-written torch loop (shuffle, forward, loss, backward, clip, step; evaluation per epoch);
* ``guarded``: ``fit_plain`` - our engine with guards and per-step telemetry (synced every k steps);
* ``ray``: ``TorchTrainer(train_loop_per_worker)`` with one worker (one GPU on cuda), i.e. the same engine
  plus Ray Train's per-epoch report and checkpoint.

Throughput is measured over epochs 2..E (epoch 1 warms up CUDA kernels and the allocator; a Ray worker is a
fresh process) from the first step of epoch 2 to the end of the last epoch, evaluation and (Ray) per-epoch
reports and checkpoints included. Ratios are against ``plain`` of the same precision; target for the Ray
path >= 0.85. Ray cluster and worker start-up are reported separately.
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
from typing import Any

import numpy as np
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
if (SRC / "gd_provider").is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # a checkout that is not installed (the accelerator image)

from gd_provider.core.training.loop import (  # noqa: E402
    HISTORY_FILE,
    RUN_STATE_FILE,
    TRAIN_ARRAYS,
    VAL_ARRAYS,
    build_module,
    epoch_seed,
    evaluate,
    fit_plain,
    latest_checkpoint_on_disk,
    make_loss,
    make_optimizer,
    seed_everything,
)
from gd_provider.core.training.spec import TrainingSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
N_FEATURES = 32
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # as runner.run_training sets it (see there)


# ---------------------------------------------------------------------------------------------- data, spec
def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardized features and 0/1 labels with a learnable, non-linear relation (~5 % positives)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, N_FEATURES), dtype=np.float32)
    logit = -3.5 + 1.5 * x[:, 0] - 1.0 * x[:, 1] + 0.8 * x[:, 2] * x[:, 3] + 0.5 * np.abs(x[:, 4])
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return x, y


def make_spec(args: argparse.Namespace, precision: str) -> TrainingSpec:
    spec = TrainingSpec(
        numeric_features=tuple(f"f{i}" for i in range(N_FEATURES)),
        categorical_features=(),
        label="label",
        timestamp_column="ts",
        hidden_sizes=tuple(args.hidden),
        dropout=0.1,
        optimizer="adam",
        lr=1e-3,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=42,
        # the spec's own check refuses bf16 with device="cpu" (run_training never downgrades it); the engine
        # gets its device from the caller here, so "auto" keeps the spec valid for a --device cpu check
        device="cuda" if args.device == "cuda" else "auto",
        precision=precision,
    )
    spec.validate()
    return spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- variants
def run_plain(spec: TrainingSpec, data: dict[str, torch.Tensor], pos_weight: float, device: torch.device) -> dict:
    """Hand-written loop, same work per step and per epoch as the engine; per-epoch wall times."""
    seed_everything(spec.seed)
    task = spec.task_plugin()
    state = {"pos_weight": pos_weight}
    model = build_module(spec, data["x"].shape[1], task).to(device)
    opt = make_optimizer(spec, model.parameters())
    loss_fn = make_loss(spec, state, device, task)
    params = list(model.parameters())
    xs, ys, n, bs = data["x"], data["y"], len(data["x"]), spec.batch_size
    autocast = spec.precision == "bf16"
    epoch_s = []
    for epoch in range(1, spec.epochs + 1):
        s = epoch_seed(spec.seed, 0, epoch)
        torch.manual_seed(s)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(s)).to(device)
        _sync(device)
        t0 = time.perf_counter()  # like the engine's epoch_seconds: from the first step, evaluation included
        for i in range(math.ceil(n / bs)):
            idx = order[i * bs : (i + 1) * bs]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip_norm)
            opt.step()
        val = evaluate(model, data["xv"], data["yv"], loss_fn, task, state)
        val_loss, val_auc = val["val_loss"], val["val_roc_auc"]
        _sync(device)
        epoch_s.append(time.perf_counter() - t0)
    return {"epoch_s": epoch_s, "val_roc_auc": val_auc, "val_loss": val_loss}


def run_guarded(spec: TrainingSpec, data: dict[str, np.ndarray], pos_weight: float, device: torch.device) -> dict:
    """``fit_plain``: the engine of the Ray workers (guards on, telemetry on the device, synced every k steps).
    It moves the arrays to the device once, before the first epoch."""
    fit = fit_plain(
        spec, data["x"], data["y"], data["xv"], data["yv"], task_state={"pos_weight": pos_weight}, device=device
    )
    assert fit.trip is None, fit.trip
    return {
        "epoch_s": [h["epoch_seconds"] for h in fit.history],
        "val_roc_auc": fit.history[-1]["val_roc_auc"],
        "val_loss": fit.history[-1]["val_loss"],
        "steps": len(fit.steps["step"]),
    }


def run_ray(spec: TrainingSpec, data_dir: Path, input_dim: int, pos_weight: float, use_gpu: bool, storage: Path,
            name: str) -> dict:
    """One Ray Train worker running ``train_loop_per_worker`` (what ``run_training`` submits)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gd_provider.core.training.loop import train_loop_per_worker

    config = {
        "spec": spec.to_dict(),
        "data_dir": str(data_dir),
        "input_dim": input_dim,
        "task_state": {"pos_weight": pos_weight},
        "run_dir": str(storage / name),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}
        ),
        run_config=RunConfig(
            name=name, storage_path=str(storage), checkpoint_config=CheckpointConfig(num_to_keep=None)
        ),
    )
    started = time.time()
    t0 = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - t0
    final = latest_checkpoint_on_disk(storage / name)
    if final is None:
        raise RuntimeError(f"the Ray run {name} left no checkpoint under {storage / name}")
    history = json.loads((final / HISTORY_FILE).read_text())
    state = json.loads((final / RUN_STATE_FILE).read_text())
    if state.get("status") == "diverged" or len(history) != spec.epochs:
        raise RuntimeError(f"the Ray run {name} did not complete: {state.get('status')}, {len(history)} epochs")
    tl = state["timeline"]
    starts = {int(k): v for k, v in tl["epoch_started_unix"].items()}
    # wall time of each epoch incl. the report/checkpoint after it: epoch e runs from its start to the
    # next epoch's start (the last one to the end of the last epoch)
    bounds = [starts[e] for e in range(1, spec.epochs + 1)] + [tl["last_epoch_ended_unix"]]
    epoch_s = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    compute_s = [h["epoch_seconds"] for h in history]
    # the last epoch's span ends before its report + checkpoint: add the mean of the earlier timed epochs'
    # (epochs 2..E-1; epoch 1 when E = 2) so that every timed epoch pays for its report alike
    earlier = [e - c for e, c in zip(epoch_s[:-1], compute_s[:-1], strict=True)]
    earlier = earlier[1:] or earlier
    if earlier:
        epoch_s[-1] += max(0.0, sum(earlier) / len(earlier))
    return {
        "epoch_s": epoch_s,
        "compute_epoch_s": compute_s,
        "val_roc_auc": history[-1]["val_roc_auc"],
        "val_loss": history[-1]["val_loss"],
        "fit_s": fit_s,
        "worker_startup_s": tl["first_epoch_started_unix"] - started,
        "torch_threads": tl.get("torch_threads"),
    }


def throughput(epoch_s: list[float], rows: int) -> float:
    """Samples/s over epochs 2..E (all epochs when there is only one)."""
    timed = epoch_s[1:] or epoch_s
    return rows * len(timed) / sum(timed)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when torch sees one, else skip (`make bench` on a CPU machine)")
    parser.add_argument("--rows", type=int, default=2_000_000, help="training rows (validation: rows / 10)")
    parser.add_argument("--epochs", type=int, default=3, help=">= 2: epoch 1 is the warm-up")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=1, help="plain/guarded repeats (the median is kept)")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (cpu; default: as a Ray worker)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 1 is the warm-up)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.device is None:
        if not torch.cuda.is_available():
            print("bench_gpu: no CUDA device here - skipped (--device cpu runs its code paths on the CPU)")
            return None
        args.device = "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (use --device cpu for a code-path check)")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)  # a one-CPU Ray worker gets one thread: compare like with like
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({card}), torch {torch.__version__}, python {platform.python_version()}")

    t = time.perf_counter()
    x, y = synthetic(args.rows + args.rows // 10)
    x_train, y_train, x_val, y_val = x[: args.rows], y[: args.rows], x[args.rows :], y[args.rows :]
    pos_weight = float((len(y_train) - y_train.sum()) / max(y_train.sum(), 1.0))
    host = {"x": x_train, "y": y_train, "xv": x_val, "yv": y_val}
    data = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in host.items()}
    print(f"data: {args.rows} x {N_FEATURES} train, {len(x_val)} val, {y_train.mean():.3%} positives "
          f"({time.perf_counter() - t:.1f} s)")
    out: dict[str, Any] = {
        "device": str(device),
        "device_name": card,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "gpus": torch.cuda.device_count() if device.type == "cuda" else 0},
        "data": {"rows": args.rows, "features": N_FEATURES, "val_rows": len(x_val), "epochs": args.epochs,
                 "batch_size": args.batch_size, "model": f"mlp {args.hidden}", "optimizer": "adam",
                 "timed_epochs": f"2..{args.epochs}"},
        "results": {},
    }

    # warm-up (CUDA context, kernels, allocator) for the in-process variants
    warm = make_spec(args, "fp32").with_overrides(epochs=1)
    small = {k: v[: min(len(v), 20 * args.batch_size)] for k, v in data.items()}
    for precision in args.precisions:
        run_plain(warm.with_overrides(precision=precision), small, pos_weight, device)

    for precision in args.precisions:
        spec = make_spec(args, precision)
        runs: dict[str, list[dict]] = {"plain": [], "guarded": []}
        for rep in range(args.repeats):
            for variant in ("plain", "guarded"):
                if variant == "plain":
                    r = run_plain(spec, data, pos_weight, device)
                else:
                    r = run_guarded(spec, host, pos_weight, device)
                r["samples_per_s"] = throughput(r["epoch_s"], args.rows)
                runs[variant].append(r)
                print(f"  {precision} {variant:8s} rep {rep}: {r['samples_per_s']:>12,.0f} samples/s "
                      f"(epochs {', '.join(f'{s:.2f}' for s in r['epoch_s'])} s), val AUC {r['val_roc_auc']:.4f}")
        res = {
            v: {"samples_per_s": statistics.median(r["samples_per_s"] for r in rs), "runs": rs}
            for v, rs in runs.items()
        }
        out["results"][precision] = res
        save(out, args.out)  # what is measured is kept, whatever happens later (a timeout, a crash)
    del data

    ray = None
    if not args.skip_ray:
        try:
            import ray
            import ray.train.torch  # noqa: F401  (needs pandas, pyarrow, fsspec, requests besides Ray)
        except Exception as exc:  # an ImportError, or a version clash of a bundled package
            cause = f" (cause: {exc.__cause__!r})" if exc.__cause__ else ""
            out["ray_error"] = f"Ray path skipped: {type(exc).__name__}: {exc}{cause}"
            print(out["ray_error"])
            ray = None
    if ray is not None:
        work = Path(tempfile.mkdtemp(prefix="gd_bench_gpu_"))
        np.savez(work / TRAIN_ARRAYS, x=x_train, y=y_train)
        np.savez(work / VAL_ARRAYS, x=x_val, y=y_val)
        # Ray workers import gd_provider by module name: the checkout's src must be on their PYTHONPATH
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if (SRC / "gd_provider").is_dir() and str(SRC) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *paths])
        os.environ.setdefault(HEALTH_CHECK_ENV, "0.25")
        os.environ.setdefault("RAY_worker_niceness", "0")  # as runner.init_local_ray does (Ray's default: 15)
        t = time.perf_counter()
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2),
                 num_gpus=torch.cuda.device_count() if device.type == "cuda" else 0, include_dashboard=False)
        out["ray_init_s"] = time.perf_counter() - t
        print(f"ray.init (cluster start-up): {out['ray_init_s']:.1f} s")
        try:
            for precision in args.precisions:
                spec = make_spec(args, precision)
                r = run_ray(spec, work, N_FEATURES, pos_weight, device.type == "cuda", work / "ray", f"ray_{precision}")
                r["samples_per_s"] = throughput(r["epoch_s"], args.rows)
                out["results"][precision]["ray"] = {"samples_per_s": r["samples_per_s"], "runs": [r]}
                print(f"  {precision} ray      rep 0: {r['samples_per_s']:>12,.0f} samples/s "
                      f"(epochs {', '.join(f'{s:.2f}' for s in r['epoch_s'])} s incl. report+checkpoint), "
                      f"worker start-up {r['worker_startup_s']:.1f} s, val AUC {r['val_roc_auc']:.4f}")
        except Exception as exc:  # keep the other variants' numbers; the JSON says what went wrong
            cause = f" (cause: {exc.__cause__!r})" if exc.__cause__ else ""
            out["ray_error"] = f"{type(exc).__name__}: {exc}{cause}"
            print(f"Ray path failed: {out['ray_error']}")
        finally:
            ray.shutdown()

    print(f"\nsamples/s on {card} (epochs 2..{args.epochs}); ratio vs plain of the same precision:")
    for precision, res in out["results"].items():
        plain = res["plain"]["samples_per_s"]
        for variant, v in res.items():
            v["ratio_vs_plain"] = v["samples_per_s"] / plain
            target = " (target >= 0.85)" if variant == "ray" else ""
            print(f"  {precision} {variant:8s} {v['samples_per_s']:>12,.0f}  ratio {v['ratio_vs_plain']:.3f}{target}")
        if "fp32" in out["results"] and precision != "fp32":
            res["plain"]["speedup_vs_fp32_plain"] = plain / out["results"]["fp32"]["plain"]["samples_per_s"]
    save(out, args.out)
    print(f"wrote {args.out}")
    return out


def save(out: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result is not None and "ray_error" in result else 0)
