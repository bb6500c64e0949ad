"""A user's retraining DAG (an Airflow DAG file): the shipped fraud config with the user's own task class and model factory."""

from __future__ import annotations

from pathlib import Path

import yaml

from gd_provider.factory import build_retraining_dag

# the shipped config, found through this file's real location (it is linked into the DAGs folder)
_CONFIG = Path(__file__).resolve().parents[3] / "dags" / "configs" / "fraud_detector.yaml"
config = yaml.safe_load(_CONFIG.read_text())
config.update(dag_id="gd_user_plugins_retraining", model_name="fraud_focal_residual", tags=["user-plugins"])
config["training"].update(task="gd_user_plugins:FocalBinaryTask", task_options={"gamma": 2.0},
                          model="gd_user_plugins:residual_net", model_kwargs={"width": 24, "blocks": 2}, epochs=3)
config["training"].pop("hidden_sizes")  # the mlp's
config["training"].pop("operating_point")  # a binary-task rule; this task decides at its own 0.5
# the sensitivity check runs on this task's own metric (val_pr_auc): noisier on a 3 % positive rate than ROC AUC
config["training"]["sensitivity"]["max_spread"] = 0.15
config["gate"] = {"value_thresholds": {"roc_auc": 0.7}, "max_abs_regression": {"pr_auc": 0.05, "brier": 0.01}}
config["smoke_test"] = {"canary_rows": 300, "max_p95_latency_ms": 250.0}
# the user's own gates, by import path: one on the dataset (after the drift check), one on the training run
config["gates"] = [
    {"gate": "gd_user_plugins:LabelShareGate", "stage": "data", "options": {"min_share": 0.005, "max_share": 0.2}},
    {"gate": "gd_user_plugins:TrainLossGate", "options": {"max_train_loss": 5.0}},
]
# the expectations file of the shipped config is an import path: unchanged
dag = build_retraining_dag(config, auto_register=False)
