"""A resumed multi-worker run's guards judge loss spikes on the same quantity as the live run: each rank's
own losses (the telemetry records the cross-rank mean). Two real ranks over torch.distributed (gloo, CPU,
DDP), no Ray: epoch 1, a "checkpoint" (history, steps, guard loss windows), then a resume."""

from __future__ import annotations

import copy
import math
import queue as queue_module
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from gd_provider.core.training.guards import GuardConfig, TrainingGuard
from gd_provider.core.training.loop import (
    Collective,
    TorchDistCollective,
    TrainingSession,
    empty_steps,
    make_loss,
    make_optimizer,
    seed_everything,
    shard_rows,
)
from gd_provider.core.training.model import build_model
from gd_provider.core.training.spec import TrainingSpec

SPEC = TrainingSpec(
    numeric_features=["a", "b", "c", "d"],
    categorical_features=[],
    label="y",
    timestamp_column="ts",
    model="logistic",
    hidden_sizes=[],
    optimizer="sgd",
    lr=0.1,
    batch_size=16,
    epochs=2,
    seed=5,
    grad_clip_norm=None,
    sync_every_k_steps=3,
    # a short spike window (so the windows are easy to compare) and a tolerance this noisy toy never trips
    guards={"spike_window": 5, "spike_rtol": 50.0},
)


def data(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype("float32")
    x[1::2] *= 3.0  # rank 1's rows are scaled: its losses differ clearly from rank 0's
    return x, y


def _session(rank, world, collective, model, optimizer, history, steps, windows):
    x, y = data()
    rows = shard_rows(len(x), rank, world)
    dev = torch.device("cpu")
    core = model.module if hasattr(model, "module") else model
    return TrainingSession(
        spec=SPEC,
        model=model,
        core=core,
        optimizer=optimizer,
        loss_fn=make_loss(SPEC, 1.0, dev),
        xs=torch.from_numpy(x[rows]),
        ys=torch.from_numpy(y[rows]),
        xv=torch.from_numpy(x[:50]),
        yv=torch.from_numpy(y[:50]),
        device=dev,
        collective=collective,
        history=history,
        steps=steps,
        guard_loss_windows=windows,
    )


def _worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        collective = TorchDistCollective(rank, world, torch.device("cpu"))

        def fresh(state=None):
            seed_everything(SPEC.seed)
            module = build_model(SPEC, 4)
            if state is not None:
                module.load_state_dict(state[0])
            model = DistributedDataParallel(module)
            optimizer = make_optimizer(SPEC, model.parameters())
            if state is not None:
                optimizer.load_state_dict(state[1])
            return model, optimizer

        # the uninterrupted run, with a "checkpoint" taken after epoch 1
        model, optimizer = fresh()
        live = _session(rank, world, collective, model, optimizer, [], empty_steps(), None)
        saved = {}

        def on_epoch_end(epoch, metrics):
            if epoch == 1:
                saved.update(
                    history=copy.deepcopy(live.history),
                    steps=copy.deepcopy(live.steps),
                    windows=copy.deepcopy(live.guard_loss_windows),
                    own_window=live.guard.loss_window(),
                    state=(copy.deepcopy(live.core.state_dict()), copy.deepcopy(optimizer.state_dict())),
                )

        assert live.run(on_epoch_end=on_epoch_end) is None
        final_live = live.guard.loss_window()

        # what priming from the recorded (mean) telemetry alone gives
        primed = TrainingGuard(SPEC.guards)
        primed.prime(saved["steps"]["loss"][-20:], saved["steps"]["grad_norm"][-20:])
        # the resumed run: a new session from the checkpoint (it extends the lists it is given)
        model, optimizer = fresh(saved["state"])
        resumed = _session(
            rank, world, collective, model, optimizer, *copy.deepcopy([saved["history"], saved["steps"]]),
            copy.deepcopy(saved["windows"]),
        )
        window_after_resume = resumed.guard.loss_window()
        assert resumed.run() is None
        queue.put(
            {
                "rank": rank,
                "windows": saved["windows"],
                "own_window": saved["own_window"],
                "window_after_resume": window_after_resume,
                "mean_primed_window": primed.loss_window(),
                "final_live": final_live,
                "final_resumed": resumed.guard.loss_window(),
                "live_steps": live.steps,
                "resumed_steps": resumed.steps,
            }
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results: dict[int, dict] = {}
    try:
        deadline = time.monotonic() + 240
        while len(results) < len(procs) and time.monotonic() < deadline:
            try:
                out = queue.get(timeout=2)
            except queue_module.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    break  # a rank failed: its traceback is in the captured stderr
                continue
            results[out["rank"]] = out
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert sorted(results) == [0, 1], [p.exitcode for p in procs]
    assert all(p.exitcode == 0 for p in procs)
    return results


def test_checkpoint_keeps_every_ranks_own_loss_window(two_ranks):
    r0, r1 = two_ranks[0], two_ranks[1]
    assert r0["windows"] == r1["windows"]  # every rank learnt every rank's window
    assert r0["windows"][0] == r0["own_window"] and r0["windows"][1] == r1["own_window"]
    assert len(r0["own_window"]) == SPEC.guards.spike_window
    # the ranks' losses really differ, and their mean (the telemetry) is neither
    assert not np.allclose(r0["own_window"], r1["own_window"])
    assert r0["mean_primed_window"] == pytest.approx(
        [(a + b) / 2 for a, b in zip(r0["own_window"], r1["own_window"], strict=True)], rel=1e-6
    )


def test_resumed_guard_judges_the_same_losses_as_the_live_one(two_ranks):
    for rank, out in two_ranks.items():
        # before the fix a resumed rank's window was the cross-rank mean
        assert out["window_after_resume"] == out["own_window"], rank
        assert out["window_after_resume"] != out["mean_primed_window"], rank
        # and it stays in step with the uninterrupted run to the end
        assert out["final_resumed"] == out["final_live"], rank
        assert out["resumed_steps"] == out["live_steps"], rank


def test_restore_loss_window_replaces_the_primed_losses():
    cfg = GuardConfig(spike_window=4, spike_rtol=1.0, spike_atol=0.0, breach_steps=1)
    live = TrainingGuard(cfg)
    local = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]
    for v in local:
        live.observe(v, 1.0)
    restored = TrainingGuard(cfg)
    restored.prime([0.5] * 6, [1.0] * 6)  # e.g. a cross-rank mean
    restored.restore_loss_window(live.loss_window() + [math.nan])
    assert restored.loss_window() == live.loss_window() == local[-4:]
    assert restored.running_loss_mean() == pytest.approx(live.running_loss_mean())
    # 1.9 is below the local band (top 1.05 + 1 x 1.05 = 2.1): no spike; above the mean-primed 0.5 + 0.5 = 1.0
    assert live.observe(1.9, 1.0).code == restored.observe(1.9, 1.0).code == 0
    mean_primed = TrainingGuard(cfg)
    mean_primed.prime([0.5] * 6, [1.0] * 6)
    assert mean_primed.observe(1.9, 1.0).code != 0


def test_single_process_session_records_its_window():
    x, y = data()
    seed_everything(SPEC.seed)
    model = build_model(SPEC, 4)
    session = _session(0, 1, Collective(), model, make_optimizer(SPEC, model.parameters()), [], empty_steps(), None)
    assert session.run() is None
    assert session.guard_loss_windows == [session.guard.loss_window()]
    assert session.guard_loss_windows[0] == session.steps["loss"][-SPEC.guards.spike_window :]
