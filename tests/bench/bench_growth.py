"""Growth: time and memory of a URL-list ingest and of a page crawl at 1×, 4× and 16× their input.

    .venv/bin/python tests/bench/bench_growth.py [--quick] [--only urls|pages] [--url-base 1000] [--page-base 50]

* ``urls``: crawl (a URL list of base × scale loopback images, the set bench_ingest.py serves) → align → shard.
* ``pages``: crawl (``seeds`` only: the demo site, ``build_site(root, seed=0, pages=base × scale)``, served by
  ``mmcurate.pipeline.demo.server.serve_site`` in its own process; max_depth 10, max_pages well above the site)
  → align → shard. The site keeps a fixed handful of failure pages (a 5 s stall, a 30 MiB stream, a redirect
  loop, ...) at every size, so their cost is part of the fixed overhead.

Each is ``mmcurate run`` in a fresh run directory, timed wall clock (Ray start-up included), with memory sampled
every 50 ms with psutil: ``driver`` is the peak RSS of the ``mmcurate run`` process itself (Ray's raylet, GCS
and workers are other processes), ``machine`` the peak of ``virtual_memory().used`` minus its value just before
the run started (everything: Ray's workers and object store, the server, and anyone else on the machine), and
``tree`` the peak RSS summed over the driver and its descendants (Ray's processes; blind to other users, but
shared pages count once per process).

Ratios first: ``<kind>_time_16x_over_1x`` (linear time: ≤ 16, and ``_16x_over_4x`` ≤ 4, once the fixed start-up is
amortised), ``<kind>_driver_mem_16x_over_1x`` (flat: the issue's Done-when asks ≤ 1.5 for the page crawl),
``<kind>_machine_mem_16x_over_1x``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

URL_WORKFLOW = """\
name: bench-growth-urls
stages:
  - stage: crawl
    url_lists: [{{path: "{urls}", url_column: url, caption_column: caption}}]
    fetch: {{allow_networks: ["127.0.0.0/8"]}}
  - stage: align
    image_max_side: 256
  - stage: shard
"""

PAGE_WORKFLOW = """\
name: bench-growth-pages
stages:
  - stage: crawl
    seeds: ["{base_url}/index.html"]
    max_depth: 10
    max_pages: {max_pages}
    fetch: {{timeout_s: 2, deadline_s: 5, max_bytes: 5000000, allow_networks: ["127.0.0.0/8"]}}
  - stage: align
    image_max_side: 256
  - stage: shard
"""


def run_urls(n: int, work: Path, cache: Path) -> harness.Measured:
    paths = harness.image_set(n, cache)
    with harness.served_images(paths[0].parent, work / f"server_urls_{n}.log") as base_url:
        urls = harness.write_url_list(work / f"urls_{n}.parquet", base_url, n)
        workflow = work / f"urls_{n}.yaml"
        workflow.write_text(URL_WORKFLOW.format(urls=urls))
        return harness.run_mmcurate(workflow, work / f"run_urls_{n}", work / f"mmcurate_urls_{n}")


def run_pages(pages: int, work: Path, cache: Path) -> harness.Measured:
    root = harness.demo_site(pages, cache)
    with harness.served_demo_site(root, work / f"server_pages_{pages}.log") as base_url:
        workflow = work / f"pages_{pages}.yaml"
        workflow.write_text(PAGE_WORKFLOW.format(base_url=base_url, max_pages=4 * pages + 100))
        return harness.run_mmcurate(workflow, work / f"run_pages_{pages}", work / f"mmcurate_pages_{pages}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1× and 4× of 50 URLs and 25 pages: a smoke test")
    parser.add_argument("--only", choices=("urls", "pages"))
    parser.add_argument("--url-base", type=int, default=1000)
    parser.add_argument("--page-base", type=int, default=50)
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--work-dir", help="default: a temp dir, removed at the end")
    parser.add_argument("--cache-dir", default=str(harness.DEFAULT_CACHE))
    args = parser.parse_args()
    if args.quick:
        args.url_base, args.page_base, args.scales = min(args.url_base, 50), 25, "1,4"
    scales = [int(s) for s in args.scales.split(",")]
    work, cache = harness.work_dir(args.work_dir, "growth"), Path(args.cache_dir)
    if warning := harness.warn_if_ray_cluster_running():
        harness.log(f"WARNING: {warning}")
    kinds = [k for k in ("urls", "pages") if args.only in (None, k)]
    # build inputs first, so no run pays for them
    for scale in scales:
        if "urls" in kinds:
            harness.image_set(args.url_base * scale, cache)
        if "pages" in kinds:
            harness.demo_site(args.page_base * scale, cache)
    harness.warm_imports()

    results: dict[tuple[str, int], harness.Measured] = {}
    loads: dict[tuple[str, int], str] = {}
    failures = []
    for kind in kinds:
        for scale in scales:
            size = (args.url_base if kind == "urls" else args.page_base) * scale
            harness.log(f"{kind} {scale}x: {size} {'URLs' if kind == 'urls' else 'pages'}")
            loads[kind, scale] = harness.loadavg()
            m = (run_urls if kind == "urls" else run_pages)(size, work, cache)
            harness.log(f"{kind} {scale}x: {m.seconds:.1f} s, driver {harness.mib(m.driver_peak_bytes):.0f} MiB, "
                        f"rc {m.returncode}")
            results[kind, scale] = m
            if m.returncode != 0:
                failures.append(f"{kind} {scale}x: mmcurate run exited {m.returncode}:\n{m.tail()}")

    lo, hi = scales[0], scales[-1]
    figures: dict[str, Any] = {}
    for kind in kinds:
        a, b = results[kind, lo], results[kind, hi]
        figures[f"{kind}_time_{hi}x_over_{lo}x"] = harness.ratio(b.seconds, a.seconds)
        figures[f"{kind}_driver_mem_{hi}x_over_{lo}x"] = harness.ratio(b.driver_peak_bytes, a.driver_peak_bytes)
        figures[f"{kind}_machine_mem_{hi}x_over_{lo}x"] = harness.ratio(b.machine_peak_bytes, a.machine_peak_bytes)
        figures[f"{kind}_tree_mem_{hi}x_over_{lo}x"] = harness.ratio(b.tree_peak_bytes, a.tree_peak_bytes)
        if len(scales) > 2:
            mid = results[kind, scales[-2]]
            figures[f"{kind}_time_{hi}x_over_{scales[-2]}x"] = harness.ratio(b.seconds, mid.seconds)
    for kind in kinds:
        base = args.url_base if kind == "urls" else args.page_base
        for scale in scales:
            m = results[kind, scale]
            stats: dict[str, Any] = m.extra.get("stats", {})
            prefix = f"{kind}_{scale}x"
            figures[f"{prefix}_input"] = base * scale
            figures[f"{prefix}_s"] = m.seconds
            for stage, seconds in harness.stage_seconds(stats).items():
                figures[f"{prefix}_{stage}_s"] = seconds
            if stats:  # a streamed segment's stages each report the segment's seconds
                figures[f"{prefix}_segments"] = ", ".join(
                    f"{name} {seconds:.2f} s" for name, seconds in harness.segments(stats, m.extra["run_dir"]).items())
            figures[f"{prefix}_driver_peak_mib"] = harness.mib(m.driver_peak_bytes)
            figures[f"{prefix}_machine_peak_mib"] = harness.mib(m.machine_peak_bytes)
            figures[f"{prefix}_tree_peak_mib"] = harness.mib(m.tree_peak_bytes)
            figures[f"{prefix}_crawl_out"] = stats.get("crawl", {}).get("out")
            figures[f"{prefix}_samples"] = stats.get("shard", {}).get("kept")
            figures[f"{prefix}_loadavg_before"] = loads[kind, scale]
            figures[f"{prefix}_started_own_ray"] = m.extra.get("ray_local")
    figures["code"] = harness.code_version()
    harness.print_figures(figures)
    for failure in failures:
        print(f"!!! {failure}", file=sys.stderr)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
