"""`make demo`: the embedded default end to end — three nights of the nightly retraining DAG.

night 1: the first champion is trained, validated, gated (bootstrap policy) and promoted;
night 2: new data (the latest days drifted) → a challenger, promoted or rejected against the champion;
night 3: a corrupted day of transactions → stopped by the validation gate, the champion untouched.

Everything lives under ``.demo/`` (removed at the start of each run): the Airflow home (SQLite), the
Feast repo and its data, the MLflow store, each run's datasets and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests/harness: the in-process Airflow runner (not part of the wheel)

from tests.harness import airflow_env  # noqa: E402

DAG_ID = "gd_nightly_fraud_retraining"


@contextlib.contextmanager
def redirected(log_path: Path):
    """Send everything written to fds 1/2 (Airflow task logs, Ray workers) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def say(msg: str) -> None:
    print(msg, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default=str(ROOT / ".demo"))
    parser.add_argument("--days", type=int, default=61, help="days of synthetic transactions")
    args = parser.parse_args()

    demo = Path(args.demo_dir).resolve()
    if demo.exists():
        say(f"Removing the previous demo home {demo} (each demo starts clean)")
        shutil.rmtree(demo)
    home = demo / "home"
    logs = demo / "logs"
    logs.mkdir(parents=True)
    env = airflow_env.configure(demo / "airflow", sorted((ROOT / "dags").glob("*.py")), home)

    from gd_provider.demo.feature_repo import create_feature_repo
    from gd_provider.demo.generator import (
        GeneratorConfig,
        corrupt,
        generate,
        inject_drift,
        transactions_day_path,
        write_demo_data,
    )

    t0 = time.perf_counter()
    config = GeneratorConfig(days=args.days)
    data = generate(config)
    data_dir = home / "feature_repo" / "data"
    write_demo_data(data_dir, data)
    create_feature_repo(home / "feature_repo", data_dir)
    say(
        f"Generated {len(data.transactions):,} card transactions over {config.days} days "
        f"(fraud rate {data.transactions['is_fraud'].mean():.2%}) and applied the Feast repo "
        f"[{time.perf_counter() - t0:.1f} s]"
    )

    t0 = time.perf_counter()
    airflow_env.migrate()
    with redirected(logs / "setup.log"):  # DAG parsing logs are noise here
        dag = airflow_env.load_dag(DAG_ID)
        materialization = airflow_env.load_dag("gd_feature_materialization")
    say(f"Airflow metadata DB ready (SQLite) [{time.perf_counter() - t0:.1f} s]")

    start = datetime.fromisoformat(config.start).replace(tzinfo=UTC)
    last_day = start + timedelta(days=config.days - 1)
    nights = [
        (last_day - timedelta(days=1), "first champion", None),
        (last_day, "drifted days → challenger vs champion", "drift"),
        (last_day + timedelta(days=1), "corrupted transactions → must be stopped", "corrupt"),
    ]
    results = []
    for i, (logical, story, injection) in enumerate(nights, start=1):
        if injection == "drift":
            for d in range(4):
                day = logical - timedelta(days=1 + d)
                path = transactions_day_path(data_dir, day)
                import pandas as pd

                pd.read_parquet(path).pipe(inject_drift, strength=1.0, seed=d).to_parquet(path, index=False)
            say(f"  injected drift into the 4 days before {logical.date()}")
        if injection == "corrupt":
            import pandas as pd

            path = transactions_day_path(data_dir, logical - timedelta(days=1))
            pd.read_parquet(path).pipe(corrupt, kind="nulls", seed=1).to_parquet(path, index=False)
            say(f"  corrupted {path.name}: NaN amounts")
        say(f"Night {i} ({logical.date()}): {story} ...")
        t0 = time.perf_counter()
        with redirected(logs / f"night{i}.log"):
            # the schedule runs the feature materialization first (the retraining DAG's features_fresh
            # sensor waits for it), then the retraining
            materialized = airflow_env.run_dag(materialization, logical)
            outcome = airflow_env.run_dag(dag, logical)
            champion = _champion()
        if materialized["state"] != "success":
            say(f"  feature materialization {materialized['state']} (see the log)")
        elapsed = time.perf_counter() - t0
        outcome.update(night=i, logical=str(logical.date()), story=story, seconds=elapsed)
        outcome["report"] = _read_report(home, outcome["run_id"])
        outcome["validation"] = _read_report(home, outcome["run_id"], "validate/validation.json")
        outcome["log"] = str(logs / f"night{i}.log")
        outcome["champion"] = champion
        results.append(outcome)
        say(f"  → DAG run {outcome['state']} in {elapsed:.0f} s; champion: v{outcome['champion'] or '-'} "
            f"(log: {logs / f'night{i}.log'})")

    _summary(results)
    (demo / "summary.json").write_text(json.dumps(results, indent=2, default=str))
    env_file = demo / "airflow.env"
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    say(
        "\nLook at what it made:\n"
        f"  MLflow UI : {ROOT}/.venv/bin/mlflow ui --backend-store-uri {tracking} --port 5000"
        "   → http://localhost:5000\n"
        f"  Airflow UI: source {env_file} && {ROOT}/.venv/bin/airflow standalone"
        "   → http://localhost:8080 (user admin; password in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)\n"
        f"  Run reports: {home / 'runs' / DAG_ID}/*/report.json"
    )
    ok = [r["state"] for r in results] == ["success", "success", "failed"]
    ok &= results[2]["champion"] == results[1]["champion"]
    if not ok:
        say("\nUNEXPECTED: the nights did not end as the story says (success, success, failed with the champion kept)")
        return 1
    return 0


def _read_report(home: Path, run_id: str, name: str = "report.json") -> dict:
    from gd_provider.operators._common import safe_name

    path = home / "runs" / safe_name(DAG_ID) / safe_name(run_id) / name
    return json.loads(path.read_text()) if path.exists() else {}


def _champion() -> str | None:
    from gd_provider.core.registry import get_alias_version
    from gd_provider.hooks.mlflow import MlflowHook

    client = MlflowHook().get_conn()
    return get_alias_version(client, "fraud_detector", "champion")


GATES = [("features_fresh", "fresh"), ("validate", "validate"), ("drift_check", "drift"), ("train", "train"),
         ("health_gate", "health"), ("evaluate", "evaluate"),
         ("promote", "promote"), ("smoke_test", "smoke"), ("rollback", "rollback")]


def _summary(results: list[dict]) -> None:
    width = 27 + 10 * len(GATES) + 8
    say("\n" + "=" * width)
    head = f"{'night':<6}{'date':<12}{'run':<9}" + "".join(f"{g[1]:<10}" for g in GATES) + "champion"
    say(head)
    say("-" * width)
    for r in results:
        tasks = r["tasks"]
        row = f"{r['night']:<6}{r['logical']:<12}{r['state']:<9}"
        row += "".join(f"{_short(tasks.get(t, '-')):<10}" for t, _ in GATES)
        say(row + f"v{r['champion'] or '-'}")
    say("=" * width)
    for r in results:
        out = r["report"].get("outputs", {})
        say(f"night {r['night']} ({r['story']}):")
        ds = out.get("retrieve_training_set")
        if ds:
            say(f"  dataset   : {ds['rows']:,} rows, sha256 {ds['sha256'][:12]}…")
        train = out.get("train")
        if train:
            m = train["metrics"]
            say(f"  training  : val ROC AUC {m.get('val_roc_auc', float('nan')):.4f}, "
                f"val PR AUC {m.get('val_pr_auc', float('nan')):.4f}; MLflow run {train['mlflow_run_id'][:12]}…")
        gate = out.get("evaluate")
        if gate:
            say(f"  operating : {_operating_points(gate)}")
        gates = r["report"].get("gates") or {}
        if gates:  # every gate the same way as the run report prints them
            from gd_provider.core.gates.result import format_results

            say("  gates     :")
            for line in format_results(list(gates.values()), indent="    ").splitlines():
                say(f"    {line}")
        reg = out.get("register")
        if reg:
            say(f"  registry  : {reg['name']} v{reg['version']} (blessed={str(reg['blessed']).lower()})")
        prom = out.get("promote")
        if prom:
            before = "none" if prom["previous_champion"] == "none" else f"v{prom['previous_champion']}"
            say(f"  promotion : champion {before} → v{prom['version']}")
        failed = [t for t, s in r["tasks"].items() if s == "failed" and t != "run_report"]
        if failed:
            say(f"  stopped at: {', '.join(failed)} (task logs: {r['log']})")
        say(f"  champion after the night: v{r['champion'] or '-'}")


def _operating_points(gate: dict) -> str:
    """Each model's threshold and its FPR / precision / recall on the holdout, with the bootstrap intervals."""
    points = gate.get("operating_points") or {}
    intervals = gate.get("intervals") or {}
    parts = []
    for who in ("champion", "challenger"):
        metrics = gate.get(f"{who}_metrics")
        if not metrics or not points.get(who):
            continue
        shown = []
        for name in ("fpr", "precision", "recall"):
            iv = (intervals.get(who) or {}).get(name)
            band = f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv and iv.get("low") is not None else ""
            shown.append(f"{name.upper() if name == 'fpr' else name} {metrics[name]:.3f}{band}")
        label = f"champion v{gate['champion_version']}" if who == "champion" else "challenger"
        parts.append(f"{label} @ {points[who]['threshold']:.4f}: " + ", ".join(shown))
    flip = (gate.get("challenger_metrics") or {}).get("flip_rate")
    return "; ".join(parts) + (f"; decisions flipped {flip:.2%}" if flip is not None else "")


def _short(state: str) -> str:
    return {"upstream_failed": "upstrm_fail", "success": "ok"}.get(state, state)[:9]


if __name__ == "__main__":
    code = main()
    # Every task ran in this process (dag.test), so native libraries (Ray's core worker, gRPC, DuckDB) left
    # threads behind; tearing them down at interpreter exit crashed once in a few runs here (SIGSEGV after
    # the summary). Everything is written and flushed by now: leave without that teardown.
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
