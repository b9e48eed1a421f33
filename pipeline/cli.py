"""The ``mmcurate`` command: run a workflow, run the demo, explain a sample, label, train."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations (via img2dataset) phones home otherwise
os.environ.setdefault("WANDB_MODE", "disabled")


def _run(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.demo import DEMO_SITE
    from mmcurate.pipeline.report import funnel_table
    from mmcurate.pipeline.rundir import RunDirBusy
    from mmcurate.pipeline.runner import InputMissing, StageFailed, run_workflow
    from mmcurate.schemas.workflow import WorkflowError
    from mmcurate.stages.base import InputError

    run_dir = args.run_dir or str(Path("runs") / Path(args.workflow).stem)
    try:
        # the services a workflow's serve: section may name; the runner knows no other
        result = run_workflow(args.workflow, run_dir, overrides=args.set, ray_address=args.ray_address,
                              services={"demo_site": DEMO_SITE}, only=getattr(args, "only", None))
    except (WorkflowError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except InputMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT_MISSING
    except (StageFailed, RunDirBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(funnel_table(result.stats))
    from mmcurate.pipeline.labeling.effect import labels_effect

    if (labelled := labels_effect(result.run_dir)) is not None:
        print(labelled)
    print(f"\nrun directory: {result.run_dir}")
    _print_shards(result.run_dir)
    return 0


# Exit codes of ``run`` (and ``run --only NODE``, what an orchestrator's task runs)
EXIT_DONE, EXIT_FAILED, EXIT_INVALID, EXIT_INPUT_MISSING = 0, 1, 2, 3


def _print_shards(run_dir: str | Path) -> None:
    """Where the shards are, per shard set. Remote: also the generation the pointer (``DIR/shards/_CURRENT.json``,
    ``DIR/shards/<set>/_CURRENT.json``) names, which is what a plain client (webdataset, s3 tools) reads; the
    trainer resolves ``DIR/shards/*.tar`` itself."""
    from mmcurate.pipeline.rundir import RunDir
    from mmcurate.pipeline.storage import join, storage_for

    rundir = RunDir(run_dir)
    for name, shards in rundir.shard_sets().items():
        tars = [n for n in storage_for(shards).files(shards) if n.endswith(".tar") and "/" not in n]
        if tars:
            print(f"shards: {len(tars)} in {join(str(run_dir), 'shards', name)}"
                  + (f" (now {shards})" if rundir.remote else ""))


def _plan(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.demo import DEMO_SITE
    from mmcurate.pipeline.plan import plan
    from mmcurate.schemas.workflow import WorkflowError

    run_dir = args.run_dir or str(Path("runs") / Path(args.workflow).stem)
    try:
        result = plan(args.workflow, run_dir, overrides=args.set, services={"demo_site": DEMO_SITE})
    except WorkflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(result.to_json() if args.json else result.to_mermaid() if args.mermaid else result.to_text())
    return EXIT_DONE


def _demo(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.demo import demo_workflow_path

    args.workflow = str(demo_workflow_path(args.workflow))
    args.set = [*args.set, f"serve.demo_site.seed={args.seed}", f"serve.demo_site.pages={args.pages}"]
    return _run(args)


def _explain(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.explain import format_history, history

    print(format_history(args.key, history(args.run_dir, args.key)))
    from mmcurate.pipeline.storage import is_url

    if is_url(str(args.run_dir)):
        # with an object store, the interpreter's teardown can abort in native code once everything is printed
        # ("terminate called without an active exception": s3fs's IO thread against pyarrow's thread pools, seen
        # in about one exit in three); there is nothing left to do, so leave without the teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcurate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a workflow file")
    run.add_argument("workflow")
    run.add_argument("--run-dir", help="a path or an fsspec URL (s3://bucket/run); default: runs/<workflow name>")
    run.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE", help="override a config field")
    run.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--only", metavar="NODE",
                     help="run this one stage, whose inputs must be committed (exit codes: 0 done or reused, "
                          "1 failed, 2 invalid workflow, 3 an input is not committed or must run again first; "
                          "nothing changed)")
    run.set_defaults(func=_run)

    plan = sub.add_parser("plan", help="print the workflow's graph and what a run would do at each node")
    plan.add_argument("workflow")
    plan.add_argument("--run-dir", help="default: runs/<workflow name>")
    plan.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE")
    shown = plan.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="the nodes in run order, for an orchestrator")
    shown.add_argument("--mermaid", action="store_true", help="a Mermaid flowchart of the graph")
    plan.set_defaults(func=_plan)

    demo = sub.add_parser("demo", help="build the offline demo site, crawl it and write shards")
    demo.add_argument("--run-dir", default="runs/demo", help="a path or an fsspec URL (s3://bucket/run)")
    demo.add_argument("--workflow", default="demo",
                      help="an installed demo workflow: demo (crawl, align, shard) or demo_filter (adds the "
                           "data-filtering network, clip_score and dedupe)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--pages", type=int, default=200)
    demo.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE")
    demo.add_argument("--ray-address")
    demo.set_defaults(func=_demo)

    explain = sub.add_parser("explain", help="print one sample's history in a run directory")
    explain.add_argument("run_dir", help="a path or an fsspec URL (s3://bucket/run)")
    explain.add_argument("key")
    explain.set_defaults(func=_explain)

    from mmcurate.pipeline.labeling.cli import add_label_parser

    add_label_parser(sub)
    from mmcurate.pipeline.train.cli import add_train_parser, run_train_command

    add_train_parser(sub).set_defaults(func=run_train_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
