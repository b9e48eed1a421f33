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


def test_a_second_blur_of_an_image_comes_from_the_cache_with_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCURATE_CACHE_DIR", str(tmp_path))
    image = _at("astronaut", 256)
    first = FaceBlurrer(FacesConfig()).blur(image, "jpg")
    assert first.faces >= 1 and first.image is not None
    again = FaceBlurrer(FacesConfig())  # a new worker: the search must not run
    again.detect = lambda pixels: pytest.fail("searched an image the cache knows")
    second = again.blur(image, "jpg")
    assert (second.faces, second.remaining, second.image) == (first.faces, first.remaining, first.image)
    assert (tmp_path / "faces.sqlite3").is_file()


def test_other_detector_settings_do_not_read_the_cache_of_these(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCURATE_CACHE_DIR", str(tmp_path))
    image = _at("camera", 256)
    assert FaceBlurrer(FacesConfig()).blur(image, "jpg").faces >= 1
    without_profile = FaceBlurrer(FacesConfig(profile=False))
    searched = []
    search = without_profile.detect
    without_profile.detect = lambda pixels: searched.append(1) or search(pixels)
    assert without_profile.blur(image, "jpg").faces == 0 and searched  # the cameraman is a profile


def test_an_unusable_cache_directory_means_every_image_is_searched(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MMCURATE_CACHE_DIR", str(blocker / "cache"))
    blurrer = FaceBlurrer(FacesConfig())
    assert blurrer.cache is None
    assert blurrer.blur(_at("astronaut", 256), "jpg").faces >= 1


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCURATE_CACHE_DIR", str(tmp_path))
    assert FaceBlurrer(FacesConfig(cache=False)).blur(_at("astronaut", 256), "jpg").faces >= 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("side", [192, 256])
def test_the_demo_photos_without_a_person_get_no_face(side, tmp_path, monkeypatch):
    from mmcurate.pipeline.demo.site.images import PHOTOS

    monkeypatch.setenv("MMCURATE_CACHE_DIR", str(tmp_path))
    blurrer = FaceBlurrer(FacesConfig())
    found = {name: blurrer.blur(_at(name, side), "jpg").faces for name in PHOTOS}
    print(f"at {side} px: {found}")
    assert {name for name, n in found.items() if n} == set(PEOPLE)
    assert all(found[name] == 1 for name in PEOPLE)


def test_a_blurrer_built_on_one_thread_caches_from_another(tmp_path, monkeypatch):
    """A Ray actor runs ``setup`` and its batches on different threads: the cache must still be written."""
    import sqlite3
    import threading

    monkeypatch.setenv("MMCURATE_CACHE_DIR", str(tmp_path))
    blurrer = FaceBlurrer(FacesConfig())
    worker = threading.Thread(target=lambda: blurrer.blur(_at("astronaut", 256), "jpg"))
    worker.start()
    worker.join()
    assert blurrer.cache is not None and blurrer.cache.db is not None
    assert sqlite3.connect(tmp_path / "faces.sqlite3").execute("SELECT count(*) FROM faces").fetchone() == (1,)
