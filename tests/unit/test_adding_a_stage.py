"""The README's "Adding a stage" example, run as written: one registration and one module make a stage that a
workflow accepts, the registry finds, and that decides real batches."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import mmcurate.schemas.stage_configs as stage_configs
from mmcurate.pipeline.stages_registry import stage_class
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.workflow import load_workflow

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippets() -> tuple[str, str]:
    section = README.read_text().split("### Adding a stage", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the README's example is a registration and a module"
    return blocks[0], blocks[1]


@pytest.fixture
def example_stage(tmp_path):
    registration, module = _snippets()
    before = dict(stage_configs.STAGE_KINDS)
    namespace = dict(vars(stage_configs))
    exec(registration, namespace)  # as if appended to schemas/stage_configs.py
    stage_configs.MaxTextConfig = namespace["MaxTextConfig"]
    path = tmp_path / "max_text.py"
    path.write_text(module)
    spec = importlib.util.spec_from_file_location("mmcurate.stages.max_text", path)
    sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[spec.name])
    yield
    sys.modules.pop(spec.name, None)
    del stage_configs.MaxTextConfig
    stage_configs.STAGE_KINDS.clear()
    stage_configs.STAGE_KINDS.update(before)


def test_the_readme_example_stage_registers_validates_and_decides(example_stage, tmp_path):
    workflow = tmp_path / "w.yaml"
    workflow.write_text("name: w\nstages:\n  - {stage: crawl, url_lists: [{path: list.csv}]}\n  - stage: align\n"
                        "  - {stage: max_text, max_chars: 10}\n  - stage: shard\n")
    loaded = load_workflow(workflow)
    assert [s.kind for s in loaded.stages] == ["crawl", "align", "max_text", "shard"]

    misplaced = tmp_path / "bad.yaml"  # requires "aligned": before align it is refused, naming the stage
    misplaced.write_text("name: w\nstages:\n  - {stage: crawl, url_lists: [{path: list.csv}]}\n"
                         "  - stage: max_text\n  - stage: align\n")
    with pytest.raises(ValueError, match="max_text"):
        load_workflow(misplaced)

    stage = stage_class("max_text")(loaded.stages[2].config)
    batch = pa.Table.from_pylist([empty_record(key="a", text="short", image=b"x"),
                                  empty_record(key="b", text="a caption far too long", image=b"y")],
                                 schema=RECORD_SCHEMA)
    out = stage.process_table(batch)
    assert out["_reason"].to_pylist() == [None, "text_too_long"]
    assert out["image"].to_pylist() == [b"x", None]  # a reject row explains, it does not carry media
    assert out["_first"].to_pylist() == [True, True] and stage.name == "max_text"
