"""AlignStage as a plain callable over an Arrow batch (no Ray): every record and every cue is accounted for."""

import io

import numpy as np
import pyarrow as pa
import soundfile as sf
from PIL import Image

from mmcurate.schemas.record import REASON_COLUMN, RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import AlignConfig
from mmcurate.stages.align import AlignStage


def png(size=(64, 48), colour="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def wav(seconds: float, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


VTT = b"""WEBVTT

00:00:00.000 --> 00:00:01.000
the first phrase

00:00:01.200 --> 00:00:02.000
<v Ann>the second phrase</v>

00:00:05.000 --> 00:00:06.000
spoken after the recording ends
"""


def run(records):
    stage = AlignStage(AlignConfig(image_max_side=32, audio_rate=16000))
    stage.setup()
    table = pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
    return stage.process_table(table).to_pylist()


def test_image_caption_priority_and_normalisation():
    rows = run([empty_record(key="a", image=png(), alt="click here", figcaption="a red rectangle on white")])
    assert len(rows) == 1 and rows[0][REASON_COLUMN] is None
    row = rows[0]
    assert row["text"] == "a red rectangle on white" and row["text_source"] == "figcaption"
    assert row["image_format"] == "jpg" and max(row["image_width"], row["image_height"]) == 32


def test_junk_only_and_corrupt_image_become_reasoned_rejects():
    rows = run([
        empty_record(key="junk", image=png(), alt="click here"),
        empty_record(key="broken", image=b"\xff\xd8\xff not a jpeg", alt="a fine caption"),
        empty_record(key="nothing"),
    ])
    reasons = {r["key"]: r[REASON_COLUMN] for r in rows}
    assert reasons == {"junk": "junk_text", "broken": "image_corrupt", "nothing": "no_media"}
    assert all(r["image"] is None for r in rows)  # reject rows never carry media


def test_audio_cut_into_one_row_per_cue():
    rows = run([empty_record(key="talk", audio=wav(3.0), subtitles=VTT, subtitles_url="http://x/t.vtt")])
    assert len(rows) == 3  # one outcome per cue: kept + rejected = cues
    kept = [r for r in rows if r[REASON_COLUMN] is None]
    assert [r["text"] for r in kept] == ["the first phrase", "the second phrase"]
    assert all(r["parent"] == "talk" and r["audio_rate"] == 16000 for r in kept)
    assert abs(kept[0]["audio_seconds"] - 1.0) < 1e-3 and abs(kept[1]["clip_start"] - 1.2) < 1e-9
    decoded, rate = sf.read(io.BytesIO(kept[1]["audio"]))
    assert rate == 16000 and len(decoded) == round(0.8 * 16000)
    [late] = [r for r in rows if r[REASON_COLUMN] is not None]
    assert late[REASON_COLUMN] == "cue_past_end" and late["parent"] == "talk"
    assert len({r["key"] for r in rows}) == 3


def test_figure_with_narration_carries_image_audio_and_caption():
    rows = run([empty_record(key="fig", image=png(), audio=wav(1.0), figcaption="a red rectangle being described")])
    [row] = rows
    assert row[REASON_COLUMN] is None and row["image"] and row["audio"] and row["audio_seconds"] == 1.0
    assert row["text_source"] == "figcaption"


def test_audio_without_text_and_broken_subtitles():
    rows = run([
        empty_record(key="mute", audio=wav(1.0)),
        empty_record(key="badvtt", audio=wav(1.0), subtitles=b"WEBVTT\n\n00:00:xx --> 00:00:01.000\nhi\n"),
        empty_record(key="latin1", audio=wav(1.0), subtitles="WEBVTT\n\n00:00:00.000 --> 00:00:00.500\ncaf\xe9\n".encode("latin-1")),
    ])
    assert {r["key"]: r[REASON_COLUMN] for r in rows} == {
        "mute": "subtitle_missing", "badvtt": "subtitle_malformed", "latin1": "not_utf8"}
