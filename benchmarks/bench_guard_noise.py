"""Guards calibrated to noise: false alarms on clean runs vs steps to abort on real divergences.

Run from the project root (about 4-8 minutes on 2 cores with the defaults):

    .venv/bin/python benchmarks/bench_guard_noise.py [--seeds 20] [--epochs 2] [--quick]

Demo-like data: ``gd_provider.demo.generator`` (21 days, ~25k training rows, 3 % positives; the card and
merchant snapshots joined to the transactions by day, as the Feast point-in-time join does for daily
snapshots), preprocessed like a real run, one data seed per run seed. The model is the shipped fraud
config's (MLP 64-32, Adam lr 0.003, ``grad_clip_norm: 1.0``, ``pos_weight: auto``), trained by the plain
core loop (``fit_plain``: the same engine as the Ray workers, one rank, in this process; no Ray).

1. **False alarms**: ``--seeds`` clean runs x batch sizes 16 .. 4096 with the guards on (the defaults);
   every trip is a false alarm (goal 0). For each batch size: the closest any clean run came to each rule
   (the highest ``value / threshold`` any ``breach_steps`` consecutive steps all reached; a rule trips at
   > 1), the band's width (top of the loss window / its median: the spread the band absorbs), the health
   gate's clipped share (raw, and batch-scaled: what ``max_clipped_share`` bounds). The same runs' telemetry
   replayed through the previous rule (single step: loss >= mean of the last 20 + max(2 x mean, 0.1), norm >
   50 x median) gives its false-alarm rate, for comparison.
2. **Divergence**: lr 1, 10, 100 with Adam (the shipped optimizer) and SGD (momentum 0.9), clip 1.0, at 64
   and 512 rows, 3 seeds: the step the guards stop at, against the steps in the first epoch (goal: within).
3. **Cost**: guarded (guards + telemetry) vs bare loop (neither), same process, alternating repeats, median
   (the baseline: ``fit_plain(guarded=False, telemetry=False)``); and, robust to a busy machine, the time
   spent inside the guards' ``check`` as a share of the guarded fit (and per step).

``--parts`` runs some of the three (``alarms,divergence,cost``) and updates only those in the JSON file.

Writes benchmarks/results/guard_noise.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gd_provider.core.training import engine
from gd_provider.core.training.guards import GuardConfig, TrainingGuard
from gd_provider.core.training.health import CLIP_REFERENCE_ROWS
from gd_provider.core.training.loop import fit_plain
from gd_provider.core.training.preprocess import Preprocessor
from gd_provider.demo import schema
from gd_provider.demo.generator import GeneratorConfig, generate

RESULTS = Path(__file__).resolve().parent / "results" / "guard_noise.json"
BATCH_SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def demo_arrays(seed: int, days: int = 21) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation arrays of the demo's fraud data (time split 80/20), preprocessed like a real run."""
    data = generate(GeneratorConfig(seed=seed, days=days))
    tx = data.transactions.copy()
    tx["day"] = tx[schema.TIMESTAMP].dt.floor("D")
    cards = data.card_stats.rename(columns={schema.TIMESTAMP: "day"}).drop(columns=["created"])
    merchants = data.merchant_stats.rename(columns={schema.TIMESTAMP: "day"}).drop(columns=["created"])
    df = tx.merge(cards, on=["card_id", "day"], how="left").merge(merchants, on=["merchant_id", "day"], how="left")
    df = df.sort_values([schema.TIMESTAMP, schema.TRANSACTION_ID]).reset_index(drop=True)
    cut = int(len(df) * 0.8)
    train, val = df.iloc[:cut], df.iloc[cut:]
    pre = Preprocessor.fit(train, schema.NUMERIC_FEATURES, schema.CATEGORICAL_FEATURES)
    label = schema.LABEL
    return (pre.transform(train), train[label].to_numpy(np.float32), pre.transform(val), val[label].to_numpy(np.float32))


def shipped_spec(**overrides):
    from gd_provider.demo.schema import training_spec

    base = dict(hidden_sizes=[64, 32], optimizer="adam", lr=0.003, batch_size=512, epochs=2, grad_clip_norm=1.0)
    return training_spec(**{**base, **overrides})


# ------------------------------------------------------------------------------------------ diagnostics
def closest_approach(steps: dict, cfg: GuardConfig, batch_rows: int) -> dict[str, float]:
    """Replay clean telemetry through a fresh guard: per rule, the highest value/threshold that
    ``breach_steps`` consecutive steps all reached (> 1 would have tripped)."""
    guard = TrainingGuard(cfg, batch_rows=batch_rows)
    k = cfg.breach_steps
    ratios: dict[str, list[float]] = {"loss_band": [], "norm_band": [], "loss_level": []}
    tops: list[float] = []
    for loss, norm in zip(steps["loss"], steps["grad_norm"], strict=True):
        band, bound = guard.loss_band(), guard.norm_bound()
        if guard.loss_window():
            window = guard.loss_window()
            tops.append(max(window) / max(float(np.median(window)), 1e-12))
        guard.observe(float(loss), float(norm))
        ratios["loss_band"].append(loss / band if band > 0 else math.nan)
        ratios["norm_band"].append(norm / bound if bound > 0 else math.nan)
        ceiling = guard.level_ceiling
        ratios["loss_level"].append(guard.level / ceiling if ceiling > 0 else math.nan)
    out = {}
    for name, values in ratios.items():
        arr = np.asarray(values, dtype=np.float64)
        if len(arr) < k or not np.isfinite(arr).any():
            out[name] = math.nan
            continue
        arr = np.where(np.isfinite(arr), arr, 0.0)
        runs = np.min(np.lib.stride_tricks.sliding_window_view(arr, k), axis=1)
        out[name] = float(runs.max())
    out["band_top_over_median"] = float(np.median(tops)) if tops else math.nan
    return out


def legacy_trip(steps: dict) -> int | None:
    """The previous rule on the same telemetry: a single step with loss >= mean(prev 20) + max(2 x mean, 0.1)
    or norm > 50 x median(prev 50, after 10) or > 1e4; the 1-based step, or None."""
    losses, norms = steps["loss"], steps["grad_norm"]
    for i, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        if not (math.isfinite(loss) and math.isfinite(norm)) or norm > 1e4:
            return i + 1
        prev_n = norms[max(0, i - 50) : i]
        if len(prev_n) >= 10 and np.median(prev_n) > 1e-8 and norm > 50 * np.median(prev_n):
            return i + 1
        if i >= 20:
            mean = float(np.mean(losses[i - 20 : i]))
            if loss - mean >= max(2.0 * abs(mean), 0.1):
                return i + 1
    return None


# ------------------------------------------------------------------------------------------ parts
def false_alarms(seeds: int, epochs: int, batch_sizes: list[int]) -> dict:
    cfg = GuardConfig()
    per_batch: dict[int, dict] = {b: {"runs": 0, "trips": [], "legacy_trips": 0, "steps": 0, "closest": [],
                                      "raw_clip": [], "scaled_clip": [], "auc": []} for b in batch_sizes}
    for seed in range(seeds):
        t0 = time.perf_counter()
        x, y, xv, yv = demo_arrays(7 + seed)
        for bs in batch_sizes:
            spec = shipped_spec(batch_size=bs, seed=seed, epochs=epochs)
            fit = fit_plain(spec, x, y, xv, yv)
            row = per_batch[bs]
            row["runs"] += 1
            row["steps"] += len(fit.steps["step"])
            if fit.trip is not None:
                row["trips"].append({"seed": seed, "step": fit.trip.step, "reason": fit.trip.reason})
                print(f"  FALSE ALARM seed {seed} batch {bs}: step {fit.trip.step}: {fit.trip.reason}", flush=True)
            if legacy_trip(fit.steps) is not None:
                row["legacy_trips"] += 1
            row["closest"].append(closest_approach(fit.steps, cfg, spec.batch_rows(len(x))))
            norms = np.asarray(fit.steps["grad_norm"], dtype=np.float64)
            scaled = spec.grad_clip_norm * max(1.0, math.sqrt(CLIP_REFERENCE_ROWS / bs))
            row["raw_clip"].append(float(np.mean(norms > spec.grad_clip_norm)))
            row["scaled_clip"].append(float(np.mean(norms > scaled)))
            if fit.history:
                row["auc"].append(fit.history[-1]["val_roc_auc"])
        print(f"seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)
    out = {}
    for bs, row in per_batch.items():
        closest = row["closest"]

        def worst(name: str, closest=closest) -> float:
            vals = [c[name] for c in closest if math.isfinite(c[name])]
            return round(max(vals), 3) if vals else math.nan

        out[str(bs)] = {
            "runs": row["runs"],
            "steps_judged": row["steps"],
            "false_alarms": len(row["trips"]),
            "trips": row["trips"],
            "legacy_rule_false_alarms": row["legacy_trips"],
            "closest_loss_band": worst("loss_band"),
            "closest_norm_band": worst("norm_band"),
            "closest_loss_level": worst("loss_level"),
            "band_top_over_median": round(statistics.median(c["band_top_over_median"] for c in closest), 2),
            "clipped_share_raw_max": round(max(row["raw_clip"]), 3),
            "clipped_share_scaled_max": round(max(row["scaled_clip"]), 3),
            "val_roc_auc_median": round(statistics.median(row["auc"]), 4) if row["auc"] else None,
        }
    return out


def divergence(x, y, xv, yv, seeds: int) -> list[dict]:
    rows = []
    for optimizer in ("adam", "sgd"):
        for lr in (1.0, 10.0, 100.0):
            for bs in (64, 512):
                stops = []
                for seed in range(seeds):
                    spec = shipped_spec(batch_size=bs, seed=seed, epochs=1, optimizer=optimizer, lr=lr, momentum=0.9)
                    fit = fit_plain(spec, x, y, xv, yv)
                    stops.append(None if fit.trip is None else (fit.trip.step, fit.trip.kind))
                per_epoch = math.ceil(len(x) / bs)
                rows.append({
                    "optimizer": optimizer, "lr": lr, "batch_size": bs, "steps_per_epoch": per_epoch,
                    "abort_steps": [s[0] if s else None for s in stops],
                    "kinds": sorted({s[1] for s in stops if s}),
                    "all_within_first_epoch": all(s is not None and s[0] <= per_epoch for s in stops),
                })
                print(f"  {optimizer} lr {lr:g} batch {bs}: abort at {rows[-1]['abort_steps']} of {per_epoch} "
                      f"{rows[-1]['kinds']}", flush=True)
    return rows


class _TimedGuard(TrainingGuard):
    """The loop's guard, timing its own ``check`` (class-level accumulator)."""

    spent = 0.0

    def check(self, losses, norms):
        t0 = time.perf_counter()
        try:
            return super().check(losses, norms)
        finally:
            _TimedGuard.spent += time.perf_counter() - t0


def cost(x, y, xv, yv, repeats: int) -> dict:
    out = {}
    for bs in (64, 512):
        spec = shipped_spec(batch_size=bs, epochs=2)
        guarded, bare, shares, per_step = [], [], [], []
        for _ in range(repeats):
            bare.append(fit_plain(spec, x, y, xv, yv, guarded=False, telemetry=False).seconds)
            _TimedGuard.spent = 0.0
            engine.TrainingGuard = _TimedGuard  # the engine builds its guards
            try:
                fit = fit_plain(spec, x, y, xv, yv)
            finally:
                engine.TrainingGuard = TrainingGuard
            guarded.append(fit.seconds)
            shares.append(_TimedGuard.spent / fit.seconds)
            per_step.append(_TimedGuard.spent / max(len(fit.steps["step"]), 1))
        out[str(bs)] = {
            "bare_s": round(statistics.median(bare), 3),
            "guarded_s": round(statistics.median(guarded), 3),
            "ratio": round(statistics.median(guarded) / statistics.median(bare), 3),
            "guard_check_share": round(statistics.median(shares), 5),
            "guard_check_us_per_step": round(statistics.median(per_step) * 1e6, 2),
        }
        print(f"  batch {bs}: guarded/bare = {out[str(bs)]['ratio']}, inside the guards: "
              f"{100 * out[str(bs)]['guard_check_share']:.2f} % ({out[str(bs)]['guard_check_us_per_step']} us/step)",
              flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--divergence-seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 seeds, 1 epoch, 1 divergence seed, 1 repeat")
    parser.add_argument("--parts", default="alarms,divergence,cost")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.divergence_seeds, args.repeats = 3, 1, 1, 1
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)
    started = time.perf_counter()
    previous = json.loads(args.out.read_text()) if args.out.is_file() and parts != {"alarms", "divergence", "cost"} else {}
    x, y, xv, yv = demo_arrays(7)
    if "alarms" in parts:
        print(f"1. false alarms: {args.seeds} seeds x {len(BATCH_SIZES)} batch sizes x {args.epochs} epochs", flush=True)
        alarms = false_alarms(args.seeds, args.epochs, BATCH_SIZES)
    else:
        alarms = previous["false_alarms"]
    if "divergence" in parts:
        print("2. divergence", flush=True)
        diverged = divergence(x, y, xv, yv, args.divergence_seeds)
    else:
        diverged = previous["divergence"]
    if "cost" in parts:
        print("3. cost", flush=True)
        costs = cost(x, y, xv, yv, args.repeats)
    else:
        costs = previous["cost"]

    print("\nbatch  runs  steps   false alarms  (previous rule)  closest: band / norm / level   band top/median"
          "  clipped raw -> scaled (max)")
    for bs, row in alarms.items():
        print(f"{bs:>5}  {row['runs']:>4}  {row['steps_judged']:>6}  {row['false_alarms']:>12}  "
              f"{row['legacy_rule_false_alarms']:>15}  {row['closest_loss_band']:>12} / {row['closest_norm_band']} / "
              f"{row['closest_loss_level']}   {row['band_top_over_median']:>15}  "
              f"{row['clipped_share_raw_max']} -> {row['clipped_share_scaled_max']}")
    total = sum(r["false_alarms"] for r in alarms.values())
    runs = sum(r["runs"] for r in alarms.values())
    legacy = sum(r["legacy_rule_false_alarms"] for r in alarms.values())
    print(f"false-alarm rate: {total}/{runs} (previous rule on the same telemetry: {legacy}/{runs})")
    result = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform()},
        "args": {**previous.get("args", {}), **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}},
        "rows_train": int(len(x)),
        "positive_share": round(float(np.mean(y)), 4),
        "guard_config": GuardConfig().to_dict(),
        "false_alarms": alarms,
        "false_alarm_rate": f"{total}/{runs}",
        "legacy_rule_false_alarm_rate": f"{legacy}/{runs}",
        "divergence": diverged,
        "cost": costs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
