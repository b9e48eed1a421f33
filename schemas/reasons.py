"""Machine-readable rejection reasons and the exception that carries them.

Every sample a stage drops becomes a reject row whose ``reason`` is one of these codes; ``detail`` is free text
for humans. Code that inspects input raises ``Rejected`` and the stage base class turns it into that row.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    # fetching
    HTTP_ERROR = "http_error"  # 4xx / 5xx; detail carries the status
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BODY_TOO_LARGE = "body_too_large"
    ADDRESS_NOT_ALLOWED = "address_not_allowed"  # private / loopback / link-local without allow-list
    DOMAIN_NOT_ALLOWED = "domain_not_allowed"
    SCHEME_NOT_ALLOWED = "scheme_not_allowed"
    ROBOTS_DISALLOWED = "robots_disallowed"
    X_ROBOTS_NOAI = "x_robots_noai"
    CONTENT_TYPE = "content_type"  # body is not the media type we went for
    NOT_IN_ARCHIVE = "not_in_archive"  # a WARC page references media the archive does not hold
    DOWNLOAD_ERROR = "download_error"  # any other downloader failure, detail says which
    DUPLICATE_REFERENCE = "duplicate_reference"  # the same media URL again on one page; its first reference carries it
    LIST_MALFORMED = "list_malformed"  # a URL list that cannot be read past some row; detail names file and row
    CRAWL_LIMIT = "crawl_limit"  # a page discovered but not fetched: beyond max_depth or max_pages
    HOST_FAILING = "host_failing"  # the host failed fetch.host_error_budget times in a row; detail: host and count
    CRAWL_DELAY_TOO_LONG = "crawl_delay_too_long"  # robots.txt Crawl-delay above fetch.max_crawl_delay_s
    # parsing
    NOT_UTF8 = "not_utf8"
    HTML_MALFORMED = "html_malformed"
    WARC_MALFORMED = "warc_malformed"  # truncated / corrupt WARC; records before the damage were read
    SUBTITLE_MALFORMED = "subtitle_malformed"
    SUBTITLE_MISSING = "subtitle_missing"
    # media
    IMAGE_CORRUPT = "image_corrupt"
    IMAGE_TOO_LARGE = "image_too_large"  # decompression bomb / pixel cap
    IMAGE_TOO_SMALL = "image_too_small"
    AUDIO_CORRUPT = "audio_corrupt"
    NO_MEDIA = "no_media"  # neither an image nor audio left to carry
    AUDIO_TOO_LONG = "audio_too_long"
    CLIP_TOO_SHORT = "clip_too_short"
    CUE_PAST_END = "cue_past_end"  # subtitle cue lies (mostly) beyond the end of its audio
    # text
    NO_TEXT = "no_text"
    JUNK_TEXT = "junk_text"
    TEXT_TOO_SHORT = "text_too_short"
    TEXT_TOO_LONG = "text_too_long"
    # models and global decisions
    CLIP_SCORE_LOW = "clip_score_low"  # below the stage's threshold; detail: the score, the threshold, the model
    SCORE_BELOW_CUT = "score_below_cut"  # outside a score_filter's top_fraction / min; detail: score, cut, rank
    NOT_SELECTED = "not_selected"  # false (or null) under a select stage's expression; detail: the expression
    # pipeline
    DUPLICATE_KEY = "duplicate_key"  # a second record with a key already written; the first (in sort order) wins
    INTERNAL_ERROR = "internal_error"  # an unexpected exception on this record; detail: type, message, trace digest
    HTML_TOO_COMPLEX = "html_too_complex"  # a page past the parser's element or time budget; detail says which
    # dedupe: the detail names the method, the survivor's key (or the eval item) and the distance, e.g.
    # "near_duplicate of <key> (phash hamming 3)"; the survivor is the group's best by the stage's survivor rule
    DUPLICATE = "duplicate"  # the same decoded pixels, audio samples or normalised text as the survivor
    NEAR_DUPLICATE = "near_duplicate"  # perceptual hash within the stage's Hamming radius of the survivor's
    SEMANTIC_DUPLICATE = "semantic_duplicate"  # embedding cosine above 1 - eps (SemDeDup)
    TEXT_DUPLICATE = "text_duplicate"  # MinHash Jaccard of the text at or above the stage's threshold
    EVAL_CONTAMINATION = "eval_contamination"  # matches an item of the evaluation set; detail names the item
    # human labels (the labels stage): the detail names the annotator, the time and the Label Studio task
    LABEL_REJECTED = "label_rejected"  # a person labelled image/audio and text "no match"
    LABEL_PERSONAL_DATA = "label_personal_data"  # a person flagged the sample as containing personal data
    # privacy
    PII = "pii"  # personal data of an entity type whose operator is drop; detail: the types and counts, no value
    BLOCKLIST = "blocklist"  # media on a sha256 or perceptual-hash blocklist; detail: the list and the distance


class Rejected(Exception):
    """Raised by per-sample code; the stage base class records it as a reject row and carries on."""

    def __init__(self, reason: Reason | str, detail: str = ""):
        self.reason = Reason(reason).value if not isinstance(reason, Reason) else reason.value
        self.detail = detail[:500]
        super().__init__(f"{self.reason}: {self.detail}")
