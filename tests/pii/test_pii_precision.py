"""The pii stage on the labelled captions: every planted value of every pattern entity found and gone from the
output, and clean captions (hard negatives: ISBNs, dates, versions, prices, order numbers) left byte-identical."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from captions import ENTITIES, labelled_captions  # noqa: E402
from labelled import caption_table, score  # noqa: E402

from mmcurate.schemas.stage_configs import FacesConfig, PiiConfig  # noqa: E402
from mmcurate.stages.pii.stage import PiiStage  # noqa: E402


@pytest.fixture(scope="module")
def stage():
    stage = PiiStage(PiiConfig(faces=FacesConfig(enabled=False)))
    stage.setup()
    return stage


def test_the_labelled_set_is_what_it_claims():
    captions = labelled_captions(600, seed=0)
    assert len(captions) == 600
    assert sum(c.clean for c in captions) == 200  # a third: hard negatives
    assert {e for c in captions for e, _, _ in c.spans} == set(ENTITIES)
    assert all(c.text[s:e] for c in captions for _, s, e in c.spans)
    assert labelled_captions(600, seed=0) == captions  # a pure function of the seed
    values = [(e, c.text[s:e_]) for c in captions for e, s, e_ in c.spans]
    phones = [v for e, v in values if e == "PHONE_NUMBER"]
    # values as people write them: typographic separators, the German slash, numbers one after the other
    for mark in ("\u2013", "\u00a0", "\u202f", "/"):
        assert any(mark in v for v in phones), mark
    assert any(mark in v for e, v in values if e == "US_SSN" for mark in "\u2013")
    assert any(sum(e == "PHONE_NUMBER" for e, _, _ in c.spans) == 2 for c in captions)


def test_recall_per_entity_and_clean_captions_byte_identical(stage):
    captions = labelled_captions(600, seed=0)
    outcomes = stage.process_table(caption_table(captions))
    outputs = outcomes["caption"].to_pylist()
    assert outcomes["text"].to_pylist() == outputs
    found = [[(f.entity_type, f.start, f.end) for f in fs] for fs in stage.analyzer.analyze([c.text for c in captions])]
    result = score(captions, found, outputs)
    print("\n" + "\n".join(result.lines()))
    for entity in ENTITIES:
        assert result.recall[entity] >= 0.99, (entity, result.recall[entity])
    assert result.clean_identical_fraction >= 0.95
    # what stays is the redacted text and the counts: every planted value gone, its type counted
    counts = [dict(c or []) for c in outcomes["pii"].to_pylist()]
    for caption, out, count in zip(captions, outputs, counts):
        for entity, s, e in caption.spans:
            assert caption.text[s:e] not in out
            assert count.get(entity, 0) >= 1
    assert outcomes["_reason"].null_count == outcomes.num_rows


def test_a_second_seed_holds_too(stage):
    captions = labelled_captions(600, seed=1)
    outputs = stage.process_table(caption_table(captions))["caption"].to_pylist()
    found = [[(f.entity_type, f.start, f.end) for f in fs] for fs in stage.analyzer.analyze([c.text for c in captions])]
    result = score(captions, found, outputs)
    print("\n" + "\n".join(result.lines()))
    assert min(result.recall.values()) >= 0.99
    assert result.clean_identical_fraction >= 0.95
