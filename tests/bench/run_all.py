"""Every benchmark under tests/bench/, one after another, each in its own process; one summary.

    .venv/bin/python tests/bench/run_all.py [--quick] [--only ingest,shards,...] [--keep]

``--quick`` runs each with its smoke-test size. bench_shards writes the align output of bench_ingest's mmcurate
run (so both measure the same records). A benchmark this file does not know is run with no arguments, or with
``--quick`` under ``--quick`` if its ``--help`` offers it (skipped otherwise).

Each benchmark's own output streams to stderr as it runs. The summary on stdout is one ``<bench>.<name>: value``
line per figure, every benchmark's ratios first, then the rest, then each benchmark's seconds and exit status.
Exits 1 if any benchmark did.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

# name -> (full-size arguments, --quick arguments); order is run order (bench_shards reads bench_ingest's run)
KNOWN = {
    "ingest": ([], ["--quick"]),
    "shards": ([], ["--quick"]),
    "growth": ([], ["--quick"]),
    "image": ([], ["--n", "200", "--repeat", "1"]),
    "crawl_memory": ([], ["--pages", "25", "50"]),
    "loader": ([], ["--steps", "3"]),
    "clip": ([], ["--quick"]),
    "dedupe": ([], ["--quick"]),
    "pii": ([], ["--quick"]),
    "curation": ([], ["--quick"]),  # runs its own demo_filter demo (1000 pages; --quick: 200) and two trainings
}


def discover() -> list[str]:
    found = sorted(p.stem[len("bench_"):] for p in harness.BENCH.glob("bench_*.py"))
    return [name for name in KNOWN if name in found] + [name for name in found if name not in KNOWN]


def arguments(name: str, quick: bool, work: Path) -> list[str] | None:
    script = harness.BENCH / f"bench_{name}.py"
    if name in KNOWN:
        args = list(KNOWN[name][1] if quick else KNOWN[name][0])
    elif quick:
        help_text = subprocess.run([str(harness.PYTHON), str(script), "--help"], capture_output=True, text=True,
                                   env=harness.child_env()).stdout
        if "--quick" not in help_text:
            return None
        args = ["--quick"]
    else:
        args = []
    if name == "ingest":
        args += ["--work-dir", str(work / "ingest")]
    if name == "shards" and (work / "ingest" / "mmcurate_run" / "align").exists():
        args += ["--from-run", str(work / "ingest" / "mmcurate_run")]
    return args


def parse(stdout: str) -> list[tuple[str, str]]:
    figures = []
    for line in stdout.splitlines():
        if ": " in line and not line.startswith("#"):
            name, value = line.split(": ", 1)
            figures.append((name.strip(), value.strip()))
    return figures


def is_ratio(name: str) -> bool:
    return harness.is_ratio(name) or "ratio" in name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--only", help="comma-separated names (ingest, shards, growth, image, ...)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    names = discover()
    if args.only:
        wanted = [n.strip().removeprefix("bench_") for n in args.only.split(",")]
        unknown = set(wanted) - set(names)
        if unknown:
            raise SystemExit(f"no benchmark(s) {sorted(unknown)}; there are {names}")
        names = [n for n in names if n in wanted]
    work = Path(tempfile.mkdtemp(prefix="mmcurate-bench-all-"))

    results: dict[str, list[tuple[str, str]]] = {}
    runs: dict[str, tuple[float | None, object]] = {}
    for name in names:
        bench_args = arguments(name, args.quick, work)
        if bench_args is None:
            harness.log(f"bench_{name}: skipped (no --quick)")
            runs[name] = (None, "skipped (no --quick)")
            continue
        cmd = [str(harness.PYTHON), str(harness.BENCH / f"bench_{name}.py"), *bench_args]
        harness.log(f"bench_{name}: {' '.join(cmd)}")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=harness.child_env())
        seconds = time.perf_counter() - t0
        sys.stderr.write(proc.stdout)
        harness.log(f"bench_{name}: {seconds:.0f} s, exit {proc.returncode}")
        results[name] = parse(proc.stdout)
        runs[name] = (seconds, proc.returncode)

    for want_ratio in (True, False):
        for name, figures in results.items():
            for figure, value in figures:
                if is_ratio(figure) == want_ratio:
                    print(f"{name}.{figure}: {value}", flush=True)
    for name, (seconds, status) in runs.items():
        if seconds is not None:
            print(f"run_all.{name}_s: {seconds:.1f}")
        print(f"run_all.{name}_exit: {status}")
    print(f"run_all.quick: {args.quick}")
    if args.keep:
        print(f"# work dir: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(isinstance(s, int) and s != 0 for _, s in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
