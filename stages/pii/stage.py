"""The ``pii`` stage: personal data out of every text field, faces blurred, and nothing of the original left in
what the stage writes.

Per batch: the distinct strings of every configured field (``caption``, ``alt``, ``title``, ``figcaption``,
``transcript``, the chosen ``text``; the URL columns with ``urls``) are analysed together (``PiiAnalyzer``: one
engine per actor, one nlp pass per batch, a trigger pre-filter) and rewritten by each entity's operator
(``Redactor``). A sample holding an entity whose operator is ``drop`` is rejected with reason ``pii``, its detail
naming the types and counts, never a value. The raw subtitle file (``subtitles``, the cue text align parsed) does
not leave the stage. Per sample, the ``pii`` column maps each entity type found (and ``FACE``) to its count; the
runner sums it into the stage's ``stats.json`` entry. Faces: ``FaceBlurrer``; ``scores`` gets ``pii.faces``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import EXTENSION_COLUMNS
from mmcurate.schemas.stage_configs import PiiConfig
from mmcurate.stages.base import BatchStage, Decisions

URL_FIELDS = ("url", "page_url", "image_url", "audio_url", "subtitles_url", "transcript_url")
PII_TYPE = EXTENSION_COLUMNS["pii"]()


class PiiStage(BatchStage[PiiConfig]):
    analyzer: Any = None

    def setup(self) -> None:
        from mmcurate.stages.pii.analyzer import PiiAnalyzer
        from mmcurate.stages.pii.faces import FaceBlurrer
        from mmcurate.stages.pii.redact import Redactor

        self.analyzer = PiiAnalyzer(self.config)
        self.redactor = Redactor(self.config)
        self.faces = FaceBlurrer(self.config.faces) if self.config.faces.enabled else None

    def fields(self, batch: pa.Table) -> list[str]:
        wanted = (*self.config.fields, *(URL_FIELDS if self.config.urls else ()))
        return [name for name in wanted if name in batch.column_names]

    def process_batch(self, batch: pa.Table) -> pa.Table:
        try:
            return self._redacted(batch)
        except Rejected:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised without its message, which may quote the text
            # the base turns it into an internal_error row whose detail, and the run log, carry the message
            raise RuntimeError(f"{type(err).__name__} in the pii stage (message withheld: it may quote the "
                               f"text)").with_traceback(err.__traceback__) from None

    def _redacted(self, batch: pa.Table) -> pa.Table:
        if self.analyzer is None:
            self.setup()
        fields = self.fields(batch)
        columns = {name: batch[name].to_pylist() for name in fields}
        distinct = sorted({v for values in columns.values() for v in values if v})
        findings = dict(zip(distinct, self.analyzer.analyze(distinct)))
        redacted = {text: self.redactor.redact(text, found) for text, found in findings.items()}
        decisions = Decisions(batch)
        counts: list[Counter[str]] = []
        for i in range(batch.num_rows):
            # one count per distinct string of a record: ``text`` repeats the field it was chosen from
            strings = {columns[name][i] for name in fields if columns[name][i]}
            counts.append(Counter(f.entity_type for s in strings for f in findings[s]))
        for name in fields:
            decisions.set(name, [None if v is None else redacted.get(v, v) for v in columns[name]], pa.string())
        decisions.set("subtitles", pa.nulls(batch.num_rows, pa.binary()))
        dropped = [bool(set(c) & self.redactor.drop) for c in counts]
        details = [", ".join(f"{t} x{n}" for t, n in sorted(c.items())) for c in counts]
        decisions.reject(dropped, Reason.PII, [f"personal data: {d}" for d in details])
        if self.faces is not None and "image" in batch.column_names:
            self._blur_faces(batch, decisions, counts)
        decisions.set("pii", [sorted(c.items()) for c in counts], PII_TYPE)
        return decisions.outcomes()

    def _blur_faces(self, batch: pa.Table, decisions: Decisions, counts: list[Counter[str]]) -> None:
        images = batch["image"].to_pylist()
        formats = batch["image_format"].to_pylist()
        blurred, faces = [], []
        for i, (data, fmt) in enumerate(zip(images, formats)):
            if data is None:
                blurred.append(None)
                faces.append(None)
                continue
            result = self.faces.blur(data, fmt or "jpg")
            blurred.append(result.image if result.image is not None else data)
            faces.append(float(result.faces))
            if result.faces:
                counts[i]["FACE"] += result.faces
            if result.remaining:  # the detector still sees a face: the image must not be emitted
                decisions.reject([j == i for j in range(batch.num_rows)], Reason.PII,
                                 f"face still detected after {result.faces} blurred")
        decisions.set("image", blurred, pa.binary())
        decisions.add_scores("pii.faces", faces)
