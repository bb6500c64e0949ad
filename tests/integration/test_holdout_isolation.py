"""The gate's holdout is isolated from training, end to end, on the real frameworks (Ray local, torch, MLflow
on SQLite).

A small dataset is built whose holdout (its latest rows, worked out here independently of the split code)
carries what the training rows lack: a numeric ``marker`` shifted by ~8 standard deviations and a category
``holdout_only`` that alone decides the label there. Timestamps are coarse (25 rows per hour), so both
nominal split boundaries fall inside a group of rows with the same timestamp (the split moves them to the
group's start), and the parquet holds the rows in a shuffled order. One real training run (Ray, early stopping on ``val_roc_auc``, learning-rate sensitivity
check on) then shows, from its own outputs, that:

1. nothing the challenger learned from came from the holdout: scaler statistics and category vocabulary
   are those of the training rows alone, the arrays the Ray workers load are exactly the training and
   validation rows, every epoch's recorded validation metric (which picks the best epoch) is the one of
   that epoch's checkpoint on the validation rows, and the model cannot tell ``holdout_only`` from any
   never-seen value;
2. the gate scores the champion (trained on other data, registered in MLflow) on exactly the same rows
   with its own saved preprocessing, not the challenger's;
3. the holdout is the latest slice by (timestamp, transaction_id), whatever the file's row order or layout,
   and rows sharing a timestamp stay on one side: training rows are strictly older than validation rows,
   and those strictly older than holdout rows;
4. the sensitivity check's samples contain training / validation rows only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gd_provider.core import registry
from gd_provider.core.data import read_dataset, write_dataset
from gd_provider.core.gate import classification_metrics, verify_holdout
from gd_provider.core.training import sensitivity as sensitivity_mod
from gd_provider.core.training.loop import (
    MODEL_FILE,
    TRAIN_ARRAYS,
    VAL_ARRAYS,
    best_epoch,
    checkpoint_for_epoch,
    load_arrays,
    ranking_metrics,
)
from gd_provider.core.training.model import build_model
from gd_provider.core.training.preprocess import UNKNOWN, Preprocessor, frame_digest, split_sizes
from gd_provider.core.training.pyfunc import FraudScorer, log_training_run
from gd_provider.core.training.runner import (
    INPUTS_DIR,
    PREPROCESSOR_FILE,
    holdout_frame,
    holdout_info,
    run_training,
)
from gd_provider.core.training.spec import TrainingSpec
from gd_provider.operators.registry import ModelEvaluationGateOperator

from ..support import fake_context

pytestmark = pytest.mark.integration

N_ROWS = 1200
GROUP = 25  # rows per timestamp: the nominal split boundaries (rows 720 and 960) fall inside a tie group
NOMINAL = (720, 240, 240)
# rows with one timestamp are never split: each boundary moves back to its group's first row (700, 950)
N_TRAIN, N_VAL, N_HOLDOUT = 700, 250, 250
CHANNELS = ("pos", "online", "atm")
HOLDOUT_ONLY = "holdout_only"
TS, KEY, LABEL = "event_timestamp", "transaction_id", "is_fraud"

SPEC = TrainingSpec(
    numeric_features=("amount", "signal", "marker"),
    categorical_features=("channel",),
    label=LABEL,
    timestamp_column=TS,
    key_columns=(KEY,),  # orders the 25 rows of each timestamp
    hidden_sizes=(16,),
    batch_size=128,
    epochs=5,
    lr=0.01,
    validation_fraction=0.2,
    holdout_fraction=0.2,
    early_stopping_patience=2,
    early_stopping_metric="val_roc_auc",
    seed=11,
    device="cpu",
    sensitivity={
        "enabled": True,
        "sample_rows": 300,
        "epochs": 1,
        "factors": [0.5, 1.0, 2.0],
        "max_spread": 1.0,
    },
).validate()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_rows(seed: int, prefix: str, start: str, *, challenger: bool) -> tuple[pd.DataFrame, list[str]]:
    """``N_ROWS`` rows in a shuffled order, and the transaction ids in canonical (time, id) order.

    The canonical order is computed here with Python's ``sorted`` on (timestamp, transaction_id), not with
    the split code. ``challenger=True``: the last ``N_HOLDOUT`` rows in that order carry a shifted ``marker``
    and the label is ``channel == "holdout_only"`` there (a category no other row has); elsewhere the label
    follows ``signal``. ``challenger=False`` (the champion's data): ``signal`` on another scale everywhere.
    """
    rng = np.random.default_rng(seed)
    hours = np.repeat(np.arange(N_ROWS // GROUP), GROUP)
    ids = [f"{prefix}{j:05d}" for j in rng.permutation(N_ROWS)]
    order = sorted(range(N_ROWS), key=lambda i: (int(hours[i]), ids[i]))
    position = np.empty(N_ROWS, dtype=np.int64)
    position[order] = np.arange(N_ROWS)
    in_holdout = position >= N_ROWS - N_HOLDOUT

    z = rng.normal(size=N_ROWS)
    label = (rng.random(N_ROWS) < _sigmoid(-0.3 + 2.5 * z)).astype("int64")
    channel = rng.choice(CHANNELS, N_ROWS).astype(object)
    marker = rng.normal(size=N_ROWS)
    amount = rng.lognormal(3.0, 0.5, N_ROWS) * (1.0 if challenger else 10.0)
    signal = z if challenger else 5.0 + 3.0 * z
    if challenger:
        hold = np.flatnonzero(in_holdout)
        marker[hold] += 8.0
        positive = rng.random(len(hold)) < 0.4
        label[hold] = positive.astype("int64")
        channel[hold[positive]] = HOLDOUT_ONLY
    df = pd.DataFrame(
        {
            KEY: ids,
            TS: pd.Timestamp(start, tz="UTC") + pd.to_timedelta(hours, unit="h"),
            "amount": amount,
            "signal": signal,
            "marker": marker,
            "channel": channel,
            LABEL: label,
        }
    )
    shuffled = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return shuffled, [ids[i] for i in order]


def _rows(df: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    return df.set_index(KEY).loc[ids].reset_index()[list(df.columns)]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("holdout_isolation")


@pytest.fixture(scope="module")
def challenger_data(workdir):
    df, canonical = make_rows(1, "tx", "2026-02-01", challenger=True)
    manifest = write_dataset(df, str(workdir / "data" / "challenger.parquet"))  # no sort_by: shuffled file
    read_back = read_dataset(manifest)
    assert list(read_back[KEY]) == list(df[KEY]) != canonical  # the file really is out of time order
    parts = {
        "train": _rows(read_back, canonical[:N_TRAIN]),
        "val": _rows(read_back, canonical[N_TRAIN : N_TRAIN + N_VAL]),
        "holdout": _rows(read_back, canonical[N_TRAIN + N_VAL :]),
    }
    return manifest, read_back, parts


@pytest.fixture(scope="module")
def champion_data(workdir):
    df, _ = make_rows(2, "ch", "2026-01-01", challenger=False)
    return write_dataset(df, str(workdir / "data" / "champion.parquet"), sort_by=[TS, KEY])


@pytest.fixture(scope="module")
def challenger(local_ray, challenger_data, workdir):
    """One real training run; every sample the sensitivity check trains / validates on is recorded."""
    manifest, _, _ = challenger_data
    seen: list[dict[str, np.ndarray]] = []
    real_fit_plain = sensitivity_mod.fit_plain

    def recording_fit_plain(spec, xs, ys, xv, yv, **kwargs):
        seen.append({"xs": np.array(xs), "ys": np.array(ys), "xv": np.array(xv), "yv": np.array(yv)})
        return real_fit_plain(spec, xs, ys, xv, yv, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sensitivity_mod, "fit_plain", recording_fit_plain)
        result = run_training(manifest, SPEC, storage_path=str(workdir / "ray"), run_name="challenger")
    assert result.status == "completed", result.error
    return result, seen


@pytest.fixture(scope="module")
def champion(local_ray, champion_data, workdir):
    spec = SPEC.with_overrides(epochs=3, early_stopping_patience=None, sensitivity={"enabled": False})
    result = run_training(champion_data, spec, storage_path=str(workdir / "ray"), run_name="champion")
    assert result.status == "completed", result.error
    return result, spec


def _row_set(x: np.ndarray) -> set[bytes]:
    return {np.ascontiguousarray(r, dtype=np.float32).tobytes() for r in x}


# ---------------------------------------------------------------------------------------------- 3: the split
def test_holdout_is_the_latest_slice_whatever_the_file_order_and_ties(challenger_data, workdir):
    manifest, read_back, parts = challenger_data
    assert split_sizes(N_ROWS, SPEC.validation_fraction, SPEC.holdout_fraction) == NOMINAL
    holdout = holdout_frame(manifest, SPEC)
    assert list(holdout[KEY]) == list(parts["holdout"][KEY])  # latest rows, in (time, id) order
    expected_sha, basis = frame_digest(parts["holdout"], SPEC.key_columns)
    assert basis == f"keys:{KEY}"
    info = holdout_info(holdout, SPEC)
    assert (info["rows"], info["sha256"]) == (N_HOLDOUT, expected_sha)
    assert info["time_range"] == [parts["holdout"][TS].min().isoformat(), read_back[TS].max().isoformat()]

    # both nominal boundaries cut a group of rows with one timestamp: the whole group went to the later part,
    # so every training row is strictly older than every validation row, and those than every holdout row
    earlier = pd.concat([parts["train"], parts["val"]])
    assert not set(earlier[KEY]) & set(holdout[KEY])
    assert parts["train"][TS].max() < parts["val"][TS].min()
    assert earlier[TS].max() < holdout[TS].min() == parts["holdout"][TS].min()
    assert (holdout[TS] == holdout[TS].min()).sum() == GROUP  # the boundary group, whole

    # the same rows in another order and layout (partitioned) give the same holdout and digest
    reordered = write_dataset(
        read_back.sort_values([LABEL, "amount"]), str(workdir / "data" / "reordered"), partition_rows=100
    )
    again = holdout_info(holdout_frame(reordered, SPEC), SPEC)
    verify_holdout(info, rows=again["rows"], sha256=again["sha256"])


# ---------------------------------------------------------------------------------------------- 1: training
def test_preprocessing_and_worker_inputs_come_from_training_rows_only(challenger, challenger_data):
    result, _ = challenger
    _, read_back, parts = challenger_data
    assert result.split["train_rows"] == N_TRAIN and result.split["val_rows"] == N_VAL
    assert result.holdout["rows"] == N_HOLDOUT
    assert result.holdout["sha256"] == frame_digest(parts["holdout"], SPEC.key_columns)[0]

    saved = json.loads((Path(result.model_dir) / PREPROCESSOR_FILE).read_text())
    expected = Preprocessor.fit(parts["train"], SPEC.numeric_features, SPEC.categorical_features)
    assert saved["numeric"] == list(SPEC.numeric_features)
    np.testing.assert_allclose(saved["means"], expected.means, rtol=1e-12, atol=0)
    np.testing.assert_allclose(saved["stds"], expected.stds, rtol=1e-12, atol=0)
    assert saved["categories"] == {"channel": sorted(CHANNELS)}  # no "holdout_only"
    # sanity: had the holdout (or everything) been used, the marker statistics would differ
    everything = Preprocessor.fit(read_back, SPEC.numeric_features, SPEC.categorical_features)
    assert (
        abs(everything.means[2] - expected.means[2]) > 1.0
        and HOLDOUT_ONLY in everything.categories["channel"]
    )
    pre = Preprocessor.from_dict(saved)
    assert json.loads((Path(result.run_dir) / INPUTS_DIR / PREPROCESSOR_FILE).read_text()) == saved

    # what every Ray worker loads: exactly the training and validation rows, in split order
    inputs = Path(result.run_dir) / INPUTS_DIR
    assert sorted(p.name for p in inputs.glob("*.npz")) == sorted([TRAIN_ARRAYS, VAL_ARRAYS])
    x_train, y_train = load_arrays(inputs / TRAIN_ARRAYS)
    x_val, y_val = load_arrays(inputs / VAL_ARRAYS)
    np.testing.assert_array_equal(x_train, pre.transform(parts["train"]))
    np.testing.assert_array_equal(y_train, parts["train"][LABEL].to_numpy(np.float32))
    np.testing.assert_array_equal(x_val, pre.transform(parts["val"]))
    np.testing.assert_array_equal(y_val, parts["val"][LABEL].to_numpy(np.float32))
    assert len(_row_set(pre.transform(parts["holdout"])) & (_row_set(x_train) | _row_set(x_val))) == 0
    assert result.history[0]["train_rows_per_worker"] == N_TRAIN

    # the holdout-only category is the unknown bucket, never active in a training row: the model scores it
    # exactly like any other never-seen value, so it cannot have learned "holdout_only => fraud"
    unknown_col = pre.feature_names.index(f"channel={UNKNOWN}")
    assert not x_train[:, unknown_col].any() and not x_val[:, unknown_col].any()
    scorer = FraudScorer(result.model_dir)
    renamed = parts["holdout"].assign(channel=parts["holdout"]["channel"].replace(HOLDOUT_ONLY, "never_seen"))
    assert (parts["holdout"]["channel"] == HOLDOUT_ONLY).sum() > 50
    np.testing.assert_array_equal(scorer.predict_proba(parts["holdout"]), scorer.predict_proba(renamed))


def test_best_epoch_is_picked_on_validation_rows(challenger, challenger_data):
    result, _ = challenger
    _, _, parts = challenger_data
    pre = Preprocessor.from_dict(json.loads((Path(result.model_dir) / PREPROCESSOR_FILE).read_text()))
    xv = torch.from_numpy(pre.transform(parts["val"]))
    xh = torch.from_numpy(pre.transform(parts["holdout"]))
    yv, yh = parts["val"][LABEL].to_numpy(np.float32), parts["holdout"][LABEL].to_numpy(np.float32)
    recomputed, on_holdout, states = {}, {}, {}
    for entry in result.history:
        ckpt = checkpoint_for_epoch(result.run_dir, entry["epoch"])
        assert ckpt is not None, f"no checkpoint for epoch {entry['epoch']}"
        model = build_model(SPEC, pre.output_dim)
        states[entry["epoch"]] = torch.load(ckpt / MODEL_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(states[entry["epoch"]])
        model.eval()
        with torch.no_grad():
            recomputed[entry["epoch"]] = ranking_metrics(yv, torch.sigmoid(model(xv)).numpy())[0]
            on_holdout[entry["epoch"]] = ranking_metrics(yh, torch.sigmoid(model(xh)).numpy())[0]
        # the metric early stopping and the best-epoch choice read is this epoch's model on the val rows
        assert entry["val_roc_auc"] == pytest.approx(recomputed[entry["epoch"]], abs=1e-6)
    # ... and not the holdout's (whose label follows another rule)
    assert any(abs(h["val_roc_auc"] - on_holdout[h["epoch"]]) > 1e-3 for h in result.history)
    chosen = best_epoch(result.history, SPEC)["epoch"]
    assert chosen == max(recomputed, key=lambda e: (recomputed[e], -e))
    assert result.metrics["epoch"] == chosen
    final = torch.load(Path(result.model_dir) / MODEL_FILE, map_location="cpu", weights_only=True)
    assert all(torch.equal(final[k], states[chosen][k]) for k in final)


# ---------------------------------------------------------------------------------------------- 4: sensitivity
def test_sensitivity_samples_hold_no_holdout_rows(challenger, challenger_data):
    result, seen = challenger
    _, _, parts = challenger_data
    assert result.sensitivity["status"] in ("passed", "failed") and len(seen) == len(SPEC.sensitivity.factors)
    assert result.sensitivity["train_rows"] == SPEC.sensitivity.sample_rows < N_TRAIN
    inputs = Path(result.run_dir) / INPUTS_DIR
    train_rows, val_rows = (
        _row_set(load_arrays(inputs / TRAIN_ARRAYS)[0]),
        _row_set(load_arrays(inputs / VAL_ARRAYS)[0]),
    )
    pre = Preprocessor.from_dict(json.loads((Path(result.model_dir) / PREPROCESSOR_FILE).read_text()))
    holdout_rows = _row_set(pre.transform(parts["holdout"]))
    marker = pre.feature_names.index("marker")
    for call in seen:
        assert len(call["xs"]) == SPEC.sensitivity.sample_rows and len(call["xv"]) == N_VAL
        xs, xv = _row_set(call["xs"]), _row_set(call["xv"])
        assert (len(xs - train_rows), len(xv - val_rows)) == (0, 0)  # sampled from training / validation rows
        assert len((xs | xv) & holdout_rows) == 0
        assert call["xs"][:, marker].max() < 5 and call["xv"][:, marker].max() < 5  # holdout's is ~8


# ---------------------------------------------------------------------------------------------- 2: the gate
def test_gate_scores_both_models_on_the_same_rows_each_with_its_own_preprocessing(
    gd_home, challenger, champion, challenger_data, champion_data, request
):
    from gd_provider.hooks.mlflow import MlflowHook

    (challenger_result, _), (champion_result, champion_spec) = challenger, champion
    manifest, _, parts = challenger_data
    name = "m_" + re.sub(r"\W", "_", request.node.name)[:60]
    config = MlflowHook().get_config()
    client = config.client()
    experiment = registry.ensure_experiment(client, name, config.artifact_root)

    old = log_training_run(
        champion_result, champion_spec, champion_data.to_dict(), experiment_id=experiment, run_name="champion"
    )
    version, _ = registry.register_model(
        client, name, old["model_uri"], run_key="test_dag/n1", run_id=old["mlflow_run_id"], tags={}
    )
    registry.promote(client, name, version, actor="scheduler", reason="first model")
    new = log_training_run(
        challenger_result, SPEC, manifest.to_dict(), experiment_id=experiment, run_name="challenger"
    )
    training = {
        "model_uri": new["model_uri"],
        "mlflow_run_id": new["mlflow_run_id"],
        "spec": SPEC.to_dict(),
        "holdout": challenger_result.holdout,
    }
    policy = {"value_thresholds": {"roc_auc": 0.5}}
    gate = ModelEvaluationGateOperator(
        task_id="evaluate", dataset=manifest.to_dict(), training=training, model_name=name, policy=policy
    )
    out = gate.execute(fake_context(run_id="n2"))

    holdout = parts["holdout"]
    y = holdout[LABEL].to_numpy()
    assert out["champion_version"] == version
    assert out["holdout_rows"] == N_HOLDOUT
    assert (
        out["holdout_sha256"]
        == frame_digest(holdout, SPEC.key_columns)[0]
        == challenger_result.holdout["sha256"]
    )

    # the champion's preprocessing is its own (fitted on its data), unlike the challenger's
    own = FraudScorer(champion_result.model_dir)
    challenger_pre = FraudScorer(challenger_result.model_dir).preprocessor
    assert own.preprocessor != challenger_pre and own.preprocessor.output_dim == challenger_pre.output_dim
    champion_expected = classification_metrics(y, own.predict_proba(holdout))
    challenger_expected = classification_metrics(
        y, FraudScorer(challenger_result.model_dir).predict_proba(holdout)
    )
    # (the gate may add informative entries of its own; every classification metric must match)
    assert {k: out["champion_metrics"][k] for k in champion_expected} == pytest.approx(
        champion_expected, rel=1e-9, abs=1e-12)
    assert {k: out["challenger_metrics"][k] for k in challenger_expected} == pytest.approx(
        challenger_expected, rel=1e-9, abs=1e-12)
    # the check can tell: the champion's weights behind the challenger's preprocessing score differently
    own.preprocessor = challenger_pre
    borrowed = classification_metrics(y, own.predict_proba(holdout))
    assert abs(borrowed["log_loss"] - champion_expected["log_loss"]) > 1e-3
