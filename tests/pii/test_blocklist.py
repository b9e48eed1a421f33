"""The blocklist stage: a sha256 of the bytes and a pHash within the radius (a re-encoded, resized copy) are
rejected as ``blocklist`` naming the list; other media passes; a malformed list fails naming file and line."""

from __future__ import annotations

import hashlib
import io
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import imagehash
import pyarrow as pa
import pytest
from PIL import Image

from mmcurate.pipeline.demo.site.images import photo
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import BlocklistConfig
from mmcurate.stages.base import InputError
from mmcurate.stages.pii.blocklist import BlocklistStage


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture
def served(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_sha256_and_phash_matches_are_rejected_naming_the_list(tmp_path, served):
    coffee, rocket, chelsea = (Image.open(io.BytesIO(photo(n)[0])).convert("RGB") for n in ("coffee", "rocket", "chelsea"))
    exact = _jpeg(coffee)
    copy = _jpeg(rocket.resize((rocket.width // 2, rocket.height // 2)), quality=60)  # re-encoded, half size
    clean = _jpeg(chelsea)
    (tmp_path / "sha.txt").write_text(f"# known files\n{hashlib.sha256(exact).hexdigest()}\n")
    (tmp_path / "phash.txt").write_text(f"{imagehash.phash(rocket)}  # the rocket, as first published\n")
    stage = BlocklistStage(BlocklistConfig(sha256=(str(tmp_path / "sha.txt"),), phash=(f"{served}/phash.txt",)))
    rows = [empty_record(key=k, image=data) for k, data in (("exact", exact), ("copy", copy), ("clean", clean))]
    rows.append(empty_record(key="broken", image=b"\xff\xd8 not a jpeg"))
    out = {r["key"]: r for r in stage.process_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)).to_pylist()}
    assert out["exact"]["_reason"] == "blocklist" and "sha256" in out["exact"]["_detail"]
    assert out["copy"]["_reason"] == "blocklist" and "phash.txt" in out["copy"]["_detail"]
    assert out["clean"]["_reason"] is None and out["broken"]["_reason"] is None
    assert out["exact"]["image"] is None  # a reject row explains, it does not carry


def test_a_malformed_list_fails_naming_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_text("0123456789abcdef\nnot-a-hash\n")
    with pytest.raises(InputError, match=r"bad.txt:2"):
        BlocklistStage(BlocklistConfig(phash=(str(tmp_path / "bad.txt"),))).setup()
    with pytest.raises(InputError, match="cannot read"):
        BlocklistStage(BlocklistConfig(sha256=(str(tmp_path / "missing.txt"),))).setup()
