"""No EXIF, XMP, IPTC, GPS, ICC or comment block in any image the pipeline emits, on every path (align with
``image_format`` jpg, png and keep; a face blurred by pii; the shard writer), and no tag in emitted audio: every
emitted file is read back (Pillow, mutagen)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from PIL import Image, PngImagePlugin

from mmcurate.pipeline.demo.site.images import photo
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import AlignConfig, PiiConfig, ShardConfig
from mmcurate.stages.align import AlignStage
from mmcurate.stages.base import split_outcomes
from mmcurate.stages.pii.metadata import audio_tags, image_metadata
from mmcurate.stages.pii.stage import PiiStage
from mmcurate.stages.shard import ShardStage


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010E] = "holiday at 12 Elm Street"  # ImageDescription
    exif[0x013B] = "Jane Roe"  # Artist
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 12.5)  # GPSLatitude
    return exif


def jpeg_with_everything(pixels: Image.Image) -> bytes:
    out = io.BytesIO()
    pixels.save(out, "JPEG", exif=_exif(), comment=b"shot by jane.roe@example.com",
                xmp=b"<x:xmpmeta><dc:creator>Jane Roe</dc:creator></x:xmpmeta>", icc_profile=b"\0" * 128)
    data = out.getvalue()
    # an IPTC block (Photoshop APP13) after SOI: what newsroom photos carry
    iptc = b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00\x00\x00\x00\x0c" + b"\x1c\x02\x50\x00\x08Jane Roe"
    segment = b"\xff\xed" + (len(iptc) + 2).to_bytes(2, "big") + iptc
    return data[:2] + segment + data[2:]


def png_with_everything(pixels: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Roe")
    info.add_itxt("Comment", "call +1 415 555 0100")
    out = io.BytesIO()
    pixels.save(out, "PNG", pnginfo=info, exif=_exif())
    return out.getvalue()


def tagged_flac() -> bytes:
    import tempfile

    import mutagen.flac

    with tempfile.NamedTemporaryFile(suffix=".flac") as file:
        t = np.arange(16000 * 2) / 16000
        sf.write(file.name, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="FLAC")
        tags = mutagen.flac.FLAC(file.name)
        tags["ARTIST"] = "Jane Roe"
        tags["COMMENT"] = "recorded at 12 Elm Street"
        tags.save()
        return open(file.name, "rb").read()


def test_the_fixtures_do_carry_metadata():
    face = Image.open(io.BytesIO(photo("astronaut")[0])).convert("RGB")
    assert {"exif", "gps", "xmp", "iptc", "comment", "icc_profile"} <= set(image_metadata(jpeg_with_everything(face)))
    assert {"exif", "gps", "text:Author", "text:Comment"} <= set(image_metadata(png_with_everything(face)))
    assert {"tag:artist", "tag:comment"} <= {t.lower() for t in audio_tags(tagged_flac())}


@pytest.mark.parametrize("image_format", ["jpg", "png", "keep"])
def test_every_emitted_image_and_clip_reads_back_without_metadata(tmp_path, image_format):
    face = Image.open(io.BytesIO(photo("astronaut")[0])).convert("RGB")
    plain = Image.new("RGB", (120, 90), "teal")
    records = [
        empty_record(key="k0", image=jpeg_with_everything(face), caption="an astronaut, mail jane.roe@example.com"),
        empty_record(key="k1", image=png_with_everything(face), caption="the same astronaut as a png"),
        empty_record(key="k2", image=jpeg_with_everything(plain), caption="a teal rectangle"),
        empty_record(key="k3", image=png_with_everything(plain), caption="a teal rectangle as a png"),
        empty_record(key="k4", audio=tagged_flac(), transcript="a tone recorded for the test"),
    ]
    align = AlignStage(AlignConfig(image_format=image_format, image_max_side=256))
    align.setup()
    aligned, refused = split_outcomes(align.process_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA)))
    assert refused.num_rows == 0 and aligned.num_rows == 5
    pii = PiiStage(PiiConfig())
    pii.setup()
    outcomes = pii.process_table(aligned)
    kept, refused = split_outcomes(outcomes)
    assert refused.num_rows == 0
    faces = {row["key"]: dict(row["scores"]).get("pii.faces") for row in kept.to_pylist()}
    assert faces["k0"] >= 1 and faces["k1"] >= 1 and faces["k2"] == 0  # the blur path re-encodes two of them
    emitted = 0
    for row in kept.to_pylist():
        if row["image"] is not None:
            assert image_metadata(row["image"]) == [], (row["key"], row["image_format"])
            emitted += 1
        if row["audio"] is not None:
            assert audio_tags(row["audio"]) == [], row["key"]
            emitted += 1
    assert emitted == 5
    infos, refused_rows = ShardStage(ShardConfig()).write_partition(kept, tmp_path, "shard")
    assert not refused_rows and infos
    read = 0
    for info in infos:
        with tarfile.open(info.path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                if member.name.endswith((".jpg", ".png")):
                    assert image_metadata(data) == [], member.name
                    read += 1
                elif member.name.endswith(".flac"):
                    assert audio_tags(data) == [], member.name
                    read += 1
                elif member.name.endswith(".json"):
                    assert b"jane.roe@example.com" not in data
    assert read == 5
