"""Synthesise the demo site's speech clips with espeak-ng (run once by a maintainer; the output is committed).

espeak-ng is not installed on users' machines or CI, so the clips and ``speech.json`` live in the repository and
this script only documents (and can redo) how they were made::

    python -m mmcurate.pipeline.demo.assets.make_speech            # needs espeak-ng on PATH

Each sentence is spoken as 2-4 phrases, synthesised separately and concatenated with short silences. Because we
place every phrase ourselves, the start and end of each phrase in the final clip are known exactly; they become
the VTT/SRT cues of the demo site, so the ground-truth cue times are exact rather than estimated by an aligner.
Every phrase and gap is padded to a whole number of milliseconds so that cue times in ms are exact too.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger(__name__)

SPEECH_DIR = Path(__file__).resolve().parent / "speech"
SAMPLE_RATE = 16_000
SAMPLES_PER_MS = SAMPLE_RATE // 1000
LEAD_MS = 100  # silence before the first phrase and after the last
GAP_MS = 200  # silence between phrases
SILENCE_LEVEL = 0.01  # |amplitude| below this at a phrase's edges is trimmed (espeak pads its output)
VOICE = "en-us"

# (clip id, phrases). The first clips describe images the site generator draws (or real photos it shows), so
# they can narrate a figure; "cafe" carries non-ASCII text so its subtitles can be written as Latin-1.
SENTENCES: list[tuple[str, list[str]]] = [
    ("red_circle", ["This figure shows", "a red circle", "on a pale background."]),
    ("blue_square", ["Here you can see", "a blue square", "near the centre."]),
    ("yellow_star", ["The picture shows", "a yellow star."]),
    ("astronaut", ["This portrait shows", "an astronaut", "in her flight suit."]),
    ("cat", ["A cat named Chelsea", "looks at the camera."]),
    ("rain", ["Rain fell all morning,", "so the market opened late."]),
    ("bridge", ["Turn left at the bridge", "and follow the river."]),
    ("rocket", ["The rocket lifted off", "at dawn."]),
    ("ticket", ["Please keep your ticket", "until the end of the journey."]),
    ("coffee", ["Fresh coffee", "was served", "in a white cup."]),
    ("library", ["The library closes", "at nine on weekdays."]),
    ("diamonds", ["Seven purple diamonds", "were printed on the poster."]),
    ("cafe", ["Our café serves", "crème brûlée", "every Friday."]),
    ("clock", ["The old clock", "on the tower", "chimes every hour."]),
    ("garden", ["Tomatoes grow", "in the garden", "all summer."]),
]


def _synthesise(text: str) -> np.ndarray:
    """One phrase → mono float32 at SAMPLE_RATE, edges trimmed, length a whole number of milliseconds."""
    wav = subprocess.run(["espeak-ng", "-v", VOICE, "--stdout", text], check=True, capture_output=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) >= SILENCE_LEVEL)
    audio = audio[loud[0] : loud[-1] + 1]
    pad = (-len(audio)) % SAMPLES_PER_MS
    return np.concatenate([audio, np.zeros(pad, dtype=np.float32)])


def _silence(ms: int) -> np.ndarray:
    return np.zeros(ms * SAMPLES_PER_MS, dtype=np.float32)


def make_clip(clip_id: str, phrases: list[str], out_dir: Path) -> dict:
    """Write ``<clip_id>.flac`` and return its speech.json entry with exact per-phrase cue times."""
    parts: list[np.ndarray] = [_silence(LEAD_MS)]
    cues = []
    cursor_ms = LEAD_MS
    for i, phrase in enumerate(phrases):
        if i:
            parts.append(_silence(GAP_MS))
            cursor_ms += GAP_MS
        audio = _synthesise(phrase)
        length_ms = len(audio) // SAMPLES_PER_MS
        cues.append({"start_ms": cursor_ms, "end_ms": cursor_ms + length_ms, "text": phrase})
        parts.append(audio)
        cursor_ms += length_ms
    parts.append(_silence(LEAD_MS))
    cursor_ms += LEAD_MS
    clip = np.concatenate(parts)
    assert len(clip) == cursor_ms * SAMPLES_PER_MS
    path = out_dir / f"{clip_id}.flac"
    sf.write(path, clip, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return {
        "id": clip_id,
        "file": path.name,
        "text": " ".join(phrases),
        "sample_rate": SAMPLE_RATE,
        "duration_ms": cursor_ms,
        "cues": cues,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not on PATH; install it (apt-get install -y espeak-ng) to remake the clips")
    SPEECH_DIR.mkdir(parents=True, exist_ok=True)
    entries = [make_clip(clip_id, phrases, SPEECH_DIR) for clip_id, phrases in SENTENCES]
    (SPEECH_DIR / "speech.json").write_text(json.dumps({"clips": entries}, indent=2, ensure_ascii=False) + "\n")
    total = sum((SPEECH_DIR / e["file"]).stat().st_size for e in entries)
    logger.info("wrote %d clips, %.1f s, %d bytes", len(entries), sum(e["duration_ms"] for e in entries) / 1000, total)


if __name__ == "__main__":
    main()
