"""One tiny CLIP trained for the whole session, exported twice: as ``mmcurate train`` leaves it (with its audio
tower and the run's config.yaml) and as a bare export without the audio tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_helpers import export_as_trained, train_tiny_clip

from mmcurate.pipeline.train.checkpoint import export_model
from mmcurate.pipeline.train.model import ContrastiveModel


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # one intra-op thread: these tensors are small, and on a loaded 2-core machine two OpenMP threads waiting on
    # each other made the same 60 steps ten times slower (192 s against 18 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, model_cfg = train_tiny_clip()
    finally:
        torch.set_num_threads(threads)
    root = tmp_path_factory.mktemp("clip-score-model")
    with_audio = export_as_trained(model, model_cfg, root / "run")
    image_only = export_model(ContrastiveModel(model.clip, None), model_cfg, root / "image-only")
    return {"with_audio": with_audio, "image_only": image_only}
