"""release_memory hands freed memory back before Ray starts, without changing any setting it touches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.training.runner import release_memory


@pytest.mark.parametrize("limit", [None, "3GB"])
def test_release_memory_keeps_duckdb_settings_and_data(limit):
    import ibis

    con = ibis.get_backend()
    con.raw_sql("RESET memory_limit" if limit is None else f"SET memory_limit = '{limit}'").fetchall()
    before = con.raw_sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    table = ibis.memtable(pd.DataFrame({"k": np.arange(1000), "v": np.random.default_rng(0).random(1000)}))
    total = float(table.v.sum().to_pyarrow().as_py())

    release_memory()

    assert con.raw_sql("SELECT current_setting('memory_limit')").fetchall()[0][0] == before
    assert float(table.v.sum().to_pyarrow().as_py()) == total  # the connection still works, data intact


def test_release_memory_without_ibis_loaded(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "ibis", raising=False)
    release_memory()  # nothing to flush: must not import or create a DuckDB connection
    assert "ibis" not in sys.modules
