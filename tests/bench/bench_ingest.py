"""URL-list ingest: mmcurate's whole pipeline against img2dataset alone, and both against the resize floor.

    .venv/bin/python tests/bench/bench_ingest.py [--n 5000] [--quick] [--work-dir DIR]

The same N loopback image URLs (480×360 JPEGs, random crops of scikit-image's offline photos, each distinct),
served by a threaded HTTP server on 127.0.0.1 in its own process (a fresh one per side; it uses CPU on the same
cores during both runs), the same resize (longer side capped at 256, never upscaled, JPEG quality 90) and
WebDataset tars of the same number of samples each (``--shard-size``) on both sides:

* ``img2dataset_s``: ``img2dataset.download(...)`` (processes_count=2, thread_count=32, output_format=webdataset,
  resize_mode=keep_ratio_largest, disallowed_header_directives=[], no wandb, no EXIF extraction since mmcurate
  does none; sha256 left on, as mmcurate's shard index also hashes every member), wall clock of its subprocess,
  interpreter start-up included.
* ``mmcurate_s``: ``mmcurate run <crawl → align → shard> --run-dir <fresh>``, wall clock of the CLI process, Ray
  start-up included; per-stage seconds come from the run's stats.json.
* ``floor_s``: ``floor_seconds(images, 256, processes=os.cpu_count())`` from bench_image.py over the same N
  images' bytes: cv2 decode + INTER_AREA resize + JPEG q90 encode only, no network, no files, worker start-up
  not timed; the fastest of ``--floor-repeats`` (3) calls.

Ratios, each "higher is better for mmcurate" and 1.0 meaning parity:
``img2dataset_s / mmcurate_s``; ``floor_s / mmcurate_s`` (the whole pipeline, download, Ray start-up and shard
writing included, against the bare image work: the issue's goal is ≥ 0.7); ``floor_s / mmcurate_align_s`` (the
align stage, where the decode+resize+encode happens; when align streams in one segment with the crawl, as the
run log says, the figure is ``floor_s / mmcurate_crawl+align_s``, over the segment's seconds);
``floor_s / img2dataset_s`` for reference.

With ``--repeats R`` the sides alternate R times and each side's fastest run counts (all are printed).
Both sides must keep all N images at 256×192; the benchmark exits 1 (after printing) if either does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

WORKFLOW = """\
name: bench-ingest
stages:
  - stage: crawl
    url_lists: [{{path: "{urls}", url_column: url, caption_column: caption}}]
    # like for like: img2dataset has no per-host limits, and every URL here is on one loopback host
    fetch: {{allow_networks: ["127.0.0.0/8"], per_host_concurrency: null}}
  - stage: align
    image_max_side: 256
    image_format: jpg
    image_quality: 90
  - stage: shard
    samples_per_shard: {shard_size}
"""
EXPECTED_SIZE = (256, 192)  # 480×360 with its longer side capped at 256


def img2dataset_args(urls: Path, out: Path, shard_size: int) -> dict:
    return dict(
        url_list=str(urls), input_format="parquet", url_col="url", caption_col="caption",
        output_folder=str(out), output_format="webdataset", number_sample_per_shard=shard_size,
        processes_count=2, thread_count=32, distributor="multiprocessing",
        image_size=256, resize_mode="keep_ratio_largest", resize_only_if_bigger=True,
        encode_format="jpg", encode_quality=90,
        timeout=10, retries=0, disallowed_header_directives=[], enable_wandb=False, extract_exif=False,
    )


def run_img2dataset(images: Path, work: Path, n: int, shard_size: int) -> dict:
    out = work / "img2dataset_out"
    if out.exists():
        shutil.rmtree(out)
    with harness.served_images(images, work / "server_img2dataset.log") as base_url:
        urls = harness.write_url_list(work / "urls_img2dataset.parquet", base_url, n)
        args_path = work / "img2dataset_args.json"
        args_path.write_text(json.dumps(img2dataset_args(urls, out, shard_size)))
        load = harness.loadavg()
        m = harness.run_measured([str(harness.PYTHON), str(Path(harness.__file__).resolve()), "img2dataset",
                                  str(args_path)], work / "img2dataset")
    kept, sizes = harness.tar_images(out) if out.exists() else (0, set())
    return {"seconds": m.seconds, "rc": m.returncode, "kept": kept, "sizes": sizes, "load": load, "m": m}


def run_mmcurate(images: Path, work: Path, n: int, shard_size: int) -> dict:
    run_dir = work / "mmcurate_run"
    with harness.served_images(images, work / "server_mmcurate.log") as base_url:
        # the port differs per server: the list is written per side, the same rows in the same order
        urls = harness.write_url_list(work / "urls_mmcurate.parquet", base_url, n)
        workflow = work / "ingest.yaml"
        workflow.write_text(WORKFLOW.format(urls=urls, shard_size=shard_size))
        load = harness.loadavg()
        m = harness.run_mmcurate(workflow, run_dir, work / "mmcurate")
    shards = run_dir / "shards"
    kept, sizes = harness.tar_images(shards) if shards.exists() else (0, set())
    return {"seconds": m.seconds, "rc": m.returncode, "kept": kept, "sizes": sizes, "load": load, "m": m,
            "stats": m.extra["stats"], "run_dir": run_dir}


def floor(paths: list[Path], repeats: int) -> tuple[float | str, list[float]]:
    """The fastest of ``repeats`` calls of bench_image's ``floor_seconds`` (a burst of load elsewhere on a shared
    machine slows one call by a factor; the floor is the least the work can take), and every call's seconds."""
    try:
        from bench_image import floor_seconds
    except ImportError as err:
        harness.log(f"no floor: {err}")
        return "unavailable (tests/bench/bench_image.py has no floor_seconds)", []
    images = harness.read_images(paths)
    runs = [float(floor_seconds(images, 256, processes=os.cpu_count())) for _ in range(repeats)]
    return min(runs), runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="image URLs (default 5000)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per tar on both sides")
    parser.add_argument("--quick", action="store_true", help="200 URLs in shards of 50: a smoke test")
    parser.add_argument("--no-floor", action="store_true", help="skip the decode+resize+encode floor")
    parser.add_argument("--work-dir", help="keep outputs here (default: a temp dir, removed unless --keep)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--cache-dir", default=str(harness.DEFAULT_CACHE), help="generated images live here")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate the two sides this many times; the fastest run of each counts")
    parser.add_argument("--floor-repeats", type=int, default=3, help="floor_seconds calls; the fastest counts")
    parser.add_argument("--max-load", type=float,
                        help="before each timed run, wait (up to 10 min) for the 1-minute load average to drop below")
    args = parser.parse_args()
    if args.quick:
        args.n, args.shard_size = min(args.n, 200), min(args.shard_size, 50)
    work = harness.work_dir(args.work_dir, "ingest")
    paths = harness.image_set(args.n, Path(args.cache_dir))
    images = paths[0].parent  # the server serves the whole cache folder; the list names only the first n
    if warning := harness.warn_if_ray_cluster_running():
        harness.log(f"WARNING: {warning}")
    harness.warm_imports()

    i2d_runs, mmc_runs = [], []
    for _ in range(args.repeats):  # alternated, so a burst of load elsewhere is as likely to hit either side
        harness.wait_for_load(args.max_load)
        harness.log(f"img2dataset: {args.n} URLs")
        i2d_runs.append(run_img2dataset(images, work, args.n, args.shard_size))
        harness.log(f"img2dataset: {i2d_runs[-1]['seconds']:.1f} s, rc {i2d_runs[-1]['rc']}")
        harness.wait_for_load(args.max_load)
        harness.log(f"mmcurate: {args.n} URLs")
        mmc_runs.append(run_mmcurate(images, work, args.n, args.shard_size))
        harness.log(f"mmcurate: {mmc_runs[-1]['seconds']:.1f} s, rc {mmc_runs[-1]['rc']}")
    i2d = min(i2d_runs, key=lambda r: (r["rc"] != 0, r["seconds"]))
    mmc = min(mmc_runs, key=lambda r: (r["rc"] != 0, r["seconds"]))
    harness.wait_for_load(args.max_load)
    floor_s, floor_runs = (None, []) if args.no_floor else floor(paths, args.floor_repeats)

    stages = harness.stage_seconds(mmc["stats"])
    segments = harness.segments(mmc["stats"], mmc["run_dir"])
    align_segment = next((name for name in segments if "align" in name.split("+")), "align")
    floor_num = floor_s if isinstance(floor_s, float) else None
    ok_mmc = mmc["rc"] == 0
    figures: dict = {
        "img2dataset_s / mmcurate_s": harness.ratio(i2d["seconds"], mmc["seconds"] if ok_mmc else None),
        "floor_s / mmcurate_s": harness.ratio(floor_num, mmc["seconds"] if ok_mmc else None),
        f"floor_s / mmcurate_{align_segment}_s": harness.ratio(floor_num, segments.get(align_segment)),
        "floor_s / img2dataset_s": harness.ratio(floor_num, i2d["seconds"]),
        "n": args.n,
        "img2dataset_s": i2d["seconds"],
        "mmcurate_s": mmc["seconds"],
    }
    for name, seconds in stages.items():
        figures[f"mmcurate_{name}_s"] = seconds
    if segments:  # interpreter, imports, validation, fingerprints, ray.init and shutdown: everything outside stages
        figures["mmcurate_segments"] = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in segments.items())
        figures["mmcurate_outside_stages_s"] = mmc["seconds"] - sum(segments.values())
    figures["floor_s"] = floor_s if floor_s is not None else "skipped"
    if len(floor_runs) > 1:
        figures["floor_s_all"] = " ".join(f"{s:.2f}" for s in floor_runs)
    figures["img2dataset_images_per_s"] = i2d["kept"] / i2d["seconds"]
    figures["mmcurate_images_per_s"] = mmc["kept"] / mmc["seconds"]
    figures["img2dataset_kept"] = i2d["kept"]
    figures["mmcurate_kept"] = mmc["kept"]
    for name, s in mmc["stats"].items():
        figures[f"mmcurate_{name}_kept"] = s.get("kept")
        if s.get("rejected"):
            figures[f"mmcurate_{name}_rejected"] = json.dumps(s["rejected"], sort_keys=True)
    figures["img2dataset_image_sizes"] = sorted(i2d["sizes"])
    figures["mmcurate_image_sizes"] = sorted(mmc["sizes"])
    figures["mmcurate_driver_peak_mib"] = harness.mib(mmc["m"].driver_peak_bytes)
    figures["mmcurate_machine_peak_mib"] = harness.mib(mmc["m"].machine_peak_bytes)
    figures["mmcurate_tree_peak_mib"] = harness.mib(mmc["m"].tree_peak_bytes)
    figures["img2dataset_tree_peak_mib"] = harness.mib(i2d["m"].tree_peak_bytes)
    figures["img2dataset_machine_peak_mib"] = harness.mib(i2d["m"].machine_peak_bytes)
    figures["loadavg_before_img2dataset"] = i2d["load"]
    figures["loadavg_before_mmcurate"] = mmc["load"]
    figures["loadavg_after"] = harness.loadavg()
    figures["mmcurate_started_own_ray"] = all(r["m"].extra.get("ray_local") for r in mmc_runs)
    figures["repeats"] = args.repeats
    if args.repeats > 1:
        figures["img2dataset_s_all"] = " ".join(f"{r['seconds']:.2f}" for r in i2d_runs)
        figures["mmcurate_s_all"] = " ".join(f"{r['seconds']:.2f}" for r in mmc_runs)
    figures["cpus"] = os.cpu_count()
    figures["code"] = harness.code_version()

    problems = []
    if i2d["rc"] != 0:
        problems.append(f"img2dataset exited {i2d['rc']}:\n{i2d['m'].tail()}")
    if not ok_mmc:
        problems.append(f"mmcurate run exited {mmc['rc']}:\n{mmc['m'].tail()}")
    for side, result in [("img2dataset", r) for r in i2d_runs] + [("mmcurate", r) for r in mmc_runs]:
        if result["kept"] != args.n:
            problems.append(f"{side} kept {result['kept']} of {args.n} images")
        if result["sizes"] and result["sizes"] != {EXPECTED_SIZE}:
            problems.append(f"{side} wrote images of sizes {sorted(result['sizes'])}, expected {EXPECTED_SIZE}")
    figures["comparable"] = "yes" if not problems else "NO (see stderr)"
    harness.print_figures(figures)
    for problem in problems:
        print(f"!!! {problem}", file=sys.stderr)
    print(f"# work dir: {work}" + ("" if args.keep or args.work_dir else " (removed)"), file=sys.stderr)
    if not (args.keep or args.work_dir):
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
