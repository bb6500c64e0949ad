"""Initialise the docker-compose stack's shared data volume: demo data and the Feast repo with its
online store on Redis. Idempotent: an existing repo is re-applied, data is kept.

    python scripts/stack_init.py --redis redis:6379 [--redis-password …]
"""

from __future__ import annotations

import argparse
import os
import sys

from gd_provider import settings
from gd_provider.demo.feature_repo import create_feature_repo
from gd_provider.demo.generator import GeneratorConfig, generate, write_demo_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", required=True, help="host:port of the Feast online store")
    parser.add_argument("--redis-password", default=os.environ.get("REDIS_PASSWORD", ""))
    parser.add_argument("--days", type=int, default=61)
    args = parser.parse_args()
    repo = settings.project_home() / "feature_repo"
    data = repo / "data"
    if not (data / "card_stats.parquet").exists():
        write_demo_data(data, generate(GeneratorConfig(days=args.days)))
        print(f"demo data written to {data}")
    # Feast expands ${VAR} in feature_store.yaml: the password stays in the environment, not on disk.
    connection = args.redis + (",password=${REDIS_PASSWORD}" if args.redis_password else "")
    create_feature_repo(repo, data, online_store={"type": "redis", "connection_string": connection})
    print(f"Feast repo applied at {repo} (online store: redis at {args.redis})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
