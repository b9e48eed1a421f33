"""What the demo's filter buys a model trained on its output: the same tiny CLIP trained with ``mmcurate train`` on
the filtered demo pool and on the unfiltered one, each evaluated zero-shot on a clean held-out set.

    .venv/bin/python tests/bench/bench_curation.py [--from-run RUN_DIR] [--pages 1000] [--epochs 15] [--quick]
                                                  [--work-dir DIR]

* The demo run: ``mmcurate demo --workflow demo_filter --pages N``, crawled whole (or an existing run directory
  with ``--from-run``).
* Pools: the crawled samples only. ``filtered`` = what clip_score kept (``RUN_DIR/clip_score/data``, the records
  the run's shards hold), ``unfiltered`` = clip_score's whole input (``RUN_DIR/train_filter/data``: every aligned
  sample; train_filter keeps all). The trusted section (``/trusted/`` URLs, the filter's own training data) is
  left out of both: it is the same clean data in each, and would only dilute what the cut changed.
* Model and recipe: ``workflows/train_filter_demo.yaml`` (the filter's tiny CLIP) with ``epochs`` and the pool's shards,
  no validation; the same seed for both.
* Held-out set: the trusted section of a site built with another seed (fresh scenes, never seen in training or by
  the filter), each image captioned with what it really shows ("a red circle"): image->text R@1 is then a
  48-way zero-shot classification over colour x shape.

Figures: ``filtered_r1 / unfiltered_r1`` first, then each pool's image->text and text->image R@1 with chance, the
pools' sizes and their share of ``mismatched`` samples (the site's answer key), and the seconds spent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

TRAIN_CONFIG = harness.REPO / "workflows" / "train_filter_demo.yaml"
EVAL_SEED, EVAL_IMAGES = 1, 480  # 10 per colour x shape


def demo_run(work: Path, pages: int) -> tuple[Path, float]:
    run = work / "demo"
    if run.exists():
        shutil.rmtree(run)
    harness.log(f"mmcurate demo --pages {pages} into {run}")
    # the whole site: the demo workflow's crawl stops at max_pages 400
    measured = harness.run_measured([str(harness.MMCURATE), "demo", "--workflow", "demo_filter", "--run-dir", str(run),
                                     "--pages", str(pages),
                                     "--set", f"crawl.max_pages={pages + 100}"], work / "demo", cwd=work)
    if measured.returncode != 0:
        raise SystemExit(f"the demo failed:\n{measured.tail()}")
    return run, measured.seconds


def _pool_shards(data_dir: Path, out: Path, trusted_prefix: str) -> tuple[list[str], int]:
    """The crawled (not trusted) records of ``data_dir`` as shards, key order; (shard paths, samples)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from mmcurate.stages.shard import write_shards

    table = pads.dataset(str(data_dir)).to_table()
    table = table.filter(pc.invert(pc.starts_with(pc.fill_null(table["url"], ""), trusted_prefix))).sort_by("key")
    records = (row for batch in table.to_batches(max_chunksize=256) for row in batch.to_pylist())
    infos = write_shards(records, out, prefix="pool", samples_per_shard=500)
    return [info.path for info in infos], table.num_rows


def _mismatched_share(data_dir: Path, ground_truth: Path, trusted_prefix: str) -> float:
    """Share of a pool's samples whose reference the answer key labels ``mismatched`` (by URL)."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    from urllib.parse import urlsplit

    labels = {r["url"]: r["label"] for r in pq.read_table(ground_truth, columns=["url", "label"]).to_pylist()}
    urls = [u for u in pads.dataset(str(data_dir)).to_table(columns=["url"])["url"].to_pylist()
            if not (u or "").startswith(trusted_prefix)]
    return sum(labels.get(urlsplit(u).path) == "mismatched" for u in urls) / max(1, len(urls))


def held_out_set(work: Path) -> tuple[list[str], int]:
    """The trusted section of a seed-``EVAL_SEED`` site as shards, captioned with each image's true caption."""
    from mmcurate.pipeline.demo.site import build_site, read_ground_truth
    from mmcurate.schemas.record import empty_record, stable_key
    from mmcurate.stages.shard import write_shards

    root = work / f"eval-site-seed{EVAL_SEED}"
    build_site(root, seed=EVAL_SEED, pages=25, trusted=EVAL_IMAGES)
    rows = [r for r in read_ground_truth(root).to_pylist() if r["trusted"]]
    records = [empty_record(key=stable_key("bench-curation-eval", r["url"]), url=r["url"],
                            image=(root / "site" / r["url"].lstrip("/")).read_bytes(),
                            image_format="jpg" if r["media_format"] == "jpeg" else "png",
                            text=r["true_caption"], text_source="caption")
               for r in rows]
    infos = write_shards(sorted(records, key=lambda r: r["key"]), work / "eval-shards", prefix="eval",
                         samples_per_shard=500)
    return [info.path for info in infos], len(records)


def train(work: Path, name: str, shards: list[str], eval_shards: list[str], epochs: int) -> tuple[dict, float]:
    """``mmcurate train`` on ``shards``; (eval.json, seconds)."""
    run = work / f"train-{name}"
    if run.exists():
        shutil.rmtree(run)
    overrides = [f"epochs={epochs}", f"data.train_shards={json.dumps(shards)}", "data.val_shards=null",
                 f"data.eval_shards={json.dumps(eval_shards)}", "logging.progress_bar=false"]
    cmd = [str(harness.MMCURATE), "train", str(TRAIN_CONFIG), "--run-dir", str(run)]
    for item in overrides:
        cmd += ["--set", item]
    harness.log(f"mmcurate train ({name}): {len(shards)} shards, {epochs} epochs")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=harness.child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"mmcurate train ({name}) failed:\n{proc.stderr[-4000:]}")
    return json.loads((run / "train" / "eval.json").read_text()), seconds


def _figures(name: str, evaluation: dict[str, Any]) -> dict[str, float]:
    block = evaluation["image_text"]
    return {
        f"{name}.image_to_text_r1": block["image_to_text"]["recall@1"],
        f"{name}.text_to_image_r1": block["text_to_image"]["recall@1"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", type=Path, help="an existing `mmcurate demo` run directory")
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a 200-page demo and 3 epochs: a smoke test")
    parser.add_argument("--work-dir")
    args = parser.parse_args()
    if args.quick:
        args.pages, args.epochs = 200, 3
    work = harness.work_dir(args.work_dir, "curation")
    harness.log(f"code {harness.code_version()}; work dir {work}")
    if (note := harness.warn_if_ray_cluster_running()) is not None:
        harness.log(note)

    run, demo_s = (args.from_run.resolve(), None) if args.from_run else demo_run(work, args.pages)
    where = json.loads((run / "train_filter" / "_SUCCESS.json").read_text())["config"]["where"]
    trusted_prefix = where.split("'")[1]  # starts_with(url, '<base>/trusted/')
    pools = {"filtered": run / "clip_score" / "data", "unfiltered": run / "train_filter" / "data"}
    eval_shards, eval_n = held_out_set(work)
    figures: dict[str, Any] = {}
    results = {}
    for name, data_dir in pools.items():
        shards, n = _pool_shards(data_dir, work / f"pool-{name}", trusted_prefix)
        evaluation, seconds = train(work, name, shards, eval_shards, args.epochs)
        results[name] = evaluation
        figures[f"{name}.samples"] = n
        figures[f"{name}.mismatched_share"] = _mismatched_share(data_dir, run.parent / f"{run.name}.site" / "ground_truth.parquet",
                                                                trusted_prefix)
        figures[f"{name}.train_s"] = seconds
    r1 = {name: results[name]["image_text"]["image_to_text"]["recall@1"] for name in results}
    out = {"filtered_r1 / unfiltered_r1": harness.ratio(r1["filtered"], r1["unfiltered"])}
    for name in results:
        out.update(_figures(name, results[name]))
    chance = results["filtered"]["image_text"]["chance"]
    out["chance.image_to_text_r1"] = chance["image_to_text"]["recall@1"]
    out["chance.text_to_image_r1"] = chance["text_to_image"]["recall@1"]
    out["held_out.samples"] = eval_n
    out.update(figures)
    out["epochs"] = args.epochs
    out["demo_s"] = demo_s if demo_s is not None else "n/a (--from-run)"
    out["run_dir"] = str(run)
    harness.print_figures(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
