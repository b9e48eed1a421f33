"""Eval-set decontamination's guards, without Ray: the semantic match-fraction guard, unreadable eval files,
the image suffixes, hidden files, the explain parse, eval paths inside the run directory, model identity."""

from __future__ import annotations

import pytest

from mmcurate.schemas.stage_configs import SemanticEvalConfig
from mmcurate.stages.base import InputError
from mmcurate.stages.dedupe.decontaminate import check_semantic_fraction


def _semantic(**kw) -> SemanticEvalConfig:
    return SemanticEvalConfig(model={"checkpoint": "/models/tiny"}, **kw)


def test_semantic_matches_over_the_max_fraction_fail_the_stage_naming_count_and_eps():
    with pytest.raises(InputError, match=r"604 of 1795 records .* eps 0.05.* too loose"):
        check_semantic_fraction(604, 1795, _semantic())  # the demo's figures under its tiny filter model


def test_semantic_matches_within_the_max_fraction_pass_and_the_guard_can_be_turned_off():
    check_semantic_fraction(17, 1795, _semantic())  # under 1 %
    check_semantic_fraction(604, 1795, _semantic(max_fraction=None))
    check_semantic_fraction(604, 1795, _semantic(max_fraction=0.5))
    check_semantic_fraction(0, 0, _semantic())
    assert _semantic().max_fraction == 0.01


def test_semantic_count_counts_semantic_rows_of_every_batch():
    import pyarrow as pa

    from mmcurate.stages.dedupe.decontaminate import semantic_count

    class Drops:  # a Ray dataset's select_columns and iter_batches, as summarize calls them
        def select_columns(self, columns):
            assert columns == ["method"]
            return self

        def iter_batches(self, batch_format):
            assert batch_format == "pyarrow"
            yield pa.table({"method": ["semantic", "phash", "semantic"]})
            yield pa.table({"method": pa.array([], pa.string())})
            yield pa.table({"method": ["semantic"]})

    assert semantic_count(Drops()) == 3


def _load(tmp_path, **eval_set):
    from mmcurate.schemas.stage_configs import EvalSetConfig, TextDedupeConfig
    from mmcurate.stages.dedupe.decontaminate import load_eval_set

    return load_eval_set(EvalSetConfig(**eval_set), TextDedupeConfig(), None, 0.0, None)


def test_a_bad_eval_shard_is_an_input_error_naming_it(tmp_path):
    shard = tmp_path / "eval-000000.tar"
    shard.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(InputError, match=r"decontaminate.shards: .*eval-000000.tar is not a readable tar shard"):
        _load(tmp_path, shards=(str(shard),))


def test_a_texts_file_that_is_not_utf8_is_an_input_error_naming_it(tmp_path):
    texts = tmp_path / "eval.txt"
    texts.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"decontaminate.texts: .*eval.txt is not UTF-8"):
        _load(tmp_path, texts=str(texts))


def _png(path, colour=(200, 30, 30), fmt="PNG") -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), colour).save(path, fmt)


def test_eval_image_suffixes_are_pillows_own():
    from PIL import features

    from mmcurate.stages.dedupe.decontaminate import IMAGE_SUFFIXES

    assert {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".tif"} <= set(IMAGE_SUFFIXES)
    if features.check("avif"):  # Pillow >= 11.3 built with libavif
        assert ".avif" in IMAGE_SUFFIXES
    assert ".h5" not in IMAGE_SUFFIXES  # a stub Pillow recognises but cannot decode


def test_a_jfif_eval_image_is_read_and_other_files_are_reported_skipped(tmp_path, caplog):
    folder = tmp_path / "eval"
    folder.mkdir()
    _png(folder / "a.jfif", fmt="JPEG")
    (folder / "notes.md").write_text("not an image")
    (folder / "labels.csv").write_text("a,1")
    with caplog.at_level("WARNING", logger="mmcurate.stage.dedupe"):
        index = _load(tmp_path, images=str(folder))
    assert index.image_items == ["a.jfif"]
    assert "2 file(s)" in caplog.text and "labels.csv, notes.md" in caplog.text


def test_hidden_files_and_folders_in_the_eval_folder_are_skipped_but_a_broken_image_is_refused(tmp_path):
    folder = tmp_path / "eval"
    (folder / ".thumbs").mkdir(parents=True)
    _png(folder / "a.png")
    (folder / "._a.png").write_bytes(b"\0\5\26\7AppleDouble resource fork")  # macOS AppleDouble
    (folder / ".thumbs" / "b.png").write_bytes(b"not png")
    assert _load(tmp_path, images=str(folder)).image_items == ["a.png"]
    (folder / "broken.png").write_bytes(b"not png")
    with pytest.raises(InputError, match="eval image broken.png does not decode"):
        _load(tmp_path, images=str(folder))


@pytest.mark.parametrize("item", ["exact 0 (1).png", "set/a (copy) (2).jpg", "eval-000000.tar:x.jpg", "eval.txt:3"])
@pytest.mark.parametrize("measures", ["embedding cosine 0.9412", "phash hamming 3, thumbnail rms 2.1", "exact pixels"])
def test_explain_reads_back_an_eval_item_whose_name_holds_parentheses(item, measures):
    from mmcurate.stages.dedupe.drops import detail, eval_item_of

    assert eval_item_of(detail("eval_contamination", item, measures)) == item


def test_an_eval_set_inside_the_run_directory_is_refused_naming_why(tmp_path):
    from types import SimpleNamespace

    from mmcurate.pipeline.runner import _refuse_inside_run_dir
    from mmcurate.schemas.stage_configs import DedupeConfig
    from mmcurate.schemas.workflow import WorkflowError

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (tmp_path / "outside").mkdir()

    def check(**eval_set):
        _refuse_inside_run_dir(SimpleNamespace(name="dedupe", config=DedupeConfig(decontaminate=eval_set)), str(run))

    for field, path in (("images", run / "eval"), ("texts", run / "eval" / "q.txt"),
                        ("shards", (str(run / "eval" / "e-*.tar"),))):
        value = path if isinstance(path, tuple) else str(path)
        with pytest.raises(WorkflowError, match=r"decontaminate.(images|texts|shards\[0\]) .* inside the run "
                                                r"directory .* left out of the fingerprint"):
            check(**{field: value})
    check(images=str(tmp_path / "outside"), texts=str(tmp_path / "q.txt"))  # outside: fine
    (tmp_path / "link").symlink_to(run / "eval")
    with pytest.raises(WorkflowError, match="inside the run directory"):  # through a link too
        check(images=str(tmp_path / "link"))
    # a semantic model another stage of the run publishes stays allowed
    check(images=str(tmp_path / "outside"),
          semantic={"model": {"checkpoint": str(run / "train_filter" / "artifacts" / "model")}})


def test_a_model_named_through_a_symlink_or_relative_path_has_the_same_identity(tmp_path, monkeypatch):
    from mmcurate.schemas.stage_configs import ClipModelSpec

    (tmp_path / "models" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "models" / "a")
    monkeypatch.chdir(tmp_path)
    same = {ClipModelSpec(checkpoint=p).identity() for p in ("models/a", "./models/a/", str(tmp_path / "link"))}
    assert len(same) == 1
    (tmp_path / "w.pt").write_bytes(b"weights")
    (tmp_path / "w-link.pt").symlink_to(tmp_path / "w.pt")
    files = {ClipModelSpec(name="ViT-B-32", pretrained=p).identity() for p in ("w.pt", "./w-link.pt")}
    assert len(files) == 1
    assert ClipModelSpec(name="ViT-B-32", pretrained="laion2b_s34b_b79k").identity() == "ViT-B-32:laion2b_s34b_b79k"


def test_eval_shards_of_one_file_name_in_two_folders_give_items_apart(tmp_path):
    import io
    import tarfile

    for folder, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        (tmp_path / folder).mkdir()
        image = tmp_path / f"{folder}.png"
        _png(image, colour)
        with tarfile.open(tmp_path / folder / "eval-000000.tar", "w") as tar:
            data = image.read_bytes()
            info = tarfile.TarInfo("x.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = _load(tmp_path, shards=(str(tmp_path / "*" / "eval-000000.tar"),))
    assert index.image_items == ["a/eval-000000.tar:x.png", "b/eval-000000.tar:x.png"]
    alone = _load(tmp_path, shards=(str(tmp_path / "a" / "eval-000000.tar"),) * 2)
    assert alone.image_items == ["eval-000000.tar:x.png"]  # a unique name stays the file name
