"""The demo site's ``serve.demo_site`` config (validated by the demo's ``Service``, not by ``schemas/``)."""

from __future__ import annotations

from pydantic import Field

from mmcurate.schemas.stage_configs import StrictModel

MIN_PAGES = 25  # below this the fixed pages (index, audio, private, ...) leave too few articles
TRUSTED_IMAGES = 400  # the trusted section's default size (build_site's too)


class DemoSiteConfig(StrictModel):
    """Build the seeded demo web site and serve it on 127.0.0.1 for the length of the run."""

    seed: int = 0
    pages: int = Field(200, ge=MIN_PAGES)  # build_site's own floor: a smaller site fails here, named
    # clean images listed in trusted_list.csv and linked from no page, as a curated source would offer: what a
    # filter model is trained on before it scores the crawled pool (${demo_site.trusted_list})
    trusted: int = Field(TRUSTED_IMAGES, ge=0)
    # views of each of the site's photos in the trusted section (crops of 55-80 % per side, mirrored half the
    # time, captioned as the site captions the photo): a filter trained on shapes alone knows no photo
    trusted_photo_views: int = Field(0, ge=0)
    # captions (and a quarter as many transcripts) with planted personal data: e-mails, phones, cards, IBANs, IPs,
    # SSNs (pipeline/demo/site/personal.py), for the pii stage to remove
    personal_data: int = Field(0, ge=0)
    # None: a port derived from the run directory, the same on every invocation for one run dir (so URLs, keys
    # and saved crawl progress survive a restart) and different between run dirs (so two demos can run at once);
    # 0: an ephemeral port (URLs and keys then change every run, and a restart re-crawls)
    port: int | None = Field(None, ge=0, le=65535)
    root: str | None = None  # where the site is built; default: beside the run directory, <run dir>.site
