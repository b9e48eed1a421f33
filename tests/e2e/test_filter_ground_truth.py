"""The data-filtering network in the demo, judged against the site's answer key: ``mmcurate demo --workflow
demo_filter`` (the real command, its own server and Ray, run from outside the repository) trains a tiny CLIP on the site's trusted section
(``train_filter``) and scores every crawled sample with it (``clip_score``); its ``clip_score_low`` rejects must be
the ``mismatched`` samples — precision and recall >= 0.9 — while >= 95 % of the ``clean`` samples that reached the
filter are kept.

Every sample (outcome row) is labelled by its reference in ``ground_truth.parquet``: a page's record by (page,
URL), a URL-list record by its URL; the trusted section's rows (the filter's training data) are left out. The
confusion table per label is printed (``pytest tests/e2e/test_filter_ground_truth.py -s``).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.e2e

STAGES_BEFORE = ("crawl", "align")


def _mmcurate() -> list[str]:
    script = Path(sys.executable).parent / "mmcurate"  # the console script of the environment under test
    return [str(script)] if script.exists() else [sys.executable, "-m", "mmcurate.pipeline.cli"]


@pytest.fixture(scope="module")
def demo_run(filter_demo_run) -> Path:
    """The 400-page demo (tests/e2e/conftest.py), shared with the label round trip, which runs after this file.
    The site's 16 photos reach the filter through the trusted section's views of them
    (serve.demo_site.trusted_photo_views); a row of the table shows them."""
    return filter_demo_run.run


def _path(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    return parts.path if parts.hostname in ("127.0.0.1", "localhost") else url


def _references(run: Path) -> tuple[dict[tuple[str, str], dict], dict[str, dict]]:
    """Ground-truth rows by (page, url) and, for URL-list records, by url."""
    from mmcurate.pipeline.demo import demo_site_root
    from mmcurate.pipeline.demo.site import read_ground_truth

    by_ref, listed = {}, {}
    for row in read_ground_truth(demo_site_root(run)).to_pylist():
        by_ref[(row["page"], row["url"])] = row
        if row["in_url_list"] or row["trusted"]:
            assert row["url"] not in listed, f"two listed references to {row['url']}"
            listed[row["url"]] = row
    return by_ref, listed


def outcomes_by_label(run: Path) -> tuple[dict[str, Counter], Counter]:
    """label -> Counter of each sample's outcome: ``kept`` or ``clip_score_low`` at the filter, else
    ``<stage>:<reason>`` (rejected by the crawl, align, or clip_score for another reason); and the same Counter for
    the real photos among the ``clean`` samples."""
    by_ref, listed = _references(run)
    table: dict[str, Counter] = defaultdict(Counter)
    photos: Counter = Counter()
    unknown = []

    def add(page_url: str | None, url: str | None, outcome: str) -> None:
        page, path = _path(page_url), _path(url)
        ref = by_ref.get((page, path)) if page is not None else listed.get(path)
        if ref is None and page is not None:
            ref = by_ref.get((page, page))  # a page that failed: its row names the page itself
        if ref is None:
            unknown.append((page_url, url, outcome))
        elif not ref["trusted"]:
            table[ref["label"]][outcome] += 1
            if ref["real_photo"]:  # a row of its own: the photos are the filter's hardest clean samples
                photos[outcome] += 1

    for stage in (*STAGES_BEFORE, "clip_score"):
        for row in pads.dataset(str(run / "rejects" / stage)).to_table(columns=["page_url", "url", "reason"]).to_pylist():
            outcome = "clip_score_low" if row["reason"] == "clip_score_low" else f"{stage}:{row['reason']}"
            add(row["page_url"], row["url"], outcome)
    for row in pads.dataset(str(run / "clip_score" / "data")).to_table(columns=["page_url", "url"]).to_pylist():
        add(row["page_url"], row["url"], "kept")
    # a link crawled as a page (its row's url is its page_url) that failed is no media reference of the site
    samples = [u for u in unknown if u[0] != u[1]]
    assert not samples, f"samples with no ground-truth reference: {samples[:10]}"
    return table, photos


def _print_table(table: dict[str, Counter], photos: Counter) -> None:
    print(f"\n{'label':20s} {'kept':>6s} {'clip_score_low':>15s}  other reasons")
    rows = [(label, table[label]) for label in sorted(table)] + [("  of clean: photos", photos)]
    for label, counts in rows:
        other = {k: v for k, v in sorted(counts.items()) if k not in ("kept", "clip_score_low")}
        print(f"{label:20s} {counts['kept']:6d} {counts['clip_score_low']:15d}  "
              f"{', '.join(f'{k}={v}' for k, v in other.items()) or '-'}")


def test_the_filter_drops_the_mismatched_samples_and_keeps_the_clean_ones(demo_run):
    table, photos = outcomes_by_label(demo_run)
    _print_table(table, photos)
    reached = {label: counts["kept"] + counts["clip_score_low"] for label, counts in table.items()}
    dropped = sum(counts["clip_score_low"] for counts in table.values())
    caught = table["mismatched"]["clip_score_low"]
    precision, recall = caught / max(1, dropped), caught / max(1, reached["mismatched"])
    clean_kept = table["clean"]["kept"] / max(1, reached["clean"])
    print(f"mismatched: precision {precision:.3f} ({caught}/{dropped}), recall {recall:.3f} "
          f"({caught}/{reached['mismatched']}); clean kept {clean_kept:.3f} "
          f"({table['clean']['kept']}/{reached['clean']})")
    assert reached["mismatched"] >= 50 and reached["clean"] >= 500  # the site is big enough to judge by
    assert precision >= 0.9 and recall >= 0.9 and clean_kept >= 0.95


def test_explain_shows_the_score_the_threshold_and_the_model(demo_run):
    row = pads.dataset(str(demo_run / "clip_score" / "data")).to_table(columns=["key", "scores"]).slice(0, 1).to_pylist()[0]
    (name, value), = [(k, v) for k, v in row["scores"] if k.startswith("clip_score.")]
    out = subprocess.run([*_mmcurate(), "explain", str(demo_run), row["key"]], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    line = next(line for line in out.splitlines() if line.strip().startswith(f"score {name}"))
    assert f"= {value:.4f}" in line and "threshold 0.47" in line and "train_filter/artifacts/model" in line, out
