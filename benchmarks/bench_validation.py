"""Data validation: our ``validate_dataframe`` vs plain Great Expectations 1.24 (and numpy, for reference).

Suite (61 expectations): ``expect_table_row_count_to_be_between`` [1, 2M] plus, for each of 20 float64
columns, ``expect_column_values_to_not_be_null``, ``expect_column_values_to_be_between`` [-50, 50] (a range
check) and ``expect_column_values_to_be_in_type_list`` [float64, float32] (a dtype check). 1M rows.

Datasets: *passing* (standard normal columns) and *failing*, the same frame with four columns broken:
0.1 % NaN in ``f03`` (not_null), one +Inf in ``f07`` (range), ``f11`` scaled ×100 (range, ~92 % of the
rows) and ``f15`` rounded to int64 (dtype).

Cases, each in a fresh process of its own (one after the other; clean memory; peak RSS = ``VmHWM``):

* ``ge_summary``       plain GE: ephemeral context, pandas data source, one batch of the whole frame,
                       ``batch.validate(suite, result_format="SUMMARY")``;
* ``ge_boolean_only``  the same with ``result_format="BOOLEAN_ONLY"`` (verdicts only, no readable report);
* ``numpy``            hand-written numpy checks of the same rules (reference only: no report, not GE);
* ``ours``             ``gd_provider.core.quality.validate_dataframe``: a ``BOOLEAN_ONLY`` pass over
                       column groups, then ``SUMMARY`` for the failing expectations only; the readable
                       report (each failing expectation with its observed value) is built and checked.

Each process times (wall and process CPU time; the CPU time is less sensitive to other load on the
machine) ``--repeat`` runs on the passing and then on the failing dataset, after one warm-up on
1000 rows. Every case must agree with the others on the verdict and on which expectations fail. Ratios
are of best times in the same run. Target: ``ours`` ≤ 1.0 s on the passing dataset. Results go to
``benchmarks/results/validation.json``.

    .venv/bin/python benchmarks/bench_validation.py [--quick] [--repeat N] [--rows N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
N_COLUMNS = 20
RANGE = (-50.0, 50.0)
TYPES = ["float64", "float32"]
ROW_BOUNDS = (1, 2_000_000)
CASES = ("ge_summary", "ge_boolean_only", "numpy", "ours")
BROKEN = {  # column -> the check it breaks
    "f03": "not_null",
    "f07": "range",
    "f11": "range",
    "f15": "dtype",
}
TARGET_S = 1.0


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def columns() -> list[str]:
    return [f"f{i:02d}" for i in range(N_COLUMNS)]


def expectations() -> list[dict]:
    exps = [
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": ROW_BOUNDS[0], "max_value": ROW_BOUNDS[1]},
            "meta": {"gd_check": "row_count"},
        }
    ]
    for c in columns():
        exps += [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c}, "meta": {"gd_check": "not_null"}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": c, "min_value": RANGE[0], "max_value": RANGE[1]},
                "meta": {"gd_check": "range"},
            },
            {
                "type": "expect_column_values_to_be_in_type_list",
                "kwargs": {"column": c, "type_list": list(TYPES)},
                "meta": {"gd_check": "dtype"},
            },
        ]
    return exps


def passing_frame(rows: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    return pd.DataFrame({c: rng.standard_normal(rows) for c in columns()})


def break_frame(df) -> None:
    """Break four columns in place (see the module docstring)."""
    import numpy as np

    df.loc[df.index[::1000], "f03"] = np.nan
    df.loc[df.index[5], "f07"] = np.inf
    df["f11"] = df["f11"] * 100.0
    df["f15"] = df["f15"].round().astype("int64")


EXPECTED_FAILURES = {(check, col) for col, check in BROKEN.items()}


# ------------------------------------------------------------------------------------------------ cases


def _ge_plain(result_format: str):
    import great_expectations as gx

    from gd_provider.core.quality import build_suite

    context = gx.get_context(mode="ephemeral")
    batch_def = (
        context.data_sources.add_pandas("bench").add_dataframe_asset("frame").add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(build_suite(expectations(), "bench_suite"))

    def run(df) -> tuple[bool, set]:
        result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format=result_format)
        failed = {
            ((r.expectation_config.meta or {}).get("gd_check"), r.expectation_config.kwargs.get("column"))
            for r in result.results
            if not r.success
        }
        return bool(result.success), failed

    return run


def _numpy():
    import numpy as np

    lo, hi = RANGE

    def run(df) -> tuple[bool, set]:
        failed = set()
        if not ROW_BOUNDS[0] <= len(df) <= ROW_BOUNDS[1]:
            failed.add(("row_count", None))
        for c in columns():
            if c not in df:
                failed |= {("not_null", c), ("range", c), ("dtype", c)}
                continue
            values = df[c].to_numpy()
            if str(values.dtype) not in TYPES:
                failed.add(("dtype", c))
            nan = np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)
            if nan.any():
                failed.add(("not_null", c))
            if not (nan | ((values >= lo) & (values <= hi))).all():  # like GE: nulls are not range-checked
                failed.add(("range", c))
        return not failed, failed

    return run


def _ours():
    from gd_provider.core.quality import validate_dataframe

    exps = expectations()
    last = {}

    def run(df) -> tuple[bool, set]:
        report = validate_dataframe(df, exps, suite_name="bench_suite")
        last["report"] = report
        return report.success, {(f["check"], f["column"]) for f in report.failures}

    run.last = last  # type: ignore[attr-defined]
    return run


def child_case(case: str, rows: int, repeat: int) -> dict:
    runner = {"ge_summary": lambda: _ge_plain("SUMMARY"), "ge_boolean_only": lambda: _ge_plain("BOOLEAN_ONLY"),
              "numpy": _numpy, "ours": _ours}[case]()
    df = passing_frame(rows)
    runner(df.head(1000))  # warm-up: imports, GE's registries
    out: dict = {"case": case, "rows": rows}
    for name in ("passing", "failing"):
        if name == "failing":
            break_frame(df)
        times, cpu = [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            success, failed = runner(df)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = {"times": [round(t, 4) for t in times], "cpu_times": [round(t, 4) for t in cpu],
                     "success": success,
                     "failed": sorted([list(map(str, f)) for f in failed])}
        if case == "ours":
            report = runner.last["report"]
            out[name]["summary"] = report.summary()
            out[name]["failures"] = [{"check": f["check"], "column": f["column"], "observed": f["observed"]}
                                     for f in report.failures]
            out[name]["result_format"] = report.result_json["meta"]["result_format"]
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def _child(case: str, rows: int, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--rows", str(rows), "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_report(ours: dict) -> list[str]:
    """Problems with our failing-dataset report: every broken expectation listed with an observed value."""
    problems = []
    failing = ours["failing"]
    got = {(f["check"], f["column"]): f["observed"] for f in failing["failures"]}
    if set(got) != EXPECTED_FAILURES:
        problems.append(f"failing expectations {sorted(got)} != expected {sorted(EXPECTED_FAILURES)}")
    for key, observed in got.items():
        if key[0] in ("not_null", "range") and "rows unexpected" not in observed:
            problems.append(f"{key}: no unexpected count in {observed!r}")
        if key[0] == "dtype" and "int64" not in observed:
            problems.append(f"{key}: observed dtype missing in {observed!r}")
        if f"({key[1]})" not in failing["summary"]:
            problems.append(f"{key}: not in the summary")
    if not ours["passing"]["success"]:
        problems.append("the passing dataset failed")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k rows, results to validation_quick.json")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per dataset in each process")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    if args.child:
        print(json.dumps(child_case(args.child, rows, args.repeat)))
        return

    out = args.out or RESULTS / ("validation_quick.json" if args.quick else "validation.json")
    t_start = time.perf_counter()
    runs = {}
    for case in CASES:
        runs[case] = r = _child(case, rows, args.repeat)
        print(
            f"{case:>16} {rows:>9,} rows: passing best {min(r['passing']['times']):7.3f} s, failing best "
            f"{min(r['failing']['times']):7.3f} s (CPU {min(r['passing']['cpu_times']):.3f} / "
            f"{min(r['failing']['cpu_times']):.3f} s); peak RSS {r['peak_rss_mb']:7.1f} MB",
            flush=True,
        )
    agree = all(
        runs[c][name]["success"] == runs["ours"][name]["success"]
        and runs[c][name]["failed"] == runs["ours"][name]["failed"]
        for c in CASES
        for name in ("passing", "failing")
    )
    problems = _check_report(runs["ours"])
    best = {c: {name: min(runs[c][name]["times"]) for name in ("passing", "failing")} for c in CASES}
    best_cpu = {c: {name: min(runs[c][name]["cpu_times"]) for name in ("passing", "failing")} for c in CASES}
    ratios = {
        name: {
            f"ours_vs_{c}": round(best["ours"][name] / best[c][name], 3) for c in CASES if c != "ours"
        }
        for name in ("passing", "failing")
    }
    ours_pass = best["ours"]["passing"]
    print("\nour report on the failing dataset:\n" + runs["ours"]["failing"]["summary"])
    for name, rs in ratios.items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in rs.items()))
    print(f"all cases agree on verdicts and failing expectations: {agree}")
    if problems:
        print("REPORT PROBLEMS: " + "; ".join(problems))
    met = ours_pass <= TARGET_S and not problems and agree
    print(f"target ours <= {TARGET_S} s on the passing dataset: {ours_pass:.3f} s ({'met' if met else 'MISSED'})")
    report = {
        "benchmark": "data validation (Great Expectations)",
        "quick": args.quick,
        "config": {
            "rows": rows,
            "columns": N_COLUMNS,
            "expectations": len(expectations()),
            "per_column": ["not_null", f"between{list(RANGE)}", f"in_type_list{TYPES}"],
            "row_count": list(ROW_BOUNDS),
            "broken_in_failing": BROKEN,
            "repeat": args.repeat,
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_at_end": list(os.getloadavg())},
        "cases": runs,
        "best_seconds": best,
        "best_cpu_seconds": best_cpu,
        "ratios": ratios,
        "all_cases_agree": agree,
        "report_problems": problems,
        "target": {"ours_passing_seconds": ours_pass, "max": TARGET_S, "met": met},
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out} ({report['wall_seconds']} s)")


if __name__ == "__main__":
    main()
