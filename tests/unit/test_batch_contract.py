"""The batch side of the stage contract without Ray: Decisions, the retry of a raising batch record by record,
and what a stage's fingerprint covers."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import ClipScoreConfig, StageConfig
from mmcurate.stages.base import BatchStage, Decisions


class FailsOn(BatchStage[StageConfig]):
    """Raises on any batch holding a record whose text is "bad"; keeps the others."""

    def process_batch(self, batch):
        if "bad" in batch["text"].to_pylist():
            raise ValueError("cannot score 'bad'")
        return Decisions(batch).add_scores("t.len", [len(t) for t in batch["text"].to_pylist()]).outcomes()


def _batch(*texts):
    return pa.Table.from_pylist([empty_record(key=f"k{i}", text=t, image=b"x") for i, t in enumerate(texts)],
                                schema=RECORD_SCHEMA)


@pytest.mark.parametrize("texts", [("bad",), ("ok", "bad", "fine")])
def test_only_the_records_that_raise_become_internal_error_rows_even_alone_in_a_batch(texts):
    out = FailsOn(StageConfig(), "fails").process_table(_batch(*texts))
    assert out.num_rows == len(texts) and out["_first"].to_pylist() == [True] * len(texts)
    for text, reason, detail, scores in zip(texts, out["_reason"].to_pylist(), out["_detail"].to_pylist(),
                                            out["scores"].to_pylist()):
        if text == "bad":
            assert reason == "internal_error" and "ValueError: cannot score 'bad'" in detail
        else:
            assert reason is None and dict(scores) == {"t.len": float(len(text))}


def test_decisions_refuse_a_column_an_outcome_would_drop():
    with pytest.raises(KeyError, match="neither a record column nor an extension column"):
        Decisions(_batch("a")).set("phsh", [1])


def test_a_checkpoint_rewritten_in_place_changes_the_clip_score_fingerprint(tmp_path):
    from mmcurate.pipeline.fingerprint import FileDigests, stage_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "open_clip_config.json").write_text("{}")
    (model / "open_clip_pytorch_model.bin").write_bytes(b"weights 1")
    config = ClipScoreConfig(model={"checkpoint": str(model)})

    def fingerprint(run_root=None):
        return stage_fingerprint(kind="clip_score", config=config, upstream=["u"], serve=None, run_root=run_root,
                                 files=FileDigests(tmp_path / "digests.json"))[0]

    before = fingerprint()
    (model / "open_clip_pytorch_model.bin").write_bytes(b"weights 2, retrained")
    assert fingerprint() != before
    # a model another stage of the same run publishes is that stage's output: its fingerprint covers it
    assert fingerprint(run_root=str(tmp_path)) == stage_fingerprint(
        kind="clip_score", config=config, upstream=["u"], serve=None, run_root=str(tmp_path),
        files=FileDigests(tmp_path / "other.json"))[0]
