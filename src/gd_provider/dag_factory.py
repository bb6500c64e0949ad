"""The DAG factory's former module: everything lives in :mod:`gd_provider.factory` (config, stages, params,
loader); this name keeps DAG files written against it working."""

from __future__ import annotations

from gd_provider.factory import *  # noqa: F403
from gd_provider.factory import __all__  # noqa: F401
