"""The validation gate's soft-fail ("skip") and branching modes in real ``dag.test()`` runs."""

from __future__ import annotations

import os
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.data import write_dataset
from tests.harness import airflow_env

pytestmark = pytest.mark.dags

DAG_FILE = "gd_test_validation_modes.py"
DAG_SOURCE = textwrap.dedent(
    '''
    """Test DAGs (written by tests/dags/test_validation_modes.py): validation in skip and branch modes."""
    from datetime import datetime, timezone

    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from gd_provider.operators.validation import DataValidationOperator

    SUITE = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"}, "meta": {"gd_check": "not_null"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 0},
         "meta": {"gd_check": "non_negative"}},
    ]
    COMMON = dict(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False,
                  render_template_as_native_obj=True, params={"dataset": {}})

    with DAG("gd_test_validation_skip", **COMMON):
        validate = DataValidationOperator(task_id="validate", dataset="{{ params.dataset }}", expectations=SUITE,
                                          on_failure="skip", log_to_mlflow=False)
        validate >> EmptyOperator(task_id="train")

    with DAG("gd_test_validation_branch", **COMMON):
        validate = DataValidationOperator(task_id="validate", dataset="{{ params.dataset }}", expectations=SUITE,
                                          on_failure="branch", branch_on_pass="train", branch_on_fail="quarantine")
        train = EmptyOperator(task_id="train")
        validate >> [train, EmptyOperator(task_id="quarantine")]
        train >> EmptyOperator(task_id="publish")
    '''
)


@pytest.fixture(scope="module")
def dags(airflow_db, tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / DAG_FILE
    path.write_text(DAG_SOURCE)
    try:
        bag = DagBag(dag_folder=str(path))
        assert not bag.import_errors, bag.import_errors
        yield bag.dags
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("validation_modes")
    amounts = np.random.default_rng(0).gamma(2.0, 50.0, 300)
    good = pd.DataFrame({"amount": amounts})
    bad = good.copy()
    bad.loc[[3, 4], "amount"] = np.nan
    bad.loc[5, "amount"] = -1.0
    return {name: write_dataset(df, str(root / f"{name}.parquet")).to_dict() for name, df in
            {"good": good, "bad": bad}.items()}


def _run(dag, dataset: dict, day: int) -> dict:
    return airflow_env.run_dag(dag, datetime(2026, 1, day, tzinfo=UTC), {"dataset": dataset})


def test_skip_mode(dags, datasets):
    dag = dags["gd_test_validation_skip"]
    bad = _run(dag, datasets["bad"], 2)
    assert bad["state"] == "success", bad  # a skipped gate is not a failed run
    assert bad["tasks"] == {"validate": "skipped", "train": "skipped"}
    good = _run(dag, datasets["good"], 3)
    assert good["state"] == "success" and good["tasks"] == {"validate": "success", "train": "success"}


def test_branch_mode(dags, datasets):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from gd_provider.links import ValidationReportLink

    dag = dags["gd_test_validation_branch"]
    bad = _run(dag, datasets["bad"], 2)
    assert bad["state"] == "success", bad
    assert bad["tasks"] == {"validate": "success", "quarantine": "success", "train": "skipped", "publish": "skipped"}
    good = _run(dag, datasets["good"], 3)
    assert good["state"] == "success", good
    assert good["tasks"] == {"validate": "success", "quarantine": "skipped", "train": "success", "publish": "success"}
    # the returned manifest says what happened, and the report link was pushed in the real run
    with create_session() as session:
        rows = {
            x.key: x.value for x in session.query(XComModel).filter(
                XComModel.dag_id == dag.dag_id, XComModel.run_id == bad["run_id"], XComModel.task_id == "validate"
            )
        }
    assert rows["skipmixin_key"] == {"followed": ["quarantine"]}
    manifest = rows["return_value"]  # pushed although the branch skip ends execute with an exception
    assert manifest["success"] is False and manifest["failed"] == 2 and manifest["report"]["html"]
    assert "/artifactPath/validation.html" in rows[ValidationReportLink().xcom_key]
