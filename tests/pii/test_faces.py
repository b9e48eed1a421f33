"""Faces in the demo's photos of people are found before the pii stage and not after it, at the sizes align
emits in the demo (256 px), by the same detector."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

from mmcurate.pipeline.demo.site.images import photo
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import FacesConfig, PiiConfig
from mmcurate.stages.pii.faces import FaceBlurrer, encode
from mmcurate.stages.pii.stage import PiiStage

PEOPLE = ("astronaut", "camera")  # the demo's photos with a person in them (pipeline/demo/site/images.PHOTOS)


def _at(name: str, side: int) -> bytes:
    pixels = cv2.imdecode(np.frombuffer(photo(name)[0], np.uint8), cv2.IMREAD_COLOR)
    scale = side / max(pixels.shape[:2])
    small = cv2.resize(pixels, (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale)),
                       interpolation=cv2.INTER_AREA)
    return encode(small, "jpg")


@pytest.mark.parametrize("side", [256])  # the demo's image_max_side
def test_the_detector_finds_faces_before_and_none_after(side):
    detector = FaceBlurrer(FacesConfig())
    records = [empty_record(key=name, image=_at(name, side), image_format="jpg", caption=name, text=name)
               for name in PEOPLE]
    stage = PiiStage(PiiConfig())
    stage.setup()
    out = stage.process_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA)).to_pylist()
    for record, row in zip(records, out):
        before = detector.detect(cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_COLOR))
        after = detector.detect(cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR))
        print(f"{record['key']} at {side} px: {len(before)} face(s) before, {len(after)} after")
        assert before and not after, (record["key"], before, after)
        assert row["_reason"] is None
        assert dict(row["scores"])["pii.faces"] == len(before)
        assert dict(row["pii"])["FACE"] == len(before)


def test_an_image_without_a_face_keeps_its_bytes():
    plain = encode(np.full((120, 160, 3), 200, np.uint8), "jpg")
    stage = PiiStage(PiiConfig())
    stage.setup()
    row = stage.process_table(pa.Table.from_pylist(
        [empty_record(key="p", image=plain, image_format="jpg", caption="grey", text="grey")], schema=RECORD_SCHEMA,
    )).to_pylist()[0]
    assert row["image"] == plain and dict(row["scores"])["pii.faces"] == 0.0
