"""``mmcurate train CONFIG [--run-dir DIR] [--set key=value ...] [--ray-address ADDR]``.

``add_train_parser`` plugs the subcommand into the ``mmcurate`` console script; ``python -m mmcurate.pipeline.train.cli
train ...`` runs it standalone (e.g. ``ray job submit -- python -m mmcurate.pipeline.train.cli train ...``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import yaml
from pydantic import ValidationError

log = logging.getLogger(__name__)


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="contrastive (CLIP/CLAP) training on WebDataset shards with Ray Train",
        description="Train on WebDataset shards with Ray Train. Re-running with the same --run-dir resumes.",
    )
    p.add_argument("config", metavar="CONFIG", help="training config YAML (see workflows/train_demo.yaml)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default: the config's run_dir)")
    p.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
        help="override a config field, value parsed as YAML (repeatable), e.g. --set scaling.num_workers=4",
    )
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (default: RAY_ADDRESS or a local one)")
    return p


def run_train_command(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.train.api import train
    from mmcurate.pipeline.train.config import TrainConfig
    from mmcurate.pipeline.train.locks import RunDirLocked
    from mmcurate.pipeline.train.manifest import ShardsChanged

    try:
        config = TrainConfig.from_yaml(args.config, args.overrides)
    except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
        log.error("invalid training config %s: %s", args.config, exc)
        return 2
    run_dir = args.run_dir or config.run_dir
    if run_dir is None:
        log.error("no run directory: pass --run-dir or set run_dir in %s", args.config)
        return 2
    try:
        result = train(config, run_dir, ray_address=args.ray_address)
    except (RunDirLocked, ShardsChanged) as exc:  # refusals carry their own advice; a traceback adds nothing
        log.error("%s", exc)
        return 2
    log.info("run directory %s; scorer checkpoint %s", result.run_dir, result.scorer_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="mmcurate")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    return run_train_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
