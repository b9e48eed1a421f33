"""Running the installed ``mmcurate`` as a user does (imported as ``e2e_helpers``: pytest puts this folder on
sys.path)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mmcurate_command() -> list[str]:
    script = Path(sys.executable).parent / "mmcurate"  # the console script of the environment under test
    return [str(script)] if script.exists() else [sys.executable, "-m", "mmcurate.pipeline.cli"]


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", RAY_AUTH_MODE="disabled")
    return env
