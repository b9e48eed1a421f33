"""``retain_raw_text``, through the real ``mmcurate`` command (its own demo server and Ray): the demo's planted
personal data (pipeline/demo/site/personal.py) in captions and transcripts.

* default (``retain_raw_text: true``): the planted values are only in the outputs of the stages before ``pii``
  (crawl, align); nothing after it, no shard, reject row, log, stats or manifest holds one;
* ``retain_raw_text: false`` on the same run directory: after the run, no file of the run directory holds one.

The demo builds its site where a user's ``mmcurate run`` does, beside the run directory (``<run dir>.site``, no
``serve.demo_site.root``): it is the crawl's source, the web the demo stands in for, not something the run wrote.
Every file is searched, parquet files decoded and tar members read (tests/pii/grep.py). Also: the shards' faces (the demo's photos of people) are blurred, and every
emitted image and clip in the shards reads back without metadata.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grep import grep  # noqa: E402

from mmcurate.pipeline.demo import demo_site_root  # noqa: E402
from mmcurate.pipeline.demo.site.personal import PLANTED  # noqa: E402
from mmcurate.stages.pii.metadata import audio_tags, image_metadata  # noqa: E402

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MMCURATE = Path(sys.executable).parent / "mmcurate"
PAGES = 40
BEFORE_PII = ("pages", "list", "align")  # the demo graph: two crawls, align, then pii and its two branches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(run_dir: Path, port: int, *extra: str) -> str:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [str(MMCURATE), "run", str(REPO / "workflows" / "demo.yaml"), "--run-dir", str(run_dir),
         "--set", f"serve.demo_site.pages={PAGES}", "--set", f"serve.demo_site.port={port}", *extra],
        capture_output=True, text=True, timeout=900, env=env, cwd=run_dir.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_text")
    run_dir, port = root / "run", _free_port()
    site = demo_site_root(run_dir)
    _run(run_dir, port, "--set", "retain_raw_text=true")
    retained = grep(run_dir, list(PLANTED))
    _run(run_dir, port)  # the workflow's own retain_raw_text: false, on the finished directory
    purged = grep(run_dir, list(PLANTED))
    return run_dir, site, retained, purged


def test_the_site_carries_the_planted_values_and_lies_outside_the_run_directory(demo_run):
    run_dir, site, _, _ = demo_run
    assert not site.resolve().is_relative_to(run_dir.resolve())
    in_site = grep(site, list(PLANTED))
    assert all(in_site.values()), {k: v for k, v in in_site.items() if not v}


def test_by_default_raw_text_is_only_in_the_stages_before_pii(demo_run):
    run_dir, _, retained, _ = demo_run
    before_pii = tuple(f".generations/{stage}/" for stage in BEFORE_PII)
    assert any(retained.values()), "no planted value reached the run directory: the test proves nothing"
    leaks = {value: [f for f in files if not f.startswith(before_pii)] for value, files in retained.items()}
    assert not any(leaks.values()), leaks
    stats = json.loads((run_dir / "stats.json").read_text())
    print("pii stats:", stats["pii"])
    assert sum(v for k, v in stats["pii"]["pii"].items() if k != "FACE") >= len(PLANTED) // 2


def test_with_retain_raw_text_false_no_file_of_the_run_directory_holds_a_planted_value(demo_run):
    run_dir, _, _, purged = demo_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    print(f"searched {len(files)} files of {run_dir}")
    assert not any(purged.values()), {k: v for k, v in purged.items() if v}
    for stage in BEFORE_PII:
        assert json.loads((run_dir / stage / "_SUCCESS.json").read_text())["raw_text_purged"] is True


def test_the_shards_faces_are_blurred_and_carry_no_metadata(demo_run):
    from mmcurate.schemas.stage_configs import FacesConfig
    from mmcurate.stages.pii.faces import FaceBlurrer

    run_dir = demo_run[0]
    detector = FaceBlurrer(FacesConfig())
    blurred = read = 0
    for tar_path in sorted((run_dir / "shards").glob("*/*.tar")):  # the demo graph's two shard sets
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith((".jpg", ".png")):
                assert image_metadata(data) == [], name
                meta = json.loads(members[name.rsplit(".", 1)[0] + ".json"])
                if meta["scores"].get("pii.faces"):
                    blurred += 1
                    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    assert detector.detect(pixels) == [], name
                read += 1
            elif name.endswith(".flac"):
                assert audio_tags(data) == [], name
                read += 1
    print(f"{read} images and clips read back, {blurred} with faces blurred")
    assert read and blurred


def test_every_sample_in_the_shards_carries_its_pii_counts_in_its_json(demo_run):
    counts = Counter()
    samples = 0
    for tar_path in sorted((demo_run[0] / "shards").glob("*/*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    assert isinstance(meta.get("pii"), dict), member.name  # the entity counts; {} when none
                    counts.update(meta["pii"])
                    samples += 1
    print(f"{samples} samples, pii counts in their .json: {dict(counts)}")
    assert samples and counts["FACE"] >= 1 and sum(n for t, n in counts.items() if t != "FACE") >= 1


def test_a_changed_pii_config_on_a_purged_directory_runs_again_from_the_crawl(demo_run):
    """The cost of the purge: the stages before pii hold no text, so a new pii config starts from the crawl; the
    e-mails it now drops are pii rejects whose rows, like every file, hold no planted value."""
    run_dir = demo_run[0]
    out = _run(run_dir, _port_of(run_dir), "--set", "pii.entities={EMAIL_ADDRESS: {operator: drop}}")
    statuses = {s["name"]: s["status"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"]}
    assert set(statuses.values()) == {"ran"} and len(statuses) == 8, (statuses, out[-2000:])
    stats = json.loads((run_dir / "stats.json").read_text())["pii"]
    # the e-mails dropped, the other defaults still redacted (a workflow's entities change the defaults they name)
    assert stats["rejected"].get("pii", 0) >= 1 and {"EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE"} <= set(stats["pii"])
    assert not any(grep(run_dir, list(PLANTED)).values())
    explained = subprocess.run([str(MMCURATE), "explain", str(run_dir), _a_pii_reject(run_dir)],
                               capture_output=True, text=True, timeout=120)
    assert "pii — personal data: EMAIL_ADDRESS x1" in explained.stdout, explained.stdout
    assert "@" not in explained.stdout.split("[pii]", 1)[1]


def _port_of(run_dir: Path) -> int:
    from urllib.parse import urlsplit

    import pyarrow.parquet as pq

    urls = pq.read_table(next((run_dir / "pii" / "data").glob("*.parquet")), columns=["url"])["url"].to_pylist()
    return urlsplit(urls[0]).port


def _a_pii_reject(run_dir: Path) -> str:
    import pyarrow.parquet as pq

    rows = [r for f in sorted((run_dir / "pii" / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return next(r["key"] for r in rows if r["reason"] == "pii")
