"""Scoring the pii stage on the labelled captions (tests/pii/captions.py): shared by the test and the benchmark."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from captions import ENTITIES, Caption

from mmcurate.schemas.record import RECORD_SCHEMA, empty_record


def caption_table(captions: list[Caption]) -> pa.Table:
    rows = [empty_record(key=f"c{i:05d}", caption=c.text, text=c.text, text_source="caption")
            for i, c in enumerate(captions)]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


@dataclass
class Score:
    recall: dict[str, float]
    precision: dict[str, float]
    planted: Counter
    clean: int
    clean_identical: int

    @property
    def clean_identical_fraction(self) -> float:
        return self.clean_identical / self.clean

    def lines(self) -> list[str]:
        out = [f"{'entity':<15} {'planted':>7} {'recall':>7} {'precision':>9}"]
        for e in ENTITIES:
            out.append(f"{e:<15} {self.planted[e]:>7} {self.recall[e]:>7.3f} {self.precision[e]:>9.3f}")
        out.append(f"clean captions byte-identical: {self.clean_identical}/{self.clean} "
                   f"({self.clean_identical_fraction:.3f})")
        return out


def score(captions: list[Caption], findings: list[list[tuple[str, int, int]]], outputs: list[str]) -> Score:
    """A planted value is found when a finding of its type covers it and the output no longer contains it;
    a finding is correct when it overlaps a planted value of its type."""
    planted, hit, claimed, correct = Counter(), Counter(), Counter(), Counter()
    clean = identical = 0
    for caption, found, out in zip(captions, findings, outputs):
        for entity, start, end in caption.spans:
            planted[entity] += 1
            value = caption.text[start:end]
            covered = any(t == entity and s <= start and end <= e for t, s, e in found)
            hit[entity] += covered and value not in out
        for t, s, e in found:
            claimed[t] += 1
            correct[t] += any(t == entity and s < end and start < e for entity, start, end in caption.spans)
        if caption.clean:
            clean += 1
            identical += out == caption.text
    return Score(
        recall={e: hit[e] / planted[e] if planted[e] else 1.0 for e in ENTITIES},
        precision={e: correct[e] / claimed[e] if claimed[e] else 1.0 for e in ENTITIES},
        planted=planted, clean=clean, clean_identical=identical,
    )
