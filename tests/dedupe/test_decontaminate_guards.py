"""Eval-set decontamination's guards, without Ray: the semantic match-fraction guard, unreadable eval files,
the image suffixes, hidden files, the explain parse, eval paths inside the run directory, model identity."""

from __future__ import annotations

import pytest

from mmcurate.schemas.stage_configs import SemanticEvalConfig
from mmcurate.stages.base import InputError
from mmcurate.stages.dedupe.decontaminate import check_semantic_fraction


def _semantic(**kw) -> SemanticEvalConfig:
    return SemanticEvalConfig(model={"checkpoint": "/models/tiny"}, **kw)


def test_semantic_matches_over_the_max_fraction_fail_the_stage_naming_count_and_eps():
    with pytest.raises(InputError, match=r"604 of 1795 records .* eps 0.05.* too loose"):
        check_semantic_fraction(604, 1795, _semantic())  # the demo's figures under its tiny filter model


def test_semantic_matches_within_the_max_fraction_pass_and_the_guard_can_be_turned_off():
    check_semantic_fraction(17, 1795, _semantic())  # under 1 %
    check_semantic_fraction(604, 1795, _semantic(max_fraction=None))
    check_semantic_fraction(604, 1795, _semantic(max_fraction=0.5))
    check_semantic_fraction(0, 0, _semantic())
    assert _semantic().max_fraction == 0.01


def test_semantic_count_counts_semantic_rows_of_every_batch():
    import pyarrow as pa

    from mmcurate.stages.dedupe.decontaminate import semantic_count

    class Drops:  # a Ray dataset's iter_batches, as summarize calls it
        def iter_batches(self, batch_format, columns):
            assert columns == ["method"]
            yield pa.table({"method": ["semantic", "phash", "semantic"]})
            yield pa.table({"method": pa.array([], pa.string())})
            yield pa.table({"method": ["semantic"]})

    assert semantic_count(Drops()) == 3


def _load(tmp_path, **eval_set):
    from mmcurate.schemas.stage_configs import EvalSetConfig, TextDedupeConfig
    from mmcurate.stages.dedupe.decontaminate import load_eval_set

    return load_eval_set(EvalSetConfig(**eval_set), TextDedupeConfig(), None, 0.0, None)


def test_a_bad_eval_shard_is_an_input_error_naming_it(tmp_path):
    shard = tmp_path / "eval-000000.tar"
    shard.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(InputError, match=r"decontaminate.shards: .*eval-000000.tar is not a readable tar shard"):
        _load(tmp_path, shards=(str(shard),))


def test_a_texts_file_that_is_not_utf8_is_an_input_error_naming_it(tmp_path):
    texts = tmp_path / "eval.txt"
    texts.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"decontaminate.texts: .*eval.txt is not UTF-8"):
        _load(tmp_path, texts=str(texts))
