"""End-to-end benchmark: the nightly retraining DAG at 100k and 1M training rows x 20 features.

Run from the project root (one command, unattended, a few minutes):

    .venv/bin/python benchmarks/bench_e2e.py [--rows 100000 1000000] [--keep]

For each size, in a fresh temporary project home (``GD_PROVIDER_HOME``) and Airflow home (SQLite):

1. **prepare** (one process; ``airflow db migrate`` runs alongside): the demo generator scaled so that a night's 21-day training window holds
   ``rows`` transactions (cards and merchants scaled alike), with the generator's two extra snapshot
   features (``extra_features=True``: 5 + 1 transaction columns + 8 card + 6 merchant features = 20 model
   features); the Feast repo applied; ``airflow db migrate``. The DAGs folder holds the real
   ``dags/feature_materialization.py`` (linked) and the real ``dags/retraining_dags.py`` (copied, so it
   reads ``configs/`` next to it) with ``dags/configs/fraud_detector.yaml`` plus the two extra features in
   ``training.numeric_features`` and ``drift.numeric_columns``; nothing else differs.
2. **night 1** (a fresh process): the materialization DAG, then the nightly DAG with ``dag.test()`` — the
   first champion.
3. **night 2** (a fresh process, the measured night): the 4 days before it drifted (as in ``make demo``),
   the materialization DAG, then the nightly DAG: drift vs the champion's training data, a challenger,
   evaluation against the champion on the same holdout, registration, promotion or rejection, smoke test.

Each night runs in its own process, as a scheduler would start it: imports and DAG parsing are paid again
(and reported apart from the DAG run). Per-task wall times come from the task instances' start/end in the
Airflow DB; ``gaps`` is the DAG run's wall time minus the sum of its tasks (``dag.test`` scheduling).
Memory: a thread here samples the whole process tree of the running step (the ``dag.test`` process, Ray's
GCS/raylet and workers, ...) every 0.2 s: the summed RSS (shared pages counted once per process, so an
over-estimate), the summed PSS (every 5th sample; shared pages split) and the largest single process.
Peaks are reported per night and per task (by the task's time window).

Targets (issue #6, on the 2-core machine): at 1M rows the nightly DAG run <= 120 s and peak RSS <= 4 GB;
1M / 100k wall time <= 11x. Writes benchmarks/results/e2e.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/harness: the in-process Airflow runner (not part of the wheel)
RESULTS = ROOT / "benchmarks" / "results" / "e2e.json"
DAG_ID = "gd_nightly_fraud_retraining"
MATERIALIZE_DAG_ID = "gd_feature_materialization"

# The demo's scale: 1500 transactions/day, 2000 cards, 200 merchants; a night trains on 21 days.
LOOKBACK_DAYS = 21
BASE_PER_DAY, BASE_CARDS, BASE_MERCHANTS = 1500, 2000, 200
DAYS = LOOKBACK_DAYS + 2  # night 1 trains on days [0, 21), night 2 on [1, 22) (end = logical date)
START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_DAYS = 4

TARGET_SECONDS_1M = 120.0
TARGET_RSS_GB_1M = 4.0
TARGET_SCALING = 11.0

TASK_ORDER = (
    "features_fresh",
    "retrieve_training_set",
    "validate",
    "drift_check",
    "train",
    "health_gate",
    "evaluate",
    "register",
    "promote",
    "smoke_test",
    "rollback",
    "run_report",
)
STAGES = {
    "data": ("features_fresh", "retrieve_training_set", "validate", "drift_check"),
    "training": ("train", "health_gate"),
    "release": ("evaluate", "register", "promote", "smoke_test", "rollback"),
    "report": ("run_report",),
}


# ============================================================================================ children
def _nights() -> list[datetime]:
    last_day = START + timedelta(days=DAYS - 1)
    return [last_day - timedelta(days=1), last_day]  # as in `make demo`: nights on the last two days


def _scale(rows: int) -> dict[str, int]:
    per_day = max(1, round(rows / LOOKBACK_DAYS))
    factor = per_day / BASE_PER_DAY
    return {
        "txns_per_day": per_day,
        "n_cards": max(10, round(BASE_CARDS * factor)),
        "n_merchants": max(5, round(BASE_MERCHANTS * factor)),
    }


def _configure(work: Path) -> None:
    from tests.harness import airflow_env

    airflow_env.configure(work / "airflow", [ROOT / "dags" / "feature_materialization.py"], work / "home")


def step_prepare(work: Path, rows: int) -> dict[str, Any]:
    """Data, Feast repo, DAGs folder, Airflow DB. Returns timings and sizes."""
    import yaml

    _configure(work)
    from gd_provider.demo.feature_repo import create_feature_repo
    from gd_provider.demo.generator import EXTRA_FEATURES, GeneratorConfig, generate, write_demo_data

    out: dict[str, Any] = {"scale": _scale(rows)}
    home = work / "home"
    # `airflow db migrate` (as tests.harness.airflow_env.migrate runs it) alongside the data generation
    t_migrate = time.perf_counter()
    migrate = subprocess.Popen(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    data_dir = home / "feature_repo" / "data"

    t0 = time.perf_counter()
    config = GeneratorConfig(start=START.date().isoformat(), days=DAYS, extra_features=True, **_scale(rows))
    data = generate(config)
    out["generate_s"] = time.perf_counter() - t0
    out["transactions"] = len(data.transactions)
    out["card_snapshots"] = len(data.card_stats)
    out["merchant_snapshots"] = len(data.merchant_stats)
    t0 = time.perf_counter()
    write_demo_data(data_dir, data)
    out["write_s"] = time.perf_counter() - t0
    del data

    t0 = time.perf_counter()
    create_feature_repo(home / "feature_repo", data_dir, extra_features=True)
    out["feature_repo_s"] = time.perf_counter() - t0

    # the real nightly DAG file, reading the config next to it: the demo's config + the 2 extra features
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags / "configs").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "dags" / "retraining_dags.py", dags / "retraining_dags.py")
    cfg = yaml.safe_load((ROOT / "dags" / "configs" / "fraud_detector.yaml").read_text())
    assert cfg["dag_id"] == DAG_ID and cfg["features"]["lookback_days"] == LOOKBACK_DAYS, cfg
    cfg["training"]["numeric_features"] += list(EXTRA_FEATURES)
    cfg["drift"]["numeric_columns"] += list(EXTRA_FEATURES)
    (dags / "configs" / "fraud_detector.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out["features"] = len(cfg["training"]["numeric_features"]) + len(cfg["training"]["categorical_features"])

    log, _ = migrate.communicate()
    out["migrate_s"] = time.perf_counter() - t_migrate  # in parallel with the steps above
    if migrate.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{log[-3000:]}")
    return out


def _task_times(dag_id: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        dr = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one()
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        tasks = {}
        for ti in tis:
            start, end = ti.start_date, ti.end_date
            tasks[ti.task_id] = {
                "state": str(ti.state),
                "start": start.timestamp() if start else None,
                "end": end.timestamp() if end else None,
                "seconds": (end - start).total_seconds() if start and end else 0.0,
            }
        # the run's own start_date under dag.test() is not the wall-clock start: span the task instances
        starts = [t["start"] for t in tasks.values() if t["start"]]
        ends = [t["end"] for t in tasks.values() if t["end"]]
        run = {"state": str(dr.state), "start": min(starts, default=None), "end": max(ends, default=None)}
    return run, tasks


def _drift_days(data_dir: Path, night: datetime) -> None:
    import pandas as pd

    from gd_provider.demo.generator import inject_drift, transactions_day_path

    for d in range(DRIFT_DAYS):
        path = transactions_day_path(data_dir, night - timedelta(days=1 + d))
        pd.read_parquet(path).pipe(inject_drift, strength=1.0, seed=d).to_parquet(path, index=False)


def _training_timings(report: dict[str, Any]) -> dict[str, float]:
    """The ``gd.timing.*`` tags that the training task put on its MLflow run (Ray init, fit, loop...)."""
    train = (report.get("outputs") or {}).get("train") or {}
    if not train.get("mlflow_run_id"):
        return {}
    from gd_provider.hooks.mlflow import MlflowHook

    tags = MlflowHook().get_conn().get_run(train["mlflow_run_id"]).data.tags
    return {k.removeprefix("gd.timing."): float(v) for k, v in sorted(tags.items()) if k.startswith("gd.timing.")}


def step_night(work: Path, night: int) -> dict[str, Any]:
    """Materialization DAG + nightly DAG for one night, in this (fresh) process."""
    t_process = time.perf_counter()
    _configure(work)
    logical = _nights()[night - 1]
    home = work / "home"
    out: dict[str, Any] = {"logical_date": logical.isoformat()}
    if night == 2:
        t0 = time.perf_counter()
        _drift_days(home / "feature_repo" / "data", logical)
        out["inject_drift_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from tests.harness import airflow_env

    dag = airflow_env.load_dag(DAG_ID)
    materialization = airflow_env.load_dag(MATERIALIZE_DAG_ID)
    out["import_and_parse_s"] = time.perf_counter() - t_process
    out["parse_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mat = airflow_env.run_dag(materialization, logical)
    out["materialize_s"] = time.perf_counter() - t0
    out["materialize_state"] = mat["state"]

    t0 = time.perf_counter()
    run = airflow_env.run_dag(dag, logical)
    out["dag_test_s"] = time.perf_counter() - t0
    out["state"] = run["state"]
    out["run_id"] = run["run_id"]
    out["dag_run"], out["tasks"] = _task_times(DAG_ID, run["run_id"])
    out["materialize_tasks"] = _task_times(MATERIALIZE_DAG_ID, mat["run_id"])[1]

    from gd_provider.operators._common import safe_name

    report_path = home / "runs" / safe_name(DAG_ID) / safe_name(run["run_id"]) / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    outputs = report.get("outputs") or {}
    dataset = outputs.get("retrieve_training_set") or {}
    out["training_rows"] = dataset.get("rows")
    out["training_columns"] = len(dataset.get("columns") or [])
    out["dataset_mb"] = round(Path(dataset["uri"]).stat().st_size / 2**20, 1) if dataset.get("uri") else None
    out["train_timings"] = _training_timings(report)
    drift = outputs.get("drift_check") or {}
    gate = outputs.get("evaluate") or {}
    out["drift_status"] = drift.get("status")
    out["drift_share"] = drift.get("share_drifted")
    out["blessed"] = gate.get("blessed")
    out["holdout_rows"] = gate.get("holdout_rows")
    metrics = (outputs.get("train") or {}).get("metrics") or {}
    out["val_roc_auc"] = metrics.get("val_roc_auc")
    out["process_s"] = time.perf_counter() - t_process
    return out


def child_main(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    result = step_prepare(work, args.rows) if args.step == "prepare" else step_night(work, int(args.step[-1]))
    Path(args.result).write_text(json.dumps(result, indent=2, default=str))
    return 0


# ============================================================================================== parent
class TreeSampler(threading.Thread):
    """Samples the summed RSS (and every ``pss_every``-th time the summed PSS) of a process and all its
    descendants, the largest single process, and the tree's cumulative CPU time (user + system of every
    process seen so far, at its last sample: load-independent where wall times are not), until stopped."""

    def __init__(self, pid: int, interval: float = 0.2, pss_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_every = pid, interval, pss_every
        # (t, rss, pss, max rss, its name, cumulative cpu seconds)
        self.samples: list[tuple[float, int, int | None, int, str, float]] = []
        self._cpu: dict[tuple[int, float], float] = {}
        self.peak_breakdown: list[tuple[str, float]] = []  # the processes at the highest summed RSS
        self._peak_total = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        i = 0
        while not self._stop_event.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total, pss_total, top, top_name = 0, 0 if i % self.pss_every == 0 else None, 0, ""
            breakdown: list[tuple[Any, int]] = []
            for p in procs:
                try:
                    cpu = p.cpu_times()
                    self._cpu[(p.pid, p.create_time())] = cpu.user + cpu.system
                    if pss_total is not None:
                        info = p.memory_full_info()
                        pss_total += info.pss
                        rss = info.rss
                    else:
                        rss = p.memory_info().rss
                    total += rss
                    breakdown.append((p, rss))
                    if rss > top:
                        top, top_name = rss, _proc_label(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self.samples.append((time.time(), total, pss_total, top, top_name, sum(self._cpu.values())))
            if total > self._peak_total:
                self._peak_total = total
                self.peak_breakdown = [(_proc_label(p), round(rss / 2**20, 1))
                                       for p, rss in sorted(breakdown, key=lambda x: -x[1])]
            i += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def _cpu_at(self, t: float | None) -> float:
        if t is None:
            return self.samples[-1][5] if self.samples else 0.0
        before = [s[5] for s in self.samples if s[0] <= t]
        return before[-1] if before else 0.0

    def peak(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        """Peaks of the samples in [start, end] and the tree's CPU seconds in between."""
        window = [s for s in self.samples if (start is None or s[0] >= start) and (end is None or s[0] <= end)]
        cpu = self._cpu_at(end) - (self._cpu_at(start) if start is not None else 0.0)
        if not window:
            return {"rss_mb": None, "pss_mb": None, "max_process_rss_mb": None, "max_process": None,
                    "cpu_s": round(cpu, 2), "samples": 0}
        top = max(window, key=lambda s: s[3])
        pss = [s[2] for s in window if s[2] is not None]
        return {
            "rss_mb": round(max(s[1] for s in window) / 2**20, 1),
            "pss_mb": round(max(pss) / 2**20, 1) if pss else None,
            "max_process_rss_mb": round(top[3] / 2**20, 1),
            "max_process": top[4],
            "cpu_s": round(cpu, 2),
            "samples": len(window),
        }


def _proc_label(p: Any) -> str:
    try:
        cmd = p.cmdline()
    except Exception:  # noqa: BLE001 - gone or not readable: the name will do
        cmd = []
    name = p.name()
    if "ray::" in " ".join(cmd[:1]) or name.startswith("ray::"):
        return cmd[0] if cmd else name
    for part in cmd:
        if part.endswith((".py", "raylet", "gcs_server")) or "default_worker" in part:
            return f"{name} {Path(part).name}"
    return name


def run_step(work: Path, rows: int, step: str) -> tuple[dict[str, Any], TreeSampler, float]:
    result = work / f"{step}.json"
    log = work / f"{step}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_step", step, "--_workdir", str(work),
           "--_result", str(result), "--rows", str(rows)]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop()
    wall = time.perf_counter() - t0
    if rc != 0 or not result.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"step {step} at {rows:,} rows failed (rc={rc}); log {log}:\n{tail}")
    return json.loads(result.read_text()), sampler, wall


def bench_size(rows: int, keep: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"gd_e2e_{rows}_"))
    print(f"\n== {rows:,} rows: work dir {work}", flush=True)
    out: dict[str, Any] = {"rows_target": rows, "workdir": str(work) if keep else None}
    try:
        prep, sampler, wall = run_step(work, rows, "prepare")
        prep["process_s"] = wall
        prep["peak"] = sampler.peak()
        out["prepare"] = prep
        print(
            f"   prepare: {prep['transactions']:,} transactions over {DAYS} days, {prep['scale']['n_cards']:,} "
            f"cards, {prep['scale']['n_merchants']:,} merchants; generate {prep['generate_s']:.1f} s, write "
            f"{prep['write_s']:.1f} s, Feast apply {prep['feature_repo_s']:.1f} s, db migrate "
            f"{prep['migrate_s']:.1f} s",
            flush=True,
        )
        for night in (1, 2):
            res, sampler, wall = run_step(work, rows, f"night{night}")
            res["process_wall_s"] = wall
            run = res["dag_run"]
            # headline: the wall time of dag.test() (what a user waits for the run); the tasks' span and
            # the gaps between tasks are reported too
            res["dag_run_s"] = res["dag_test_s"]
            res["tasks_span_s"] = (run["end"] - run["start"]) if run["start"] and run["end"] else None
            res["peak_dag"] = sampler.peak(run["start"], run["end"])
            res["peak_process"] = sampler.peak()
            res["peak_breakdown_mb"] = sampler.peak_breakdown
            for t in res["tasks"].values():
                t["peak"] = sampler.peak(t["start"], t["end"]) if t["start"] and t["end"] else None
            summed = sum(t["seconds"] for t in res["tasks"].values())
            res["gaps_s"] = (res["tasks_span_s"] or 0.0) - summed
            res["dag_test_setup_s"] = res["dag_test_s"] - (res["tasks_span_s"] or 0.0)
            res["stages"] = {
                name: round(sum(res["tasks"].get(t, {}).get("seconds", 0.0) for t in tasks), 3)
                for name, tasks in STAGES.items()
            }
            out[f"night{night}"] = res
            print(
                f"   night {night}: DAG run {res['state']} in {res['dag_run_s']:.1f} s "
                f"({res['training_rows'] or 0:,} rows x {res['training_columns']} columns); materialize "
                f"{res['materialize_s']:.1f} s; process {wall:.1f} s; peak tree RSS "
                f"{res['peak_dag']['rss_mb']} MB (PSS {res['peak_dag']['pss_mb']} MB)",
                flush=True,
            )
            if res["state"] != "success":
                failed = [t for t, v in res["tasks"].items() if v["state"] == "failed"]
                raise RuntimeError(f"night {night} at {rows:,} rows: {res['state']} (failed: {failed}); "
                                   f"log {work / f'night{night}.log'}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def report(results: dict[str, Any]) -> None:
    sizes = results["sizes"]
    keys = list(sizes)
    print("\nMeasured night (night 2: drift vs champion, challenger, evaluation, promotion)")
    print("per size: wall s | CPU s of the process tree | peak tree RSS MB")
    head = f"{'task':<24}" + "".join(f"{format(int(k), ','):>30}" for k in keys)
    print(head)
    print("-" * len(head))

    def cells(values: list[tuple[float | None, float | None, float | None]]) -> str:
        return "".join(f"{_fmt(w):>12}{_fmt(c):>9}{_fmt(m, 0):>9}" for w, c, m in values)

    for task_id in TASK_ORDER:
        vals = []
        for k in keys:
            t = sizes[k]["night2"]["tasks"].get(task_id)
            peak = (t or {}).get("peak") or {}
            vals.append((t["seconds"] if t else None, peak.get("cpu_s"), peak.get("rss_mb")))
        print(f"{task_id:<24}" + cells(vals))
    print("-" * len(head))
    rows = (
        ("gaps between tasks", lambda n: (n["gaps_s"], None, None)),
        ("dag.test() setup", lambda n: (n["dag_test_setup_s"], None, None)),
        ("DAG run (dag.test)", lambda n: (n["dag_run_s"], n["peak_dag"]["cpu_s"], n["peak_dag"]["rss_mb"])),
        ("materialization DAG", lambda n: (n["materialize_s"], None, None)),
        ("imports + DAG parsing", lambda n: (n["import_and_parse_s"], None, None)),
        ("night process", lambda n: (n["process_wall_s"], n["peak_process"]["cpu_s"], n["peak_process"]["rss_mb"])),
    )
    for label, getter in rows:
        print(f"{label:<24}" + cells([getter(sizes[k]["night2"]) for k in keys]))
    n1 = [sizes[k]["night1"] for k in keys]
    print(f"{'night 1 DAG run':<24}" + cells([(n["dag_run_s"], n["peak_dag"]["cpu_s"], n["peak_dag"]["rss_mb"])
                                              for n in n1]))
    for k in keys:
        n = sizes[k]["night2"]
        p = n["peak_dag"]
        print(f"  {int(k):,}: {n['training_rows'] or 0:,} training rows x {n['training_columns']} columns; peak tree "
              f"RSS {p['rss_mb']} MB, PSS {p['pss_mb']} MB; largest process {p['max_process']} "
              f"({p['max_process_rss_mb']} MB)")
        breakdown = n.get("peak_breakdown_mb") or []
        if breakdown:
            print(f"  {int(k):,}: at the peak ({len(breakdown)} processes): "
                  + ", ".join(f"{name} {mb:.0f}" for name, mb in breakdown[:10]))
        tt = n["train_timings"]
        if tt:
            print(f"  {int(k):,}: inside train: " + ", ".join(f"{a} {b:.1f} s" for a, b in tt.items()))

    r = results["ratios"]
    print()
    if "dag_run_s_1m" in r:
        print(f"1M rows: DAG run {r['dag_run_s_1m']:.1f} s vs target {TARGET_SECONDS_1M:.0f} s -> "
              f"{r['seconds_vs_target']:.2f}x of budget ({'OK' if r['seconds_ok'] else 'OVER'})")
        print(f"1M rows: peak tree RSS {r['rss_gb_1m']:.2f} GB vs target {TARGET_RSS_GB_1M:.0f} GB -> "
              f"{r['rss_vs_target']:.2f}x ({'OK' if r['rss_ok'] else 'OVER'}); PSS {r['pss_gb_1m']:.2f} GB")
    if "scaling" in r:
        print(f"{r['scaling_sizes']}: DAG run scales {r['scaling']:.2f}x (target <= {r['scaling_target']:.1f}x, "
              f"{'OK' if r['scaling_ok'] else 'OVER'}); per stage: "
              + ", ".join(f"{s} {v:.1f}x" for s, v in r["stage_scaling"].items()))
    print(f"load average before/after: {results['loadavg_before']} / {results['loadavg_after']}")


def ratios(sizes: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {}
    if "1000000" in sizes:
        n = sizes["1000000"]["night2"]
        r["dag_run_s_1m"] = n["dag_run_s"]
        r["seconds_vs_target"] = n["dag_run_s"] / TARGET_SECONDS_1M
        r["seconds_ok"] = n["dag_run_s"] <= TARGET_SECONDS_1M
        r["rss_gb_1m"] = n["peak_dag"]["rss_mb"] / 1024
        r["pss_gb_1m"] = (n["peak_dag"]["pss_mb"] or float("nan")) / 1024
        r["rss_vs_target"] = r["rss_gb_1m"] / TARGET_RSS_GB_1M
        r["rss_ok"] = r["rss_gb_1m"] <= TARGET_RSS_GB_1M
    keys = sorted(sizes, key=int)
    if len(keys) >= 2:
        small, big = sizes[keys[0]]["night2"], sizes[keys[-1]]["night2"]
        r["scaling_sizes"] = f"{int(keys[0]):,} -> {int(keys[-1]):,}"
        r["scaling"] = big["dag_run_s"] / small["dag_run_s"]
        r["scaling_target"] = TARGET_SCALING * int(keys[-1]) / int(keys[0]) / 10  # 11x per 10x rows
        r["scaling_ok"] = r["scaling"] <= r["scaling_target"]
        r["stage_scaling"] = {s: big["stages"][s] / small["stages"][s] for s in STAGES if small["stages"][s] > 0}
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="training-set rows per night (21-day window)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes (logs, DBs, runs)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/e2e.json")
    parser.add_argument("--_step", help=argparse.SUPPRESS)
    parser.add_argument("--_workdir", dest="workdir", help=argparse.SUPPRESS)
    parser.add_argument("--_result", dest="result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._step:
        args.step = args._step
        args.rows = args.rows[0]
        return child_main(args)

    for var, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"),
                       ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(var, value)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, {_mem_gb():.0f} GB RAM",
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "features": 20,
        "lookback_days": LOOKBACK_DAYS,
        "targets": {"dag_run_s_1m": TARGET_SECONDS_1M, "peak_rss_gb_1m": TARGET_RSS_GB_1M,
                    "scaling_100k_to_1m": TARGET_SCALING},
        "sizes": {},
    }
    for rows in args.rows:
        results["sizes"][str(rows)] = bench_size(rows, args.keep)
        results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        results["ratios"] = ratios(results["sizes"])
        results["bench_wall_s"] = time.perf_counter() - t0
        if not args.no_write:  # after every size, so a long run leaves what it measured
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2, default=_json_default))
    report(results)
    print(f"benchmark wall time {results['bench_wall_s']:.0f} s")
    if not args.no_write:
        print(f"wrote {RESULTS}")
    return 0


def _mem_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
