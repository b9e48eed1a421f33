"""The crawl + align decisions on the demo site agree with its answer key, reference by reference."""

from __future__ import annotations

from urllib.parse import urlsplit

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.integration

EXPECTED = {
    "clean": {"kept"},
    "mismatched": {"kept"},  # a caption problem only a CLIP filter can see
    "duplicate": {"kept"},  # dedupe's job, later
    "near_duplicate": {"kept"},
    "junk_text": {"junk_text", "no_text"},
    "broken_link": {"http_error"},
    "server_error": {"http_error"},
    "robots_blocked": {"robots_disallowed"},
    "noai": {"x_robots_noai"},
    "redirect_loop": {"too_many_redirects"},
    "timeout": {"timeout"},
    "too_large": {"body_too_large"},
    "not_allowed_address": {"address_not_allowed"},
    "corrupt": {"image_corrupt", "content_type"},
    "truncated": {"image_corrupt"},
    "zero_byte": {"image_corrupt"},
    "decompression_bomb": {"image_too_large"},
    "broken_audio": {"audio_corrupt", "http_error"},
    "malformed_subtitle": {"subtitle_malformed"},
    "not_utf8": {"not_utf8"},
}


def path_of(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    return parts.path if parts.hostname in ("127.0.0.1", "localhost") else url


def outcomes(run_dir) -> dict[tuple[str, str], set[str]]:
    """(page path, asset path) → decisions; crawl's rejects first, then align's rows (kept or rejected)."""
    found: dict[tuple[str, str], set[str]] = {}
    crawl_rejects = pads.dataset(str(run_dir / "rejects" / "crawl")).to_table().to_pylist()
    for row in crawl_rejects:
        found.setdefault((path_of(row["page_url"]), path_of(row["url"])), set()).add(row["reason"])
    for row in pads.dataset(str(run_dir / "rejects" / "align")).to_table().to_pylist():
        found.setdefault((path_of(row["page_url"]), path_of(row["url"])), set()).add(row["reason"])
    kept = pads.dataset(str(run_dir / "align" / "data")).to_table(columns=["page_url", "url"]).to_pylist()
    for row in kept:
        found.setdefault((path_of(row["page_url"]), path_of(row["url"])), set()).add("kept")
    return found


def _srcset_partners(refs: list[dict]) -> dict[tuple[str, str], tuple[str, str]]:
    """Each srcset candidate → the other candidate of its pair (the generator writes a pair's rows together)."""
    partners = {}
    srcset = [r for r in refs if r["markup"] == "srcset"]
    assert len(srcset) % 2 == 0
    for a, b in zip(srcset[::2], srcset[1::2]):
        assert a["page"] == b["page"]
        partners[(a["page"], a["url"])] = (b["page"], b["url"])
        partners[(b["page"], b["url"])] = (a["page"], a["url"])
    return partners


def test_page_references_end_with_the_decision_their_label_calls_for(finished_run, site):
    from mmcurate.pipeline.demo.site import read_ground_truth

    run_dir, _ = finished_run
    _, root = site
    decided = outcomes(run_dir)
    # the trusted section is on no page and in no list this workflow crawls: a filter's training data, not pool
    refs = [r for r in read_ground_truth(root).to_pylist() if not r["trusted"]]
    partners = _srcset_partners(refs)
    # a figure's narration travels in the record of the figure's image (the image is the record's url)
    figure_images = {r["figure_id"]: (r["page"], r["url"]) for r in refs if r["figure_id"] and r["kind"] == "image"}
    checked: dict[str, int] = {}
    wrong, missing = [], []
    for ref in refs:
        # a reference's own outcome, or its page's (unreadable, refused, or cut by a crawl limit)
        decisions = decided.get((ref["page"], ref["url"])) or decided.get((ref["page"], ref["page"]))
        if decisions is None and ref["markup"] == "figure_audio":
            decisions = decided.get(figure_images[ref["figure_id"]])
        if decisions is None:
            partner = partners.get((ref["page"], ref["url"]))
            if partner is not None and partner in decided:
                continue  # the crawler fetches one candidate of a srcset; its partner carries the decision
            missing.append((ref["label"], ref["markup"], ref["page"], ref["url"]))
            continue
        checked[ref["label"]] = checked.get(ref["label"], 0) + 1
        if not decisions & (EXPECTED[ref["label"]] | {"crawl_limit"}):
            wrong.append((ref["label"], ref["page"], ref["url"], sorted(decisions)))
    assert not missing, f"references with no outcome at all: {missing}"
    assert not wrong, wrong
    assert sum(checked.values()) >= len(refs) - len(partners) // 2
    # every failure mode the site has was actually met and judged
    assert set(checked) >= set(EXPECTED) - {"duplicate", "near_duplicate"}, sorted(set(EXPECTED) - set(checked))
