"""The runner starts the services it is given, for the length of a run, and substitutes their variables.

Beside the demo tests because the demo is the one service the CLI gives; the service here is the test's own, so
the runner is seen to know nothing of the demo.
"""

from __future__ import annotations

import functools
import io
import json
import socket
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from pydantic import Field

from mmcurate.pipeline.services import Service
from mmcurate.schemas.stage_configs import StrictModel

pytestmark = pytest.mark.integration

WORKFLOW = """
name: served
serve:
  pictures: {{count: 2, port: {port}}}
stages:
  - stage: crawl
    url_lists: [{{path: "${{pictures.url_list}}", caption_column: caption}}]
    fetch: {{timeout_s: 2, deadline_s: 5, allow_networks: ["127.0.0.0/8"]}}
  - stage: align
    image_max_side: 64
  - stage: shard
"""


class PicturesConfig(StrictModel):
    count: int = Field(1, ge=1)
    port: int = 0  # fixed by the test: the URL list's bytes (its URLs) stay the same from run to run
    side: int = 48  # left out of the workflow: the fingerprint must still cover it


class Pictures:
    """Serves ``count`` grey JPEGs on 127.0.0.1 and names their URL list; records what each run gave it."""

    def __init__(self) -> None:
        self.started: list[tuple[PicturesConfig, Path]] = []
        self.requests = 0
        self.addresses: list[tuple[str, int]] = []

    @contextmanager
    def serve(self, config: PicturesConfig, run_root: Path):
        self.started.append((config, run_root))
        site = run_root / "pictures"
        site.mkdir(parents=True, exist_ok=True)
        for i in range(config.count):
            buf = io.BytesIO()
            Image.new("RGB", (config.side, config.side), (40 * i, 90, 160)).save(buf, "JPEG", quality=90)
            (site / f"p{i}.jpg").write_bytes(buf.getvalue())
        service = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                service.requests += 1

        httpd = ThreadingHTTPServer(("127.0.0.1", config.port), functools.partial(Handler, directory=str(site)))
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        self.addresses.append(httpd.server_address[:2])
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        url_list = run_root / "pictures.csv"
        url_list.write_text("url,caption\n" + "".join(f"{base}/p{i}.jpg,picture number {i}\n"
                                                     for i in range(config.count)))
        try:
            yield {"pictures.url_list": str(url_list)}
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join()

    def service(self) -> Service:
        return Service(config=PicturesConfig, placeholders={"pictures.url_list": "pictures.csv"}, serve=self.serve)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused(address: tuple[str, int]) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(address) != 0


def test_a_given_service_is_served_for_the_run_and_its_validated_config_is_fingerprinted(ray_session, tmp_path):
    import pyarrow.parquet as pq

    from mmcurate.pipeline.runner import run_workflow

    pictures, workflow, run = Pictures(), tmp_path / "served.yaml", tmp_path / "run"
    port = free_port()
    workflow.write_text(WORKFLOW.format(port=port))
    first = run_workflow(workflow, run, services={"pictures": pictures.service()})
    assert [s.status for s in first.stages] == ["ran", "ran", "ran"]
    assert pictures.started == [(PicturesConfig(count=2, port=port), run)]  # validated, once, with the run directory
    assert refused(pictures.addresses[-1])  # stopped when the run ended
    index = pq.read_table(sorted(run.glob("shards/*.parquet"))).to_pylist()  # a row per tar member
    assert sorted(r["caption"] for r in index if r["member"].endswith(".jpg")) == ["picture number 0", "picture number 1"]
    # what the fingerprint hashed: the config as validated, the default left out of the file included
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"][0]["covers"]["serve"] == {"pictures": {"count": 2, "port": port, "side": 48}}

    fetched = pictures.requests
    again = run_workflow(workflow, run, services={"pictures": pictures.service()})
    assert [s.status for s in again.stages] == ["reused", "reused", "reused"] and pictures.requests == fetched
    assert len(pictures.started) == 2  # served again: a service lives as long as one run
