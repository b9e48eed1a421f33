from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import Field

from mmcurate.pipeline.services import Service
from mmcurate.schemas.stage_configs import StrictModel
from mmcurate.schemas.workflow import WorkflowError, load_workflow

GOOD = """
name: t
stages:
  - stage: crawl
    seeds: ["http://127.0.0.1:1/index.html"]
    fetch: {allow_networks: ["127.0.0.0/8"]}
  - stage: align
    image_max_side: 128
  - stage: shard
    samples_per_shard: 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


def test_good_workflow_types_and_defaults(tmp_path):
    wf = load_workflow(write(tmp_path, GOOD))
    assert wf.stages[1].config.image_max_side == 128
    assert wf.stages[0].config.fetch.allow_networks == ("127.0.0.0/8",)
    assert wf.stages[2].config.max_shard_bytes == 1 << 30


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    path = write(tmp_path, GOOD.replace("image_max_side: 128", "image_max_side: 128\n    image_max_side: 64"))
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    assert str(path) in str(err.value) and "found key 'image_max_side' twice (lines 8 and 9)" in str(err.value)
    with pytest.raises(WorkflowError, match="found key 'x' twice"):
        load_workflow(write(tmp_path, GOOD), overrides=["align.fetch={x: 1, x: 2}"])
    merged = "base: &b {samples_per_shard: 5}\n" + GOOD.replace("samples_per_shard: 10", "<<: *b\n    samples_per_shard: 7")
    with pytest.raises(WorkflowError, match="base"):  # an anchor is fine; an unknown top-level key is not
        load_workflow(write(tmp_path, merged))


def test_unknown_stage_names_file_and_position(tmp_path):
    path = write(tmp_path, GOOD.replace("stage: align", "stage: allign"))
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    assert str(path) in str(err.value) and "stages[1]" in str(err.value) and "allign" in str(err.value)


def test_unknown_field_names_stage_and_field(tmp_path):
    path = write(tmp_path, GOOD.replace("image_max_side: 128", "image_max_sid: 128"))
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    message = str(err.value)
    assert "stage 'align'" in message and "image_max_sid" in message and str(path) in message


def test_wrong_type_names_field(tmp_path):
    path = write(tmp_path, GOOD.replace("samples_per_shard: 10", "samples_per_shard: many"))
    with pytest.raises(WorkflowError, match=r"stage 'shard'.*field 'samples_per_shard'"):
        load_workflow(path)


def test_nested_wrong_type(tmp_path):
    path = write(tmp_path, GOOD.replace('allow_networks: ["127.0.0.0/8"]', "max_redirects: lots"))
    with pytest.raises(WorkflowError, match=r"field 'fetch.max_redirects'"):
        load_workflow(path)


def test_order_is_checked_at_build_time(tmp_path):
    reordered = """
name: t
stages:
  - stage: crawl
    seeds: ["http://127.0.0.1:1/"]
  - stage: shard
  - stage: align
"""
    with pytest.raises(WorkflowError, match="is a sink|needs"):
        load_workflow(write(tmp_path, reordered))
    no_align = """
name: t
stages:
  - stage: crawl
    seeds: ["http://127.0.0.1:1/"]
  - stage: shard
"""
    with pytest.raises(WorkflowError, match=r"needs \['aligned'\]"):
        load_workflow(write(tmp_path, no_align))


def test_crawl_needs_an_input(tmp_path):
    with pytest.raises(WorkflowError, match="at least one of"):
        load_workflow(write(tmp_path, GOOD.replace('seeds: ["http://127.0.0.1:1/index.html"]', "max_depth: 1")))


def test_variables_are_part_of_the_resolved_config_and_overrides_touch_only_their_stage(tmp_path):
    path = write(tmp_path, GOOD.replace("http://127.0.0.1:1", "${demo_site.base_url}"))
    a = load_workflow(path, variables={"demo_site.base_url": "http://127.0.0.1:1000"})
    b = load_workflow(path, variables={"demo_site.base_url": "http://127.0.0.1:2000"}, overrides=["align.image_max_side=64"])
    c = load_workflow(path, variables={"demo_site.base_url": "http://127.0.0.1:1000"}, overrides=["align.image_max_side=64"])
    assert a.stages[0].config.seeds == ("http://127.0.0.1:1000/index.html",)
    assert b.stages[0].config.seeds == ("http://127.0.0.1:2000/index.html",)
    # another server is another crawl: output fetched from port 1000 must never be reused for port 2000
    assert a.stages[0].config_hash != b.stages[0].config_hash
    assert a.stages[0].config_hash == c.stages[0].config_hash
    assert a.stages[1].config_hash != c.stages[1].config_hash
    assert b.stages[1].config.image_max_side == 64
    with pytest.raises(WorkflowError, match="unknown variable"):
        load_workflow(path)


def test_a_default_written_out_hashes_like_the_default_left_out(tmp_path):
    plain = load_workflow(write(tmp_path, GOOD))
    explicit = load_workflow(write(tmp_path, GOOD), overrides=["align.image_min_side=16"])
    assert plain.stages[1].config_hash == explicit.stages[1].config_hash


def test_max_error_fraction_is_a_validated_workflow_field(tmp_path):
    assert load_workflow(write(tmp_path, GOOD)).max_error_fraction == 0.01
    assert load_workflow(write(tmp_path, GOOD), overrides=["max_error_fraction=0.5"]).max_error_fraction == 0.5
    with pytest.raises(WorkflowError, match="max_error_fraction"):
        load_workflow(write(tmp_path, GOOD), overrides=["max_error_fraction=2"])


def test_a_page_crawl_outside_fetch_allowed_domains_fails_at_load(tmp_path):
    bad = GOOD.replace('fetch: {allow_networks: ["127.0.0.0/8"]}',
                       'fetch: {allow_networks: ["127.0.0.0/8"], allowed_domains: [example.org]}')
    with pytest.raises(WorkflowError, match="outside fetch.allowed_domains"):
        load_workflow(write(tmp_path, bad))


def test_the_demo_port_is_derived_from_the_run_directory(tmp_path):
    from mmcurate.pipeline.demo import demo_port

    ports = {demo_port(tmp_path / f"run{i}") for i in range(20)}
    assert len(ports) > 15 and all(18000 <= p < 28000 for p in ports)  # below the ephemeral range
    (tmp_path / "link").symlink_to(tmp_path / "run0")
    assert demo_port(tmp_path / "run0") == demo_port(tmp_path / "link") == demo_port(tmp_path / "run0")


def test_input_files_are_local_paths_not_uris(tmp_path):
    for field in ('url_lists: [{path: "s3://AKIA:secret@bucket/list.csv"}]', 'warcs: ["file:///data/a.warc.gz"]'):
        bad = GOOD.replace('seeds: ["http://127.0.0.1:1/index.html"]', field)
        with pytest.raises(WorkflowError, match="is not a local path"):
            load_workflow(write(tmp_path, bad))


def test_the_installed_demo_workflow_validates_with_the_demo_services_placeholders():
    from mmcurate.pipeline.demo import DEMO_SITE, DemoSiteConfig, demo_workflow_path
    from mmcurate.schemas.workflow import validated_serve

    from mmcurate.pipeline.rundir import RunDir
    from mmcurate.pipeline.runner import run_variables

    variables = {**DEMO_SITE.placeholders, **run_variables(demo_workflow_path(), RunDir("/tmp/mmcurate-test-run"))}
    workflow = load_workflow(demo_workflow_path(), variables=variables,
                             overrides=["serve.demo_site.pages=50", "serve.demo_site.trusted=7"])
    kinds = [s.kind for s in workflow.stages]
    assert kinds[:3] == ["crawl", "crawl", "align"] and [s.name for s in workflow.sinks] == ["images", "audio"]
    assert workflow.stage("pages").config.seeds and workflow.stage("list").config.url_lists
    (config,) = validated_serve(workflow, {"demo_site": DEMO_SITE.config}).values()
    assert isinstance(config, DemoSiteConfig) and (config.pages, config.trusted) == (50, 7)
    assert config.port is None  # defaults filled in


SERVED = GOOD.replace("name: t", "name: t\nserve:\n  tiny: {size: 3}").replace("http://127.0.0.1:1", "${tiny.base_url}")


class TinyConfig(StrictModel):
    size: int = Field(1, ge=1)
    colour: str = "red"


def tiny_service(started: list) -> Service:
    """A service that records each start, so a test can see whether the runner got as far as serving."""

    @contextmanager
    def serve(config: TinyConfig, run_root: Path):
        started.append((config, run_root))
        yield {"tiny.base_url": "http://127.0.0.1:7"}

    return Service(config=TinyConfig, placeholders={"tiny.base_url": "http://127.0.0.1:1"}, serve=serve)


def test_a_serve_entry_no_service_was_given_for_fails_before_anything_runs(tmp_path):
    from mmcurate.pipeline.runner import run_workflow

    path, started = write(tmp_path, SERVED), []
    with pytest.raises(WorkflowError) as err:
        run_workflow(path, tmp_path / "run", services={"other": tiny_service(started)})
    message = str(err.value)
    assert str(path) in message and "serve: unknown service 'tiny'" in message and "known: other" in message
    with pytest.raises(WorkflowError, match="unknown service 'tiny' .known: none were given"):
        run_workflow(write(tmp_path, SERVED.replace("${tiny.base_url}", "http://127.0.0.1:1")), tmp_path / "run")
    assert not started and not (tmp_path / "run").exists()


def test_a_bad_serve_field_names_file_service_and_field_before_the_service_starts(tmp_path):
    from mmcurate.pipeline.runner import run_workflow

    started = []
    for override, field in (("serve.tiny.size=0", "size"), ("serve.tiny.colur=blue", "colur")):
        path = write(tmp_path, SERVED)
        with pytest.raises(WorkflowError) as err:
            run_workflow(path, tmp_path / "run", overrides=[override], services={"tiny": tiny_service(started)})
        assert f"{path}: serve.tiny: field '{field}'" in str(err.value)
    assert not started and not (tmp_path / "run").exists()


def test_a_services_variables_are_unknown_to_a_workflow_loaded_without_it(tmp_path):
    with pytest.raises(WorkflowError, match=r"unknown variable \$\{tiny.base_url\}"):
        load_workflow(write(tmp_path, SERVED))


def test_serve_must_map_service_names_to_config_mappings(tmp_path):
    for section in ("serve: [tiny]", "serve:\n  tiny: 3"):
        with pytest.raises(WorkflowError, match="serve: expected a mapping of service name to its config"):
            load_workflow(write(tmp_path, GOOD.replace("name: t", f"name: t\n{section}")))


def test_a_stage_reading_an_extension_column_needs_an_earlier_stage_that_writes_it(tmp_path, monkeypatch):
    import mmcurate.schemas.stage_configs as stage_configs

    class NeedsEmbedding(stage_configs.StageConfig):
        def columns_needed(self):
            return frozenset({"embedding"})

    monkeypatch.setitem(stage_configs.STAGE_KINDS, "needs_embedding", stage_configs.StageKind(
        config=NeedsEmbedding, role="map", implementation="x:Y"))
    head = ("name: w\nstages:\n  - {stage: crawl, url_lists: [{path: l.csv}]}\n  - stage: align\n"
            "  - {stage: clip_score, model: {checkpoint: /m}, embedding: EMB}\n  - stage: needs_embedding\n")
    path = tmp_path / "w.yaml"
    path.write_text(head.replace("EMB", "true"))
    assert [s.kind for s in load_workflow(path).stages][-1] == "needs_embedding"
    path.write_text(head.replace("EMB", "false"))  # clip_score may write embeddings, but this one does not
    with pytest.raises(WorkflowError, match=r"'needs_embedding' reads column\(s\) \['embedding'\]"):
        load_workflow(path)
