"""Bad training inputs fail before Ray starts, as ``TrainingInputError`` naming the problem - in process
(``run_training``) and in a remote job's entrypoint (an ``input_error`` result envelope, exit code 2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.data import write_dataset
from gd_provider.core.training import entrypoint
from gd_provider.core.training import runner as runner_mod
from gd_provider.core.training.runner import TrainingInputError, run_training
from gd_provider.core.training.spec import TrainingSpec

N = 200


def frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "ts": pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"),
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": rng.choice(["x", "y", "z"], n),
        }
    )
    df["y"] = (df["a"] > 0).astype("int64")
    return df


SPEC = TrainingSpec(
    numeric_features=["a", "b"],
    categorical_features=["c"],
    label="y",
    timestamp_column="ts",
    model="logistic",
    hidden_sizes=[],
    epochs=1,
    device="cpu",
)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every case here must fail before Ray is touched."""
    import ray

    def must_not_run(*args, **kwargs):
        raise AssertionError("Ray must not start for a bad input")

    monkeypatch.setattr(runner_mod, "init_local_ray", must_not_run)
    monkeypatch.setattr(ray, "init", must_not_run)


def manifest_of(df: pd.DataFrame, tmp_path) -> dict:
    return write_dataset(df, str(tmp_path / "data.parquet"), sort_by=["ts"], timestamp_column="ts").to_dict()


def train(df: pd.DataFrame, tmp_path, spec: TrainingSpec = SPEC, run_name: str = "run"):
    return run_training(manifest_of(df, tmp_path), spec, storage_path=str(tmp_path / "ray"), run_name=run_name)


def with_holdout_labels(df: pd.DataFrame, spec: TrainingSpec, value: int) -> pd.DataFrame:
    """``df`` whose latest rows (exactly the holdout) all have label ``value``."""
    n_holdout = int(np.floor(len(df) * spec.holdout_fraction))
    out = df.copy()
    out.loc[out.index[-n_holdout:], "y"] = value
    return out


# ---------------------------------------------------------------------------------------------- holdout
def test_empty_holdout_fails_before_training_with_its_own_message(tmp_path):
    # 12 rows x holdout_fraction 0.05 rounds down to 0 holdout rows (train 11 / val 1 would "train")
    df = frame(12)
    df["y"] = [0, 1] * 6
    spec = SPEC.with_overrides(holdout_fraction=0.05)
    with pytest.raises(TrainingInputError, match=r"holdout is empty: 12 rows x holdout_fraction=0.05"):
        train(df, tmp_path, spec)
    assert not (tmp_path / "ray" / "run").exists()


@pytest.mark.parametrize("only", [0, 1])
def test_single_class_holdout_fails_before_training(tmp_path, only):
    df = with_holdout_labels(frame(), SPEC, only)
    with pytest.raises(TrainingInputError, match=rf"holdout .* has only label {only} in column 'y'"):
        train(df, tmp_path)
    assert not (tmp_path / "ray" / "run").exists()


def test_holdout_fraction_zero_is_a_spec_error():
    from gd_provider.core.training.spec import SpecError

    with pytest.raises(SpecError) as err:
        SPEC.with_overrides(holdout_fraction=0.0)
    assert err.value.field == "holdout_fraction"


# ---------------------------------------------------------------------------------------------- bad values
def test_string_labels_are_an_input_error_naming_the_label(tmp_path):
    df = frame()
    df["y"] = np.where(df["a"] > 0, "yes", "no")
    with pytest.raises(TrainingInputError, match=r"label column 'y' must be 0/1.*'no'|label column 'y' must be 0/1.*'yes'"):
        train(df, tmp_path)


def test_non_numeric_feature_is_an_input_error_naming_the_column(tmp_path):
    df = frame()
    df["b"] = df["b"].map(str)  # numbers stored as text (parquet keeps a string column) ...
    df.loc[10, "b"] = "n/a"  # ... with one that is not a number
    with pytest.raises(TrainingInputError, match=r"numeric feature 'b' has non-numeric values .*'n/a'"):
        train(df, tmp_path)
    assert not (tmp_path / "ray" / "run").exists()


def test_non_numeric_value_only_in_the_holdout_is_caught_too(tmp_path):
    df = frame()
    df["a"] = df["a"].map(str)
    df.loc[len(df) - 1, "a"] = "oops"  # the latest row: in the holdout, never seen by Preprocessor.fit
    with pytest.raises(TrainingInputError, match=r"numeric feature 'a'.*'oops'"):
        train(df, tmp_path)


def test_preprocess_errors_become_input_errors(tmp_path, monkeypatch):
    from gd_provider.core.training.preprocess import PreprocessError, Preprocessor

    def broken_fit(*args, **kwargs):
        raise PreprocessError("numeric feature 'a' has non-numeric values: boom")

    monkeypatch.setattr(Preprocessor, "fit", classmethod(lambda cls, *a, **k: broken_fit()))
    with pytest.raises(TrainingInputError, match="cannot preprocess the dataset: numeric feature 'a'"):
        train(frame(), tmp_path)


def test_numeric_strings_and_booleans_are_still_accepted(tmp_path, monkeypatch):
    """The checks refuse only what cannot be trained on: they stop at Ray (here: the patched init)."""
    df = frame()
    df["b"] = df["b"].map(lambda v: f"{v:.6f}").astype("object")  # numbers as strings convert
    df["y"] = df["y"].astype(bool)
    with pytest.raises(AssertionError, match="Ray must not start"):
        train(df, tmp_path)
    inputs = tmp_path / "ray" / "run" / runner_mod.INPUTS_DIR
    assert (inputs / "train.npz").is_file() and (inputs / "val.npz").is_file()


def test_a_dataset_whose_timestamps_cannot_be_split_is_an_input_error(tmp_path):
    df = frame()
    df["ts"] = pd.Timestamp("2025-01-01", tz="UTC")  # one timestamp: rows with one timestamp are never split
    with pytest.raises(TrainingInputError, match=r"cannot split the dataset by time: .*share the timestamp"):
        train(df, tmp_path)
    assert not (tmp_path / "ray" / "run").exists()


def test_a_run_directory_from_another_split_rule_is_never_resumed(tmp_path, monkeypatch):
    """A training of this run made before an upgrade that changed the split (fingerprint without this
    split_version) must not be resumed with arrays split the new way."""
    df = frame()
    with pytest.raises(AssertionError, match="Ray must not start"):  # writes the run's inputs + fingerprint
        train(df, tmp_path)
    fp = tmp_path / "ray" / "run" / runner_mod.INPUTS_DIR / runner_mod.FINGERPRINT_FILE
    old = json.loads(fp.read_text())
    assert old["split_version"] == runner_mod.SPLIT_VERSION
    with pytest.raises(AssertionError, match="Ray must not start"):  # the same inputs: resumed
        train(df, tmp_path)
    fp.write_text(json.dumps({k: v for k, v in old.items() if k != "split_version"}))
    with pytest.raises(TrainingInputError, match=r"different spec, dataset or split rule"):
        train(df, tmp_path)


# ---------------------------------------------------------------------------------------------- remote
@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda df: df.assign(y=np.where(df["a"] > 0, "yes", "no")), "label column 'y'"),
        (lambda df: df.assign(b=["n/a", *df["b"].iloc[1:].map(str)]), "numeric feature 'b'"),
        (lambda df: with_holdout_labels(df, SPEC, 0), "has only label 0"),
    ],
    ids=["string-labels", "non-numeric-feature", "single-class-holdout"],
)
def test_entrypoint_writes_an_input_error_result(tmp_path, mutate, needle):
    request = entrypoint.build_request(
        manifest_of(mutate(frame()), tmp_path),
        SPEC.to_dict(),
        storage_path=str(tmp_path / "ray"),
        run_name="remote",
        result_path=str(tmp_path / "result.json"),
    )
    request_path = tmp_path / "request.json"
    request_path.write_text(json.dumps(request))
    assert entrypoint.main(["--request", str(request_path)]) == entrypoint.EXIT_INPUT_ERROR
    envelope = json.loads((tmp_path / "result.json").read_text())
    assert envelope["kind"] == "input_error"
    assert envelope["error"].startswith("TrainingInputError") and needle in envelope["error"]
