"""The offline demo: build the seeded sample site, serve it on 127.0.0.1 for the length of a run.

``DEMO_SITE`` is the ``Service`` the CLI hands the runner as ``demo_site``: ``workflows/demo.yaml`` names
``serve: demo_site`` and refers to the served site through its variables: ``${demo_site.base_url}``,
``${demo_site.url_list}`` (an absolute URL list written for this server) and ``${demo_site.trusted_list}`` (the
same for the trusted section, the clean images no page links to).
The site is served on a port derived from the run directory (or ``serve.demo_site.port``), so its URLs, the
sample keys made from them and the crawl progress saved by a killed run are the same on every invocation.

Everything of the demo lives in this folder: ``config.py`` (``DemoSiteConfig``), ``site/`` (the generator and its
answer key), ``server.py`` (the HTTP server with the failure modes) and ``assets/`` (the committed speech clips).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmcurate.pipeline.demo.config import DemoSiteConfig
from mmcurate.pipeline.services import Service

__all__ = ["DEMO_PLACEHOLDERS", "DEMO_SITE", "DemoSiteConfig", "demo_port", "demo_site_root", "demo_workflow_path",
           "ensure_site", "prepared_demo_site"]

log = logging.getLogger("mmcurate.demo")

# what the variables stand for while a workflow is validated, before the site is served
DEMO_PLACEHOLDERS = {
    "demo_site.base_url": "http://127.0.0.1:1",
    "demo_site.url_list": "url_list.csv",
    "demo_site.trusted_list": "trusted_list.csv",
}


def demo_workflow_path(name: str = "demo") -> Path:
    """A demo workflow as installed with the package (``workflows/<name>.yaml`` in the repository)."""
    from importlib.resources import files

    path = Path(str(files("mmcurate.workflows") / f"{name}.yaml"))
    if not name.startswith("demo") or not path.is_file():
        raise FileNotFoundError(f"no installed demo workflow {name!r} (demo, demo_filter)")
    return path


def ensure_site(root: Path, seed: int, pages: int, trusted: int, trusted_photo_views: int = 0,
                personal_data: int = 0) -> None:
    """Build the site unless this exact one (seed, pages, trusted) is already there; the build is deterministic."""
    from mmcurate.pipeline.demo.site import build_site

    stamp = root / "site_build.json"
    wanted = {"seed": seed, "pages": pages, "trusted": trusted}
    if trusted_photo_views:  # absent when 0: a site built before the field existed is still this one
        wanted["trusted_photo_views"] = trusted_photo_views
    if personal_data:
        wanted["personal_data"] = personal_data
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return
    log.info("demo: building the sample site (seed %d, %d pages, %d trusted images) in %s", seed, pages, trusted, root)
    build_site(root, seed=seed, pages=pages, trusted=trusted, trusted_photo_views=trusted_photo_views,
               personal_data=personal_data)
    from mmcurate.pipeline.rundir import atomic_write_json

    atomic_write_json(stamp, wanted)


def demo_site_root(run_root: Path, config: DemoSiteConfig | None = None) -> Path:
    """Where the site is built: ``serve.demo_site.root``, else beside the run directory (``<run dir>.site``).

    Not inside it: the site is the web the demo stands in for, not something a run wrote, and it carries the
    planted personal data in clear; a run directory purged of raw text (``retain_raw_text: false``) must hold
    none of it."""
    if config is not None and config.root:
        return Path(config.root)
    run_root = Path(os.path.realpath(run_root))
    return run_root.parent / f"{run_root.name}.site"


def demo_port(run_root: Path) -> int:
    """A port in 18000–27999 (below Linux's ephemeral range) derived from the run directory's real path."""
    digest = hashlib.sha256(os.path.realpath(run_root).encode("utf-8")).digest()
    return 18000 + int.from_bytes(digest[:4], "big") % 10000


@contextmanager
def prepared_demo_site(config: DemoSiteConfig, run_root: Path) -> Iterator[dict[str, str]]:
    from mmcurate.pipeline.demo.server import serve_site
    from mmcurate.pipeline.demo.site import TRUSTED_LIST, URL_LIST, write_url_list

    root = demo_site_root(run_root, config)
    ensure_site(root, config.seed, config.pages, config.trusted, config.trusted_photo_views,
                config.personal_data)
    port = demo_port(run_root) if config.port is None else config.port
    try:
        server = serve_site(root, port=port, access_log=root / "access.log")
    except OSError as err:
        raise OSError(
            f"demo: cannot serve on 127.0.0.1:{port} ({err.strerror}); is another demo running on this run dir? "
            f"Pick another port with --set serve.demo_site.port=N (the same N on every re-run of this run dir)"
        ) from err
    with server:
        for listing in (URL_LIST, TRUSTED_LIST):
            write_url_list(root, server.base_url, root / f"{listing}.{server.port}.csv", listing=listing)
        log.info("demo: serving %s at %s", root / "site", server.base_url)
        yield _variables(root, server.base_url, server.port)


def _variables(root: Path, base_url: str, port: int) -> dict[str, str]:
    from mmcurate.pipeline.demo.site import TRUSTED_LIST, URL_LIST

    return {"demo_site.base_url": base_url,
            **{f"demo_site.{listing}": str(root / f"{listing}.{port}.csv") for listing in (URL_LIST, TRUSTED_LIST)}}


def demo_variables(config: DemoSiteConfig, run_root: Path) -> dict[str, str]:
    """The ${demo_site.*} values a run in ``run_root`` gets, computed without building or serving anything."""
    root = demo_site_root(run_root, config)
    port = demo_port(run_root) if config.port is None else config.port
    return _variables(root, f"http://127.0.0.1:{port}", port)


DEMO_SITE = Service(config=DemoSiteConfig, placeholders=DEMO_PLACEHOLDERS, serve=prepared_demo_site,
                    variables=demo_variables)
