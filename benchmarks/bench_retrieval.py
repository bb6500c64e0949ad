"""Historical feature retrieval: our ASOF offline store vs a hand-written DuckDB ASOF JOIN (the baseline).

Data: 10k entities, 20 float features (one view, or two views of 10 with ``--views 2``), 90-day TTL,
1M feature rows (100 snapshots per entity, about one a day, each entity on its own phase). Entity frames
of 100k and 1M rows with random keys (some without any feature row) and random timestamps over the
feature range plus 30 days (so some rows are outside the TTL).

Cases:

* ``asof``     Feast ``get_historical_features(...).to_df()`` with ``AsofDuckDBOfflineStore``;
* ``baseline`` one DuckDB ``ASOF LEFT JOIN`` per view of the same parquet files with the TTL as a CASE,
               ``.df()`` at the end: what one would write by hand (no created-timestamp tie-break: the
               data has one row per key and timestamp, so the answer is the same);
* ``native``   Feast's own ``duckdb`` offline store (range join + dedup): at 100k rows always, at 1M rows
               only with ``--native-1m`` (about 50 s).

Timing: ``--rounds`` rounds; in each, every case runs in a fresh process of its own (clean memory, no
state shared with another case), one case after the other, and that process times ``--repeat``
retrievals after one warm-up. The best time of a case in a round is compared with the baseline's best in
the same round, so load from other processes on the machine hits both alike; the reported ratio is the
median of those per-round ratios (min-over-min is reported too). Memory: each process reports its peak
RSS (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` where there is no /proc — on Linux ``ru_maxrss``
of an exec'd child starts at its parent's RSS, so it is not used there) and its RSS just before the
first timed retrieval; the largest over the rounds is reported. The target is ``asof / baseline <= 2.0``
at 1M rows. Results go to ``benchmarks/results/retrieval.json``.

    .venv/bin/python benchmarks/bench_retrieval.py [--quick] [--views 2] [--native-1m] [--repeat N] [--rounds N]

``--quick`` uses 100k feature rows and 10k / 100k entity rows (a smoke run; results go to
``retrieval_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("FEAST_USAGE", "False")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
N_FEATURES = 20
TTL_DAYS = 90
ASOF_TYPE = "gd_provider.feast_ext.asof_store.AsofDuckDBOfflineStore"
START = "2025-01-01"


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """Peak RSS of this process: VmHWM on Linux (ru_maxrss of an exec'd child starts at its parent's RSS at
    fork time, so it would over-report here); ru_maxrss elsewhere."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _current_rss_mb() -> float:
    return _status_mb("VmRSS") or 0.0


# ------------------------------------------------------------------------------------------------ data


def _view_features(views: int) -> list[list[str]]:
    per = N_FEATURES // views
    return [[f"f{v * per + i:02d}" for i in range(per)] for v in range(views)]


def write_data(work: Path, *, n_entities: int, feature_rows: int, entity_rows: list[int], views: int) -> dict:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(42)
    start = pd.Timestamp(START, tz="UTC")
    snapshots = feature_rows // n_entities
    ids = np.repeat(np.arange(n_entities, dtype="int64"), snapshots)
    phase = rng.integers(0, 86_400, n_entities)  # seconds; each entity on its own schedule
    day = np.tile(np.arange(snapshots, dtype="int64"), n_entities)
    # one snapshot a day, but some skip ahead (gaps of up to 120 days, so the TTL matters)
    gaps = np.where(rng.random(len(ids)) < 0.01, rng.integers(1, 120, len(ids)), 0)
    gaps = gaps.reshape(n_entities, snapshots).cumsum(axis=1).ravel()
    seconds = (day + gaps) * 86_400 + np.repeat(phase, snapshots)
    ts = start + pd.to_timedelta(seconds, unit="s")
    span = pd.Timedelta(seconds=int(seconds.max())) + pd.Timedelta(days=30)
    paths = {}
    for v, names in enumerate(_view_features(views)):
        df = pd.DataFrame({"entity_id": ids, "event_timestamp": ts, "created": ts})
        for name in names:
            df[name] = rng.standard_normal(len(ids))
        paths[f"view{v}"] = str(work / f"features_{v}.parquet")
        df.to_parquet(paths[f"view{v}"], index=False, row_group_size=128 * 1024)
    for n in entity_rows:
        edf = pd.DataFrame(
            {
                # 2% of keys have no feature rows at all
                "entity_id": rng.integers(0, int(n_entities * 1.02), n).astype("int64"),
                "event_timestamp": start
                + pd.to_timedelta(rng.integers(0, int(span.total_seconds()), n), unit="s"),
            }
        )
        edf["label"] = rng.integers(0, 2, n)
        paths[f"entities_{n}"] = str(work / f"entities_{n}.parquet")
        edf.to_parquet(paths[f"entities_{n}"], index=False)
    return paths


def make_repos(work: Path, paths: dict, views: int) -> dict[str, str]:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.types import Float64, Int64

    entity = Entity(name="entity", join_keys=["entity_id"], value_type=ValueType.INT64)
    objects: list = [entity]
    for v, names in enumerate(_view_features(views)):
        source = FileSource(
            name=f"source{v}",
            path=paths[f"view{v}"],
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
        )
        objects.append(
            FeatureView(
                name=f"view{v}",
                entities=[entity],
                ttl=timedelta(days=TTL_DAYS),
                schema=[Field(name="entity_id", dtype=Int64)] + [Field(name=n, dtype=Float64) for n in names],
                source=source,
                online=False,
            )
        )
    repos = {}
    for kind, store_type in (("asof", ASOF_TYPE), ("native", "duckdb")):
        repo = work / f"repo_{kind}"
        repo.mkdir(exist_ok=True)
        config = RepoConfig(
            project="bench",
            provider="local",
            registry=str(repo / "registry.db"),
            offline_store={"type": store_type},
            online_store={"type": "sqlite", "path": str(repo / "online.db")},
            entity_key_serialization_version=3,
            repo_path=repo,
        )
        FeatureStore(config=config).apply(objects)
        repos[kind] = str(repo)
    return repos


# ----------------------------------------------------------------------------------------------- cases


def _feature_refs(views: int) -> list[str]:
    return [f"view{v}:{n}" for v, names in enumerate(_view_features(views)) for n in names]


def _feast_store(repo: str, store_type: str):
    from feast import FeatureStore, RepoConfig

    config = RepoConfig(
        project="bench",
        provider="local",
        registry=str(Path(repo) / "registry.db"),
        offline_store={"type": store_type},
        online_store={"type": "sqlite", "path": str(Path(repo) / "online.db")},
        entity_key_serialization_version=3,
        repo_path=Path(repo),
    )
    return FeatureStore(config=config)


def _baseline_sql(paths: dict, views: int) -> str:
    select = ["e.*"]
    joins = []
    for v, names in enumerate(_view_features(views)):
        alias = f"v{v}"
        fresh = f"{alias}.event_timestamp >= e.event_timestamp - INTERVAL {TTL_DAYS} DAY"
        select += [f"CASE WHEN {fresh} THEN {alias}.{n} END AS {n}" for n in names]
        joins.append(
            f"ASOF LEFT JOIN read_parquet('{paths[f'view{v}']}') {alias} "
            f"ON e.entity_id = {alias}.entity_id AND e.event_timestamp >= {alias}.event_timestamp"
        )
    return f"SELECT {', '.join(select)} FROM entity_df e {' '.join(joins)}"


def _runner(case: str, rows: int, meta: dict):
    """A function that runs one retrieval of ``case`` over the ``rows``-row entity frame, warmed up."""
    import pandas as pd

    paths, repos, views = meta["paths"], meta["repos"], meta["views"]
    entity_df = pd.read_parquet(paths[f"entities_{rows}"])
    refs = _feature_refs(views)
    if case == "baseline":
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        sql = _baseline_sql(paths, views)

        def run(frame=entity_df) -> pd.DataFrame:
            con.register("entity_df", frame)
            try:
                return con.sql(sql).df()
            finally:
                con.unregister("entity_df")
    else:
        store = _feast_store(repos[case], ASOF_TYPE if case == "asof" else "duckdb")

        def run(frame=entity_df) -> pd.DataFrame:
            return store.get_historical_features(entity_df=frame, features=refs).to_df()

    run(entity_df.head(1000))  # warm-up: imports, registry, parquet metadata
    return run


def child_case(case: str, rows: int, work: Path, repeat: int) -> dict:
    """In a fresh process: ``repeat`` retrievals of one case (after a warm-up); their times, the RSS
    before the first and the process's peak RSS."""
    meta = json.loads((work / "meta.json").read_text())
    run = _runner(case, rows, meta)
    rss_before = _current_rss_mb()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
        assert len(result) == rows, (case, len(result), rows)
        del result
    return {
        "case": case,
        "entity_rows": rows,
        "times": times,
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_equal(work: Path, rows: int) -> bool:
    """The ASOF store and the baseline give the same values (a 10k-row sample of the entity frame)."""
    import pandas as pd

    meta = json.loads((work / "meta.json").read_text())
    paths, views = meta["paths"], meta["views"]
    sample = pd.read_parquet(meta["paths"][f"entities_{rows}"]).head(10_000).reset_index(drop=True)
    sample["row"] = range(len(sample))
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("entity_df", sample)
    want = con.sql(_baseline_sql(paths, views)).df().sort_values("row").reset_index(drop=True)
    store = _feast_store(meta["repos"]["asof"], ASOF_TYPE)
    got = store.get_historical_features(entity_df=sample, features=_feature_refs(views)).to_df()
    got = got.sort_values("row").reset_index(drop=True)
    names = [r.split(":")[1] for r in _feature_refs(views)]
    pd.testing.assert_frame_equal(got[names], want[names], check_dtype=False)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument(
        "--views", type=int, choices=(1, 2), default=1, help="split the 20 features over 1 or 2 views"
    )
    parser.add_argument(
        "--native-1m", action="store_true", help="also run Feast's native duckdb store at 1M rows"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case in each process")
    parser.add_argument("--rounds", type=int, default=3, help="rounds: one fresh process per case each")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=("case",), help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "case":
        print(json.dumps(child_case(args.cases, args.rows, args.work, args.repeat)))
        return

    n_entities = 10_000
    feature_rows = 100_000 if args.quick else 1_000_000
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    out = args.out or RESULTS / ("retrieval_quick.json" if args.quick else "retrieval.json")

    with tempfile.TemporaryDirectory(prefix="gd_bench_retrieval_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        paths = write_data(
            work, n_entities=n_entities, feature_rows=feature_rows, entity_rows=sizes, views=args.views
        )
        repos = make_repos(work, paths, args.views)
        (work / "meta.json").write_text(json.dumps({"paths": paths, "repos": repos, "views": args.views}))
        print(f"data + repos ready in {time.perf_counter() - t0:.1f} s", flush=True)
        equal = _check_equal(work, sizes[-1])
        print(f"asof store == hand-written ASOF JOIN on a 10k-row sample: {equal}", flush=True)

        cases, ratios = [], {}
        for rows in sizes:
            plan = ["baseline", "asof"]
            if rows < 1_000_000 or args.native_1m:
                plan.append("native")
            runs: dict[str, list[dict]] = {case: [] for case in plan}
            for round_ in range(args.rounds):
                for case in plan:
                    slow = case == "native" and rows >= 1_000_000
                    if slow and round_ > 0:
                        continue  # ~50 s a run: once is enough
                    args_ = ["--child", "case", "--cases", case, "--rows", str(rows), "--work", str(work)]
                    runs[case].append(_child([*args_, "--repeat", str(1 if slow else args.repeat)], 1800))
            best = {case: [min(r["times"]) for r in rs] for case, rs in runs.items()}  # per round
            for case, rs in runs.items():
                seconds = [t for r in rs for t in r["times"]]
                entry = {
                    "case": case,
                    "entity_rows": rows,
                    "seconds_min": round(min(seconds), 4),
                    "seconds_median": round(statistics.median(seconds), 4),
                    "best_per_round": [round(t, 4) for t in best[case]],
                    "all_seconds": [round(t, 4) for t in seconds],
                    "rss_before_mb": max(r["rss_before_mb"] for r in rs),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                }
                cases.append(entry)
                print(
                    f"{case:>8} {rows:>9,} rows: min {entry['seconds_min']:7.3f} s, median "
                    f"{entry['seconds_median']:7.3f} s; peak RSS {entry['peak_rss_mb']:7.1f} MB "
                    f"(before the retrieval {entry['rss_before_mb']:.1f} MB)",
                    flush=True,
                )
            row_ratios = {}
            for case in plan[1:]:
                paired = [t / b for t, b in zip(best[case], best["baseline"], strict=False)]
                row_ratios[f"{case}_vs_baseline"] = round(statistics.median(paired), 3)
                row_ratios[f"{case}_vs_baseline_min_over_min"] = round(
                    min(best[case]) / min(best["baseline"]), 3
                )
            if "native" in best:
                row_ratios["native_vs_asof"] = round(min(best["native"]) / min(best["asof"]), 2)
            ratios[str(rows)] = row_ratios
            print(f"{rows:>9,} rows: " + ", ".join(f"{k} {v}" for k, v in row_ratios.items()), flush=True)

    target = ratios[str(sizes[-1])]["asof_vs_baseline"]
    report = {
        "benchmark": "historical feature retrieval",
        "quick": args.quick,
        "config": {
            "entities": n_entities,
            "features": N_FEATURES,
            "views": args.views,
            "feature_rows": feature_rows,
            "ttl_days": TTL_DAYS,
            "entity_rows": sizes,
            "repeat": args.repeat,
            "rounds": args.rounds,
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "equal_to_baseline_on_sample": equal,
        "cases": cases,
        "ratios": ratios,
        "target": {"asof_vs_baseline_at_largest": target, "max": 2.0, "met": target <= 2.0},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"target asof/baseline <= 2.0 at {sizes[-1]:,} rows: {target} ({'met' if target <= 2.0 else 'MISSED'})"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
