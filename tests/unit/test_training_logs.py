"""The training log a person reads (issue 14): Ray's output at its own level, one line per epoch and one at
the end, Ray jobs' lines at their level in the task log, the learning rate readable in MLflow, and the
lineage date of a manual run. The real Ray run (another Ray on the host) is tests/integration/test_training_logs.py."""

from __future__ import annotations

import logging
import math
import re

import pytest

from gd_provider.core.training import logs
from gd_provider.core.training.logs import (
    PROGRESS_LOGGER,
    RAY_LOGGER,
    EpochProgress,
    RayLogRouting,
    WorkerLineClassifier,
    epoch_line,
    parse_marked_line,
    summary_line,
)
from gd_provider.core.training.runner import TrainingResult
from gd_provider.demo.schema import training_spec as demo_training_spec

EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+): train_loss \S+, val_roc_auc \d\.\d{3}, val_loss \S+, grad-norm p50 \S+ / max \S+, "
    r"clipped \d+%, [\d,]+ samples/s, ETA .+ s$")


def _entry(epoch: int = 3, **overrides):
    entry = {"epoch": epoch, "train_loss": 0.41234, "val_loss": 0.39, "val_roc_auc": 0.8712, "val_pr_auc": 0.3,
             "lr": 1e-3, "steps": 50, "global_step": 150, "nonfinite_steps": 0, "max_grad_norm": 3.1,
             "mean_grad_norm": 0.9, "clipped_steps": 1, "epoch_seconds": 0.5, "world_size": 2,
             "train_rows_per_worker": 1280, "batch_rows": 256}
    entry.update(overrides)
    return entry


# ---------------------------------------------------------------------------------------------- lines
def test_the_epoch_line_says_progress_loss_metric_grad_norms_clip_share_throughput_and_eta():
    norms = [0.5, 0.8, 0.8, 1.2, 3.1]
    line = epoch_line(_entry(), total_epochs=20, metric="val_roc_auc", grad_norms=norms, clip=1.0, eta_s=14.2)
    assert line == ("epoch 3/20: train_loss 0.412, val_roc_auc 0.871, val_loss 0.39, grad-norm p50 0.8 / max 3.1, "
                    "clipped 2%, 5,120 samples/s, ETA 14 s")
    assert EPOCH_LINE.match(line)
    # no clipping configured: no clip share; non-finite steps are named
    other = epoch_line(_entry(nonfinite_steps=2), total_epochs=20, metric="val_roc_auc", grad_norms=[1.0, math.nan])
    assert "clipped" not in other and "2 non-finite steps" in other and "grad-norm p50 1 / max 1" in other


def test_rank_zeros_progress_logs_one_info_line_per_epoch_with_an_eta(caplog):
    spec = demo_training_spec(epochs=4, grad_clip_norm=1.0)
    progress = EpochProgress(spec)
    caplog.set_level(logging.INFO, logger="gd_provider")
    for epoch in (1, 2):
        progress.log(_entry(epoch), [0.7, 0.9])
    records = [r for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    assert [r.getMessage().split(":")[0] for r in records] == ["epoch 1/4", "epoch 2/4"]
    assert all(EPOCH_LINE.match(r.getMessage()) for r in records)


def test_the_summary_line_of_a_completed_a_diverged_and_a_failed_run():
    done = TrainingResult(
        status="completed", run_name="r", run_dir="/x", history=[{"epoch": 1}, {"epoch": 2}],
        metrics={"epoch": 2, "val_roc_auc": 0.8812, "val_pr_auc": 0.41, "val_loss": 0.3, "train_loss": 0.31},
        health={"steps": 100, "median_grad_norm": 0.8, "max_grad_norm": 3.1, "clipped_share_raw": 0.02,
                "nonfinite_steps": 0, "restarts": 0},
        spec={"epochs": 2, "grad_clip_norm": 1.0},
        timings={"total_s": 48.2, "prepare_s": 0.8, "ray_init_s": 17.7, "worker_startup_s": 28.7, "train_loop_s": 0.5})
    level, line = summary_line(done)
    assert level == logging.INFO
    assert line == ("training completed in 48 s: 2/2 epochs, 100 steps; model from epoch 2: val_roc_auc 0.881, "
                    "val_pr_auc 0.410, val_loss 0.300; grad-norm p50 0.8 / max 3.1; clipped 2%; 0 non-finite steps; "
                    "time: prepare 0.8 s, Ray start 18 s, worker start-up 29 s, train loop 0.5 s")
    diverged = TrainingResult(status="diverged", run_name="r", run_dir="/x", spec={"epochs": 5},
                              guard={"step": 41, "epoch": 2, "reason": "loss is not finite"}, timings={"total_s": 75})
    assert summary_line(diverged) == (logging.WARNING, "training diverged in 1 min 15 s at step 41 (epoch 2): "
                                                       "loss is not finite; no model")
    failed = TrainingResult(status="failed", run_name="r", run_dir="/x", error="TrainingFailedError: boom")
    assert summary_line(failed) == (logging.WARNING, "training failed after n/a: TrainingFailedError: boom")


# ---------------------------------------------------------------------------------------------- levels
@pytest.mark.parametrize(
    ("line", "is_err", "level", "name"),
    [
        ("[gd INFO gd_provider.training] epoch 1/3: train_loss 1.1", True, logging.INFO, "gd_provider.training"),
        ("[gd WARNING gd_provider.core.x] careful", True, logging.WARNING, "gd_provider.core.x"),
        ("[gd INFO ray.train._internal.session] Checkpoint successfully created at: x", True, logging.DEBUG, None),
        ("[gd INFO /venv/site-packages/ray/train/v2/_internal/execution/context.py] Reporting training result 1",
         True, logging.DEBUG, None),
        ("[gd WARNING ray.train] Ray's warning", True, logging.WARNING, None),
        ("[gd WARNING py.warnings] /x/model.py:3: UserWarning: odd", True, logging.WARNING, None),
        ("[gd INFO my_models] the user's own info", True, logging.INFO, None),
        ("2026-12-04 18:23:02,003\tINFO worker.py:2038 -- Started a local Ray instance.", True, logging.DEBUG, None),
        ("2026-12-04 18:23:02,003\tWARNING util.py:1 -- a Ray warning", True, logging.WARNING, None),
        ("Setting up process group for: env:// [rank=0, world_size=1]", True, logging.DEBUG, None),
        ("a print() of the user's code", False, logging.INFO, None),
        ("/x/y.py:12: DeprecationWarning: old", True, logging.WARNING, None),
    ],
)
def test_each_worker_line_gets_its_own_level(line, is_err, level, name):
    got_level, got_name, message = WorkerLineClassifier().classify(line, is_err=is_err)
    assert (got_level, got_name) == (level, name)
    assert not message.startswith("[gd ")


def test_a_traceback_is_an_error_to_its_last_line_and_then_the_level_falls_back():
    classify = WorkerLineClassifier().classify
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1, in f', "    raise ValueError('x')",
             "ValueError: x", "Requesting resources: {'CPU': 1.0} * 1"]
    assert [classify(line, is_err=True, stream=1)[0] for line in lines] == [logging.ERROR] * 4 + [logging.DEBUG]


def test_parse_marked_line():
    assert parse_marked_line("[gd INFO gd_provider.training] epoch 1/2: x") == (logging.INFO, "gd_provider.training",
                                                                                "epoch 1/2: x")
    assert parse_marked_line("gd_provider training completed: {}") is None


# ---------------------------------------------------------------------------------------------- routing
class _Dispatcher:
    """Ray's ``global_worker_stdstream_dispatcher`` as ``ray._private.worker.connect`` leaves it."""

    def __init__(self, printed):
        self.handlers = [("ray_print_logs", lambda data: printed.append(data))]

    def add_handler(self, name, handler):
        self.handlers.append((name, handler))

    def remove_handler(self, name):
        self.handlers = [h for h in self.handlers if h[0] != name]

    def emit(self, data):
        for _, handler in list(self.handlers):
            handler(data)


def test_forwarded_worker_lines_are_logged_at_their_level_not_printed_to_stderr(monkeypatch, caplog):
    import ray

    printed: list = []
    dispatcher = _Dispatcher(printed)
    monkeypatch.setattr(RayLogRouting, "_dispatcher", staticmethod(lambda: dispatcher))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    caplog.set_level(logging.DEBUG, logger="gd_provider")
    routing = RayLogRouting().start()
    routing.attach_workers()
    dispatcher.emit({"pid": 7, "actor_name": "RayTrainWorker", "is_err": True, "ip": "10.0.0.1", "localhost": "10.0.0.1",
                     "lines": ["\x1b[36m[gd INFO gd_provider.training] epoch 1/3: train_loss 1.1\x1b[0m",
                               "[gd INFO ray.train._internal.session] Checkpoint successfully created at: x",
                               "[gd WARNING py.warnings] /x.py:1: UserWarning: careful"]})
    dispatcher.emit({"pid": "autoscaler", "is_err": False, "lines": ["======== Autoscaler status ========"]})
    assert printed == []  # Ray's printer (the driver's stderr: ERROR in an Airflow task) is not used
    got = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert got == [
        (PROGRESS_LOGGER, "INFO", "epoch 1/3: train_loss 1.1"),
        (RAY_LOGGER, "DEBUG", "(RayTrainWorker pid=7) Checkpoint successfully created at: x"),
        (RAY_LOGGER, "WARNING", "(RayTrainWorker pid=7) /x.py:1: UserWarning: careful"),
    ]
    routing.stop()
    assert [name for name, _ in dispatcher.handlers] == ["ray_print_logs"]  # Ray still connected: its printer back
    dispatcher.emit({"pid": 1, "is_err": True, "lines": ["x"]})
    assert len(printed) == 1


def test_the_drivers_ray_logger_is_relogged_info_at_debug_and_restored_after(caplog):
    ray_logger = logging.getLogger("ray")
    before = (list(ray_logger.handlers), ray_logger.propagate)
    caplog.set_level(logging.DEBUG, logger="gd_provider")
    routing = RayLogRouting().start()
    try:
        logging.getLogger("ray._private.worker").info("Started a local Ray instance.")
        logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster. Set ...")
        logging.getLogger("ray.train").warning("a real warning")
    finally:
        routing.stop()
    got = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert got == [(RAY_LOGGER, "DEBUG", "Started a local Ray instance."),
                   (RAY_LOGGER, "DEBUG", "Token authentication is enabled for this Ray cluster. Set ..."),
                   (RAY_LOGGER, "WARNING", "a real warning")]
    assert (list(ray_logger.handlers), ray_logger.propagate) == before


def test_configure_worker_logging_marks_the_console_lines_with_their_level(monkeypatch):
    import io

    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(logging.getLogger("ray.train"), "handlers", [])
    level = logging.getLogger("gd_provider").level
    try:
        logs.configure_worker_logging()
        logging.getLogger("gd_provider.training").info("epoch 1/2: x")
        logging.getLogger("user.code").warning("hm")
    finally:
        logging.captureWarnings(False)
        logging.getLogger("gd_provider").setLevel(level)
    assert stream.getvalue().splitlines() == ["[gd INFO gd_provider.training] epoch 1/2: x",
                                              "[gd WARNING user.code] hm"]


def test_a_ray_jobs_marked_lines_reach_the_task_log_at_their_level():
    import structlog

    from gd_provider.hooks.ray import RayHook

    hook = RayHook.__new__(RayHook)
    text = ("gd_provider training request /r.json: run 'x' under /s\n"
            "[gd INFO gd_provider.training] epoch 1/2: train_loss 0.5\n"
            "[gd DEBUG gd_provider.ray] (RayTrainWorker pid=3) Moving model to device: cpu\n"
            "[gd WARNING gd_provider.ray] (RayTrainWorker pid=3) /x.py:1: UserWarning: careful\n")
    with structlog.testing.capture_logs() as captured:
        hook._log_lines("gd-x", text, 0, True)
    got = [(c["log_level"], c["event"] % c.get("positional_args", ()) if c.get("positional_args") else c["event"])
           for c in captured]
    # the DEBUG line (Ray's chatter) is below the task log's level: not shown
    assert [level for level, _ in got] == ["info", "info", "warning"]
    assert "[ray job gd-x] epoch 1/2: train_loss 0.5" in got[1][1] and "UserWarning: careful" in got[2][1]
    assert not any("Moving model" in event for _, event in got)
    assert "[gd " not in "".join(event for _, event in got)


# ---------------------------------------------------------------------------------------------- MLflow, lineage
def test_a_constant_learning_rate_is_logged_so_that_it_reads_as_the_lr():
    from gd_provider.core.training.pyfunc import _epoch_metrics, _step_metrics, lr_metric

    steps = {"step": [1, 2, 3], "epoch": [1, 1, 1], "loss": [0.5, 0.4, 0.3], "grad_norm": [1.0, 1.0, 1.0],
             "lr": [1e-3, 1e-3, 1e-3], "clipped": [0, 0, 0], "nonfinite": [0, 0, 0]}
    result = TrainingResult(status="completed", run_name="r", run_dir="/x", steps=steps,
                            history=[{"epoch": 1, "train_loss": 0.4, "val_loss": 0.4, "lr": 1e-3}])
    step_keys = {m.key for m in _step_metrics(result, 0)}
    assert "step_lr" not in step_keys and "step_lr_x1e3" in step_keys
    assert [m.value for m in _step_metrics(result, 0) if m.key == "step_lr_x1e3"] == [1.0, 1.0, 1.0]
    assert [(m.key, m.value) for m in _epoch_metrics(result, 0) if m.key == "lr"] == [("lr", 1e-3)]  # the value itself
    assert lr_metric([3e-4, 1.5e-4, 0.0]) == ("step_lr_x1e4", 1e4)
    assert lr_metric([0.5]) == ("step_lr_x1e1", 10.0)
    assert lr_metric([1.0, 2.0]) == ("step_lr", 1.0) and lr_metric([]) == ("step_lr", 1.0)


def _lineage(**dates):
    from gd_provider.core.lineage import lineage_tags

    training = {"mlflow_run_id": "r1", "spec": demo_training_spec().to_dict()}
    return lineage_tags(dag_id="d", run_id="manual__x", dataset={"uri": "u", "sha256": "s" * 64, "rows": 7},
                        training=training, gate=None, **dates)


def test_the_lineage_date_of_a_manual_run_without_a_logical_date_is_its_run_after_and_says_so():
    manual = _lineage(logical_date=None, data_interval=None, run_after="2026-02-07T09:15:00+00:00")
    assert manual["gd.logical_date"] == "2026-02-07T09:15:00+00:00"
    assert manual["gd.logical_date_source"] == "run_after"
    scheduled = _lineage(logical_date="2026-02-07T00:00:00+00:00", data_interval=None,
                         run_after="2026-02-08T00:00:00+00:00")
    assert (scheduled["gd.logical_date"], scheduled["gd.logical_date_source"]) == ("2026-02-07T00:00:00+00:00",
                                                                                 "logical_date")
    window = _lineage(logical_date=None, data_interval=["2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"])
    assert (window["gd.logical_date"], window["gd.logical_date_source"]) == ("2026-02-01T00:00:00+00:00",
                                                                           "data_interval_end")
    # what the release checks read back (core.registry.data_end) is still an instant
    from gd_provider.core.registry import data_end

    assert data_end({"gd.logical_date": manual["gd.logical_date"]}).isoformat() == "2026-02-07T09:15:00+00:00"


def test_register_operator_records_run_after_for_a_manual_run_without_logical_date(monkeypatch):
    """The operator hands the run's run_after to the lineage (Airflow 3: a manual run may have no logical date)."""
    from gd_provider.core import lineage
    from gd_provider.operators import registry as ops

    seen = {}

    def fake_tags(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(lineage, "lineage_tags", fake_tags)
    monkeypatch.setattr("gd_provider.hooks.mlflow.MlflowHook.get_config", lambda self: type("C", (), {
        "client": lambda self: None})())
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from tests.support import FakeTI

    op = ops.RegisterModelOperator(task_id="register", dataset={"uri": "u", "sha256": "s", "rows": 1},
                                   training={"mlflow_run_id": "r", "model_uri": "m"}, gate=None, model_name="m")
    run_after = datetime(2026, 2, 7, 9, 15, tzinfo=UTC)
    dag_run = SimpleNamespace(dag_id="d", run_id="manual__x", logical_date=None, run_after=run_after,
                              data_interval_start=None, data_interval_end=None, run_type="manual",
                              triggering_user_name="me")
    with pytest.raises(RuntimeError, match="stop here"):
        op.execute({"dag_run": dag_run, "ti": FakeTI(), "params": {}})
    assert seen["logical_date"] is None and seen["run_after"] == run_after.isoformat()


def test_mlflows_own_lines_in_the_training_task_are_logged_not_printed_to_stderr(monkeypatch, capsys, caplog, gd_home):
    """MLflow prints through its own stderr handler (ERROR in an Airflow task): while the training task logs
    its run, MLflow's INFO ("View run ... at") is DEBUG and its warnings WARNING, through logging."""
    from types import SimpleNamespace

    from gd_provider.core.training import pyfunc
    from gd_provider.operators.training import RayTrainOperator
    from tests.support import fake_context

    def fake_log_training_run(result, spec, dataset, **kwargs):
        logging.getLogger("mlflow.tracking._tracking_service.client").info("View run x at: http://m/#/runs/1")
        logging.getLogger("mlflow.models.model").warning("a real MLflow warning")
        return {"mlflow_run_id": "r1", "metrics": {}, "health": {}, "status": "completed"}

    monkeypatch.setattr(pyfunc, "log_training_run", fake_log_training_run)
    spec = demo_training_spec()
    op = RayTrainOperator(task_id="train", dataset={"uri": "u", "sha256": "s", "rows": 1}, model_name="m",
                          spec=spec.to_dict())
    mlflow_handlers = list(logging.getLogger("mlflow").handlers)
    caplog.set_level(logging.DEBUG, logger="gd_provider")
    capsys.readouterr()
    op._finish(fake_context(), spec, TrainingResult(status="completed", run_name="r", run_dir="/x"), {},
               SimpleNamespace(ui_url="http://m"), "1")
    err = capsys.readouterr().err
    assert "View run" not in err and "a real MLflow warning" not in err
    got = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name == "gd_provider.mlflow"]
    assert got == [("gd_provider.mlflow", "DEBUG", "View run x at: http://m/#/runs/1"),
                   ("gd_provider.mlflow", "WARNING", "a real MLflow warning")]
    assert logging.getLogger("mlflow").handlers == mlflow_handlers  # as it was, after the block
