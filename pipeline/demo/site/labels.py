"""The ground-truth label vocabulary and the URL layout shared by the site generator and the demo server.

Every asset reference (an ``<img>``, a ``srcset`` candidate, an ``<audio>``) in the demo site gets exactly one
label: the single thing a perfect crawler + filter + deduper should conclude about it. A reference carries the
"worst" thing about it: a mismatched caption on a 404 image is ``broken_link`` (nothing can be judged).
"""

from __future__ import annotations

from enum import Enum


class Label(str, Enum):
    """Fixed vocabulary of ``ground_truth.parquet``'s ``label`` column (value = the string stored)."""

    # content is fine and the text describes it: keep
    CLEAN = "clean"
    # text problems: the media is fine
    MISMATCHED = "mismatched"  # shown text is another image's caption (differs in colour and shape)
    JUNK_TEXT = "junk_text"  # "click here", "image", "IMG_2031.jpg", empty or missing alt
    # dedupe: the media repeats another reference's media (``duplicate_of`` names the original's url)
    DUPLICATE = "duplicate"  # byte-identical file at another URL
    NEAR_DUPLICATE = "near_duplicate"  # resized / re-encoded / cropped copy, or a srcset 2x render of the src
    # media that cannot be decoded safely
    CORRUPT = "corrupt"  # random bytes, or an HTML error page, under an image name
    TRUNCATED = "truncated"  # a valid JPEG/PNG cut short
    ZERO_BYTE = "zero_byte"  # empty file
    DECOMPRESSION_BOMB = "decompression_bomb"  # PNG whose header claims 30000x30000 pixels, tiny on disk
    BROKEN_AUDIO = "broken_audio"  # truncated FLAC, random bytes named .wav
    # subtitles / encodings (the audio itself is fine)
    MALFORMED_SUBTITLE = "malformed_subtitle"  # VTT with unparseable timestamps or no WEBVTT header
    NOT_UTF8 = "not_utf8"  # the page (or the subtitle) holding the text is Latin-1 with no declared charset
    # fetching: the crawler must refuse or fail, and say why
    BROKEN_LINK = "broken_link"  # 404
    ROBOTS_BLOCKED = "robots_blocked"  # under /private/, disallowed by robots.txt (also every reference on it)
    NOAI = "noai"  # served with an ``X-Robots-Tag: noai`` header (see site/_headers.json)
    REDIRECT_LOOP = "redirect_loop"  # 302s back and forth forever
    TIMEOUT = "timeout"  # the server stalls before answering (longer than a 2 s timeout)
    SERVER_ERROR = "server_error"  # 500
    TOO_LARGE = "too_large"  # streams ~30 MB with no Content-Length
    NOT_ALLOWED_ADDRESS = "not_allowed_address"  # a private address (10.255.255.1): never connect


# URL layout. The generator writes references under these prefixes and the server implements them; they are
# here (not in the server) so that the generator does not import the server.
ROBOTS_DISALLOWED_PREFIX = "/private/"
LOOP_PREFIX = "/loop/"  # /loop/a/<name> -> 302 /loop/b/<name> -> 302 /loop/a/<name> -> ...
SLOW_PREFIX = "/slow/"  # stalls (default 5 s) before any byte of the answer
ERROR_PREFIX = "/error/"  # 500
HUGE_PREFIX = "/huge/"  # 200, streamed body of ~30 MB, no Content-Length
TRUSTED_PREFIX = "/trusted/"  # the trusted section: served, listed in trusted_list.csv, linked from no page
HEADERS_SIDECAR = "_headers.json"  # {path: {header: value}} extra response headers; never served itself
NOT_ALLOWED_URL = "http://10.255.255.1/x.jpg"
# Absolute links in the HTML are written with this placeholder host; the server substitutes its own base URL
# (the port is only known at serve time).
BASE_URL_TOKEN = "{{BASE_URL}}"
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
