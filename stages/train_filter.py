"""The ``train_filter`` global stage: train a data-filtering network (Apple's DFN recipe: a CLIP trained on
trusted, well-captioned data, whose image–text similarity then scores the crawled pool) on the records that
``where`` selects, and publish it as the stage's ``artifacts/model``. Every record passes through unchanged: the
scoring is ``clip_score``'s job, pointed at ``${run_dir}/<this stage>/artifacts/model``.

``summarize`` works in the stage's progress directory, which survives a killed run::

    trusted/{train,held_out}/trusted-NNNNNN.tar   the selected records as WebDataset shards, key order; one in ten
                                                   records (by a hash of its key) held out for validation and eval
    trusted/split.json                             record counts of the two splits
    trainer/train/                                 the trainer's run directory (``mmcurate.pipeline.train``): its
                                                   checkpoints are what a restarted run resumes from
    artifacts/model/, artifacts/eval.json          the scorer (best validation loss, else last step) and its
                                                   retrieval recall on the held-out records
    artifacts/config.yaml                          the trainer's resolved config (clip_score names the model by it)

The selection runs in the workers: DuckDB evaluates the predicate over each Arrow batch (``map_batches``), Ray
Data sorts the selected records by key, and one Ray task writes the shards from the sorted blocks, so the records
never pass through the driver and the same input gives byte-identical shards (the trainer resumes only over
shards whose content it recorded). ``trusted/`` appears in one rename, so a kill while writing leaves no half set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from mmcurate.schemas.record import RECORD_SCHEMA
from mmcurate.schemas.stage_configs import TrainFilterConfig
from mmcurate.schemas.yaml_files import load_yaml
from mmcurate.stages.base import Decisions, GlobalStage, InputError, StageContext

log = logging.getLogger("mmcurate.stage.train_filter")

HELD_OUT_EVERY = 10  # one trusted record in this many (by key hash) validates and evaluates the model
_ROW = "__mmcurate_row"


def _expression(where: str) -> Any:
    import duckdb

    # SQLExpression parses exactly one expression: a predicate cannot close the WHERE and start another clause
    return duckdb.SQLExpression(where)


def check_predicate(where: str, schema: pa.Schema, stage: str) -> None:
    """Fail, naming the stage, unless ``where`` is one boolean DuckDB expression over ``schema``'s columns."""
    import duckdb

    try:
        with duckdb.connect() as con:
            types = con.from_arrow(schema.empty_table()).select(_expression(where).alias("keep")).types
    except duckdb.Error as err:
        raise InputError(f"stage {stage}: where {where!r} is not a DuckDB predicate over the record columns: "
                         f"{str(err).splitlines()[0]}") from None
    if str(types[0]) != "BOOLEAN":
        raise InputError(f"stage {stage}: where {where!r} is {types[0]}, not a boolean predicate")


def select_rows(batch: pa.Table, where: str) -> pa.Table:
    """The records of ``batch`` for which ``where`` is true (null counts as false), in batch order. DuckDB reads
    only the columns the predicate names: media bytes stay in Arrow."""
    import duckdb

    numbered = batch.append_column(_ROW, pa.array(range(batch.num_rows), pa.int64()))
    with duckdb.connect() as con:
        chosen = con.from_arrow(numbered).filter(_expression(where)).select(_ROW).order(_ROW).fetchnumpy()
    return batch.take(pa.array(chosen[_ROW], pa.int64()))


def held_out(key: str) -> bool:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % HELD_OUT_EVERY == 0


def write_trusted(blocks: list[Any], out_dir: str, samples_per_shard: int) -> dict[str, int]:
    """Write the selected records (``blocks``: references to Arrow tables, in key order) as shards under
    ``out_dir``/train and /held_out, through a temporary directory renamed whole. Runs as one Ray task."""
    import ray

    from mmcurate.stages.shard import write_shards

    out = Path(out_dir)
    tmp = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    counts = {}
    for split in ("train", "held_out"):
        def records(split: str = split):
            for ref in blocks:  # one block in memory at a time
                for record in ray.get(ref).to_pylist():
                    if held_out(record["key"]) == (split == "held_out"):
                        yield record

        infos = write_shards(records(), tmp / split, prefix="trusted", samples_per_shard=samples_per_shard)
        counts[split] = sum(info.samples for info in infos)
    (tmp / "split.json").write_text(json.dumps(counts))
    tmp.rename(out)
    return counts


def _trusted_shards(dataset: Any, ctx: StageContext, config: TrainFilterConfig) -> dict[str, int]:
    import ray

    out = ctx.progress_dir / "trusted"
    if (out / "split.json").exists():
        log.info("stage %s: trusted shards from an earlier run", ctx.name)
        return json.loads((out / "split.json").read_text())
    for leftover in ctx.progress_dir.glob("trusted.tmp-*"):  # a kill while writing
        shutil.rmtree(leftover)
    selected = dataset.map_batches(select_rows, fn_kwargs={"where": config.where}, batch_format="pyarrow")
    selected = selected.materialize()
    if selected.count() == 0:
        raise InputError(f"stage {ctx.name}: where {config.where!r} selects no record of the stage's input; "
                         f"a filter model needs trusted records to train on")
    blocks = selected.sort("key").to_arrow_refs()
    task = ray.remote(num_cpus=1)(write_trusted)
    return ray.get(task.remote(blocks, str(out), config.samples_per_shard))


def trainer_config(path: str, train: list[str], val: list[str]) -> Any:
    """The ``mmcurate train`` config of ``path`` with its data shards set to the trusted splits."""
    from mmcurate.pipeline.train import TrainConfig

    try:
        raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a training config is a mapping, got {type(raw).__name__}")
    data = dict(raw.get("data") or {})
    given = [name for name in ("train_shards", "val_shards", "eval_shards") if data.get(name) is not None]
    if given:
        log.warning("%s: data.%s replaced by the trusted records' shards", path, ", data.".join(given))
    data.update(train_shards=train, val_shards=val or None, eval_shards=None)
    try:
        return TrainConfig.model_validate({**raw, "data": data, "run_dir": None})
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None


def _eval_summary(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    block = (evaluation or {}).get("image_text")
    if not block:
        return None
    return {"samples": block["samples"], "image_to_text_r1": block["image_to_text"]["recall@1"],
            "image_to_text_r1_chance": block["chance"]["image_to_text"]["recall@1"],
            "text_to_image_r1": block["text_to_image"]["recall@1"],
            "text_to_image_r1_chance": block["chance"]["text_to_image"]["recall@1"]}


def _publish(result: Any, artifacts: Path) -> None:
    """Copy the scorer into ``artifacts/model`` whole: a kill mid-copy leaves a temporary directory, not a model
    missing files (the summary, written after this, is what marks the stage's work done). The trainer's
    ``config.yaml`` goes beside it, as in the trainer's run directory: clip_score names the model after it."""
    artifacts.mkdir(parents=True, exist_ok=True)
    model, tmp = artifacts / "model", artifacts / f".model.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(result.scorer_dir, tmp)
    if model.exists():
        shutil.rmtree(model)
    tmp.rename(model)
    shutil.copyfile(result.run_dir / "train" / "config.yaml", artifacts / "config.yaml")
    if result.eval is not None:
        (artifacts / "eval.json").write_text(json.dumps(result.eval, indent=2))


class TrainFilterStage(GlobalStage[TrainFilterConfig]):
    def summarize(self, dataset: Any, ctx: StageContext) -> dict[str, Any]:
        from mmcurate.pipeline.train import train

        schema = dataset.schema()  # from the parquet footers; None for an empty input
        columns = pa.schema(zip(schema.names, schema.types)) if schema is not None else RECORD_SCHEMA
        check_predicate(self.config.where, columns, ctx.name)
        counts = _trusted_shards(dataset, ctx, self.config)
        shards = {split: sorted(str(p) for p in (ctx.progress_dir / "trusted" / split).glob("*.tar"))
                  for split in ("train", "held_out")}
        if not shards["train"]:
            raise InputError(f"stage {ctx.name}: all {counts['held_out']} trusted records fell in the held-out "
                             f"split; select more records")
        config = trainer_config(self.config.train_config, shards["train"], shards["held_out"])
        log.info("stage %s: training the filter model on %d trusted records (%d held out)", ctx.name,
                 counts["train"], counts["held_out"])
        result = train(config, ctx.progress_dir / "trainer")  # resumes from its checkpoints after a kill
        _publish(result, ctx.progress_dir / "artifacts")
        return {"trusted": counts["train"] + counts["held_out"], "train": counts["train"],
                "held_out": counts["held_out"], "model": "artifacts/model", "scorer": result.scorer_dir.name,
                "eval": _eval_summary(result.eval)}

    def decide(self, batch: pa.Table, summary: dict[str, Any]) -> pa.Table:
        return Decisions(batch).outcomes()
