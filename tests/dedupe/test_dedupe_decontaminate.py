"""Eval-set decontamination on Ray: copies of eval images (re-encoded, resized, cropped by 5 % per side) and eval
texts (re-punctuated, one word changed) planted in a pool are caught with recall >= 0.95, each naming its eval
item; the rest of the pool is left alone. The eval set is given all three ways: a folder, shards, a text file."""

from __future__ import annotations

import io
import tarfile

import pyarrow.parquet as pq
import pytest

from dedupe_helpers import cropped, decoded, jpeg, photos, record, resized, table

from mmcurate.schemas.stage_configs import DedupeConfig
from mmcurate.stages.base import InputError, StageContext
from mmcurate.stages.dedupe.drops import eval_item_of
from mmcurate.stages.dedupe.stage import DedupeStage

pytestmark = pytest.mark.integration

EVAL_TEXTS = ["What colour is the umbrella held by the woman on the left?",
              "How many birds are sitting on the telephone wire above the street?",
              "Describe the painting hanging above the fireplace in the living room.",
              "Which player is wearing the number ten shirt in the second half?"]


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def decontaminated(ray_session, tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("decontaminate")
    images = photos()
    names = sorted(images)
    eval_names, pool_names = names[:20], names[20:]
    folder = root / "eval-images" / "set"
    folder.mkdir(parents=True)
    eval_bytes = {name: jpeg(images[name]) for name in eval_names}
    for name in eval_names[:10]:
        (folder / f"{name}.jpg").write_bytes(eval_bytes[name])
    _tar(root / "eval-000000.tar", {**{f"{n}.jpg": eval_bytes[n] for n in eval_names[10:]},
                                    **{f"{n}.txt": f"a photo of {n}".encode() for n in eval_names[10:]}})
    (root / "eval.txt").write_text("\n".join(EVAL_TEXTS) + "\n\n")
    item = {n: f"set/{n}.jpg" for n in eval_names[:10]} | {n: f"eval-000000.tar:{n}.jpg" for n in eval_names[10:]}

    rows, planted = [], {}
    for name in eval_names:
        image = decoded(eval_bytes[name])
        for variant, data in (("q55", jpeg(image, 55)), ("resized", jpeg(resized(image, 0.6))),
                              ("cropped", jpeg(cropped(image, 0.05)))):
            rows.append(record(f"{name}-{variant}", data, f"copy {variant} of picture {name}"))
            planted[rows[-1]["key"]] = item[name]
    texts = [EVAL_TEXTS[0].upper(), EVAL_TEXTS[1].replace("?", " ?!"),
             EVAL_TEXTS[2].replace("living room", "sitting room"), EVAL_TEXTS[3].replace("second", "2nd")]
    for i, (name, text) in enumerate(zip(pool_names[:4], texts)):  # an image of the pool, an eval question
        rows.append(record(f"{name}-asks", jpeg(images[name]), text))
        planted[rows[-1]["key"]] = f"eval.txt:{i + 1}"
    clean = [record(name, jpeg(images[name]), f"an unrelated caption about {name}") for name in pool_names[4:]]
    rows += clean
    path = root / "pool.parquet"
    pq.write_table(table(rows), path)

    config = DedupeConfig(decontaminate={"images": str(root / "eval-images"), "shards": [str(root / "eval-*.tar")],
                                         "texts": str(root / "eval.txt"), "text_threshold": 0.7},
                          perceptual={"radius": 8}, partitions=8)
    ctx = StageContext(name="dedupe", config_hash="h", work_dir=root / "w", progress_dir=root / "p")
    summary = DedupeStage(config, "dedupe").summarize(ray.data.read_parquet([str(path)]), ctx)
    return summary, pq.read_table(summary["drops"]).to_pylist(), planted, {r["key"] for r in clean}


def test_planted_eval_copies_are_caught_naming_their_eval_item(decontaminated):
    summary, drops, planted, _ = decontaminated
    caught = {d["key"]: d for d in drops if d["reason"] == "eval_contamination"}
    right = [k for k, want in planted.items() if k in caught and eval_item_of(caught[k]["detail"]) == want]
    assert len(right) / len(planted) >= 0.95, sorted(set(planted) - set(right))
    assert summary["eval_items"] == 20 + len(EVAL_TEXTS)
    methods = {caught[k]["method"] for k in right}
    assert {"phash", "exact_text", "minhash"} <= methods


def test_the_rest_of_the_pool_is_not_called_contaminated(decontaminated):
    _, drops, planted, clean = decontaminated
    wrongly = [d for d in drops if d["reason"] == "eval_contamination" and d["key"] not in planted]
    assert not wrongly
    assert not clean & {d["key"] for d in drops}


def test_an_eval_set_that_is_not_there_is_a_clear_error(ray_session, tmp_path):
    import ray

    config = DedupeConfig(decontaminate={"shards": [str(tmp_path / "missing-*.tar")]})
    ctx = StageContext(name="dedupe", config_hash="h", work_dir=tmp_path / "w", progress_dir=tmp_path / "p")
    with pytest.raises(InputError, match="no file matches"):
        DedupeStage(config, "dedupe").summarize(ray.data.from_items([{"key": "a"}]), ctx)
