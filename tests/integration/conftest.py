"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for the module (``init_local_ray``, as the training task starts it), unless one
    is already running; shut down afterwards only if this fixture started it."""
    import ray

    from gd_provider.core.training.runner import init_local_ray

    started = not ray.is_initialized()
    if started:
        init_local_ray()
    yield
    if started:
        ray.shutdown()
