"""What a person reads of a training run: Ray's output at its own level, one line per epoch, one at the end.

Without this, a training task's log is Ray's raw output: every line of every Ray worker is printed to the
driver's stderr (Ray's ``log_to_driver``), and Ray's own driver-side logger writes to stderr too - which an
Airflow task logs at ERROR, line by line. Here:

* **Ray workers** (``configure_worker_logging``, called by ``train_loop_per_worker``): Python logging's
  console output carries its level and logger, ``[gd INFO gd_provider.training] ...``, and warnings go
  through logging (``py.warnings``). Rank 0 logs one progress line per epoch (``EpochProgress``) to
  ``gd_provider.training``::

      epoch 3/20: train_loss 0.412, val_roc_auc 0.871, val_loss 0.39, grad-norm p50 0.8 / max 3.1, clipped 2%,
      5,120 samples/s, ETA 14 s

  and the driver one line at the end (``log_summary``: outcome, chosen epoch's metrics, health, timings).

* **The driver** (``RayLogRouting``, used by ``runner.run_training``): every line Ray forwards from its
  workers is re-logged through Python logging at the level it was written with - in an Airflow task, the
  task log's level. ``gd_provider.*`` records keep their logger and level (the epoch line: INFO on
  ``gd_provider.training``); everything else goes to ``gd_provider.ray`` prefixed ``(RayTrainWorker pid=..)``:
  Ray's own INFO chatter (worker-group start-up, "Checkpoint successfully created", the controller's resource
  requests, unmarked lines on a worker's stderr) at DEBUG, warnings at WARNING, tracebacks at ERROR, a plain
  ``print`` (stdout) at INFO. The driver's own ``ray`` logger is re-logged the same way (INFO -> DEBUG).
* **A Ray job's driver** (``configure_job_driver_logging``, the training entrypoint): ``gd_provider.*``
  records (and anyone's warnings) go to stdout in the workers' marked format, so the job's log keeps each
  line's level; ``parse_marked_line`` reads it back when the Airflow task tails the job's log (``RayHook``).
* **Other packages that print to stderr themselves** (``routed_logger``: MLflow while the training task logs
  its run): their records re-logged on ``gd_provider.<name>``, INFO at DEBUG.

No Airflow import here; nothing imports Ray at module level.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

PROGRESS_LOGGER = "gd_provider.training"
RAY_LOGGER = "gd_provider.ray"
MARKED_FORMAT = "[gd %(levelname)s %(name)s] %(message)s"
_HANDLER_NAME = "gd_provider_worker_logs"
_RAY_HANDLER_NAME = "ray_print_logs"  # ray._private.worker.connect registers Ray's printer under this name
_INFO_MESSAGE = ":info_message:"  # ray_constants.LOG_PREFIX_INFO_MESSAGE: a raylet line that is only information

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}
_MARKED = re.compile(r"^\[gd (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([^\]\s]+)\] ?(.*)$")
# Ray's own console format: "2026-01-01 00:00:00,123\tINFO worker.py:2038 -- Started a local Ray instance."
_RAY_FORMAT = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+)?(DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                         r"\S+:\d+ -- (.*)$")
_PY_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt|Failure)\b")
_EPOCH = re.compile(r"^epoch (\d+)/\d+: ")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Start-up notices Ray logs at WARNING on every private instance: noise to whoever reads a training log.
_QUIET_NOTICES = ("Token authentication is enabled for this Ray cluster",)


# ---------------------------------------------------------------------------------------------- levels
def parse_marked_line(line: str) -> tuple[int, str, str] | None:
    """``(level, logger name, message)`` of a line in ``MARKED_FORMAT``; ``None`` for any other line."""
    match = _MARKED.match(line)
    if match is None:
        return None
    return _LEVELS[match.group(1)], match.group(2), match.group(3)


def _third_party(level: int, name: str, message: str) -> int:
    """The level a record of someone else's logger is shown at: Ray's INFO (and its start-up notices) at DEBUG."""
    # Ray's loggers: "ray.*", and those Ray names after their file ("/.../site-packages/ray/train/...py")
    ray_own = name == "ray" or name.startswith("ray.") or "/ray/" in name.replace("\\", "/")
    if ray_own and (level < logging.WARNING or any(notice in message for notice in _QUIET_NOTICES)):
        return logging.DEBUG
    return level


class WorkerLineClassifier:
    """The level of each line a Ray worker wrote (see the module docstring); keeps, per worker stream, the
    level of a multi-line record (a traceback, a warning's source line) for its continuation lines."""

    def __init__(self) -> None:
        self._open: dict[Any, int] = {}

    def classify(self, line: str, *, is_err: bool, stream: Any = None) -> tuple[int, str | None, str]:
        """``(level, gd_provider logger name or None, message)``."""
        marked = parse_marked_line(line)
        if marked is not None:
            level, name, message = marked
            if name.startswith("gd_provider"):
                self._open[stream] = level
                return level, name, message
            level = _third_party(level, name, message)
            self._open[stream] = level
            return level, None, message
        ray_format = _RAY_FORMAT.match(line)
        if ray_format is not None:
            level = _third_party(_LEVELS[ray_format.group(1)], "ray", ray_format.group(2))
            self._open[stream] = level
            return level, None, line
        if line.startswith("Traceback (most recent call last)"):
            self._open[stream] = logging.ERROR
            return logging.ERROR, None, line
        if _PY_WARNING.match(line):
            self._open[stream] = logging.WARNING
            return logging.WARNING, None, line
        open_level = self._open.get(stream)
        if open_level is not None and (line[:1].isspace() or (open_level >= logging.ERROR and (
                _EXCEPTION_LINE.match(line) or line.startswith(("During handling", "The above exception"))))):
            return open_level, None, line
        self._open.pop(stream, None)
        return (logging.DEBUG if is_err else logging.INFO), None, line


# ---------------------------------------------------------------------------------------------- driver
class _RelogHandler(logging.Handler):
    """Re-logs another package's records on ``target``: INFO and below at DEBUG, warnings at their level
    (Ray's driver-side ``ray`` logger on ``gd_provider.ray``; ``routed_logger``)."""

    def __init__(self, target: str = RAY_LOGGER) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            level = _third_party(record.levelno, record.name, message)
            if record.levelno < logging.WARNING:
                level = logging.DEBUG
            logging.getLogger(self.target).log(level, "%s", message, exc_info=record.exc_info)
        except Exception:  # never let a log line break the training
            self.handleError(record)


@contextlib.contextmanager
def routed_logger(name: str, target: str | None = None) -> Iterator[None]:
    """For the block, logger ``name``'s records (e.g. ``mlflow``'s, which it prints to stderr itself: ERROR
    in an Airflow task, line by line) go to ``target`` (default ``gd_provider.<name>``) instead: INFO and
    below at DEBUG, warnings and errors at their level."""
    logger = logging.getLogger(name)
    saved = (list(logger.handlers), logger.propagate)
    logger.handlers, logger.propagate = [_RelogHandler(target or f"gd_provider.{name}")], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved


class RayLogRouting:
    """Route Ray's output in this process through Python logging, each line at its level.

    ``start()`` before ``ray.init`` (the driver's ``ray`` logger: its stderr handler is replaced by a
    re-logging one), ``attach_workers()`` once Ray is connected (the lines Ray forwards from its workers go to
    ``route_worker_lines`` instead of Ray's printer), ``stop()`` after ``ray.shutdown`` (everything as it was;
    Ray's printer comes back if Ray is still connected). Best effort: Ray internals it cannot find are left
    alone, and then Ray prints as before.
    """

    def __init__(self) -> None:
        self._classifier = WorkerLineClassifier()
        self._saved_logger: tuple[list[logging.Handler], bool] | None = None
        self._ray_printers: list[tuple[str, Any]] = []
        self._attached = False
        self.last_epoch_seen = 0  # the last epoch line routed (rank 0 logs one per epoch)

    def start(self) -> RayLogRouting:
        ray_logger = logging.getLogger("ray")
        if self._saved_logger is None:
            self._saved_logger = (list(ray_logger.handlers), ray_logger.propagate)
            ray_logger.handlers = [_RelogHandler()]
            ray_logger.propagate = False
        return self

    @staticmethod
    def _dispatcher() -> Any:
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher
        except ImportError:  # another Ray layout: Ray prints as it always did
            return None
        return global_worker_stdstream_dispatcher

    def attach_workers(self) -> None:
        dispatcher = self._dispatcher()
        if dispatcher is None or self._attached or not hasattr(dispatcher, "handlers"):
            return
        printers = [h for h in list(dispatcher.handlers) if h[0] == _RAY_HANDLER_NAME]
        if not printers:  # log_to_driver=False: nothing is forwarded to this process
            return
        self._ray_printers = printers
        dispatcher.remove_handler(_RAY_HANDLER_NAME)
        dispatcher.add_handler(_HANDLER_NAME, self.route_worker_lines)
        self._attached = True

    def stop(self) -> None:
        dispatcher = self._dispatcher()
        if self._attached and dispatcher is not None:
            dispatcher.remove_handler(_HANDLER_NAME)
            import ray

            if ray.is_initialized() and not any(h[0] == _RAY_HANDLER_NAME for h in dispatcher.handlers):
                for name, handler in self._ray_printers:
                    dispatcher.add_handler(name, handler)
            self._attached = False
        if self._saved_logger is not None:
            ray_logger = logging.getLogger("ray")
            ray_logger.handlers, ray_logger.propagate = self._saved_logger
            self._saved_logger = None

    def drain(self, epoch: int, timeout: float = 3.0) -> bool:
        """Wait (up to ``timeout`` s) until the line of ``epoch`` has come through: Ray forwards workers'
        output a moment after they write it, and ``ray.shutdown`` drops what has not arrived yet."""
        deadline = time.monotonic() + timeout
        while self._attached and self.last_epoch_seen < epoch and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.last_epoch_seen >= epoch

    def route_worker_lines(self, data: Mapping[str, Any]) -> None:
        """One batch of forwarded lines (``{"lines", "pid", "ip", "is_err", "actor_name", "task_name"...}``)."""
        try:
            pid = data.get("pid")
            if pid == "autoscaler":  # its status report every few seconds: only its events, as Ray prints them
                for event in _autoscaler_events(data.get("lines") or ()):
                    logging.getLogger(RAY_LOGGER).debug("(autoscaler) %s", event)
                return
            who = data.get("actor_name") or data.get("task_name") or ""
            ip = data.get("ip")
            where = f", ip={ip}" if ip and ip != data.get("localhost") else ""
            prefix = f"({who + ' ' if who else ''}pid={pid}{where})"
            is_err = bool(data.get("is_err"))
            for raw in data.get("lines") or ():
                line = _ANSI.sub("", str(raw)).rstrip()
                if not line.strip() or line.lstrip().startswith("{\"__magic_token__"):  # tqdm_ray state
                    continue
                if pid == "raylet":  # the node's messages (a worker killed, memory pressure): warnings
                    info = line.partition(_INFO_MESSAGE)[2]
                    level, name, message = (logging.DEBUG, None, info) if info else (logging.WARNING, None, line)
                else:
                    level, name, message = self._classifier.classify(line, is_err=is_err, stream=(pid, is_err))
                if name is not None:
                    logging.getLogger(name).log(level, "%s", message)
                    epoch = _EPOCH.match(message) if name == PROGRESS_LOGGER else None
                    if epoch is not None:
                        self.last_epoch_seen = max(self.last_epoch_seen, int(epoch.group(1)))
                else:
                    logging.getLogger(RAY_LOGGER).log(level, "%s %s", prefix, message)
        except Exception:  # a log line must never stop Ray's log thread
            logging.getLogger(RAY_LOGGER).debug("could not route a Ray worker log batch", exc_info=True)


def _autoscaler_events(lines: Sequence[str]) -> list[str]:
    try:
        from ray._private.worker import filter_autoscaler_events

        return [str(line) for line in filter_autoscaler_events(list(lines))]
    except Exception:  # another Ray layout, or no GCS to ask which autoscaler runs: the v1 event marker
        return [line.split(":event_summary:", 1)[1] for line in lines if ":event_summary:" in line]


# ---------------------------------------------------------------------------------------------- workers
def configure_worker_logging() -> None:
    """In a Ray worker: console output of Python logging carries its level and logger (``MARKED_FORMAT``),
    and warnings go through logging, so the driver shows each line at its own level. Ray Train's console
    handlers (root and ``ray.train``) get the marked format; a process without one gets a stderr handler."""
    marked = logging.Formatter(MARKED_FORMAT)
    found = False
    for name in (None, "ray.train"):
        for handler in logging.getLogger(name).handlers:
            target = getattr(handler, "plain_handler", handler)  # Ray's PlainRayHandler prints through it
            if isinstance(target, logging.StreamHandler) and not isinstance(target, logging.FileHandler):
                target.setFormatter(marked)
                found = found or name is None
    root = logging.getLogger()
    if not found:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(marked)
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    logging.getLogger("gd_provider").setLevel(logging.INFO)
    logging.captureWarnings(True)


def configure_job_driver_logging(stream: Any = None) -> Callable[[], None]:
    """In a Ray job's driver (the training entrypoint): ``gd_provider.*`` records (the epoch lines, the
    summary, the workers' re-logged output), DEBUG and up, and anyone's warnings to stdout in
    ``MARKED_FORMAT``. Returns the function that undoes it."""
    package = logging.getLogger("gd_provider")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter(MARKED_FORMAT))
    handler.addFilter(lambda r: r.name.startswith("gd_provider") or r.levelno >= logging.WARNING)
    root, level = logging.getLogger(), package.level
    root.addHandler(handler)
    package.setLevel(logging.DEBUG)

    def undo() -> None:
        root.removeHandler(handler)
        package.setLevel(level)

    return undo


# ---------------------------------------------------------------------------------------------- lines
def _num(value: Any, digits: int = 3) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "n/a"
    if not math.isfinite(value):
        return "nan"
    return f"{value:.{digits}g}"


def _metric(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < 10:
        return f"{value:.3f}"
    return _num(value, 4)


def duration(seconds: float | None) -> str:
    """``14 s``, ``3 min 20 s``, ``1 h 05 min``."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def epoch_line(
    entry: Mapping[str, Any],
    *,
    total_epochs: int,
    metric: str | None,
    grad_norms: Sequence[float] = (),
    clip: float | None = None,
    eta_s: float | None = None,
) -> str:
    """``epoch 3/20: train_loss 0.412, val_roc_auc 0.871, grad-norm p50 0.8 / max 3.1, clipped 2%, 5,120
    samples/s, ETA 14 s`` for one entry of the training history (``loop.TrainingSession._epoch_metrics``)."""
    parts = [f"train_loss {_num(entry.get('train_loss'))}"]
    if metric and metric in entry:
        parts.append(f"{metric} {_metric(entry.get(metric))}")
    if metric != "val_loss":
        parts.append(f"val_loss {_num(entry.get('val_loss'))}")
    finite = sorted(float(v) for v in grad_norms if isinstance(v, int | float) and math.isfinite(v))
    if finite:
        parts.append(f"grad-norm p50 {_num(statistics.median(finite), 2)} / max {_num(finite[-1], 2)}")
    elif "max_grad_norm" in entry:
        parts.append(f"grad-norm mean {_num(entry.get('mean_grad_norm'), 2)} / max {_num(entry.get('max_grad_norm'), 2)}")
    steps = int(entry.get("steps") or 0)
    if clip is not None and steps:
        parts.append(f"clipped {100.0 * int(entry.get('clipped_steps') or 0) / steps:.0f}%")
    nonfinite = int(entry.get("nonfinite_steps") or 0)
    if nonfinite:
        parts.append(f"{nonfinite} non-finite steps")
    seconds = entry.get("epoch_seconds")
    rows = int(entry.get("train_rows_per_worker") or 0) * int(entry.get("world_size") or 1)
    if isinstance(seconds, int | float) and seconds > 0 and rows:
        parts.append(f"{rows / seconds:,.0f} samples/s")
    if eta_s is not None:
        parts.append(f"ETA {duration(eta_s)}")
    return f"epoch {int(entry.get('epoch', 0))}/{int(total_epochs)}: " + ", ".join(parts)


class EpochProgress:
    """Rank 0's progress lines: ``log(entry, grad_norms)`` after each epoch (INFO on ``gd_provider.training``);
    the ETA is the remaining epochs at this process's mean epoch time (an upper bound with early stopping)."""

    def __init__(self, spec: Any, *, logger: logging.Logger | None = None) -> None:
        self.total_epochs = int(spec.epochs)
        self.clip = spec.grad_clip_norm
        task = spec.task_plugin()
        metric = task.default_validation_metric
        self.metric = metric if metric in task.validation_metrics else None
        self.logger = logger or logging.getLogger(PROGRESS_LOGGER)
        self._started = time.monotonic()
        self._epochs = 0

    def restart_clock(self) -> None:
        self._started = time.monotonic()
        self._epochs = 0

    def line(self, entry: Mapping[str, Any], grad_norms: Sequence[float] = ()) -> str:
        self._epochs += 1
        per_epoch = (time.monotonic() - self._started) / self._epochs
        remaining = max(0, self.total_epochs - int(entry.get("epoch", 0)))
        return epoch_line(entry, total_epochs=self.total_epochs, metric=self.metric, grad_norms=grad_norms,
                          clip=self.clip, eta_s=remaining * per_epoch)

    def log(self, entry: Mapping[str, Any], grad_norms: Sequence[float] = ()) -> None:
        try:
            self.logger.info("%s", self.line(entry, grad_norms))
        except Exception:  # a progress line must never stop a training
            self.logger.debug("could not format the progress line", exc_info=True)


def summary_line(result: Any) -> tuple[int, str]:
    """``(level, line)``: the one line that ends a training run (a ``runner.TrainingResult``)."""
    timings = result.timings or {}
    took = duration(timings.get("total_s"))
    spec = result.spec or {}
    total_epochs = spec.get("epochs", "?")
    health = result.health or {}
    if result.status == "completed":
        metrics = result.metrics or {}
        chosen = ", ".join(f"{k} {_metric(v)}" for k, v in metrics.items()
                           if k != "epoch" and k.startswith("val_") and not k.startswith("val_op_"))
        parts = [f"training completed in {took}: {len(result.history)}/{total_epochs} epochs, "
                 f"{health.get('steps', 0)} steps; model from epoch {metrics.get('epoch')}: {chosen}"]
        if health.get("median_grad_norm") is not None:
            parts.append(f"grad-norm p50 {_num(health.get('median_grad_norm'), 2)} / max "
                         f"{_num(health.get('max_grad_norm'), 2)}")
        if spec.get("grad_clip_norm") is not None:
            parts.append(f"clipped {100.0 * float(health.get('clipped_share_raw') or 0.0):.0f}%")
        parts.append(f"{health.get('nonfinite_steps', 0)} non-finite steps")
        if health.get("restarts"):
            parts.append(f"{health['restarts']} worker-group restarts")
        level = logging.INFO
    elif result.status == "diverged":
        guard = result.guard or {}
        parts = [f"training diverged in {took} at step {guard.get('step')} (epoch {guard.get('epoch')}): "
                 f"{guard.get('reason')}; no model"]
        level = logging.WARNING
    else:
        parts = [f"training failed after {took}: {result.error}"]
        level = logging.WARNING
    times = [f"{label} {duration(timings[key])}" for key, label in (
        ("prepare_s", "prepare"), ("ray_init_s", "Ray start"), ("worker_startup_s", "worker start-up"),
        ("train_loop_s", "train loop")) if isinstance(timings.get(key), int | float)]
    if times:
        parts.append("time: " + ", ".join(times))
    return level, "; ".join(parts)


def log_summary(result: Any, logger: logging.Logger | None = None) -> None:
    try:
        level, line = summary_line(result)
    except Exception:  # never hide the run's outcome behind a formatting problem
        logging.getLogger(PROGRESS_LOGGER).debug("could not format the summary line", exc_info=True)
        return
    (logger or logging.getLogger(PROGRESS_LOGGER)).log(level, "%s", line)
