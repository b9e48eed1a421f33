"""Driver peak memory of the breadth-first page crawl against the size of the site it crawls.

    .venv/bin/python tests/bench/bench_crawl_memory.py [--pages 50 200 800] [--seed 0]

For each site size, this process builds the demo site and serves it on 127.0.0.1; a fresh Python process, the
driver, starts Ray, runs one small warm-up crawl (Ray Data's first job loads its modules into the driver), then
crawls the whole site with ``crawl_pages`` and turns the pages into candidates with ``candidates_from_pages`` (the
two calls the crawl stage makes), sampling its resident set every 5 ms. Prints one line per size: pages fetched,
the driver's peak RSS over its whole life (``VmHWM``: Ray start, warm-up and crawl), and how far the crawl raised
it above the RSS it started from. The issue-7 goal: the largest size's peak within 1.5x of the smallest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The resident set's high-water mark of this process image (``VmHWM``). Not ``ru_maxrss``: Linux carries
    that across exec from the forking parent, which here holds the demo site it built."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


class PeakSampler:
    """The highest RSS seen by a thread that samples it every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def crawl_once(base_url: str, work: Path, max_pages: int) -> tuple[int, int, int]:
    from mmcurate.schemas.stage_configs import CrawlConfig, FetchConfig
    from mmcurate.stages.crawl.pages import candidates_from_pages, crawl_pages

    config = CrawlConfig(seeds=(f"{base_url}/index.html",), max_depth=20, max_pages=max_pages,
                         fetch=FetchConfig(timeout_s=2, deadline_s=5, allow_networks=("127.0.0.0/8",)))
    pages = crawl_pages(config, work / "pages")
    media, failed = candidates_from_pages(work / "pages", work / "fetch", work / "refused", config.chunk_rows,
                                          max_refs_per_page=config.max_refs_per_page)
    return pages, media, failed


def measure(base_url: str) -> dict[str, float]:
    """The driver: one crawl of the site at ``base_url``, in this process (a fresh interpreter per size)."""
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp:
        root = Path(tmp)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _temp_dir="/tmp/ray-bench-crawl")
        peak_init = peak_rss_bytes()
        crawl_once(base_url, root / "warmup", max_pages=3)
        peak_before = peak_rss_bytes()
        start = rss_bytes()
        began = time.monotonic()
        with PeakSampler() as sampler:
            fetched, media, failed = crawl_once(base_url, root / "crawl", max_pages=100_000)
        seconds = time.monotonic() - began
        peak_crawl = peak_rss_bytes()
        ray.shutdown()
    return {"fetched": fetched, "media_refs": media, "failed": failed,
            "peak_init_mib": peak_init / 2**20, "peak_before_crawl_mib": peak_before / 2**20,
            "peak_mib": peak_crawl / 2**20,
            "start_rss_mib": start / 2**20, "crawl_peak_rss_mib": sampler.peak / 2**20,
            "crawl_rise_mib": (sampler.peak - start) / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--driver", help=argparse.SUPPRESS)  # internal: crawl this base URL, print JSON
    args = parser.parse_args()
    if args.driver:
        print("RESULT " + json.dumps(measure(args.driver)), flush=True)
        return
    from mmcurate.pipeline.demo.server import serve_site
    from mmcurate.pipeline.demo.site import build_site

    for pages in args.pages:
        with tempfile.TemporaryDirectory(prefix="bench-site-") as tmp:
            build_site(Path(tmp), seed=args.seed, pages=pages, trusted=0)  # no page links to the trusted section
            with serve_site(Path(tmp), slow_seconds=0.2, huge_bytes=1024 * 1024) as server:
                out = subprocess.run([sys.executable, __file__, "--driver", server.base_url],
                                     capture_output=True, text=True, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"pages={pages} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        print(f"site_pages: {pages}  fetched: {r['fetched']}  media_refs: {r['media_refs']}  "
              f"failed: {r['failed']}  driver_peak_rss_mib: {r['peak_mib']:.1f} "
              f"(after ray.init {r['peak_init_mib']:.1f}, after the warm-up {r['peak_before_crawl_mib']:.1f})  "
              f"crawl_peak_rss_mib: {r['crawl_peak_rss_mib']:.1f}  crawl_rise_mib: {r['crawl_rise_mib']:.1f}  "
              f"seconds: {r['seconds']:.1f}", flush=True)


if __name__ == "__main__":
    main()
