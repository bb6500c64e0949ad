"""Entrypoint of a remote training run submitted as a Ray job (no Airflow import).

    python -m gd_provider.core.training.entrypoint --request /shared/.../<submission_id>.request.json

The request (JSON, written by ``RayTrainOperator`` or by hand)::

    {"dataset": {<dataset manifest>}, "spec": {<TrainingSpec>}, "storage_path": "...", "run_name": "...",
     "result_path": "...", "ray_address": "auto", "submission_id": "gd-...", "python_paths": ["..."]}

``python_paths`` (optional): the roots of a user's model factory / task class modules on the submitting
side (``runner.user_python_paths``); the driver puts those that exist on its node on ``sys.path`` before
it reads the spec (and ``run_training`` hands them to the Ray workers), so a model defined in the user's
package or DAGs folder trains on the cluster when that directory is on the shared volume too. Code that
is not on shared storage must be installed in the cluster's image or shipped with the connection's
``runtime_env`` (``py_modules``/``working_dir``).

``run_training`` runs as the job's driver, connected to the job's cluster (``ray_address`` ``auto``); the
model directory lands under ``<storage_path>/<run_name>``. The outcome is written atomically to
``result_path`` as an envelope:

* ``{"kind": "result", "result": <TrainingResult dict>}`` - the run finished as ``completed``, ``diverged``
  or ``failed`` (exit code 0: the submitter decides what each status means, as in-process training does);
* ``{"kind": "input_error", "error": "..."}`` - the spec, dataset or manifest cannot be trained on
  (exit code 2; retrying cannot help).

Anything else (a crash, an unreachable cluster) leaves no result file and fails the job with a traceback in
the job's logs. Paths must resolve on the cluster's nodes as on the submitting side (a shared volume).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REQUEST_KEYS = ("dataset", "spec", "storage_path", "run_name", "result_path")
EXIT_INPUT_ERROR = 2


class RequestError(ValueError):
    """The request file is missing, unreadable or lacks keys."""


def build_request(
    dataset: dict[str, Any],
    spec: dict[str, Any],
    *,
    storage_path: str,
    run_name: str,
    result_path: str,
    ray_address: str = "auto",
    submission_id: str | None = None,
    python_paths: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    return {
        "submission_id": submission_id,
        "python_paths": [str(p) for p in python_paths or ()],
        "dataset": dict(dataset),
        "spec": dict(spec),
        "storage_path": str(storage_path),
        "run_name": run_name,
        "result_path": str(result_path),
        "ray_address": ray_address,
    }


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a partial one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_request(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        request = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RequestError(f"cannot read the training request {path}: {exc}") from exc
    if not isinstance(request, dict):
        raise RequestError(f"training request {path} is not a JSON object")
    missing = [k for k in REQUEST_KEYS if k not in request]
    if missing:
        raise RequestError(f"training request {path} lacks {missing}")
    return request


def run_request(request: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Run one request; returns (envelope, exit code). Input problems become an ``input_error`` envelope."""
    from gd_provider.core.data import DatasetError
    from gd_provider.core.training.loop import add_python_paths
    from gd_provider.core.training.preprocess import PreprocessError
    from gd_provider.core.training.runner import TrainingInputError, run_training
    from gd_provider.core.training.spec import SpecError, TrainingSpec

    started = time.time()
    meta = {
        "host": platform.node(),
        "pid": os.getpid(),
        "submission_id": request.get("submission_id"),
        "started_unix": started,
    }
    add_python_paths(request.get("python_paths"))  # a user's model factory / task class
    try:
        spec = TrainingSpec.from_dict(request["spec"])
        result = run_training(
            request["dataset"],
            spec,
            storage_path=request["storage_path"],
            run_name=request["run_name"],
            ray_address=request.get("ray_address") or "auto",
        )
    except (SpecError, TrainingInputError, PreprocessError, DatasetError) as exc:
        meta["seconds"] = time.time() - started
        return {"kind": "input_error", "error": f"{type(exc).__name__}: {exc}", "meta": meta}, EXIT_INPUT_ERROR
    meta["seconds"] = time.time() - started
    return {"kind": "result", "result": result.to_dict(), "meta": meta}, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--request", required=True, help="path of the JSON training request")
    args = parser.parse_args(argv)
    from gd_provider.core.training.logs import configure_job_driver_logging

    undo_logging = configure_job_driver_logging()  # the job's log keeps each line's level (the task's too)
    try:
        return _run(args.request)
    finally:
        undo_logging()


def _run(request_file: str) -> int:
    request = read_request(request_file)
    print(f"gd_provider training request {request_file}: run {request['run_name']!r} under {request['storage_path']}",
          flush=True)
    envelope, code = run_request(request)
    write_json_atomic(request["result_path"], envelope)
    if envelope["kind"] == "input_error":
        print(f"gd_provider training cannot start: {envelope['error']}", file=sys.stderr, flush=True)
    else:
        result = envelope["result"]
        summary = result.get("error") or result.get("metrics")
        print(f"gd_provider training {result['status']}: {summary}", flush=True)
    print(f"gd_provider result written to {request['result_path']}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
