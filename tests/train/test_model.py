"""The model pieces without Ray: mel filterbank, masked loss, and CLAP-style audio-text learning in mixed batches."""

from __future__ import annotations

import torch
from open_clip.loss import ClipLoss

from mmcurate.pipeline.train.config import AudioTowerConfig, ModelConfig
from mmcurate.pipeline.train.data import Decoder, ShardStream, make_loader
from mmcurate.pipeline.train.loss import MaskedClipLoss
from mmcurate.pipeline.train.model import build_model, mel_filterbank
from mmcurate.pipeline.train.order import assign
from mmcurate.pipeline.train.shards import count_all

from train_helpers import TINY_CLIP, write_synthetic


def test_mel_filterbank_is_triangular_and_ordered():
    fb = mel_filterbank(201, 40, 16_000)
    assert fb.shape == (201, 40) and (fb >= 0).all()
    peaks = fb.argmax(dim=0)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > 150  # centres rise up to near Nyquist
    widths = (fb > 0).sum(dim=0)
    assert widths[-1] > widths[5]  # mel spacing: high filters span more bins
    for m in range(40):  # each filter rises then falls: one contiguous run of non-zero bins
        nz = fb[:, m].nonzero().squeeze(1)
        assert nz.numel() > 0 and nz[-1] - nz[0] + 1 == nz.numel()


def test_masked_loss_matches_clip_loss_and_ignores_masked_rows():
    torch.manual_seed(0)
    a, t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1), torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    full = MaskedClipLoss()(a, t, scale, torch.ones(6, dtype=torch.bool))
    assert torch.allclose(full, ClipLoss()(a, t, scale))
    mask = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    masked = MaskedClipLoss()(a, t, scale, mask)
    assert torch.allclose(masked, ClipLoss()(a[mask], t[mask], scale))
    assert MaskedClipLoss()(a, t, scale, torch.zeros(6, dtype=torch.bool)) is None


def test_audio_tower_learns_tone_captions_beside_images(tmp_path):
    """Every third sample is a tone ("a high buzz"): both losses fall in the same mixed batches."""
    urls = write_synthetic(tmp_path, 384, seed=4, per_shard=128, audio_every=3)
    audio_cfg = AudioTowerConfig(clip_seconds=1.0, n_mels=32, width=16, layers=3)
    torch.manual_seed(0)
    model, train_tf, _, tokenizer, _ = build_model(
        ModelConfig(name="mmcurate-test-tiny", custom=TINY_CLIP, audio=audio_cfg)
    )
    counts = count_all(urls)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = MaskedClipLoss()
    history: dict[str, list[float]] = {"image": [], "audio": []}
    for epoch in range(4):
        ds = ShardStream(urls, counts, assignment=assign([(0, sum(counts))], 1, 0)[0], consumer_base=0, seed=0,
                         epoch=epoch, block=128, shuffle_shards=True, batch_size=48,
                         decoder=Decoder(tokenizer, train_tf, audio_cfg))
        for b in make_loader(ds, loader_workers=0, prefetch_batches=1, pin_memory=False):
            out = model(b["text"], b["image"], b["image_idx"], b["audio"], b["audio_idx"])
            total = 0
            for name, scale in (("image", "logit_scale"), ("audio", "audio_logit_scale")):
                mask = torch.zeros(len(b["keys"]), dtype=torch.bool)
                mask[b[f"{name}_idx"]] = True
                loss = loss_fn(out[name], out["text"], out[scale], mask)
                history[name].append(float(loss.detach()))
                total = total + loss
            opt.zero_grad()
            total.backward()
            opt.step()
            model.clamp_logit_scales()
    for name, losses in history.items():
        first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
        assert last < 0.6 * first, (name, first, last)


def test_a_custom_config_registers_with_open_clip_and_leaves_no_file_behind(tmp_path, monkeypatch):
    import tempfile

    import open_clip

    from mmcurate.pipeline.train.model import register_model_config

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = {**TINY_CLIP, "embed_dim": TINY_CLIP["embed_dim"] + 8}
    register_model_config("mmcurate-test-registered", config)
    assert open_clip.get_model_config("mmcurate-test-registered") == config
    assert list(tmp_path.iterdir()) == []
    open_clip.add_model_config(tmp_path)  # a later rescan keeps what the deleted file registered
    assert open_clip.get_model_config("mmcurate-test-registered") == config
