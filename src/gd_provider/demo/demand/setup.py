"""Set up the demand domain in a project home: data, Feast repo, materialization, the Airflow connection.

::

    python -m gd_provider.demo.demand            # in $GD_PROVIDER_HOME (default ~/.gd_provider)
    export AIRFLOW_CONN_FEAST_DEMAND='...'       # the line it prints

Then trigger ``gd_example_demand_regression`` / ``gd_example_demand_level_multiclass``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gd_provider.demo.demand import schema
from gd_provider.demo.demand.feature_repo import TTL, create_demand_repo
from gd_provider.demo.demand.generator import DemandConfig, generate, write_demand_data

CONN_ID = "feast_demand"
CONN_ENV = "AIRFLOW_CONN_FEAST_DEMAND"
REPO_DIR = "demand_repo"  # under the project home
LABEL_SOURCE = f"{REPO_DIR}/data/sales"  # relative to the project home, as the configs give it


@dataclass(frozen=True)
class DemandHome:
    home: Path
    repo: Path
    data_dir: Path
    config: DemandConfig

    @property
    def label_source(self) -> Path:
        return self.data_dir / "sales"

    @property
    def connection(self) -> str:
        return connection_uri(self.repo)


def connection_uri(repo: str | os.PathLike[str]) -> str:
    """The ``feast_demand`` connection as an ``AIRFLOW_CONN_FEAST_DEMAND`` value (JSON)."""
    return json.dumps({"conn_type": "feast", "extra": {"repo_path": str(Path(repo).resolve())}})


def setup_demand_home(
    home: str | os.PathLike[str] | None = None,
    config: DemandConfig | None = None,
    *,
    materialize: bool = True,
) -> DemandHome:
    """Generate the data into ``<home>/demand_repo/data``, apply the Feast repo ``<home>/demand_repo`` and
    (``materialize=True``) materialize its views through the end of the data, so ``features_fresh`` passes
    for every night up to it. ``home`` defaults to the project home (``GD_PROVIDER_HOME``)."""
    from gd_provider import settings

    root = Path(home).resolve() if home is not None else settings.project_home()
    cfg = config or DemandConfig()
    repo = root / REPO_DIR
    data_dir = repo / "data"
    write_demand_data(data_dir, generate(cfg))
    create_demand_repo(repo, data_dir)
    if materialize:
        materialize_through(repo, cfg.end_timestamp.to_pydatetime())
    return DemandHome(home=root, repo=repo, data_dir=data_dir, config=cfg)


def materialize_through(repo: str | os.PathLike[str], end) -> dict:
    """Materialize the three views over the last TTL before ``end`` (what the online store can serve)."""
    from feast import FeatureStore

    from gd_provider.core.features import materialize_feature_views

    end = pd.Timestamp(end)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    store = FeatureStore(repo_path=str(Path(repo).resolve()))
    return materialize_feature_views(store, start=(end - TTL).to_pydatetime(), end=end.to_pydatetime(),
                                     feature_views=list(schema.VIEWS))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gd_provider.demo.demand", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="project home (default: $GD_PROVIDER_HOME or ~/.gd_provider)")
    parser.add_argument("--start", default=DemandConfig.start, help="first day of the data (UTC)")
    parser.add_argument("--days", type=int, default=DemandConfig.days)
    args = parser.parse_args(argv)
    made = setup_demand_home(args.home, DemandConfig(start=args.start, days=args.days))
    print(f"demand data: {made.data_dir} (label source {made.label_source}); Feast repo: {made.repo}")
    print(f"materialized through {made.config.end_timestamp.isoformat()}; now set the connection:")
    print(f"export {CONN_ENV}='{made.connection}'")
    return 0
