"""The local Ray instance that in-task training starts (``init_local_ray``)."""

from __future__ import annotations

import os

import pytest

from gd_provider.core.training.runner import WORKER_NICENESS_ENV, init_local_ray

pytestmark = pytest.mark.integration


def test_local_ray_workers_run_at_the_drivers_niceness_not_rays_plus_15(monkeypatch):
    import ray

    monkeypatch.delenv(WORKER_NICENESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    init_local_ray(num_cpus=1)
    try:
        assert WORKER_NICENESS_ENV not in os.environ  # set for the raylet only
        assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == os.nice(0)
    finally:
        ray.shutdown()


def test_local_ray_workers_get_the_users_module_roots_on_their_path(tmp_path, monkeypatch):
    """``python_paths`` (the roots of a user's model / task modules) reach the workers' PYTHONPATH; the
    driver's own environment is left as it was."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    before = os.environ.get("PYTHONPATH")
    init_local_ray(num_cpus=1, python_paths=[str(tmp_path)])
    try:
        assert os.environ.get("PYTHONPATH") == before
        seen = ray.get(ray.remote(lambda: os.environ.get("PYTHONPATH", "")).remote())
        assert str(tmp_path) in seen.split(os.pathsep)
    finally:
        ray.shutdown()
