"""TrainingSpec validation/serialization, and the model builder it drives (no Ray)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gd_provider.core.training.model import build_model
from gd_provider.core.training.spec import SpecError, TrainingSpec
from gd_provider.demo import schema
from gd_provider.demo.schema import training_spec as demo_training_spec


def test_demo_spec_uses_schema_columns_and_defaults():
    spec = demo_training_spec()
    assert spec.numeric_features == schema.NUMERIC_FEATURES
    assert spec.categorical_features == schema.CATEGORICAL_FEATURES
    assert spec.label == schema.LABEL and spec.timestamp_column == schema.TIMESTAMP
    assert (spec.model, spec.hidden_sizes, spec.optimizer, spec.lr, spec.epochs) == (
        "mlp",
        (64, 32),
        "adam",
        1e-3,
        6,
    )
    assert spec.pos_weight == "auto" and spec.early_stopping_patience is None
    assert spec.required_columns[-2:] == (schema.LABEL, schema.TIMESTAMP)


def test_round_trip_through_json():
    spec = demo_training_spec(hidden_sizes=[16, 8], pos_weight=3.5, grad_clip_norm=None)
    data = json.loads(json.dumps(spec.to_dict()))
    assert isinstance(data["hidden_sizes"], list)
    again = TrainingSpec.from_dict(data)
    assert again == spec
    assert TrainingSpec.from_json(spec.to_json()) == spec
    assert again.hidden_sizes == (16, 8)


def test_from_dict_rejects_unknown_keys_by_name():
    data = demo_training_spec().to_dict() | {"learning_rate": 0.1, "layers": 3}
    with pytest.raises(SpecError, match="layers") as err:
        TrainingSpec.from_dict(data)
    assert "learning_rate" in str(err.value)


def test_from_dict_requires_the_column_fields():
    data = demo_training_spec().to_dict()
    del data["label"]
    with pytest.raises(SpecError, match="label"):
        TrainingSpec.from_dict(data)


BAD_VALUES = [
    ("lr", 0.0),
    ("lr", -1e-3),
    ("lr", math.nan),
    ("lr", True),
    ("optimizer", "rmsprop"),
    ("model", "xgboost"),
    ("hidden_sizes", []),
    ("hidden_sizes", [32, 0]),
    ("hidden_sizes", [32.5]),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("momentum", 1.0),
    ("weight_decay", -0.1),
    ("batch_size", 0),
    ("batch_size", 3.0),
    ("epochs", 0),
    ("grad_clip_norm", 0.0),
    ("pos_weight", "balanced"),
    ("pos_weight", -2.0),
    ("validation_fraction", 0.0),
    ("validation_fraction", 1.2),
    ("holdout_fraction", -0.1),
    ("holdout_fraction", 0.0),
    ("holdout_fraction", 0),
    ("holdout_fraction", 1.0),
    ("num_workers", 0),
    ("cpus_per_worker", 0),
    ("seed", -1),
    ("early_stopping_patience", 0),
    ("label", ""),
    ("timestamp_column", None),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(field, value):
    with pytest.raises(SpecError) as err:
        demo_training_spec().with_overrides({field: value})
    assert err.value.field == field
    assert repr(field) in str(err.value)


def test_fractions_must_leave_training_rows():
    with pytest.raises(SpecError, match="validation_fraction"):
        demo_training_spec(validation_fraction=0.5, holdout_fraction=0.45)


def test_empty_features_and_duplicates_are_rejected():
    with pytest.raises(SpecError, match="numeric_features"):
        TrainingSpec(
            numeric_features=[], categorical_features=[], label="y", timestamp_column="ts"
        ).validate()
    with pytest.raises(SpecError, match="more than once"):
        TrainingSpec(
            numeric_features=["a", "a"], categorical_features=[], label="y", timestamp_column="ts"
        ).validate()
    with pytest.raises(SpecError) as err:
        TrainingSpec(
            numeric_features=["a", "y"], categorical_features=[], label="y", timestamp_column="ts"
        ).validate()
    assert err.value.field == "label"
    with pytest.raises(SpecError, match="numeric_features"):
        TrainingSpec(numeric_features="amount", categorical_features=[], label="y", timestamp_column="ts")


def test_with_overrides_returns_a_new_validated_spec():
    spec = demo_training_spec()
    faster = spec.with_overrides({"lr": 0.01}, epochs=2)
    assert (faster.lr, faster.epochs) == (0.01, 2)
    assert (spec.lr, spec.epochs) == (1e-3, 6)
    with pytest.raises(SpecError, match="learning_rate"):
        spec.with_overrides({"learning_rate": 0.01})
    with pytest.raises(SpecError, match="'optimizer'"):
        spec.with_overrides(optimizer="adagrad")


def test_logistic_model_needs_no_hidden_layers():
    spec = demo_training_spec(model="logistic", hidden_sizes=[])
    model = build_model(spec, 7)
    assert sum(p.numel() for p in model.parameters()) == 8
    assert model(torch.zeros(5, 7)).shape == (5,)


def test_mlp_shape_and_layers():
    spec = demo_training_spec(hidden_sizes=[8, 4], dropout=0.2)
    model = build_model(spec, 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 8), (8, 4), (4, 1)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2
    assert model(torch.randn(3, 10)).shape == (3,)
    no_dropout = build_model(spec.with_overrides(dropout=0.0), 10)
    assert not any(isinstance(m, torch.nn.Dropout) for m in no_dropout.modules())


def test_same_seed_same_initial_weights():
    spec = demo_training_spec()
    torch.manual_seed(spec.seed)
    a = build_model(spec, 12).state_dict()
    torch.manual_seed(spec.seed)
    b = build_model(spec, 12).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
