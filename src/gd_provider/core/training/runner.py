"""Driver side of a training run: validate, split, preprocess once, train on Ray, collect the model.

``run_training`` checks everything it can *before* starting Ray (spec, columns, key columns, labels - by the
spec's task -, numeric features, a holdout the gate can score, device), so a bad input fails in seconds
with a ``TrainingInputError`` (or ``SpecError``) naming the problem instead of after a cluster start. When
``spec.sensitivity.enabled``, the learning-rate sensitivity check runs in this process before Ray starts.

What depends on what is predicted goes through the spec's task plug-in (:mod:`gd_provider.core.tasks`):
label checks and encoding, the state fitted on the training labels (``task.fit_state``: e.g. the binary
``pos_weight``, a regression target's mean/std), the loss's targets, the per-epoch metrics. The model
directory holds ``task.json`` (``{"task", "options", "state"}``) next to the weights, preprocessor and spec,
so :class:`gd_provider.core.training.pyfunc.ModelScorer` rebuilds the same task and model.

Outcomes (``TrainingResult.status``): ``completed`` (a model directory), ``diverged`` (the guards stopped
the run: telemetry up to the stop, ``guard`` says why, no model) or ``failed`` (an exception in Ray).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import site
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gd_provider.core.data import DatasetManifest, read_dataset
from gd_provider.core.tasks import BUILTIN_TASKS, LabelError, Task, task_class
from gd_provider.core.training.health import health_summary
from gd_provider.core.training.logs import RayLogRouting, log_summary
from gd_provider.core.training.loop import (
    HISTORY_FILE,
    MODEL_FILE,
    RUN_STATE_FILE,
    STEPS_FILE,
    TRAIN_ARRAYS,
    VAL_ARRAYS,
    best_epoch,
    checkpoint_for_epoch,
    latest_checkpoint_on_disk,
    load_arrays,
    load_labels,
    read_progress,
    train_loop_per_worker,
)
from gd_provider.core.training.preprocess import (
    SPLIT_VERSION,
    PreprocessError,
    Preprocessor,
    frame_digest,
    split_by_time,
)
from gd_provider.core.training.spec import SpecError, TrainingSpec
from gd_provider.core.training.worker_env import hidden_names

PREPROCESSOR_FILE = "preprocessor.json"
SPEC_FILE = "spec.json"
TASK_FILE = "task.json"
INPUT_EXAMPLE_FILE = "input_example.parquet"
INPUTS_DIR = "gd_inputs"
MODEL_DIR = "gd_model"
FINGERPRINT_FILE = "fingerprint.json"
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
DEFAULT_HEALTH_CHECK_INTERVAL_S = "0.25"
# Ray starts every worker process at niceness 15 (raylet config ``worker_niceness``). Training inside the task
# is the task's main work: at nice 15 it yields the CPU to every normal-priority process on the machine (the
# Airflow worker's other tasks included), so on a busy machine it runs slower than the same loop would in the
# task's own process. A local instance started by ``init_local_ray`` runs its workers at the driver's
# niceness unless ``RAY_worker_niceness`` is set already.
WORKER_NICENESS_ENV = "RAY_worker_niceness"
DEFAULT_WORKER_NICENESS = "0"
LOCAL_RAY_ENV_DEFAULTS = {
    WORKER_NICENESS_ENV: DEFAULT_WORKER_NICENESS,
    # A private one-machine instance has no preemptible nodes; the watcher is one more ~200 MB actor.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


class TrainingInputError(ValueError):
    """The dataset or spec cannot be trained on (missing columns, bad labels, too few rows...)."""


@dataclass
class TrainingResult:
    status: str  # "completed" | "diverged" | "failed"
    run_name: str
    run_dir: str
    model_dir: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, list] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    holdout: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    guard: dict[str, Any] = field(default_factory=dict)  # the trip that stopped a diverged run
    sensitivity: dict[str, Any] = field(default_factory=dict)
    run_state: dict[str, Any] = field(default_factory=dict)  # resumes, per-rank stop steps, timeline
    task: dict[str, Any] = field(default_factory=dict)  # task.json: {"task", "options", "state"}
    model: dict[str, Any] = field(default_factory=dict)  # {"factory", "kwargs", "code_version"[, ...]}

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-safe dict (non-finite floats become None)."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------------- helpers
def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _manifest(dataset: DatasetManifest | dict[str, Any]) -> DatasetManifest:
    return dataset if isinstance(dataset, DatasetManifest) else DatasetManifest.from_dict(dataset)


def check_columns(columns: Any, spec: TrainingSpec, where: str) -> None:
    """Raise ``TrainingInputError`` naming every spec column (features, label, timestamp, key columns) not in
    ``columns``."""
    have = set(columns)
    wanted = [*spec.required_columns, *(c for c in spec.key_columns if c not in spec.required_columns)]
    missing = [c for c in wanted if c not in have]
    if missing:
        roles = []
        for c in missing:
            role = (
                "label"
                if c == spec.label
                else "timestamp_column"
                if c == spec.timestamp_column
                else "categorical feature"
                if c in spec.categorical_features
                else "numeric feature"
                if c in spec.numeric_features
                else "key column, training.key_columns"
            )
            roles.append(f"{c!r} ({role})")
        raise TrainingInputError(f"{where} lacks column(s) required by the training spec: {', '.join(roles)}")


def _examples(values: pd.Series, limit: int = 5) -> str:
    return ", ".join(repr(v) for v in pd.unique(values)[:limit])


def _check_labels(df: pd.DataFrame, spec: TrainingSpec, task: Task | None = None) -> None:
    """The task's label checks (``LabelError`` becomes ``TrainingInputError``, same message), and no
    missing timestamps."""
    task = task or spec.task_plugin()
    try:
        task.check_labels(df[spec.label], spec.label)
    except LabelError as exc:
        raise TrainingInputError(str(exc)) from None
    if df[spec.timestamp_column].isna().any():
        raise TrainingInputError(f"timestamp column {spec.timestamp_column!r} has missing values")


def _check_numeric_features(df: pd.DataFrame, spec: TrainingSpec) -> None:
    """Every ``numeric_features`` column must convert to numbers (as ``Preprocessor`` converts them): checked
    on the whole dataset, so a bad value in the validation or holdout rows fails here too."""
    for col in spec.numeric_features:
        series = df[col]
        if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
            continue
        try:
            pd.to_numeric(series, errors="raise")
        except (ValueError, TypeError):
            bad = series[series.notna() & pd.to_numeric(series, errors="coerce").isna()]
            raise TrainingInputError(
                f"numeric feature {col!r} has non-numeric values ({series.dtype}) such as {_examples(bad)}; "
                "fix the data or list the column under categorical_features"
            ) from None


def _time_range(df: pd.DataFrame, column: str) -> list[str] | None:
    if not len(df):
        return None
    ts = df[column]
    return [pd.Timestamp(ts.min()).isoformat(), pd.Timestamp(ts.max()).isoformat()]


def holdout_frame(
    dataset: DatasetManifest | dict[str, Any] | pd.DataFrame, spec: TrainingSpec
) -> pd.DataFrame:
    """Exactly the holdout rows ``run_training`` held out for this dataset and spec (same order)."""
    df = dataset if isinstance(dataset, pd.DataFrame) else read_dataset(_manifest(dataset))
    return split_for_spec(df, spec)[2]


def split_for_spec(df: pd.DataFrame, spec: TrainingSpec) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, val, holdout) of ``df`` as ``spec`` splits it: one call for training and the gate's rebuild."""
    return split_by_time(df, spec.timestamp_column, spec.validation_fraction, spec.holdout_fraction,
                         key_columns=spec.key_columns)


def holdout_info(holdout: pd.DataFrame, spec: TrainingSpec) -> dict[str, Any]:
    """What training records about its holdout (the gate requires the same ``rows`` and ``sha256``):
    ``labels`` is the task's ``label_summary``; a binary task also has ``positives``."""
    digest, basis = frame_digest(holdout, spec.key_columns)
    task = spec.task_plugin()
    labels: dict[str, Any] = {"rows": len(holdout)}
    if spec.label in holdout.columns and len(holdout):
        try:
            labels = task.label_summary(task.encode_labels(holdout[spec.label]))
        except (LabelError, ValueError, TypeError):  # labels the task cannot encode: the gate refuses them
            labels = {"rows": len(holdout)}
    info: dict[str, Any] = {
        "rows": len(holdout),
        "time_range": _time_range(holdout, spec.timestamp_column),
        "sha256": digest,
        "sha256_basis": basis,
        "validation_fraction": spec.validation_fraction,
        "holdout_fraction": spec.holdout_fraction,
        "labels": labels,
    }
    if spec.task == "binary":
        info["positives"] = int(labels.get("positives", 0))
    return info


def _pick_epoch(history: list[dict[str, Any]], spec: TrainingSpec) -> dict[str, Any]:
    """The epoch whose weights become the model: the best on the early-stopping metric, else the last."""
    if spec.early_stopping_patience:
        chosen = best_epoch(history, spec)
        if chosen is not None:
            return chosen
    return history[-1]


def chosen_metrics(chosen: dict[str, Any], spec: TrainingSpec, task: Task | None = None) -> dict[str, Any]:
    """``result.metrics``: the chosen epoch's number, its task's ``val_*`` metrics, val and train loss."""
    task = task or spec.task_plugin()
    out: dict[str, Any] = {"epoch": chosen["epoch"]}
    out.update({k: chosen.get(k, math.nan) for k in task.validation_metrics if k != "val_loss"})
    out["val_loss"] = chosen["val_loss"]
    out["train_loss"] = chosen["train_loss"]
    return out


def _final_checkpoint_dir(fit: Any, run_dir: Path) -> Path | None:
    """The run's final checkpoint: Ray's latest, or a more advanced one persisted on the run's storage."""
    candidates = []
    if fit.checkpoint is not None:
        local = Path(fit.checkpoint.path)
        candidates.append(local if local.is_dir() else Path(fit.checkpoint.to_directory()))
    scanned = latest_checkpoint_on_disk(run_dir)
    if scanned is not None:
        candidates.append(scanned)
    ranked = [(p, d) for d in candidates if (p := read_progress(d)) is not None]
    if not ranked:
        return None
    return max(ranked, key=lambda r: (r[0][0], r[0][1], r[0][2] == "diverged"))[1]


def resolve_device(spec: TrainingSpec, *, has_cuda: bool | None = None, where: str = "here") -> str:
    """``cpu`` or ``cuda`` for ``spec.device`` here (or, with ``has_cuda``, on a cluster whose GPUs were
    counted); raises naming the field when it cannot be honoured."""
    if has_cuda is None:
        import torch

        has_cuda = torch.cuda.is_available()
    if spec.device == "cuda" and not has_cuda:
        raise SpecError("device", f"device='cuda' but no CUDA device is available {where}")
    device = "cuda" if spec.device == "cuda" or (spec.device == "auto" and has_cuda) else "cpu"
    if spec.precision == "bf16" and device != "cuda":
        raise SpecError(
            "precision",
            f"precision='bf16' needs cuda but device={spec.device!r} resolves to cpu {where}; "
            "use precision='fp32' (bf16 is never silently downgraded)",
        )
    return device


def release_memory() -> None:
    """Give freed memory back to the OS before the memory-heavy part (Ray's processes and workers).

    A task process that read, validated and drift-checked a large frame keeps the freed pages: Arrow's
    memory pool and glibc's malloc cache them for reuse (1M rows: ~1 GB held). ``gc.collect`` drops
    cycles, ``release_unused`` empties Arrow's pool, ``malloc_trim(0)`` returns glibc's free heap pages, and
    resetting DuckDB's ``memory_limit`` (only while it is the default) on ibis's default DuckDB connection
    (the one Feast's ibis-based retrieval used, if any in this process) makes DuckDB's allocator hand back
    its cache (~0.3 GB at 1M rows). On a GPU, the CUDA caching allocator's blocks (the sensitivity check's
    models and data) go back to the device for the Ray worker that trains next on the same GPU.
    """
    import contextlib
    import ctypes
    import gc
    import sys

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    ibis = sys.modules.get("ibis")
    backend = getattr(getattr(ibis, "options", None), "default_backend", None)
    if backend is not None and getattr(backend, "name", "") == "duckdb":
        with contextlib.suppress(Exception):  # best effort: a closed or foreign connection is fine
            import duckdb

            query = "SELECT current_setting('memory_limit')"
            default = duckdb.connect().execute(query).fetchall()[0][0]
            if backend.raw_sql(query).fetchall()[0][0] == default:  # never touch a limit someone set
                backend.raw_sql("RESET memory_limit").fetchall()  # fetch all: leave no open result behind
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # never initializes CUDA itself
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- Ray
def init_local_ray(num_cpus: int | None = None, *, python_paths: Any = (), **kwargs: Any) -> None:
    """Start a private local Ray instance whose workers can import ``gd_provider``.

    ``address="local"`` always starts a new instance (a stale session or ``RAY_ADDRESS`` is ignored). When
    ``gd_provider`` is not installed in site-packages (e.g. a source checkout), its parent directory is put on
    the workers' ``PYTHONPATH``, since Ray Train unpickles the training loop by module name; so are
    ``python_paths`` (the roots of a user's model / task modules, see ``user_python_paths``; the training
    loop also puts them on each worker's ``sys.path``, for an instance started elsewhere). Workers run at
    the driver's niceness (Ray's default is +15) and Ray Train's preemption watcher is off (no preemptible
    nodes here); a value already in the environment (``RAY_worker_niceness``,
    ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER``) wins. Ray's processes start without the task's secrets
    (``worker_env.hidden_names``: Airflow's connections, variables and configuration, MLflow's credentials).

    The process's own SIGTERM handler is kept: ``ray.init`` replaces it (with ``sys.exit``, and the core
    worker's abort handler), which inside an Airflow task would bypass the task runner's handler and so the
    operator's ``on_kill`` - the process would abort instead of stopping its training. Only a Python-level
    handler installed by the embedding program is restored; a plain script keeps Ray's.
    """
    import signal
    import threading

    import ray

    in_main_thread = threading.current_thread() is threading.main_thread()
    term_handler = signal.getsignal(signal.SIGTERM) if in_main_thread else None

    # .../<root>/gd_provider/core/training/runner.py -> <root> (works for namespace packages too)
    pkg_root = str(Path(__file__).resolve().parents[3])
    previous = os.environ.get("PYTHONPATH")
    env_set = [k for k in LOCAL_RAY_ENV_DEFAULTS if k not in os.environ]
    for key in env_set:
        os.environ[key] = LOCAL_RAY_ENV_DEFAULTS[key]
    installed = {str(Path(p).resolve()) for p in site.getsitepackages() + [site.getusersitepackages()]}
    paths = [p for p in (previous or "").split(os.pathsep) if p]
    added = [pkg_root] if pkg_root not in installed else []
    added += [str(p) for p in python_paths or () if str(p) not in installed]
    added = [p for i, p in enumerate(added) if p not in paths and p not in added[:i]]
    if added:
        os.environ["PYTHONPATH"] = os.pathsep.join([*added, *paths])
    # Ray's processes (GCS, raylet, and so every worker) inherit the environment of this moment: not the
    # task's connections, variables, Airflow configuration or MLflow credentials (see worker_env)
    hidden = {name: os.environ.pop(name) for name in hidden_names()}
    # The instance's own address for its processes (RAY_ADDRESS, on a port chosen here): a Ray helper that
    # looks the cluster up from inside - Ray Train's PlacementGroupCleaner asks the State API - would
    # otherwise scan the host and, with another Ray running there, fail with "Found multiple active Ray
    # instances" (a traceback in the task log) or find the other one. ``address="local"`` ignores it.
    own_address = _own_address_env(kwargs.get("_node_ip_address"))
    saved_address = {key: os.environ.get(key) for key in own_address}
    os.environ.update(own_address)
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            **kwargs,
        )
    finally:
        for key, value in saved_address.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.environ.update(hidden)
        for key in env_set:
            os.environ.pop(key, None)
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
        if callable(term_handler):
            signal.signal(signal.SIGTERM, term_handler)


GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # the port a head node's GCS listens on (Ray reads it at start)


def _own_address_env(node_ip: str | None = None) -> dict[str, str]:
    """``{RAY_GCS_SERVER_PORT, RAY_ADDRESS}`` for a local instance about to start: a free port (or the one
    already in ``RAY_GCS_SERVER_PORT``) on this node's IP address."""
    import socket

    from ray.util import get_node_ip_address

    port = os.environ.get(GCS_PORT_ENV)
    if not port:
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = str(probe.getsockname()[1])
    ip = node_ip or get_node_ip_address()
    host = f"[{ip}]" if ":" in ip else ip
    return {GCS_PORT_ENV: port, "RAY_ADDRESS": f"{host}:{port}"}


def check_ray_address(ray_address: str) -> None:
    """``local`` (start a private instance), ``auto`` or a cluster's GCS address ``host:port`` (connect to
    a running cluster, as the driver of a Ray job does). Ray Client (``ray://``) is refused: submit the
    training as a Ray job instead (``gd_provider.core.training.entrypoint``)."""
    if not isinstance(ray_address, str) or not ray_address:
        raise TrainingInputError(f"ray_address must be 'local', 'auto' or host:port, got {ray_address!r}")
    if "://" in ray_address:
        raise TrainingInputError(
            f"ray_address={ray_address!r}: Ray Client and URL addresses are not supported by run_training; use "
            "'local', 'auto' (inside a Ray job) or a GCS address host:port, and submit remote training through "
            "the Ray Jobs API (python -m gd_provider.core.training.entrypoint)"
        )


def _driver_device(spec: TrainingSpec) -> str:
    """Device for work done in a remote driver itself (the sensitivity check): its GPU if it has one."""
    import torch

    return "cuda" if spec.device != "cpu" and torch.cuda.is_available() else "cpu"


def _check_ray_resources(spec: TrainingSpec, use_gpu: bool = False) -> None:
    import ray

    resources = ray.cluster_resources()
    need = spec.num_workers * spec.cpus_per_worker
    have = float(resources.get("CPU", 0.0))
    if need > have + 1e-9:
        raise TrainingInputError(
            f"num_workers={spec.num_workers} x cpus_per_worker={spec.cpus_per_worker:g} needs {need:g} CPUs "
            f"but the Ray cluster has {have:g}; Ray Train would wait forever"
        )
    gpus = float(resources.get("GPU", 0.0))
    if use_gpu and spec.num_workers > gpus + 1e-9:
        raise TrainingInputError(
            f"num_workers={spec.num_workers} on cuda needs {spec.num_workers} GPUs but the Ray cluster has {gpus:g}"
        )


# ---------------------------------------------------------------------------------------------- main
def _check_holdout(holdout: pd.DataFrame, spec: TrainingSpec, *, total_rows: int, task: Task | None = None) -> None:
    """The evaluation gate scores challenger and champion on the holdout: refuse, before Ray starts, a
    holdout it could not score (``task.holdout_problem``: empty; a single class for binary / multiclass; fewer
    than two rows for regression) instead of failing after training."""
    if len(holdout) == 0:
        raise TrainingInputError(
            f"the holdout is empty: {total_rows} rows x holdout_fraction={spec.holdout_fraction:g} leave no "
            "rows for the evaluation gate to score the model on; use more rows or a larger holdout_fraction"
        )
    task = task or spec.task_plugin()
    problem = task.holdout_problem(task.encode_labels(holdout[spec.label]))
    if problem is None:
        return
    if problem.startswith("the holdout "):  # "the holdout has only label 0: ..." -> name the rows and column
        problem = problem[len("the holdout "):]
    where = f"the holdout (the latest {len(holdout)} rows, holdout_fraction={spec.holdout_fraction:g})"
    # binary: "has only label 0: the evaluation gate needs both classes (ROC/PR AUC)" + the column
    head, sep, tail = problem.partition(":")
    detail = f"{head} in column {spec.label!r}{sep}{tail}" if sep else f"{problem} (column {spec.label!r})"
    raise TrainingInputError(f"{where} {detail}; use more rows or a larger holdout_fraction")


def user_python_paths(spec: TrainingSpec) -> list[str]:
    """The ``sys.path`` roots of the spec's user model factory and user task class (built-ins need none):
    what a Ray worker, or a Ray job's driver, must be able to import them from."""
    from gd_provider.core.models import BUILTIN_MODELS, python_root, resolve_factory

    objects: list[Any] = []
    if spec.model not in BUILTIN_MODELS:
        objects.append(resolve_factory(spec.model))
    if spec.task not in BUILTIN_TASKS:
        objects.append(task_class(spec.task))
    paths: list[str] = []
    for obj in objects:
        root = python_root(obj)
        if root and root not in paths:
            paths.append(root)
    return paths


def model_info(spec: TrainingSpec) -> dict[str, Any]:
    """``{"factory", "kwargs", "code_version"}`` of the spec's model (``task_code_version`` too for a user's
    task class): where the code that built and judged the model comes from (lineage)."""
    from gd_provider.core.models import code_version, resolve_factory

    info: dict[str, Any] = {
        "factory": spec.model,
        "kwargs": _json_safe(spec.model_kwargs_for_factory()),
        "code_version": code_version(resolve_factory(spec.model)),
    }
    if spec.task not in BUILTIN_TASKS:
        info["task_code_version"] = code_version(task_class(spec.task))
    return info


def _prepare_inputs(
    df: pd.DataFrame, spec: TrainingSpec, manifest: DatasetManifest, run_dir: Path, task: Task | None = None
) -> tuple[Preprocessor, dict[str, Any], dict[str, Any], pd.DataFrame, dict[str, Any]]:
    task = task or spec.task_plugin()
    try:
        train, val, holdout = split_for_spec(df, spec)
    except PreprocessError as exc:  # the data, not the code: retrying cannot help
        raise TrainingInputError(f"cannot split the dataset by time: {exc}") from exc
    if len(train) < spec.num_workers or len(val) == 0:
        raise TrainingInputError(
            f"too few rows to train: {len(df)} rows give train={len(train)} val={len(val)} "
            f"holdout={len(holdout)} (num_workers={spec.num_workers})"
        )
    _check_holdout(holdout, spec, total_rows=len(df), task=task)
    y_train = task.encode_labels(train[spec.label])
    y_val = task.encode_labels(val[spec.label])
    try:
        state = task.fit_state(y_train)  # e.g. binary pos_weight='auto' needs both classes
    except LabelError as exc:
        raise TrainingInputError(str(exc)) from None
    state = _json_safe(state)

    try:
        pre = Preprocessor.fit(train, spec.numeric_features, spec.categorical_features)
        x_train, x_val = pre.transform(train), pre.transform(val)
    except PreprocessError as exc:  # the data, not the code: retrying cannot help
        raise TrainingInputError(f"cannot preprocess the dataset: {exc}") from exc
    inputs = run_dir / INPUTS_DIR
    fingerprint = {"spec": spec.to_dict(), "dataset_sha256": manifest.sha256, "split_version": SPLIT_VERSION}
    fp_path = inputs / FINGERPRINT_FILE
    if fp_path.exists() and json.loads(fp_path.read_text()) != fingerprint:
        raise TrainingInputError(
            f"run directory {run_dir} already holds a training with a different spec, dataset or split rule "
            f"(e.g. one trained before an upgrade of gd_provider); it is resumed, never reused for other inputs: "
            "give the training a new run name (in a DAG: a rerun override trains under a new name)"
        )
    inputs.mkdir(parents=True, exist_ok=True)
    # y: the loss's targets (e.g. a standardized regression target); y_label: the encoded labels (metrics)
    np.savez(inputs / TRAIN_ARRAYS, x=x_train, y=task.targets(y_train, state), y_label=y_train)
    np.savez(inputs / VAL_ARRAYS, x=x_val, y=task.targets(y_val, state), y_label=y_val)
    del x_train, x_val
    (inputs / PREPROCESSOR_FILE).write_text(json.dumps(pre.to_dict()))
    fp_path.write_text(json.dumps(fingerprint))
    split: dict[str, Any] = {
        "train_rows": len(train),
        "val_rows": len(val),
        "holdout_rows": len(holdout),
        "train_time_range": _time_range(train, spec.timestamp_column),
        "val_time_range": _time_range(val, spec.timestamp_column),
        "train_labels": _json_safe(task.label_summary(y_train)),
        "val_labels": _json_safe(task.label_summary(y_val)),
        "task_state": state,
        "input_dim": pre.output_dim,
        "output_dim": task.output_width,
        "feature_names": pre.feature_names,
    }
    if spec.task == "binary":  # the former keys, for readers of the binary split record
        split["train_positives"] = int(split["train_labels"].get("positives", 0))
        split["val_positives"] = int(split["val_labels"].get("positives", 0))
        split["pos_weight"] = state["pos_weight"]
    config: dict[str, Any] = {
        "spec": spec.to_dict(),
        "data_dir": str(inputs),
        "input_dim": pre.output_dim,
        "task_state": state,
        "python_paths": user_python_paths(spec),
    }
    features = val[list(spec.features)]
    complete = features[features.notna().all(axis=1)]
    example = (complete if len(complete) >= 5 else features).head(5).reset_index(drop=True)
    return pre, split, config, example, holdout_info(holdout, spec)


def task_record(spec: TrainingSpec, state: dict[str, Any], task: Task | None = None) -> dict[str, Any]:
    """The content of ``task.json``: ``{"task": <name or import path>, "options": ..., "state": ...}``."""
    task = task or spec.task_plugin()
    return _json_safe({**task.to_dict(), "state": dict(state)})


def choose_operating_point_for(model_dir: Path, inputs: Path, spec: TrainingSpec) -> dict[str, Any]:
    """The serving rule of a trained model (its task's): ``spec.operating_point``'s objective met on the validation
    split (its preprocessed arrays), after the calibration it asks for; raises ``TrainingInputError`` when
    the objective cannot be met there."""
    import torch

    from gd_provider.core.tasks import TaskError
    from gd_provider.core.tasks.operating_point import OperatingPointError
    from gd_provider.core.training.pyfunc import ModelScorer

    scorer = ModelScorer(model_dir)
    with np.load(inputs / VAL_ARRAYS) as arrays:
        x_val, y_val = arrays["x"], arrays["y_label"]
    with torch.no_grad():
        outputs = torch.cat([scorer.model(torch.from_numpy(x_val[i:i + 65536]))
                             for i in range(0, len(x_val), 65536)]).double().numpy()
    raw = scorer.task.scores(outputs, scorer.task_state)
    try:
        return scorer.task.choose_operating_point(y_val, raw, spec.operating_point or {})
    except (OperatingPointError, TaskError) as exc:
        raise TrainingInputError(f"training.{exc}" if isinstance(exc, OperatingPointError) else str(exc)) from exc


def _write_model_dir(
    model_dir: Path,
    checkpoint_dir: Path,
    pre: Preprocessor,
    spec: TrainingSpec,
    example: pd.DataFrame,
    task_json: dict[str, Any] | None = None,
) -> None:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    shutil.copy2(checkpoint_dir / MODEL_FILE, model_dir / MODEL_FILE)
    (model_dir / PREPROCESSOR_FILE).write_text(json.dumps(pre.to_dict(), indent=1))
    (model_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1))
    (model_dir / TASK_FILE).write_text(json.dumps(task_json or task_record(spec, {}), indent=1))
    example.to_parquet(model_dir / INPUT_EXAMPLE_FILE, index=False)


def run_training(
    dataset: DatasetManifest | dict[str, Any],
    spec: TrainingSpec,
    *,
    storage_path: str,
    run_name: str,
    ray_address: str = "local",
    fault_injection: dict[str, Any] | None = None,
) -> TrainingResult:
    """Train ``spec`` on ``dataset`` with Ray Train; the run lives in ``<storage_path>/<run_name>``.

    Re-running with the same ``storage_path``/``run_name`` resumes from the latest checkpoint (same spec
    and dataset required). ``ray_address="local"`` starts a private Ray instance; ``"auto"`` or
    ``host:port`` connects to a running cluster (see ``check_ray_address``). Input problems raise
    ``SpecError``/``TrainingInputError`` before Ray starts;
    a run the guards stop returns ``status="diverged"`` (reason in ``error`` and ``guard``); a failure
    during training returns ``status="failed"`` and ``error``.

    The model is the spec's: a built-in (``mlp``, ``logistic``) or a user's factory ``package.module:factory``
    (with ``model_kwargs``), and the task a built-in or a user's ``Task`` subclass by import path; the roots
    of a user's modules go on the Ray workers' ``sys.path`` (``user_python_paths``), so a factory defined in
    the user's own package or DAGs folder trains on the workers and scores from the saved model directory.
    ``fault_injection`` is a test hook (see ``loop._maybe_inject_failure``).
    """
    t0 = time.perf_counter()
    spec.validate()
    check_ray_address(ray_address)
    remote = ray_address != "local"
    # On a cluster the workers, not this driver, hold the GPUs: the device is resolved from the cluster's
    # resources once connected (a CPU-only head node must not veto device="cuda").
    device = None if remote else resolve_device(spec)
    manifest = _manifest(dataset)
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise TrainingInputError(f"run_name must be a plain directory name, got {run_name!r}")
    check_columns(manifest.columns, spec, f"dataset {manifest.uri} (per its manifest)")

    task = spec.task_plugin()
    df = read_dataset(manifest)
    check_columns(df.columns, spec, f"dataset {manifest.uri}")
    _check_labels(df, spec, task)
    _check_numeric_features(df, spec)

    storage = Path(storage_path).expanduser().resolve()
    run_dir = storage / run_name
    pre, split, config, example, holdout = _prepare_inputs(df, spec, manifest, run_dir, task)
    task_json = task_record(spec, config["task_state"], task)
    result = TrainingResult(
        status="failed",
        run_name=run_name,
        run_dir=str(run_dir),
        holdout=holdout,
        split=split,
        spec=spec.to_dict(),
        dataset={"uri": manifest.uri, "sha256": manifest.sha256, "rows": manifest.rows},
        task=task_json,
        model=model_info(spec),
    )
    del df
    t_prep = time.perf_counter()
    result.timings["prepare_s"] = t_prep - t0

    if spec.sensitivity.enabled:
        from gd_provider.core.training.sensitivity import run_sensitivity

        inputs = Path(config["data_dir"])
        x_train, _ = load_arrays(inputs / TRAIN_ARRAYS)
        x_val, _ = load_arrays(inputs / VAL_ARRAYS)
        y_train, y_val = load_labels(inputs / TRAIN_ARRAYS), load_labels(inputs / VAL_ARRAYS)
        result.sensitivity = run_sensitivity(
            spec,
            x_train,
            y_train,
            x_val,
            y_val,
            task_state=config["task_state"],
            device=device or _driver_device(spec),
        )
        del x_train, y_train, x_val, y_val
        t_prep = time.perf_counter()
        result.timings["sensitivity_s"] = result.sensitivity["seconds"]
    release_memory()  # the driver's frames are on disk as shards now; Ray's processes start next

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config["run_dir"] = str(run_dir)
    if fault_injection is not None:
        config["fault_injection"] = fault_injection

    started_ray = False
    summarize = True
    # Ray's output through Python logging, at its own level (not the driver's stderr: an Airflow task logs
    # that at ERROR); rank 0's one line per epoch arrives on gd_provider.training (see core.training.logs)
    routing = RayLogRouting().start()
    try:
        if not ray.is_initialized():
            if ray_address == "local":
                init_local_ray(python_paths=config["python_paths"])
            else:
                # An existing cluster (a Ray job's driver: "auto" follows RAY_ADDRESS); disconnecting at the
                # end leaves the cluster running.
                ray.init(address=ray_address)
            started_ray = True
        routing.attach_workers()
        result.timings["ray_init_s"] = time.perf_counter() - t_prep
        if device is None:
            gpus = float(ray.cluster_resources().get("GPU", 0.0))
            device = resolve_device(spec, has_cuda=gpus > 0, where="on the Ray cluster (0 GPUs)")
        use_gpu = device == "cuda"
        _check_ray_resources(spec, use_gpu)
        resources = {"CPU": spec.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=spec.num_workers, use_gpu=use_gpu, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=str(storage),
                checkpoint_config=CheckpointConfig(num_to_keep=None),
                failure_config=FailureConfig(max_failures=spec.max_failures),
            ),
        )
        t_fit = time.perf_counter()
        fit_started_unix = time.time()
        # The controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s) and each
        # ray.train.report blocks until polled, so the default adds ~2 s per epoch. The trainer copies this
        # variable from the driver's environment into the controller's runtime env at fit() time.
        previous_interval = os.environ.get(HEALTH_CHECK_ENV)
        if previous_interval is None:
            os.environ[HEALTH_CHECK_ENV] = DEFAULT_HEALTH_CHECK_INTERVAL_S
        try:
            fit = trainer.fit()
        except Exception as exc:  # TrainingFailedError (worker/controller) and friends
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        finally:
            if previous_interval is None:
                os.environ.pop(HEALTH_CHECK_ENV, None)
            result.timings["fit_s"] = time.perf_counter() - t_fit
        latest = _final_checkpoint_dir(fit, run_dir)
        if latest is None:
            result.error = "training finished without a checkpoint"
            return result

        history = json.loads((latest / HISTORY_FILE).read_text())
        steps = json.loads((latest / STEPS_FILE).read_text())
        state_file = latest / RUN_STATE_FILE
        run_state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        result.history, result.steps, result.run_state = history, steps, run_state
        if run_state.get("status") != "diverged" and history:
            routing.drain(int(history[-1].get("epoch", len(history))))  # the last epoch line, before shutdown
        timeline = run_state.get("timeline", {})
        if "first_epoch_started_unix" in timeline and not run_state.get("resumes"):
            result.timings["worker_startup_s"] = timeline["first_epoch_started_unix"] - fit_started_unix
        if "first_epoch_started_unix" in timeline and "last_epoch_ended_unix" in timeline:
            result.timings["train_loop_s"] = timeline["last_epoch_ended_unix"] - timeline["first_epoch_started_unix"]
        restarts = len(run_state.get("resumes", []))

        if run_state.get("status") == "diverged":
            trip = run_state.get("trip") or {}
            result.status = "diverged"
            result.guard = trip
            result.error = f"training diverged: {trip.get('reason', 'unknown reason')}"
            result.health = health_summary(
                steps, status="diverged", spec=spec, trip=trip, restarts=restarts, sensitivity=result.sensitivity
            )
            return result
        if not history:
            result.error = "training finished without a completed epoch"
            return result
        chosen = _pick_epoch(history, spec)
        checkpoint_dir = latest
        if chosen is not history[-1]:
            found = checkpoint_for_epoch(run_dir, chosen["epoch"])
            if found is None:
                chosen = history[-1]
            else:
                checkpoint_dir = found
        model_dir = run_dir / MODEL_DIR
        _write_model_dir(model_dir, checkpoint_dir, pre, spec, example, task_json)
        point = None
        if spec.operating_point is not None:
            point = choose_operating_point_for(model_dir, Path(config["data_dir"]), spec)
            task_json = {**task_json, "state": {**task_json["state"], "operating_point": point}}
            (model_dir / TASK_FILE).write_text(json.dumps(task_json, indent=1))
            result.task = task_json

        result.status = "completed"
        result.model_dir = str(model_dir)
        result.metrics = chosen_metrics(chosen, spec, task)
        if point is not None:
            result.metrics.update({f"val_op_{k}": v for k, v in point["validation"].items()})
            if "threshold" in point:
                result.metrics["op_threshold"] = point["threshold"]
        result.health = health_summary(
            steps, status="completed", spec=spec, restarts=restarts, sensitivity=result.sensitivity
        )
        return result
    except BaseException:
        summarize = False  # the exception says what happened
        raise
    finally:
        if started_ray:
            ray.shutdown()
        routing.stop()
        result.timings["total_s"] = time.perf_counter() - t0
        if summarize:
            log_summary(result)  # one line: outcome, chosen epoch's metrics, health, where the time went
