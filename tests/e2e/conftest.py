"""The data-filtering-network demo, run once per session and shared: the filter's ground-truth test judges it, the
label round trip (``test_label_round_trip.py``, after it in file order) labels it and runs it again.

``mmcurate demo --workflow demo_filter`` is the real command, with its own server and Ray, run from outside the
repository (the workflow finds its trainer config beside itself)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import free_port, mmcurate_command, user_env

# Mismatched samples grow with the site (~2 per 10 pages): at 400 pages, crawled whole (the workflow's max_pages
# is 400), ~80 of them judge precision and recall to within ~1.5 %. (1000 pages, the README's figures, cost the
# suite ~5 min more: the filter's model is trained on the trusted section, the same at any size.)
PAGES = 400
MAX_PAGES = 500


@dataclass(frozen=True)
class FilterDemo:
    run: Path
    cwd: Path
    demo_args: tuple[str, ...]  # what ran it: the same arguments re-run it (same site, same port, same stages)

    def rerun(self, log_name: str) -> subprocess.CompletedProcess:
        with open(self.cwd / log_name, "wb") as log:
            return subprocess.run([*mmcurate_command(), *self.demo_args], cwd=self.cwd, env=user_env(), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=1800)


@pytest.fixture(scope="session")
def filter_demo_run(tmp_path_factory) -> FilterDemo:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    run = elsewhere / "demo"
    args = ("demo", "--workflow", "demo_filter", "--run-dir", str(run), "--pages", str(PAGES),
            "--set", f"crawl.max_pages={MAX_PAGES}", "--set", f"serve.demo_site.port={free_port()}")
    demo = FilterDemo(run=run, cwd=elsewhere, demo_args=args)
    code = demo.rerun("demo.log").returncode
    assert code == 0, (elsewhere / "demo.log").read_text(errors="replace")[-5000:]
    return demo
