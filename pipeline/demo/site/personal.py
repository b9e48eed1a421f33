"""Personal data planted in the demo site's captions and transcripts, so the demo's funnel shows the pii stage at
work. Every value is valid in its format (Luhn, mod-97, libphonenumber, SSA rules); ``PLANTED`` is what a test
greps the run directory for. Drawn with an RNG of its own: the rest of the site is the same bytes with or
without it."""

from __future__ import annotations

import random

from mmcurate.pipeline.demo.site.assets import AssetRef
from mmcurate.pipeline.demo.site.labels import Label

# (phrase, value): the phrase holds the value once
CAPTION_PHRASES = (
    ("prints from maria_smith@example.com", "maria_smith@example.com"),
    ("call (808) 634-0968 to book", "(808) 634-0968"),
    ("paid with card 5181-9482-1993-5186", "5181-9482-1993-5186"),
    ("donations to IBAN FR61 2760 1895 5597 9711 4710 497", "FR61 2760 1895 5597 9711 4710 497"),
    ("uploaded from 93.144.2.38", "93.144.2.38"),
    ("ssn 880-66-0885", "880-66-0885"),
    ("contact jonaskowalski@web.de", "jonaskowalski@web.de"),
    ("phone +49 30 2037872", "+49 30 2037872"),
)
TRANSCRIPT_PHRASES = (
    ("write to anna.garcia@example.com", "anna.garcia@example.com"),
    ("or call +49 89 6837052", "+49 89 6837052"),
    ("from 2001:7625:4d45:2a7c:5a39:4d76:76c3:7777", "2001:7625:4d45:2a7c:5a39:4d76:76c3:7777"),
)
PLANTED = tuple(value for _, value in CAPTION_PHRASES + TRANSCRIPT_PHRASES)


def plant(refs: list[AssetRef], n: int, seed: int) -> list[tuple[str, str]]:
    """Append a phrase with personal data to ``n`` clean captions (images) and, every fourth one, to the last
    cue of a clean clip's subtitles; return (url, value) of each plant."""
    if n <= 0:
        return []
    rng = random.Random(f"personal-data-{seed}")
    captions = [r for r in refs if r.kind == "image" and r.label is Label.CLEAN and r.shown_text
                and r.markup in ("img", "figure")]
    clips = [r for r in refs if r.kind == "audio" and r.label is Label.CLEAN and r.subtitle_body and r.cues]
    planted: list[tuple[str, str]] = []
    for i, ref in enumerate(rng.sample(captions, min(n, len(captions)))):
        phrase, value = CAPTION_PHRASES[i % len(CAPTION_PHRASES)]
        ref.shown_text = f"{ref.shown_text}, {phrase}"
        planted.append((ref.url, value))
    for i, ref in enumerate(rng.sample(clips, min(max(1, n // 4), len(clips)))):
        phrase, value = TRANSCRIPT_PHRASES[i % len(TRANSCRIPT_PHRASES)]
        last = ref.cues[-1].text
        body = ref.subtitle_body.decode("utf-8")
        at = body.rfind(last)
        ref.subtitle_body = (body[:at] + f"{last}, {phrase}" + body[at + len(last):]).encode("utf-8")
        planted.append((ref.subtitle_url, value))
    return planted
