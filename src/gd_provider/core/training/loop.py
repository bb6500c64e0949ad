"""The guarded training loop: one engine for Ray Train workers and for plain in-process runs.

Modules: ``components`` (seeding, data, model/optimizer/loss of a spec, evaluation, best epoch and early
stopping), ``collective`` (identity / torch.distributed), ``engine`` (``EpochRunner``, ``TrainingSession``,
``fit_plain``), ``checkpoint`` (the files rank 0 saves, finding progress to resume from), ``worker``
(``train_loop_per_worker``); the driver is :mod:`gd_provider.core.training.runner`. This module re-exports
them all (their former home).

``TrainingSession`` runs epochs of (guarded) gradient descent on tensors already on the device; the
collective operations it needs go through a ``Collective`` (identity in a single process, torch.distributed
in Ray Train workers). ``train_loop_per_worker`` is the Ray Train entry point; ``fit_plain`` runs the same
engine in the calling process (the sensitivity check and the benchmarks use it).

The engine is task-agnostic: what is predicted is the spec's task plug-in (``spec.task_plugin()``, see
:mod:`gd_provider.core.tasks`). It gives the loss (``task.make_loss(spec.loss, state, device)``), the model's
output width (the model is ``core.models.build(spec.model, input_dim, task.output_width, kwargs)``) and the
per-epoch metrics: ``val_loss`` plus ``task.epoch_metrics(labels, task.validation_scores(outputs, state))``.
``state`` is what the task learned from the training labels (``task.fit_state``: a class weight, a target
scale), fitted once by the driver and passed to every worker in ``config["task_state"]``.

Data: the driver (``runner.run_training``) preprocesses once and writes ``train.npz`` / ``val.npz`` (arrays
``x`` float32, ``y`` float32 = the loss's targets ``task.targets(labels, state)``, and ``y_label`` float32 =
the encoded labels the metrics compare with) to ``config["data_dir"]``. Every worker loads them itself and
takes rows ``rank::world_size`` of the training set, truncated so all ranks run the same number of steps
(DDP and ``ray.train.report`` are collective: every rank must do each step and each report).

Per step the loop keeps loss and gradient norm (what ``clip_grad_norm_`` returns, i.e. before clipping) in
a tensor on the device; learning rate, clipped flag and non-finite flag are derived on the host. Every
``spec.sync_every_k_steps`` steps and at the end of each epoch the new rows are copied to the host, each rank
runs its ``TrainingGuard`` on its own losses, and the ranks agree on a stop decision with one int64
all-reduce (MAX) - so all ranks stop after the same step and call ``ray.train.report`` equally often.

Per epoch every rank calls ``ray.train.report``; rank 0 attaches a checkpoint with ``model.pt`` (state dict
of the unwrapped module), ``optimizer.pt``, ``history.json`` (per-epoch metrics so far), ``steps.json``
(per-step telemetry so far) and ``run_state.json`` (status, resumes, timeline, and every rank's guard loss
window - the telemetry's losses are cross-rank means, each guard judges its own rank's losses, and a resumed
rank restores its own window). When the guards stop a run,
every rank reports once more; rank 0's checkpoint then holds the telemetry and ``run_state.json`` with
``status="diverged"`` and the trip, but no model. A restarted run resumes from the latest checkpoint.
"""

from __future__ import annotations

from gd_provider.core.tasks.metrics import ranking_metrics, ranking_metrics_numpy  # noqa: F401 (former home)
from gd_provider.core.training.checkpoint import (  # noqa: F401
    HISTORY_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RUN_STATE_FILE,
    STEPS_FILE,
    TRAIN_ARRAYS,
    VAL_ARRAYS,
    _save_checkpoint_files,
    checkpoint_for_epoch,
    latest_checkpoint_on_disk,
    read_progress,
)
from gd_provider.core.training.collective import (  # noqa: F401
    Collective,
    TorchDistCollective,
)
from gd_provider.core.training.components import (  # noqa: F401
    _EVAL_CHUNK,
    STEP_KEYS,
    _finite_or_nan,
    _stop_early,
    add_python_paths,
    best_epoch,
    build_module,
    configure_determinism,
    empty_steps,
    epoch_seed,
    evaluate,
    load_arrays,
    load_labels,
    make_loss,
    make_optimizer,
    seed_everything,
    shard_rows,
    stop_early,
    task_state_of,
)
from gd_provider.core.training.engine import (  # noqa: F401
    EpochOutcome,
    EpochRunner,
    PlainFit,
    TrainingSession,
    _tensor,
    fit_plain,
)
from gd_provider.core.training.guards import TrainingGuard  # noqa: F401 (the engine's guard, patched by benchmarks)
from gd_provider.core.training.worker import (  # noqa: F401
    _abort_metrics,
    _maybe_inject_failure,
    _report,
    _resume_directory,
    train_loop_per_worker,
)
