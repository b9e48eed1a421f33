"""The demo's Service: what the CLI hands the runner as ``demo_site`` builds, serves and names the site."""

from __future__ import annotations

import csv
import json
import urllib.request

import pytest
from pydantic import ValidationError

from mmcurate.pipeline.demo import DEMO_SITE, DemoSiteConfig, demo_site_root
from mmcurate.pipeline.demo.site import MIN_PAGES, build_site


def rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fetch(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        response.read()
        return response.status


def test_serving_yields_its_placeholders_variables_with_both_lists_absolute_on_the_server(tmp_path):
    config = DemoSiteConfig(pages=MIN_PAGES, trusted=12, port=0)
    with DEMO_SITE.serve(config, tmp_path) as variables:
        assert set(variables) == set(DEMO_SITE.placeholders)
        base = variables["demo_site.base_url"]
        assert fetch(base + "/index.html") == 200
        trusted = rows(variables["demo_site.trusted_list"])
        assert len(trusted) == 12 and all(r["url"].startswith(base + "/trusted/") and r["caption"] for r in trusted)
        assert all(fetch(r["url"]) == 200 for r in trusted)
        listed = rows(variables["demo_site.url_list"])
        assert listed and not {r["url"] for r in listed} & {r["url"] for r in trusted}
    assert (demo_site_root(tmp_path) / "site" / "trusted").is_dir()  # built beside the run root: <run root>.site


def test_the_build_stamp_covers_trusted_so_another_count_rebuilds_and_the_same_does_not(tmp_path):
    root = demo_site_root(tmp_path)
    config = DemoSiteConfig(pages=MIN_PAGES, trusted=5, port=0)
    with DEMO_SITE.serve(config, tmp_path):
        pass
    assert json.loads((root / "site_build.json").read_text()) == {"seed": 0, "pages": MIN_PAGES, "trusted": 5}
    built = (root / "ground_truth.parquet").stat().st_mtime_ns
    with DEMO_SITE.serve(config, tmp_path):
        pass
    assert (root / "ground_truth.parquet").stat().st_mtime_ns == built
    with DEMO_SITE.serve(config.model_copy(update={"trusted": 7}), tmp_path) as variables:
        assert len(rows(variables["demo_site.trusted_list"])) == 7
    assert len(list((root / "site" / "trusted").iterdir())) == 7


def test_the_config_refuses_what_the_builder_would_and_shares_its_defaults(tmp_path):
    import inspect

    assert DemoSiteConfig().trusted == inspect.signature(build_site).parameters["trusted"].default == 400
    with pytest.raises(ValidationError, match="trusted"):
        DEMO_SITE.config.model_validate({"trusted": -1})
    with pytest.raises(ValidationError, match=f"pages\n.*greater than or equal to {MIN_PAGES}"):
        DEMO_SITE.config.model_validate({"pages": MIN_PAGES - 1})
    with pytest.raises(ValueError, match=f"pages must be at least {MIN_PAGES}"):
        build_site(tmp_path, pages=MIN_PAGES - 1)
