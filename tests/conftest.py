"""Shared fixtures. Unit tests never start Ray; integration tests share one session-scoped Ray runtime."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime for every integration test in the session (starting one costs ~5 s here)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir="/tmp/ray-mmcurate-tests",
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()
