"""The dedupe stage on the demo site, driven through the ``mmcurate run`` command as a user runs it (crawl → align →
dedupe → shard on the served demo), judged on the site's answer key; prints the table.

How it counts (the demo labels the copy of a pair, ``duplicate_of`` naming the original's URL):
  * Only references that reach dedupe count (their image crawled and aligned); the others, and the trusted section
    (not crawled here), are left out. A URL survives when any of its records does: the demo crawls part of its
    images twice (from a page and from the URL list), two records of one image, of which dedupe keeps one.
  * A labelled pair is handled correctly when exactly one of its two URLs survives (the survivor rule, not the
    label, says which). Recall of a label = pairs handled correctly / pairs present.
  * Precision of a reason (``duplicate``: exact methods; ``near_duplicate``: pHash) = its drops whose survivor is
    the same image by the answer key (the same URL, or the two URLs of one labelled pair) / its drops; shown over
    all drops and over drops between different URLs. A labelled near-duplicate that keeps its original's pixels
    (a PNG of a JPEG, once align re-encodes both) is dropped as ``duplicate``, and counts as right.
  * Clean references must survive, except the originals of labelled pairs (their fate is their pair's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e
MMCURATE = Path(sys.executable).parent / "mmcurate"

WORKFLOW = """\
name: dedupe-ground-truth
serve:
  demo_site: {seed: 0, pages: 200, trusted: 0}
stages:
  - stage: crawl
    seeds: ["${demo_site.base_url}/index.html"]
    url_lists:
      - {path: "${demo_site.url_list}", url_column: url, caption_column: caption}
    max_depth: 4
    max_pages: 400
    concurrency: 2
    fetch: {timeout_s: 2, deadline_s: 5, max_bytes: 5000000, max_redirects: 5, allow_networks: ["127.0.0.0/8"]}
  - stage: align
    caption_priority: [caption, figcaption, alt, title]
    image_max_side: 256
    audio_rate: 16000
  # radius 12: the demo's 3-7 %-cropped copies move their pHash by up to 12 bits; the tiny-image test keeps the
  # site's flat one-shape scenes, which hash alike, apart
  - stage: dedupe
    perceptual: {radius: 12}
  - stage: shard
    samples_per_shard: 200
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}


def _path(url: str | None) -> str | None:
    return urlsplit(url).path if url else None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dedupe-demo")
    workflow = root / "dedupe_demo.yaml"
    workflow.write_text(WORKFLOW)
    run_dir = root / "run"
    done = subprocess.run([str(MMCURATE), "run", str(workflow), "--run-dir", str(run_dir)], env=_env(),
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir


def _judged(run_dir: Path) -> dict:
    truth = [r for r in pq.read_table(run_dir.parent / f"{run_dir.name}.site" / "ground_truth.parquet").to_pylist() if not r["trusted"]]
    entered = pads.dataset(str(run_dir / "align" / "data")).to_table(columns=["key", "url"]).to_pylist()
    url_of = {r["key"]: _path(r["url"]) for r in entered}
    kept = set(pads.dataset(str(run_dir / "dedupe" / "data")).to_table(columns=["key"])["key"].to_pylist())
    drops = pq.read_table(run_dir / "dedupe" / "artifacts" / "drops.parquet").to_pylist()
    surviving = Counter(url_of[k] for k in kept)
    present = set(url_of.values())
    group = {r["url"]: r["duplicate_of"] or r["url"] for r in truth}

    table: dict[str, dict] = {}
    for label in ("duplicate", "near_duplicate"):
        pairs = [(r["url"], r["duplicate_of"]) for r in truth if r["label"] == label]
        judged = [(a, b) for a, b in pairs if a in present and b in present]
        right = [(a, b) for a, b in judged if (surviving[a] > 0) != (surviving[b] > 0)]
        table[label] = {"labelled": len(pairs), "present": len(judged), "right": len(right)}
    originals = {r["duplicate_of"] for r in truth if r["duplicate_of"]}
    clean = {r["url"] for r in truth if r["label"] == "clean" and r["url"] in present and r["url"] not in originals}
    table["clean"] = {"labelled": sum(r["label"] == "clean" for r in truth), "present": len(clean),
                      "right": sum(surviving[u] > 0 for u in clean)}
    precision: dict[str, dict] = {}
    for reason in ("duplicate", "near_duplicate"):
        mine = [(url_of[d["key"]], url_of[d["other"]]) for d in drops if d["reason"] == reason]
        same = [(a, b) for a, b in mine if group.get(a, a) == group.get(b, b)]
        across = [(a, b) for a, b in mine if a != b]
        precision[reason] = {"drops": len(mine), "right": len(same), "across_urls": len(across),
                             "across_right": sum(group.get(a, a) == group.get(b, b) for a, b in across)}
    return {"labels": table, "precision": precision, "drops": drops, "kept": kept}


def test_demo_duplicates_and_near_duplicates_are_dropped_and_clean_references_survive(demo_run):
    judged = _judged(demo_run)
    labels, precision = judged["labels"], judged["precision"]
    print("\nlabel            labelled  present  right  rate")
    for label, row in labels.items():
        rate = row["right"] / row["present"] if row["present"] else float("nan")
        print(f"{label:16s} {row['labelled']:8d} {row['present']:8d} {row['right']:6d}  {rate:.3f}")
    print("reason           drops  right  precision  | between different URLs: drops  right  precision")
    for reason, row in precision.items():
        p = row["right"] / row["drops"] if row["drops"] else float("nan")
        q = row["across_right"] / row["across_urls"] if row["across_urls"] else float("nan")
        print(f"{reason:16s} {row['drops']:5d} {row['right']:6d}  {p:9.3f}  | {row['across_urls']:29d} "
              f"{row['across_right']:6d}  {q:9.3f}")
    for label in ("duplicate", "near_duplicate"):
        assert labels[label]["present"] >= 10
        assert labels[label]["right"] / labels[label]["present"] >= 0.9, labels[label]
        assert precision[label]["drops"] and precision[label]["right"] / precision[label]["drops"] >= 0.9
        assert precision[label]["across_right"] / precision[label]["across_urls"] >= 0.9
    assert labels["clean"]["right"] / labels["clean"]["present"] >= 0.98, labels["clean"]


def test_the_funnel_shows_dedupe_and_explain_names_the_survivor(demo_run):
    import json

    stats = json.loads((demo_run / "stats.json").read_text())
    assert list(stats) == ["crawl", "align", "dedupe", "shard"]
    dedupe = stats["dedupe"]
    assert dedupe["in"] == stats["align"]["kept"] and dedupe["kept"] == stats["shard"]["in"]
    assert set(dedupe["rejected"]) == {"duplicate", "near_duplicate"}
    drop = next(d for d in _judged(demo_run)["drops"] if d["reason"] == "near_duplicate")
    shown = subprocess.run([str(MMCURATE), "explain", str(demo_run), drop["key"]], env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"[dedupe] rejected {drop['key']}: near_duplicate — near_duplicate of {drop['other']} (phash hamming" \
        in shown.stdout
    assert f"    duplicate of {drop['other']}" in shown.stdout
