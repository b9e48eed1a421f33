"""One small demo site per test session (pages=30 and a 60-image trusted section build in about 1.5 s), shared by
the demo tests."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from mmcurate.pipeline.demo.site import SiteManifest, build_site
from mmcurate.pipeline.demo.server import SiteServer, serve_site

SMALL_PAGES = 30
SMALL_TRUSTED = 60  # one round of every colour x shape (48) and part of a second


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> SiteManifest:
    return build_site(tmp_path_factory.mktemp("demo-site"), seed=0, pages=SMALL_PAGES, trusted=SMALL_TRUSTED)


@pytest.fixture(scope="session")
def ground_truth(demo_site: SiteManifest) -> list[dict]:
    return pq.read_table(demo_site.ground_truth).to_pylist()


@pytest.fixture(scope="module")
def server(demo_site: SiteManifest) -> SiteServer:
    with serve_site(demo_site.root) as running:
        yield running
