"""Fixtures for the trainer tests: synthetic shards written by the pipeline's own shard writer, a tiny model."""

from __future__ import annotations

from typing import Any

import pytest

from train_helpers import write_synthetic

@pytest.fixture(scope="session")
def shape_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2048 training and 256 held-out colour/shape pairs, in shards of 128."""
    root = tmp_path_factory.mktemp("shape-shards")
    train = write_synthetic(root / "train", 2048, seed=1, per_shard=128)
    val = write_synthetic(root / "val", 256, seed=2, per_shard=128)
    return {"root": root, "train": train, "val": val, "train_glob": str(root / "train" / "*.tar"),
            "val_glob": str(root / "val" / "*.tar")}


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """520 pairs in shards of 64 (the last one short), for loader and resume tests."""
    root = tmp_path_factory.mktemp("small-shards")
    paths = write_synthetic(root, 520, seed=3, per_shard=64)
    return {"root": root, "paths": paths, "glob": str(root / "*.tar")}
