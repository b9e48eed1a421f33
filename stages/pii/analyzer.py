"""Presidio over a batch of texts, with the precision work that keeps clean captions byte-identical.

Presidio's default recognizers over a blank spaCy pipeline find every planted e-mail, phone, card, IBAN, IP and
SSN, but also dates, licence, bank and passport numbers in captions that hold none (86 of 200 clean captions
survived untouched; README, "pii"). What this module adds, each measured on ``tests/pii/captions.py``:

* only the recognizers of the configured entities are loaded, phone numbers only for the configured regions;
* a cheap trigger per entity (``TRIGGERS``: an ``@`` for an e-mail, seven digits for a phone, ...) decides which
  recognizers a text needs; a text no trigger fires on never reaches the engine (with an NER model, names need
  no digit: every text goes);
* weak patterns need a context word near them (``PiiEntityConfig.context``), checked on the text's own words,
  since the blank pipeline has no lemmas for Presidio's context enhancer; a finding right after a
  ``not_after`` word (``version 10.0.19.1``) is dropped, and so is one inside an ``allow_list`` match (ISBNs);
* the nlp pass runs once per batch (``process_batch``), as Presidio's ``BatchAnalyzerEngine`` does;
* every recognizer reads the text with its typographic separators made ASCII (``808–634–0968``, a no-break or
  thin space: ``PLAIN_SEPARATORS``), one character for one, so a value written with them is found and every
  offset holds in the original text.

Checksums are Presidio's own: Luhn for cards, mod-97 for IBANs, libphonenumber's validity for phones, the SSA's
rules for SSNs, address parsing for IPs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmcurate.schemas.stage_configs import PiiConfig

# An entity's recognizer runs on a text only if its trigger matches somewhere in it. A trigger must match every
# value the recognizer could find (it only saves time): an entity without one always runs.
TRIGGERS: dict[str, re.Pattern[str]] = {
    "EMAIL_ADDRESS": re.compile(r"@"),
    "PHONE_NUMBER": re.compile(r"\d(?:\D{0,3}\d){6}"),
    "CREDIT_CARD": re.compile(r"\d(?:[ -]?\d){11}"),
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}[ ]?\d{2}"),
    "IP_ADDRESS": re.compile(r"\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]|::"),
    "US_SSN": re.compile(r"\d{3}\D?\d{2}\D?\d{4}|\d{5}-\d{4}|\d{3}-\d{6}"),
    "DATE_TIME": re.compile(r"\d"),
    "US_DRIVER_LICENSE": re.compile(r"\d"),
    "US_BANK_NUMBER": re.compile(r"\d{8}"),
    "US_PASSPORT": re.compile(r"\d{8}"),
    "US_ITIN": re.compile(r"9\d{2}"),
    "UK_NHS": re.compile(r"\d{3}"),
    "MAC_ADDRESS": re.compile(r"[0-9A-Fa-f]{2}[:.-][0-9A-Fa-f]{2}"),
    "UUID": re.compile(r"[0-9A-Fa-f]{8}-"),
    "URL": re.compile(r"\.[A-Za-z]|://"),
    "CRYPTO": re.compile(r"[13b][a-km-zA-HJ-NP-Z1-9]{20}"),
    "MEDICAL_LICENSE": re.compile(r"\d{7}"),
}

_WORD = re.compile(r"[\w.#]+")

# Separators that Presidio's ASCII patterns (SSNs, cards, ...) and libphonenumber (thin spaces) do not read, each to
# its ASCII twin: the dashes (hyphen, non-breaking hyphen, figure dash, en and em dash, minus sign, their small
# and full-width forms) and the spaces (no-break, the typographic ones, narrow no-break, ideographic). One
# character for one: a finding's offsets in the translated text are its offsets in the original.
PLAIN_SEPARATORS = str.maketrans({
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
    **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000",
                    " "),
})


@dataclass(frozen=True)
class Finding:
    entity_type: str
    start: int
    end: int
    score: float


def _blank_pipeline(language: str) -> str:
    """A blank spaCy pipeline on disk (Presidio loads pipelines by name or path), made once per machine."""
    import spacy

    root = Path(os.environ.get("MMCURATE_CACHE_DIR", Path.home() / ".cache" / "mmcurate")) / "spacy"
    target = root / f"blank-{language}-{spacy.__version__}"
    if not (target / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root))
        spacy.blank(language).to_disk(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another worker made it first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _offline_tldextract() -> None:
    # the e-mail recognizer's tldextract would fetch the public-suffix list on first use; use the bundled snapshot
    import tldextract

    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())


def build_engine(config: PiiConfig):  # -> presidio_analyzer.AnalyzerEngine
    """One AnalyzerEngine with the recognizers the config's entities need (but phones), over a blank pipeline or
    ``ner_model``. A named model that is not installed fails here, with how to install one."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from mmcurate.stages.base import InputError

    _offline_tldextract()
    if config.ner_model is None:
        model = _blank_pipeline(config.language)
    else:
        import spacy.util

        if not (spacy.util.is_package(config.ner_model) or Path(config.ner_model, "meta.json").is_file()):
            raise InputError(f"pii: ner_model {config.ner_model!r} is not an installed spaCy pipeline; install one "
                             f"(pip install <its wheel>, or python -m spacy download {config.ner_model}) or give "
                             f"its directory")
        model = config.ner_model
    nlp = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": config.language, "model_name": model}],
    }).create_engine()
    registry = RecognizerRegistry(supported_languages=[config.language])
    with _quiet("presidio-analyzer"):  # a line per recognizer of every other language, per actor
        registry.load_predefined_recognizers(languages=[config.language], nlp_engine=nlp)
    wanted = set(config.entities)
    for recognizer in list(registry.recognizers):
        spacy_ner = type(recognizer).__name__ == "SpacyRecognizer"
        if (spacy_ner and config.ner_model is None) or not wanted & set(recognizer.supported_entities):
            registry.remove_recognizer(recognizer.name)
    if "CREDIT_CARD" in wanted:
        registry.remove_recognizer("CreditCardRecognizer")
        for recognizer in _card_recognizers(config.language):
            registry.add_recognizer(recognizer)
    # phones are found after the rest, outside their spans (PiiAnalyzer.analyze)
    registry.remove_recognizer("PhoneRecognizer")
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=[config.language],
                          context_aware_enhancer=_no_context_enhancer())


def _no_context_enhancer():
    """Presidio's context enhancer reads lemmas, which a blank pipeline does not make (it then matched nothing
    and cost a fifth of the time): ``PiiAnalyzer`` checks context words on the text's own words instead."""
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer

    class NoContext(ContextAwareEnhancer):
        def __init__(self) -> None:
            super().__init__(context_similarity_factor=0, min_score_with_context_similarity=0,
                             context_prefix_count=0, context_suffix_count=0)

        def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
            return raw_results

    return NoContext()


# A run of characters phone numbers are written with (on the text after ``PLAIN_SEPARATORS``), however long: the
# matcher looks only inside such runs, and finds each of several numbers written one after another in one run
_PHONE_WINDOW = re.compile(r"[+(]?\d(?:[ ()./-]{0,3}\d){5,}")


def _phone_windows(text: str, skip: list[tuple[int, int]], start: int = 0,
                   end: int | None = None) -> Iterator[tuple[int, int]]:
    """The phone windows of ``text[start:end]``, cut around the ``skip`` spans (stronger findings): a phone written
    next to a card or an IP in one run of digits is still searched, and never reaches into it."""
    for window in _PHONE_WINDOW.finditer(text, start, len(text) if end is None else end):
        first, last = window.span()
        cuts = sorted((a, b) for a, b in skip if a < last and first < b)
        if not cuts:
            yield first, last
            continue
        at = first
        for a, b in [*cuts, (last, last)]:
            if a > at:
                yield from (piece.span() for piece in _PHONE_WINDOW.finditer(text, at, a))
            at = max(at, b)


_SHORTEST, _LONGEST = 7, 17  # digits of a phone number, at least and at most (country code included)


def _digits(text: str, spans: list[tuple[int, int]]) -> int:
    return sum(c.isdigit() for a, b in spans for c in text[a:b])


def _spans(numbers: list) -> list[tuple[int, int]]:
    return [(match.start, match.end) for match, _ in numbers]


def _isbn_shaped(raw: str) -> bool:
    """An ISBN written in its hyphenated groups with a valid check digit (``0-306-40615-2``,
    ``978-3-16-148410-0``): a book, even without the word ISBN before it, not a phone."""
    groups = raw.split("-")
    digits = "".join(groups)
    if not digits.isdigit() or len(groups[-1]) != 1:
        return False
    if len(digits) == 10 and len(groups) == 4:
        return sum((10 - i) * int(d) for i, d in enumerate(digits)) % 11 == 0
    if len(digits) == 13 and len(groups) == 5 and digits[:3] in ("978", "979"):
        return sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0
    return False


def _digit_run(raw: str) -> bool:
    """Every digit one more (or one less) than the one before, ``0123456789``, ``(123) 456-7890``: a keypad, a
    sequence or the placeholder number of every form, not anybody's phone."""
    digits = [int(c) for c in raw if c.isdigit()]
    steps = {(b - a) % 10 for a, b in zip(digits, digits[1:])}
    return len(steps) == 1 and steps <= {1, 9}


def _phone_recognizer(regions: tuple[str, ...]):
    """Presidio's phone recognizer (libphonenumber's matcher, leniency VALID) run per digit window, the regions
    in order until the numbers found there cover all its digits, instead of every region over the whole text: the
    same numbers, found in a fraction of the time (the matcher was three quarters of the stage's time). A number
    that is a hyphenated ISBN with its check digit, or a run of consecutive digits, is not one."""
    import phonenumbers
    from presidio_analyzer import EntityRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class WindowedPhoneRecognizer(PhoneRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None, skip=()):
            found = list(skip)
            numbers = [n for start, end in _phone_windows(text, found) for n in self._window(text, start, end, found)]
            return EntityRecognizer.remove_duplicates(
                [self._get_recognizer_result(match, text, region, nlp_artifacts) for match, region in numbers])

        def _window(self, text, start, end, found):
            """The numbers of one window (``found`` gets their spans)."""
            numbers = self._numbers(text, start, end, found)
            digits = _digits(text, [(start, end)])
            if _digits(text, _spans(numbers)) == digits:
                found += _spans(numbers)
                return numbers
            if 2 * _SHORTEST <= digits <= 2 * _LONGEST:
                # two numbers one after another with spaces inside them (``020 7946 0958 07911 123456``, ``+49 30
                # 2037872 212.555.0199``) read to the matcher as one invalid number, or a German one that swallows
                # the next group: a split at a space into two numbers that each cover their half wins
                for gap in re.finditer(r" +", text[start:end]):
                    left = self._numbers(text, start, start + gap.start(), found)
                    right = self._numbers(text, start + gap.end(), end, found)
                    if left and right and _digits(text, _spans(left + right)) == digits:
                        found += _spans(left + right)
                        return left + right
            found += _spans(numbers)
            if numbers:
                # digits left beside the numbers found (``+44 20 7946 0958 808-634-0968``: the matcher finds the
                # second inside what it reads as one invalid number): what is left of the run is searched on its own
                for piece in list(_phone_windows(text, found, start, end)):
                    numbers += self._window(text, *piece, found)
            return numbers

        def _numbers(self, text, start, end, found):
            """The numbers in ``text[start:end]`` outside the ``found`` spans, with the region that reads each: the
            regions in turn until they cover all its digits."""
            # one character of the text either side, as the matcher sees it over the whole text: it refuses a
            # number glued to a letter, a currency sign or a %
            lo = start - 1 if start and not text[start - 1].isdigit() else start
            hi = end + 1 if end < len(text) and not text[end].isdigit() else end
            chunk, digits = text[lo:hi], _digits(text, [(start, end)])
            numbers: list[tuple[phonenumbers.PhoneNumberMatch, str]] = []
            for region in self.supported_regions:
                for match in phonenumbers.PhoneNumberMatcher(chunk, region, leniency=self.leniency):
                    raw = match.raw_string.strip()  # a number found after a slash keeps the space before it
                    at = lo + match.start + match.raw_string.index(raw)
                    if (any(at < y and x < at + len(raw) for x, y in (*_spans(numbers), *found))
                            or _isbn_shaped(raw) or _digit_run(raw)):
                        continue
                    numbers.append((phonenumbers.PhoneNumberMatch(at, raw, match.number), region))
                if _digits(text, _spans(numbers)) == digits:
                    break  # every digit of the window is in a number found: no other region can add one
            return numbers

    return WindowedPhoneRecognizer(supported_regions=regions)


def _card_recognizers(language: str) -> list:
    """Presidio's card pattern and Mastercard's 2-series (2221-2720, issued since 2017, which Presidio's patterns
    miss), Luhn-checked by the card recognizer's own validation, and written with one separator: a space and a
    hyphen in one match (``4934 617-616-6569``, Luhn-valid by chance) are the end of one phone number and the next."""
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    class OneSeparatorCards(CreditCardRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return not {" ", "-"} <= set(pattern_text) and super().validate_result(pattern_text)

    two_series = Pattern("Mastercard 2-series", r"\b2(?:22[1-9]|2[3-9]\d|[3-6]\d{2}|7[01]\d|720)[- ]?\d{4}[- ]?\d{4}"
                                                r"[- ]?\d{4}\b", 0.3)
    return [OneSeparatorCards(supported_language=language, name="CreditCardRecognizer"),
            OneSeparatorCards(patterns=[two_series], supported_language=language, name="MastercardTwoSeries")]


class PiiAnalyzer:
    """Findings of the configured entities in a batch of texts, after the precision filters."""

    def __init__(self, config: PiiConfig):
        self.config = config
        self.engine = build_engine(config)
        self.phones = _phone_recognizer(config.phone_regions) if "PHONE_NUMBER" in config.entities else None
        loaded = {e for r in self.engine.registry.recognizers for e in r.supported_entities}
        loaded |= {"PHONE_NUMBER"} if self.phones else set()
        self.entities = [e for e in config.entities if e in loaded]
        missing = set(config.entities) - loaded
        if missing:
            from mmcurate.stages.base import InputError

            raise InputError(f"pii: no recognizer finds {sorted(missing)} with "
                             f"{'ner_model ' + config.ner_model if config.ner_model else 'the blank pipeline'}")
        self.allow = [re.compile(p) for p in config.allow_list]
        self.skipped = 0  # texts no trigger fired on (never analysed)

    def needed(self, text: str) -> list[str]:
        """The entities whose trigger fires on ``text``."""
        return [e for e in self.entities if e not in TRIGGERS or TRIGGERS[e].search(text)]

    def analyze(self, texts: list[str]) -> list[list[Finding]]:
        """One list of findings per text, in text order, their offsets those of the text as given."""
        found: list[list[Finding]] = [[] for _ in texts]
        texts = [text.translate(PLAIN_SEPARATORS) if text else text for text in texts]
        todo = [(i, needed) for i, text in enumerate(texts) if text and (needed := self.needed(text))]
        self.skipped += len(texts) - len(todo)
        if not todo:
            return found
        artifacts = self.engine.nlp_engine.process_batch([texts[i] for i, _ in todo], self.config.language)
        for (i, needed), (_, nlp_artifacts) in zip(todo, artifacts):
            others = [e for e in needed if e != "PHONE_NUMBER"]
            results = self.engine.analyze(texts[i], language=self.config.language, entities=others,
                                          nlp_artifacts=nlp_artifacts, score_threshold=0.0) if others else []
            if self.phones is not None and len(others) < len(needed):
                # a phone (score 0.4) overlapping a stronger finding loses to it: its windows are not searched
                strong = [(r.start, r.end) for r in results if r.score > self.phones.SCORE]
                results += self.phones.analyze(texts[i], ["PHONE_NUMBER"], nlp_artifacts, skip=strong)
            found[i] = self._precise(texts[i], results) if results else []
        return found

    def _precise(self, text: str, results) -> list[Finding]:
        allowed = [m.span() for pattern in self.allow for m in pattern.finditer(text)]
        words = [(m.start(), m.end(), m.group().lower().strip(".#")) for m in _WORD.finditer(text)]
        kept: list[Finding] = []
        for r in results:
            rule = self.config.entities[r.entity_type]
            if any(a <= r.start and r.end <= b for a, b in allowed):
                continue
            before = [w for s, e, w in words if e <= r.start][-self.config.context_window:]
            after = [w for s, e, w in words if s >= r.end][: self.config.context_window]
            if rule.not_after and set(before[-2:]) & set(rule.not_after):
                continue
            has_context = any(w.startswith(c) for w in before + after for c in rule.context)
            plain = r.score >= rule.min_score and (has_context or not rule.context_required)
            if plain or (has_context and r.score >= rule.context_min_score):
                kept.append(Finding(r.entity_type, r.start, r.end, r.score))
        return _without_overlaps(kept)


def _without_overlaps(findings: list[Finding]) -> list[Finding]:
    """Overlapping findings: the higher score wins, then the longer span (a phone pattern reaching over an SSN
    must not rename it)."""
    ordered = sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start))
    chosen: list[Finding] = []
    for f in ordered:
        if all(f.end <= c.start or f.start >= c.end for c in chosen):
            chosen.append(f)
    return sorted(chosen, key=lambda f: f.start)
