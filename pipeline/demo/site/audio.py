"""Audio and subtitle bytes for the demo site, from the committed espeak-ng clips (see demo/assets/make_speech.py).

Cue times come straight from ``speech.json`` (exact, in whole milliseconds); the subtitle writers here only
format them, so the ground truth and the served subtitles cannot disagree.
"""

from __future__ import annotations

import functools
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

SPEECH_DIR = Path(__file__).resolve().parent.parent / "assets" / "speech"


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str
    sample_rate: int
    duration_ms: int
    cues: tuple[Cue, ...]


@functools.lru_cache(maxsize=1)
def load_clips(speech_dir: Path = SPEECH_DIR) -> dict[str, Clip]:
    listing = json.loads((speech_dir / "speech.json").read_text(encoding="utf-8"))
    return {
        entry["id"]: Clip(
            id=entry["id"],
            path=speech_dir / entry["file"],
            text=entry["text"],
            sample_rate=entry["sample_rate"],
            duration_ms=entry["duration_ms"],
            cues=tuple(Cue(c["start_ms"], c["end_ms"], c["text"]) for c in entry["cues"]),
        )
        for entry in listing["clips"]
    }


def flac_bytes(clip: Clip) -> bytes:
    return clip.path.read_bytes()


def wav_bytes(clip: Clip) -> bytes:
    """The same samples as 16-bit PCM WAV (libsndfile writes no timestamps, so this is reproducible)."""
    samples, rate = sf.read(clip.path, dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _timestamp(ms: int, sep: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def vtt_text(cues: tuple[Cue, ...]) -> str:
    blocks = [f"{_timestamp(c.start_ms, '.')} --> {_timestamp(c.end_ms, '.')}\n{c.text}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


def srt_text(cues: tuple[Cue, ...]) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start_ms, ',')} --> {_timestamp(c.end_ms, ',')}\n{c.text}\n" for i, c in enumerate(cues, 1)
    ]
    return "\n".join(blocks)


def vtt_bad_timestamps(cues: tuple[Cue, ...]) -> str:
    """Has the header, but every timing line is unparseable VTT (SRT commas, seconds past 59): no cue survives."""
    blocks = [
        f"{_timestamp(c.start_ms, ',')} --> 00:00:{60 + i:02d}{_timestamp(c.end_ms, ',')[8:]}\n{c.text}\n"
        for i, c in enumerate(cues)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def vtt_missing_header(cues: tuple[Cue, ...]) -> str:
    return vtt_text(cues).removeprefix("WEBVTT\n\n")


def random_wav(rng: random.Random, n: int = 6000) -> bytes:
    """Random bytes under a .wav name: no RIFF header, nothing decodes."""
    return rng.randbytes(n)
