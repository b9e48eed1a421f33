"""The clip_score stage on a tiny CLIP trained in this session (conftest ``trained``), over real Arrow batches."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from clip_helpers import (
    COLOURS, MODEL_NAME, PITCHES, SHAPES, TIMBRES, TINY_CLIP, audio_record, auc, image_record, jpeg_shape,
    shape_caption, table, tone_caption, tone_flac, TONE_SECONDS,
)

from mmcurate.pipeline.train.checkpoint import CLIP_WEIGHTS, load_audio_tower, load_scorer
from mmcurate.pipeline.train.data import load_waveform
from mmcurate.schemas.record import outcome_schema
from mmcurate.schemas.stage_configs import ClipScoreConfig
from mmcurate.stages.clip_score import ClipScoreStage
from mmcurate.stages.clip_score.model import encode_tokens

HEX8 = r"[0-9a-f]{8}"


def stage_for(checkpoint, **config) -> ClipScoreStage:
    stage = ClipScoreStage(ClipScoreConfig(model={"checkpoint": str(checkpoint), **config.pop("model", {})}, **config))
    stage.setup()
    return stage


def scores(outcomes: pa.Table, name: str) -> list[float | None]:
    return [dict(pairs or []).get(name) for pairs in outcomes["scores"].to_pylist()]


@pytest.fixture(scope="module")
def stage(trained) -> ClipScoreStage:
    return stage_for(trained["with_audio"], embedding=True)


@pytest.fixture(scope="module")
def held_out() -> list[tuple[bytes, str, str]]:
    """(JPEG, its caption, a wrong caption) for unseen images; a third each with the colour, the shape, or both
    wrong."""
    rng = np.random.default_rng(1234)
    pairs = []
    for i in range(90):
        colour, shape = shape_caption(rng)
        other_colour = str(rng.choice([c for c in COLOURS if c != colour]))
        other_shape = str(rng.choice([s for s in SHAPES if s != shape]))
        wrong = [(other_colour, shape), (colour, other_shape), (other_colour, other_shape)][i % 3]
        pairs.append((jpeg_shape(colour, shape, rng), f"a {colour} {shape}", "a {} {}".format(*wrong)))
    return pairs


def test_matched_captions_outscore_mismatched_ones_on_held_out_images(stage, held_out):
    name = stage.score_name("image")
    matched = scores(stage.process_table(table([image_record(i, img, ok) for i, (img, ok, _) in enumerate(held_out)])), name)
    wrong = scores(stage.process_table(table([image_record(i, img, bad) for i, (img, _, bad) in enumerate(held_out)])), name)
    assert auc(matched, wrong) > 0.95
    assert np.median(matched) > np.median(wrong) + 0.3


def test_min_score_rejects_mismatched_pairs_with_reason_and_detail_and_keeps_matched(trained, held_out):
    stage = stage_for(trained["with_audio"], min_score={"image": 0.75})
    # the wrong captions here name another colour: the tiny model tells colours apart better than shapes
    records, is_matched = [], []
    for i, (img, ok, bad) in enumerate(held_out):
        records.append(image_record(2 * i, img, ok))
        is_matched.append(True)
        if i % 3 != 1:
            records.append(image_record(2 * i + 1, img, bad))
            is_matched.append(False)
    outcomes = stage.process_table(table(records))
    reasons, details = outcomes["_reason"].to_pylist(), outcomes["_detail"].to_pylist()
    values = scores(outcomes, stage.score_name("image"))
    kept_matched = [r is None for r, m in zip(reasons, is_matched) if m]
    rejected_wrong = [r == "clip_score_low" for r, m in zip(reasons, is_matched) if not m]
    assert sum(kept_matched) / len(kept_matched) >= 0.9
    assert sum(rejected_wrong) / len(rejected_wrong) >= 0.9
    pattern = re.compile(rf"image_text (-?\d\.\d{{4}}) < 0\.75 \(model {MODEL_NAME}-{HEX8}\)")
    for reason, detail, value in zip(reasons, details, values):
        if reason is None:
            assert value >= 0.75 and detail is None
        else:
            assert reason == "clip_score_low"
            found = pattern.fullmatch(detail)
            assert found and float(found.group(1)) == pytest.approx(value, abs=5e-5) and value < 0.75
    assert outcomes.filter(pa.compute.is_valid(outcomes["_reason"]))["image"].null_count == sum(r is not None for r in reasons)


def test_a_human_match_below_the_threshold_is_scored_and_kept_the_rest_are_judged_by_score(trained, held_out):
    stage = stage_for(trained["with_audio"], min_score={"image": 0.75})
    records = [image_record(i, img, bad) for i, (img, _, bad) in enumerate(held_out[:12])]
    batch = table(records).append_column("human_match", pa.array([True] * 6 + [None] * 6, pa.bool_()))
    outcomes = stage.process_table(batch)
    values, reasons = scores(outcomes, stage.score_name("image")), outcomes["_reason"].to_pylist()
    assert all(v is not None for v in values)  # a person's "match" does not spare the sample its score
    assert reasons[:6] == [None] * 6 and outcomes["human_match"].to_pylist()[:6] == [True] * 6
    assert [r for r, v in zip(reasons[6:], values[6:]) if v < 0.75] == ["clip_score_low"] * sum(v < 0.75 for v in values[6:])
    assert sum(v < 0.75 for v in values[:6]) >= 3  # wrong captions: most would have been dropped


def test_scores_land_in_the_scores_map_under_the_model_id_beside_earlier_ones(stage, trained, held_out):
    assert re.fullmatch(rf"{MODEL_NAME}-{HEX8}", stage.scorer.model_id)
    img, caption, _ = held_out[0]
    outcomes = stage.process_table(table([image_record(0, img, caption, scores=[("align.caption.chars", 14.0)])]))
    entry = dict(outcomes["scores"].to_pylist()[0])
    assert set(entry) == {"align.caption.chars", f"clip_score.{stage.scorer.model_id}.image_text"}
    assert entry["align.caption.chars"] == 14.0 and -1.0 <= entry[stage.score_name("image")] <= 1.0
    # a bare export (no config.yaml beside it): "checkpoint" and the sha256 of its one weights file
    bare = stage_for(trained["image_only"])
    digest = hashlib.sha256((trained["image_only"] / CLIP_WEIGHTS).read_bytes()).hexdigest()[:8]
    assert bare.scorer.model_id == f"checkpoint-{digest}"
    assert stage_for(trained["with_audio"]).scorer.model_id == stage.scorer.model_id  # stable across loads


def test_a_model_name_with_a_weights_file_scores_as_its_checkpoint_does(stage, trained, held_out):
    from mmcurate.pipeline.train.model import register_model_config

    register_model_config(MODEL_NAME, TINY_CLIP)
    weights = trained["with_audio"] / CLIP_WEIGHTS
    by_name = ClipScoreStage(ClipScoreConfig(model={"name": MODEL_NAME, "pretrained": str(weights)}))
    by_name.setup()
    assert by_name.scorer.model_id == f"{MODEL_NAME}-{hashlib.sha256(weights.read_bytes()).hexdigest()[:8]}"
    batch = table([image_record(i, img, ok) for i, (img, ok, _) in enumerate(held_out[:12])])
    assert scores(by_name.process_table(batch), by_name.score_name("image")) == pytest.approx(
        scores(stage.process_table(batch), stage.score_name("image")), abs=1e-6)


def test_embedding_is_fixed_size_unit_norm_and_is_the_models_own_image_embedding(stage, trained, held_out):
    rng = np.random.default_rng(7)
    tone = tone_flac("low", "buzz", rng, seconds=TONE_SECONDS)
    records = [image_record(i, img, ok) for i, (img, ok, _) in enumerate(held_out[:5])]
    records += [image_record(5, held_out[5][0], None), audio_record(6, tone, None), image_record(7, None, "a red circle")]
    outcomes = stage.process_table(table(records))
    assert outcomes.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    column = outcomes["embedding"].to_pylist()
    assert column[7] is None  # text alone: no embedding
    vectors = np.array(column[:7], np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the trainer's loader and open_clip's own per-image transform give the same image embeddings
    from PIL import Image
    import io

    clip, preprocess, _ = load_scorer(trained["with_audio"])
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in records[:6]])
    with torch.no_grad():
        expected = clip.encode_image(pixels, normalize=True).numpy()
        tower, _ = load_audio_tower(trained["with_audio"])
        audio = torch.nn.functional.normalize(tower(load_waveform(tone, tower.cfg)[None]), dim=-1).numpy()
    assert np.allclose(vectors[:6], expected, atol=1e-5)
    assert np.allclose(vectors[6], audio[0], atol=1e-5)
    assert scores(outcomes, stage.score_name("image"))[5] is None  # no caption: embedded, not scored


def test_an_image_that_does_not_decode_is_image_corrupt_and_the_rest_are_scored(stage, held_out):
    good = held_out[0][0]
    records = [image_record(0, good, held_out[0][1]), image_record(1, good[: len(good) // 2], "a red circle"),
               image_record(2, b"\x89PNG not really", "a blue square"), image_record(3, held_out[1][0], held_out[1][1])]
    outcomes = stage.process_table(table(records))
    assert outcomes["_reason"].to_pylist() == [None, "image_corrupt", "image_corrupt", None]
    assert "OSError" in outcomes["_detail"][1].as_py() and "UnidentifiedImageError" in outcomes["_detail"][2].as_py()
    assert outcomes["image"].to_pylist()[1:3] == [None, None]  # a reject row explains, it does not carry
    values = scores(outcomes, stage.score_name("image"))
    assert values[0] is not None and values[3] is not None and values[1] is None and values[2] is None


def test_audio_is_kept_unscored_by_a_model_without_an_audio_tower(trained, held_out):
    stage = stage_for(trained["image_only"], min_score={"audio": 0.9, "image": -1.0})
    assert stage.scorer.audio is None
    tone = tone_flac("high", "beep", np.random.default_rng(3), seconds=TONE_SECONDS)
    outcomes = stage.process_table(table([audio_record(0, tone, "a high beep"), image_record(1, *held_out[0][:2])]))
    assert outcomes["_reason"].to_pylist() == [None, None]
    assert outcomes["audio"][0].as_py() == tone
    assert [dict(s) for s in outcomes["scores"].to_pylist()][0] == {}
    assert scores(outcomes, stage.score_name("image"))[1] is not None


def test_an_audio_tower_scores_matched_tones_above_mismatched_ones(trained):
    stage = stage_for(trained["with_audio"], min_score={"audio": 0.5})
    rng = np.random.default_rng(99)
    matched, wrong = [], []
    for i in range(48):
        pitch, timbre = tone_caption(rng)
        tone = tone_flac(pitch, timbre, rng, seconds=TONE_SECONDS)
        other = (str(rng.choice([p for p in PITCHES if p != pitch])), timbre) if i % 2 else \
            (pitch, next(t for t in TIMBRES if t != timbre))
        matched.append(audio_record(i, tone, f"a {pitch} {timbre}"))
        wrong.append(audio_record(i, tone, "a {} {}".format(*other)))
    name = f"clip_score.{stage.scorer.model_id}.audio_text"
    ok, bad = stage.process_table(table(matched)), stage.process_table(table(wrong))
    assert auc(scores(ok, name), scores(bad, name)) > 0.95
    assert ok["_reason"].null_count >= 0.9 * ok.num_rows
    assert bad["_reason"].to_pylist().count("clip_score_low") >= 0.9 * bad.num_rows
    assert all(d is None or d.startswith("audio_text ") for d in bad["_detail"].to_pylist())


def test_process_table_gives_one_first_outcome_row_per_record_in_order(stage, held_out):
    tone = tone_flac("middle", "beep", np.random.default_rng(4), seconds=TONE_SECONDS)
    records = [image_record(0, *held_out[0][:2]), audio_record(1, tone, "a middle beep"), image_record(2, None, "text"),
               image_record(3, held_out[1][0], None), image_record(4, b"broken", "a red circle"),
               audio_record(5, b"fLaC broken", "a low buzz"), image_record(6, *held_out[2][:2])]
    batch = table(records)
    before = sum(stage.counts.values())
    outcomes = stage.process_table(batch)
    assert outcomes.num_rows == batch.num_rows
    assert outcomes["key"].to_pylist() == batch["key"].to_pylist()
    assert outcomes["_first"].to_pylist() == [True] * batch.num_rows
    assert outcomes.schema == outcome_schema(outcomes.schema)
    assert outcomes["_reason"].to_pylist() == [None, None, None, None, "image_corrupt", "audio_corrupt", None]
    assert sum(stage.counts.values()) - before == batch.num_rows
    # chunks smaller than the batch give the same outcome rows
    small = stage_for(stage.config.model.checkpoint, embedding=True, batch_size=2, threads=3)
    again = small.process_table(batch)
    assert again["_reason"].to_pylist() == outcomes["_reason"].to_pylist()
    assert np.allclose(np.array([v or 0 for v in scores(again, stage.score_name("image"))]),
                       np.array([v or 0 for v in scores(outcomes, stage.score_name("image"))]), atol=1e-6)


def test_the_text_tower_on_trimmed_padding_equals_open_clips_encode_text(stage):
    clip, tokenizer = stage.scorer.clip, stage.scorer.tokenizer
    for captions in (["a red circle", "a blue square"], ["a red circle", "a very long caption that is truncated"]):
        tokens = tokenizer(captions)
        with torch.inference_mode():
            assert torch.allclose(encode_tokens(clip, tokens), clip.encode_text(tokens, normalize=True), atol=1e-6)


def test_bf16_on_cpu_ranks_as_fp32_does(stage, trained, held_out):
    bf16 = stage_for(trained["with_audio"], model={"precision": "bf16"})
    batch = table([image_record(i, img, ok if i % 2 else bad) for i, (img, ok, bad) in enumerate(held_out[:30])])
    low, full = scores(bf16.process_table(batch), bf16.score_name("image")), scores(stage.process_table(batch),
                                                                                    stage.score_name("image"))
    assert np.abs(np.array(low) - np.array(full)).max() < 0.05
    assert np.corrcoef(low, full)[0, 1] > 0.99


def test_configs_that_cannot_score_are_refused_when_the_workflow_loads():
    with pytest.raises(ValidationError, match="needs model.pretrained"):
        ClipScoreConfig(model={"name": "ViT-B-32"})
    with pytest.raises(ValidationError, match="fp16 needs a GPU"):
        ClipScoreConfig(model={"checkpoint": "x", "precision": "fp16"})
    with pytest.raises(ValidationError, match="holds its own weights"):
        ClipScoreConfig(model={"checkpoint": "x", "pretrained": "laion2b_s34b_b79k"})


def test_a_checkpoint_directory_without_weights_is_an_error_not_a_random_model(tmp_path, trained):
    (tmp_path / "open_clip_config.json").write_bytes((trained["image_only"] / "open_clip_config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin"):
        stage_for(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_gpu_asked_for_without_cuda_is_an_error(trained):
    with pytest.raises(RuntimeError, match="no CUDA device"):
        stage_for(trained["image_only"], num_gpus=1)


def test_a_pretrained_tag_that_cannot_be_downloaded_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail now, not after ~60 s of retries
    stage = ClipScoreStage(ClipScoreConfig(model={"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}))
    with pytest.raises(RuntimeError, match=r"could not load ViT-B-32 with pretrained='laion2b_s34b_b79k'.*"
                                           r"give its path as model.pretrained"):
        stage.setup()
