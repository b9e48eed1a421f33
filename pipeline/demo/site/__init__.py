"""The offline demo web site: a seeded generator of pages, images and audio, with an exact answer key.

``build_site(root, seed=0, pages=200, trusted=400)`` writes a static site under ``root/site/`` (served by
``mmcurate.pipeline.demo.server.serve_site``) and, outside it, ``root/ground_truth.parquet`` (one row per asset
reference) and ``root/url_list.csv`` / ``.parquet`` (site paths + captions for about a third of the images; turn
them into absolute URLs for a running server with ``write_url_list(root, base_url, out_path)``). Same seed → same
bytes.

The **trusted section** is what a curated source would add (the data a filter model is trained on before it scores
the crawled pool): ``trusted`` clean synthetic shapes under ``site/trusted/``, every colour x shape, linked from no
page and listed only in ``root/trusted_list.csv`` / ``.parquet`` (``write_url_list(..., listing=TRUSTED_LIST)``).
Their ground-truth rows have ``trusted`` true (and ``page`` empty); leave them out when scoring a crawl. They are
drawn from their own RNG after the pool, so the pages and their media do not depend on ``trusted``.

Ground-truth ``label`` vocabulary (``Label``; one label per reference, the worst thing about it):

==================== ===================================================================================
clean                media is fine and the shown text describes it (synthetic shapes, scikit-image photos)
mismatched           shown text is another image's caption (wrong colour and wrong shape)
junk_text            "click here", "image", "IMG_2031.jpg", empty alt, no alt attribute
duplicate            byte-identical copy of ``duplicate_of`` at another URL
near_duplicate       resized / re-encoded / cropped / PNG copy of ``duplicate_of``, or a srcset 2x render
corrupt              random bytes, or an HTML error page, under an image name
truncated            a JPEG / PNG cut short
zero_byte            empty image file
decompression_bomb   PNG claiming 30000x30000 pixels, ~110 KB on disk
broken_audio         truncated FLAC, random bytes named .wav
malformed_subtitle   VTT with unparseable timestamps, or no WEBVTT header
not_utf8             caption on a Latin-1 page with no charset; or a Latin-1 VTT
broken_link          404
robots_blocked       under /private/ (robots.txt Disallow), including everything on /private/index.html
noai                 served with ``X-Robots-Tag: noai`` (site/_headers.json)
redirect_loop        /loop/a/<name> <-> /loop/b/<name> 302s
timeout              /slow/<name>: the server stalls (5 s) before answering
server_error         /error/<name>: 500
too_large            /huge/<name>: ~30 MB streamed without Content-Length
not_allowed_address  http://10.255.255.1/x.jpg: must be refused before any connection
==================== ===================================================================================
"""

from mmcurate.pipeline.demo.site.build import MIN_PAGES, SiteManifest, build_site
from mmcurate.pipeline.demo.site.ground_truth import (
    GROUND_TRUTH_SCHEMA,
    TRUSTED_LIST,
    URL_LIST,
    read_ground_truth,
    write_url_list,
)
from mmcurate.pipeline.demo.site.labels import Label

__all__ = [
    "GROUND_TRUTH_SCHEMA",
    "MIN_PAGES",
    "Label",
    "SiteManifest",
    "TRUSTED_LIST",
    "URL_LIST",
    "build_site",
    "read_ground_truth",
    "write_url_list",
]
