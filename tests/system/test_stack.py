"""The production stack's parts as real processes on this machine, no Docker.

PostgreSQL holds Airflow's metadata DB and MLflow's backend store (private databases, dropped at the
end); Redis is the Feast online store (a private db number, flushed at start and end); ``mlflow server``
serves tracking, registry and proxied artifacts over HTTP; Airflow runs as api-server, scheduler (with
LocalExecutor), dag-processor and triggerer. The nightly DAG is parsed by the dag-processor, unpaused and
triggered through the REST API as a logged-in user, executed by the scheduler, and judged by what the
REST API and the MLflow server report. Connections come only from ``AIRFLOW_CONN_*`` (as in
docker-compose.yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gd_provider.demo import stack as st

from .conftest import LOG_SOURCES, TIMINGS

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "gd_nightly_fraud_retraining"
MODEL = "fraud_detector"
SMALL = {"days": 40, "n_cards": 1000, "n_merchants": 100, "txns_per_day": 800}
START = datetime(2026, 1, 1, tzinfo=UTC)
LOGICAL_DATE = START + timedelta(days=SMALL["days"] - 2)  # the first night of tests/dags
CONF = {"training_overrides": {"epochs": 2, "num_workers": 1, "cpus_per_worker": 1.0}}
USER = "gd_system"
RUN_TIMEOUT_S = 420
GATES = ("retrieve_training_set", "validate", "drift_check", "train", "health_gate", "evaluate", "register",
         "promote", "smoke_test")


# Training runs on a Ray head started here, through the Jobs API (the stack's way); GD_SYSTEM_RAY=local
# trains inside the Airflow task instead (the embedded default's way).
RAY_MODE = os.environ.get("GD_SYSTEM_RAY", "cluster")


@dataclass
class Stack:
    root: Path
    home: Path
    repo: Path
    data_dir: Path
    airflow_home: Path
    redis: st.RedisDb
    mlflow_url: str = ""
    api_url: str = ""
    rest: st.AirflowRest | None = None
    ray: st.RayHead | None = None
    env: dict[str, str] = field(default_factory=dict)
    services: list[st.Service] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    def logs(self) -> str:
        text = st.log_tails(self.services)
        for log in sorted((self.airflow_home / "logs").glob(f"dag_id={DAG_ID}/**/*.log"))[-12:]:
            content = log.read_text(errors="replace")
            if "ERROR" in content or "Traceback" in content:
                text += f"\n----- task log {log.relative_to(self.airflow_home)} -----\n{content[-3000:]}"
        return text


def _require_services() -> None:
    missing = [name for name, up in (("PostgreSQL 127.0.0.1:5432", st.postgres_ready()),
                                     ("Redis 127.0.0.1:6379", st.tcp_open(st.REDIS_HOST, st.REDIS_PORT)))
               if not up]
    if missing:
        msg = f"{' and '.join(missing)} not running (.ci/run starts them)"
        if os.environ.get("GD_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def _timed(name: str, seconds: float) -> None:
    TIMINGS[name] = seconds


@pytest.fixture(scope="module")
def stack():
    _require_services()
    t_all = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="gd_system_"))
    home = root / "home"
    repo = home / "feature_repo"
    logs = root / "logs"
    s = Stack(root=root, home=home, repo=repo, data_dir=repo / "data", airflow_home=root / "airflow",
              redis=st.RedisDb.claim())
    LOG_SOURCES.append(s.logs)
    background = ThreadPoolExecutor(max_workers=3, thread_name_prefix="stack-wait")
    ok = False
    try:
        st.drop_stale_databases()
        prefix = st.unique_db_prefix()
        airflow_db = st.create_database(f"{prefix}_airflow")
        s.databases.append(airflow_db)
        mlflow_db = st.create_database(f"{prefix}_mlflow")
        s.databases.append(mlflow_db)

        # MLflow server on Postgres, artifacts proxied into a local destination
        mlflow_port = st.free_port()
        s.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        mlflow_svc = st.start_service(
            "mlflow", st.mlflow_server_argv(st.database_uri(mlflow_db), root / "mlflow-artifacts", mlflow_port),
            env=st.quiet_env(), log_dir=logs)
        s.services.append(mlflow_svc)
        mlflow_up = background.submit(st.wait_mlflow, s.mlflow_url, mlflow_svc, 180)

        # a Ray head with the Jobs API and token auth
        ray_conn: dict = {"conn_type": "ray", "host": "local"}
        ray_up = None
        if RAY_MODE == "cluster":
            s.ray = st.ray_head(num_cpus=2)
            ray_svc = st.start_service("ray-head", s.ray.argv, env=s.ray.env, log_dir=logs)
            s.services.append(ray_svc)
            ray_conn = s.ray.connection()
            ray_up = background.submit(st.wait_until, s.ray.jobs_api_ready, timeout_s=180,
                                       what="ray head Jobs API", services=[ray_svc])

        # Airflow's environment; migrate in the background while the data is built here
        api_port = st.free_port()
        s.api_url = f"http://127.0.0.1:{api_port}"
        password = os.urandom(9).hex()
        dags = st.link_dags(s.airflow_home / "dags", sorted((ROOT / "dags").glob("*.py")))
        s.env = st.airflow_environment(
            s.airflow_home, dags_folder=dags, sql_alchemy_conn=st.database_uri(airflow_db), api_port=api_port,
            connections={
                "mlflow_default": {"conn_type": "mlflow", "host": "127.0.0.1", "port": mlflow_port,
                                   "schema": "http"},
                "feast_default": {"conn_type": "feast", "extra": {"repo_path": str(repo)}},
                "ray_default": ray_conn,
            },
            project_home=home, users={USER: password},
        )
        migrate = st.start_service("db-migrate", [st.venv_bin("airflow"), "db", "migrate"], env=s.env,
                                   log_dir=logs)
        s.services.append(migrate)
        migrated = background.submit(st.wait_until, lambda: not migrate.alive(), timeout_s=300,
                                     what="airflow db migrate")

        # demo data + Feast repo with the online store on Redis, materialized
        t1 = time.monotonic()
        _build_feature_repo(s)
        _timed("data + feast apply + materialize", time.monotonic() - t1)

        _timed("airflow db migrate (postgres)", migrated.result()[1])
        if migrate.proc.returncode != 0:
            raise st.StackError(f"airflow db migrate failed:\n{migrate.tail()}")
        s.services.remove(migrate)

        # the four Airflow components, each its own process group
        t2 = time.monotonic()
        for component in st.AIRFLOW_COMPONENTS:
            s.services.append(st.start_service(component, st.airflow_argv(component, api_port), env=s.env,
                                               log_dir=logs, cwd=root))
        _timed("mlflow server healthy (postgres)", mlflow_up.result())
        if ray_up is not None:
            _timed("ray head jobs api ready", ray_up.result()[1])
        s.rest = st.AirflowRest(s.api_url)
        st.wait_until(lambda: s.rest.health(), timeout_s=180, what="airflow api-server", services=s.services)
        _timed("airflow api-server answering", time.monotonic() - t2)
        st.wait_until(s.rest.components_healthy, timeout_s=180, what="scheduler, triggerer, dag-processor healthy",
                      services=s.services)
        _timed("airflow components healthy", time.monotonic() - t2)
        s.rest.login(USER, password)
        _timed("stack up (total)", time.monotonic() - t_all)
        ok = True
        yield s
    finally:
        background.shutdown(wait=False, cancel_futures=True)
        if not ok:
            print(s.logs())
        t3 = time.monotonic()
        for name, seconds in st.stop_all(s.services, grace_s=15).items():
            _timed(f"  stop {name}", seconds)
        for name in s.databases:
            try:
                st.drop_database(name)
            except Exception as exc:  # report, but keep cleaning up
                print(f"could not drop database {name}: {exc!r}")
        s.redis.release()
        _timed("stack teardown", time.monotonic() - t3)
        LOG_SOURCES.remove(s.logs)
        if s.ray is not None:
            shutil.rmtree(s.ray.temp_dir, ignore_errors=True)
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"system test files kept in {root}")


def _build_feature_repo(s: Stack) -> None:
    from feast import FeatureStore

    from gd_provider.demo.feature_repo import create_feature_repo
    from gd_provider.demo.generator import GeneratorConfig, generate, write_demo_data

    write_demo_data(s.data_dir, generate(GeneratorConfig(start=START.date().isoformat(), **SMALL)))
    create_feature_repo(s.repo, s.data_dir,
                        online_store={"type": "redis", "connection_string": s.redis.connection_string})
    store = FeatureStore(repo_path=str(s.repo))
    t0 = time.monotonic()
    store.materialize(START - timedelta(days=1), START + timedelta(days=SMALL["days"]))
    _timed("feast materialize into redis", time.monotonic() - t0)


# ------------------------------------------------------------------------------------------------ tests
def test_online_features_are_served_from_redis(stack):
    import pandas as pd
    from feast import FeatureStore

    from gd_provider.demo import schema

    store = FeatureStore(repo_path=str(stack.repo))
    assert store.config.online_store.type == "redis"

    cards = pd.read_parquet(stack.data_dir / "card_stats.parquet")
    merchants = pd.read_parquet(stack.data_dir / "merchant_stats.parquet")
    # one Redis hash per entity key (both views' features of an entity live in it)
    keys = stack.redis.data_keys()
    assert len(keys) == cards["card_id"].nunique() + merchants["merchant_id"].nunique() > 0

    latest_card = cards.sort_values([schema.TIMESTAMP, "created"]).groupby("card_id").tail(1).set_index("card_id")
    latest_merchant = (merchants.sort_values([schema.TIMESTAMP, "created"]).groupby("merchant_id").tail(1)
                       .set_index("merchant_id"))
    card_ids = [int(c) for c in latest_card.index[:3]] + [int(latest_card.index[-1])]
    merchant_ids = [int(m) for m in latest_merchant.index[:3]] + [int(latest_merchant.index[-1])]
    rows = [{"card_id": c, "merchant_id": m} for c, m in zip(card_ids, merchant_ids, strict=True)]
    online = store.get_online_features(features=store.get_feature_service(schema.FEATURE_SERVICE),
                                       entity_rows=rows).to_df()
    assert len(online) == len(rows)
    for _, row in online.iterrows():
        card, merchant = latest_card.loc[int(row["card_id"])], latest_merchant.loc[int(row["merchant_id"])]
        for col in schema.CARD_FEATURES:
            assert row[col] == pytest.approx(card[col]), (int(row["card_id"]), col)
        for col in schema.MERCHANT_NUMERIC:
            assert row[col] == pytest.approx(merchant[col]), (int(row["merchant_id"]), col)
        assert row["merchant_category"] == merchant["merchant_category"]

    # an entity that does not exist comes back empty: the values above came from the store, not a default
    missing = store.get_online_features(features=[f"{schema.CARD_VIEW}:card_txn_count_7d"],
                                        entity_rows=[{"card_id": 10**9}]).to_dict()
    assert missing["card_txn_count_7d"] == [None]


def _wait_for_dag(rest: st.AirflowRest, services) -> dict:
    def parsed():
        status, body = rest.try_get(f"/dags/{DAG_ID}")
        if status == 200:
            return body
        errors = rest.get("/importErrors")
        if errors.get("total_entries"):
            raise AssertionError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=1)[:4000]}")
        return None

    body, waited = st.wait_until(parsed, timeout_s=180, what=f"DAG {DAG_ID} parsed", services=services,
                                 interval_s=1.0)
    _timed("dag parsed (after components healthy)", waited)
    return body


def test_nightly_run_triggered_through_the_rest_api(stack):
    from mlflow import MlflowClient

    from gd_provider.core.registry import PREVIOUS_CHAMPION_TAG, audit_trail

    rest = stack.rest
    dag = _wait_for_dag(rest, stack.services)
    assert dag["is_paused"] is True  # dags_are_paused_at_creation
    assert rest.patch(f"/dags/{DAG_ID}", {"is_paused": False})["is_paused"] is False

    t0 = time.monotonic()
    run = rest.post(f"/dags/{DAG_ID}/dagRuns", {"logical_date": LOGICAL_DATE.isoformat(), "conf": CONF})
    run_id = run["dag_run_id"]
    assert run["conf"] == CONF and run["run_type"] == "manual"

    def finished():
        body = rest.get(f"/dags/{DAG_ID}/dagRuns/{run_id}")
        return body if body["state"] in ("success", "failed") else None

    final, _ = st.wait_until(finished, timeout_s=RUN_TIMEOUT_S, what=f"DAG run {run_id}", services=stack.services,
                             interval_s=2.0)
    _timed("dag run (trigger → terminal state)", time.monotonic() - t0)
    tis = rest.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in tis}
    for ti in tis:
        if ti["start_date"] and ti["end_date"]:
            start = datetime.fromisoformat(ti["start_date"])
            _timed(f"  task {ti['task_id']}", (datetime.fromisoformat(ti["end_date"]) - start).total_seconds())
    assert final["state"] == "success", states
    assert set(GATES) <= set(states), states
    # every task succeeded (the gates above, and whatever else the DAG runs) except the rollback
    assert {t: s for t, s in states.items() if t != "rollback"} == dict.fromkeys(set(states) - {"rollback"},
                                                                                 "success"), states
    assert states["rollback"] == "skipped", states
    assert final["triggering_user_name"] == USER

    # the registry on the MLflow server
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    tags = champion.tags
    assert tags["gd.airflow_run_id"] == run_id and tags["gd.dag_id"] == DAG_ID
    assert len(tags["gd.dataset_sha256"]) == 64
    assert tags[PREVIOUS_CHAMPION_TAG] == "none" and tags["gd.blessed"] == "true"
    # the model's artifacts went through the server's artifact proxy into its destination
    assert champion.source.startswith(("models:/", "mlflow-artifacts:/")), champion.source
    assert any((stack.root / "mlflow-artifacts").rglob("MLmodel"))

    if stack.ray is not None:  # trained on the cluster, as a Ray job of this run's train task
        jobs = [j for j in stack.ray.jobs()
                if (j.get("metadata") or {}).get("gd.run_id") == run_id
                and j["metadata"].get("gd.task_id") == "train"]
        assert [j["status"] for j in jobs] == ["SUCCEEDED"], jobs
        assert jobs[0]["metadata"]["gd.dag_id"] == DAG_ID

    trail = audit_trail(client, MODEL)
    assert [e["action"] for e in trail] == ["promote"], trail
    entry = trail[0]
    assert entry["to"] == "1" and entry["from"] == "none"
    assert entry["dag_run"] == f"{DAG_ID}/{run_id}"
    # the REST user who triggered the run is the actor of the promotion
    assert entry["actor"] == USER, entry
