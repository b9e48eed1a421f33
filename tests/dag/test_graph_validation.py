"""A workflow is a graph: named inputs, fan-in, several sinks; every mistake in it fails at load, naming the file
and the stage, before a run directory, a server or Ray exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcurate.schemas.workflow import WorkflowError, load_workflow

CRAWL = '{stage: crawl, id: %s, seeds: ["http://127.0.0.1:1/"]}'


def write(tmp_path: Path, *stages: str) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text("name: g\nstages:\n" + "".join(f"  - {s}\n" for s in stages))
    return path


def test_without_input_a_stage_reads_the_stage_before_it(tmp_path):
    wf = load_workflow(write(tmp_path, CRAWL % "web", "{stage: align}", "{stage: shard}"))
    assert [(s.name, s.inputs) for s in wf.stages] == [("web", ()), ("align", ("web",)), ("shard", ("align",))]


def test_fan_in_and_two_sinks_load_in_an_order_that_runs_inputs_first(tmp_path):
    wf = load_workflow(write(
        tmp_path,
        "{stage: align, input: [a, b]}",  # written before its inputs
        CRAWL % "a", CRAWL % "b",
        "{stage: select, id: img, input: align, where: \"modality = 'image'\"}",
        "{stage: shard, id: images}",
        "{stage: select, id: aud, input: align, where: \"modality = 'audio'\"}",
        "{stage: shard, id: audio}",
    ))
    assert [s.name for s in wf.stages] == ["a", "b", "align", "img", "images", "aud", "audio"]
    assert wf.stage("align").inputs == ("a", "b")
    assert [s.name for s in wf.sinks] == ["images", "audio"]
    assert [s.name for s in wf.consumers("align")] == ["img", "aud"]


def test_a_cycle_fails_naming_the_file_and_a_stage_on_it(tmp_path):
    path = write(tmp_path, CRAWL % "web",
                 "{stage: align, input: [web, late]}",
                 "{stage: select, id: first, input: late, where: 'true'}",
                 "{stage: select, id: late, input: first, where: 'true'}",
                 "{stage: shard, input: align}")
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    message = str(err.value)
    assert message.startswith(f"{path}: stage 'first'") and "cycle" in message
    assert "first reads late, late reads first" in message


def test_a_stage_reading_itself_is_a_cycle(tmp_path):
    path = write(tmp_path, CRAWL % "web", "{stage: align}", "{stage: select, id: loop, input: loop, where: 'true'}")
    with pytest.raises(WorkflowError, match=r"stage 'loop': its inputs form a cycle: loop reads loop"):
        load_workflow(path)


def test_an_unknown_input_fails_naming_the_file_the_stage_and_the_name(tmp_path):
    path = write(tmp_path, CRAWL % "web", "{stage: align, input: [web, wbe]}", "{stage: shard}")
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    assert str(err.value).startswith(f"{path}: stage 'align': unknown input 'wbe'")


def test_a_requirement_missing_on_one_path_of_a_fan_in_fails_naming_that_path(tmp_path):
    # shard needs 'aligned': the path through align has it, the one straight from the crawl does not
    path = write(tmp_path, CRAWL % "web", CRAWL % "list", "{stage: align, input: web}",
                 "{stage: shard, input: [align, list]}")
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    message = str(err.value)
    assert message.startswith(f"{path}: stage 'shard' needs ['aligned']") and "input 'list'" in message


def test_an_extension_column_must_be_written_on_every_path(tmp_path):
    score = "{stage: clip_score, id: scored, input: align, embedding: true, model: {checkpoint: /nonexistent}}"
    path = write(tmp_path, CRAWL % "web", "{stage: align}", score,
                 "{stage: dedupe, input: [scored, align], semantic: {enabled: true}}", "{stage: shard}")
    with pytest.raises(WorkflowError, match=r"graph.yaml: stage 'dedupe' reads column\(s\) \['embedding'\] that not every"):
        load_workflow(path)
    load_workflow(write(tmp_path, CRAWL % "web", "{stage: align}", score,
                        "{stage: dedupe, input: scored, semantic: {enabled: true}}", "{stage: shard}"))


def test_semantic_decontamination_must_name_the_model_that_wrote_the_embeddings(tmp_path):
    score = "{stage: clip_score, id: %s, input: align, embedding: true, model: {checkpoint: /models/%s}}"
    dedupe = ("{stage: dedupe, input: %s, decontaminate: {images: /eval, semantic: {model: {checkpoint: /models/%s}}}}")
    path = write(tmp_path, CRAWL % "web", "{stage: align}", score % ("scored", "a"), dedupe % ("scored", "b"),
                 "{stage: shard}")
    with pytest.raises(WorkflowError, match=r"graph.yaml: stage 'dedupe' needs the embedding column made by "
                                            r"checkpoint:/models/b, and the stages before it write it with "
                                            r"checkpoint:/models/a"):
        load_workflow(path)
    # two paths, two models: the embeddings of one record are not the eval model's
    path = write(tmp_path, CRAWL % "web", "{stage: align}", score % ("one", "a"), score % ("two", "b"),
                 dedupe % ("[one, two]", "a"), "{stage: shard}")
    with pytest.raises(WorkflowError, match=r"write it with checkpoint:/models/a, checkpoint:/models/b"):
        load_workflow(path)
    load_workflow(write(tmp_path, CRAWL % "web", "{stage: align}", score % ("scored", "a"),
                        dedupe % ("scored", "a/"), "{stage: shard}"))


def test_a_select_reading_an_extension_column_no_path_writes_fails_at_load(tmp_path, capsys):
    from mmcurate.pipeline.cli import main

    path = write(tmp_path, CRAWL % "web", "{stage: align}", "{stage: select, where: 'pii IS NOT NULL'}", "{stage: shard}")
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    assert str(err.value).startswith(f"{path}: stage 'select' reads column(s) ['pii'] that not every path")
    run_dir = tmp_path / "run"
    assert main(["plan", str(path), "--run-dir", str(run_dir)]) == 2
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 2
    assert "stage 'select' reads column(s) ['pii']" in capsys.readouterr().err
    assert not run_dir.exists()  # refused before the crawl, not by DuckDB's binder after it
    load_workflow(write(tmp_path, CRAWL % "web", "{stage: align}", "{stage: pii}",
                        "{stage: select, where: 'pii IS NOT NULL'}", "{stage: shard}"))


@pytest.mark.parametrize(("stages", "message"), [
    ((CRAWL % "web", "{stage: align}", "{stage: align, input: web}", "{stage: shard}"), "'align' appear more than once"),
    ((CRAWL % "web", "{stage: align}", "{stage: shard}", "{stage: shard, id: again}"), "stage 'again': input 'shard' is a sink"),
    (("{stage: crawl, id: web, input: x, seeds: ['http://127.0.0.1:1/']}", "{stage: align}"), "a source stage reads no other stage"),
    (("{stage: align}", CRAWL % "web"), "stage 'align' (stages[0]): a map stage needs an input"),
    ((CRAWL % "web", "{stage: align, input: []}"), "'input' must be a stage name or a non-empty list"),
    ((CRAWL % "web", "{stage: align, input: [web, web]}"), "'input' names a stage twice"),
    ((CRAWL % "shards", "{stage: align}"), "stage name 'shards' must match"),
    ((CRAWL % "train", "{stage: align}"), "stage name 'train' must match"),  # mmcurate train writes DIR/train/
    ((CRAWL % "web", "{stage: [align]}"), "stages[1]: unknown stage ['align']"),
    ((CRAWL % "web", "{stage: {align: 1}}"), "stages[1]: unknown stage {'align': 1}"),
    ((CRAWL % "web", "{stage: select, where: 'length(text)'}"), "not a boolean expression"),
    ((CRAWL % "web", "{stage: select, where: 'nosuch = 1'}"), "field 'where'"),
])
def test_each_graph_mistake_fails_at_load_naming_the_file(tmp_path, stages, message):
    path = write(tmp_path, *stages)
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_the_cli_refuses_an_invalid_graph_with_exit_code_2_before_the_run_directory_exists(tmp_path, capsys):
    from mmcurate.pipeline.cli import main

    path = write(tmp_path, CRAWL % "web", "{stage: align, input: [web, nowhere]}", "{stage: shard}")
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 2
    assert "stage 'align': unknown input 'nowhere'" in capsys.readouterr().err
    assert not run_dir.exists()  # no lock, no log, no server, no Ray: nothing ran
    assert main(["plan", str(path), "--run-dir", str(run_dir)]) == 2
    assert main(["run", str(write(tmp_path, CRAWL % "web", "{stage: align}", "{stage: shard}")),
                 "--run-dir", str(run_dir), "--only", "nosuch"]) == 2
    assert "--only nosuch: no stage of that name" in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.parametrize(("override", "message"), [
    ("align.image_max_side=[1", "--set align.image_max_side=[1: the value is not valid YAML"),
    ("web.seeds.x=1", "stage 'web': 'web.seeds' is list"),
    ("web.fetch.timeout_s.x=1", "stage 'web': 'web.fetch.timeout_s' is float 10.0, not a mapping"),
    ("align.input.x=1", "stage 'align': 'align.input' is list"),
    ("align.stage=[align]", "unknown stage ['align']"),
    ("serve.site.port.x=1", "serve: 'serve.site.port' is int 1, not a mapping"),
    ("nosuch.x=1", "--set nosuch.x=1: no stage named 'nosuch'"),
    ("max_error_fraction=[1", "the value is not valid YAML"),
])
def test_a_bad_override_fails_at_load_naming_the_file_and_the_stage(tmp_path, capsys, override, message):
    from mmcurate.pipeline.cli import main

    path = write(tmp_path, "{stage: crawl, id: web, seeds: ['http://127.0.0.1:1/'], fetch: {timeout_s: 10.0}}",
                 "{stage: align, input: [web]}", "{stage: shard}")
    path.write_text(path.read_text() + "serve: {site: {port: 1}}\n")
    with pytest.raises(WorkflowError) as err:
        load_workflow(path, overrides=[override])
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)
    assert main(["plan", str(path), "--run-dir", str(tmp_path / "run"), "--set", override]) == 2
    assert message in capsys.readouterr().err
