"""Shared pytest set-up: Butler config path, thread limits, common fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lsst.meas.extensions.deepdisc.butler.config_path import ensure_butler_config_path

# The session-scoped simulated repository (`tiny_repo`) and helpers live in tests/sim_fixtures.py.
pytest_plugins = ["sim_fixtures"]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# Our storage classes must be visible to every Butler, including those of pipetask child processes.
ensure_butler_config_path()
# Two cores and two pytest workers: one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep collection robust.
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def package_root() -> Path:
    """Root of the source tree (for pipelines/ and config/)."""
    return PACKAGE_ROOT
