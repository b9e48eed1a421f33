"""``encode_tokens`` (the text tower on each caption's own positions) and ``encode_pixels`` (the image tower's last
block for the class token alone), ``stages/clip_score/towers.py``, against open_clip's ``encode_text`` on 77 tokens
and ``encode_image``, for the towers clip_score runs: random weights, fp32."""

from __future__ import annotations

import open_clip
import pytest
import torch

from clip_helpers import TINY_CLIP

from mmcurate.stages.clip_score.towers import _causal_tower, _class_token_tower, encode_pixels, encode_tokens

TINY_VISION = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}
CAPTIONS = [
    "", "a", "a red circle", "astronaut crop 12", "hubble_deep_field crop 8",
    "two dogs playing in the snow beside a red barn under a grey winter sky, photographed from a low angle",
    " ".join(["word"] * 100),  # past the 77-token cap: the tokenizer cuts it and ends it with end-of-text at 76
]


def text_model(text_cfg: dict, custom: bool = False, embed_dim: int = 512,
               vision_cfg: dict = TINY_VISION) -> torch.nn.Module:
    """A CLIP (or CustomTextCLIP) with ``text_cfg``'s text tower and a tiny image tower, random weights, eval."""
    torch.manual_seed(0)
    model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(embed_dim, vision_cfg, text_cfg)
    if custom:  # random init leaves a LayerScale-free block's projection bias at zero; give the test some
        for p in model.text.parameters():
            p.data.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def assert_same_as_encode_text(model: torch.nn.Module, tokens: torch.Tensor, exact_path: bool = True) -> None:
    assert (_causal_tower(model) is not None) == exact_path
    with torch.inference_mode():
        ours, theirs = encode_tokens(model, tokens), model.encode_text(tokens, normalize=True)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


VIT_B_32_TEXT = open_clip.get_model_config("ViT-B-32")["text_cfg"]
TOKENIZER = open_clip.get_tokenizer("ViT-B-32")


def test_vit_b_32s_text_tower_on_captions_of_every_length_up_to_the_cap_equals_encode_text():
    model = text_model(VIT_B_32_TEXT)
    tokens = TOKENIZER(CAPTIONS)
    assert int(tokens.argmax(dim=-1).max()) == 76  # one caption reaches the cap
    assert_same_as_encode_text(model, tokens)
    assert_same_as_encode_text(model, tokens[:3])  # a batch of short captions only: L = 4 of 77
    assert_same_as_encode_text(model, tokens[-1:])  # one row at the cap
    assert_same_as_encode_text(model, TOKENIZER([f"{w} crop {i}" for i, w in enumerate(["moon", "coins"] * 20)]))


def test_the_tiny_test_clips_text_tower_equals_encode_text():
    cfg = TINY_CLIP["text_cfg"]  # context_length 8: captions are cut at 8 tokens
    model = text_model(cfg, embed_dim=TINY_CLIP["embed_dim"])
    tokens = open_clip.tokenize(CAPTIONS, context_length=cfg["context_length"])
    assert_same_as_encode_text(model, tokens)


def test_a_custom_text_clip_with_eos_pooling_layer_scale_and_a_linear_projection_equals_encode_text():
    cfg = {**VIT_B_32_TEXT, "layers": 3, "pool_type": "eos", "eos_id": TOKENIZER.eot_token_id, "ls_init_value": 0.5,
           "proj_type": "linear", "proj_bias": True}
    model = text_model(cfg, custom=True)
    assert isinstance(model.text.text_projection, torch.nn.Linear)
    assert_same_as_encode_text(model, TOKENIZER(CAPTIONS))


@pytest.mark.parametrize("change", [{"no_causal_mask": True, "pool_type": "last"},
                                    {"pool_type": "first"}, {"qk_norm": True}, {"embed_cls": True}])
def test_a_text_tower_it_cannot_prove_runs_through_encode_text(change):
    model = text_model({**VIT_B_32_TEXT, "layers": 2, **change}, custom=True)
    assert_same_as_encode_text(model, TOKENIZER(CAPTIONS), exact_path=False)


def test_a_model_in_training_mode_runs_through_encode_text():
    model = text_model({**VIT_B_32_TEXT, "layers": 2}).train()
    torch.manual_seed(1)
    with torch.no_grad():
        assert torch.equal(encode_tokens(model, TOKENIZER(CAPTIONS)),
                           (torch.manual_seed(1), model.encode_text(TOKENIZER(CAPTIONS), normalize=True))[1])


VIT_B_32 = open_clip.get_model_config("ViT-B-32")
TINY_TEXT = {**VIT_B_32_TEXT, "layers": 1, "width": 64, "heads": 2}


def assert_same_as_encode_image(model: torch.nn.Module, pixels: torch.Tensor, exact_path: bool = True) -> None:
    assert (_class_token_tower(model) is not None) == exact_path
    with torch.inference_mode():
        ours, theirs = encode_pixels(model, pixels), model.encode_image(pixels, normalize=True)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_vit_b_32s_image_tower_equals_encode_image():
    model = text_model(TINY_TEXT, vision_cfg=VIT_B_32["vision_cfg"], embed_dim=VIT_B_32["embed_dim"])
    pixels = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert_same_as_encode_image(model, pixels)
    assert_same_as_encode_image(model, pixels[:1])


def test_the_tiny_test_clips_image_tower_equals_encode_image():
    model = text_model(TINY_TEXT, vision_cfg=TINY_CLIP["vision_cfg"], embed_dim=TINY_CLIP["embed_dim"])
    assert_same_as_encode_image(model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_an_image_tower_with_layer_scale_and_the_final_norm_after_pooling_equals_encode_image():
    vision = {**TINY_VISION, "layers": 3, "ls_init_value": 0.5, "final_ln_after_pool": True}
    model = text_model(TINY_TEXT, custom=True, vision_cfg=vision)
    assert_same_as_encode_image(model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("change", [{"pool_type": "avg"}, {"attentional_pool": True}, {"qk_norm": True}])
def test_an_image_tower_it_cannot_prove_runs_through_encode_image(change):
    model = text_model(TINY_TEXT, vision_cfg={**TINY_VISION, "layers": 2, **change})
    assert_same_as_encode_image(model, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
                                exact_path=False)
