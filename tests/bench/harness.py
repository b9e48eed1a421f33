"""What the benchmarks under tests/bench/ share: the image set, loopback servers in their own processes, timed and
memory-sampled subprocesses, and the ``name: value`` output.

Not a benchmark itself (run_all.py runs ``bench_*.py``). Its command line starts the helper processes the
benchmarks need, each in a process of its own so its CPU and memory are not the measured process's::

    harness.py serve-files DIR          serve DIR's files on 127.0.0.1 (a threaded HTTP server); prints the port
    harness.py serve-demo ROOT          serve a built demo site (mmcurate.pipeline.demo.server); prints its base URL
    harness.py img2dataset ARGS.json    img2dataset.download(**ARGS) (img2dataset spawns processes: needs a script)

A server runs until its stdin closes, so it cannot outlive the benchmark that started it.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
PYTHON = Path(sys.executable)
MMCURATE = PYTHON.parent / "mmcurate"  # the console script of the venv running the benchmark
DEFAULT_CACHE = Path(os.environ.get("MMCURATE_BENCH_CACHE", "/tmp/mmcurate-bench-cache"))

IMAGE_W, IMAGE_H, IMAGE_QUALITY = 480, 360, 90
# scikit-image photos that load offline (no pooch download); greyscale ones are converted to RGB
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "clock", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "brick", "grass", "gravel")


def _psutil():
    """psutil; Ray vendors it (ray/thirdparty_files) rather than installing it into the venv."""
    try:
        import psutil
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("ray")
        for location in (spec.submodule_search_locations or []) if spec else []:
            sys.path.append(str(Path(location) / "thirdparty_files"))
        import psutil
    return psutil


def code_version() -> str:
    """The commit under test and the files changed in the working tree (the editable install runs them)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False).stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    head = git("rev-parse", "--short", "HEAD").strip()
    return head + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def child_env() -> dict[str, str]:
    """The environment every measured subprocess gets: offline, no token auth, never someone else's Ray."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled", WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    return env


def warn_if_ray_cluster_running() -> str | None:
    """``ray.init()`` with no address joins a cluster that ``ray start`` registered here instead of starting one."""
    marker = Path("/tmp/ray/ray_current_cluster")
    if marker.exists():
        return f"{marker} exists: mmcurate's ray.init() may join that cluster instead of starting its own"
    return None


# ---- the image set ---------------------------------------------------------------------------------------------
def _photos() -> dict[str, Any]:
    import numpy as np
    import skimage.data
    from PIL import Image

    out = {}
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        if array.dtype != np.uint8:
            array = (array * 255).astype(np.uint8)
        out[name] = Image.fromarray(array).convert("RGB")
    return out


def _make_image(photos: dict[str, Any], seed: int, index: int) -> tuple[bytes, str]:
    """Image ``index`` of the set: a random 4:3 crop of one photo (30–100 % of its width, maybe mirrored),
    resized to 480×360 and saved as a quality-90 JPEG. Depends only on (seed, index)."""
    from PIL import Image, ImageOps

    rng = random.Random(seed * 1_000_003 + index)
    name = PHOTOS[index % len(PHOTOS)]
    photo = photos[name]
    w, h = photo.size
    cw = min(w, int(h * 4 / 3))
    cw = max(16, int(cw * rng.uniform(0.3, 1.0)))
    ch = max(12, int(cw * 3 / 4))
    x, y = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
    image = photo.crop((x, y, x + cw, y + ch)).resize((IMAGE_W, IMAGE_H), Image.BICUBIC)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=IMAGE_QUALITY)
    return buf.getvalue(), f"{name} crop {index}"


def image_set(n: int, cache: Path = DEFAULT_CACHE, seed: int = 0) -> list[Path]:
    """Paths of images 0..n-1 (generated once into ``cache``, reused by every later run and benchmark)."""
    folder = cache / f"images-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        log(f"generating {len(missing)} images in {folder}")
        photos = _photos()
        for i in missing:
            data, _ = _make_image(photos, seed, i)
            tmp = paths[i].with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, paths[i])
    return paths


def caption_of(index: int) -> str:
    return f"{PHOTOS[index % len(PHOTOS)]} crop {index}"


def write_url_list(path: Path, base_url: str, n: int) -> Path:
    """``url``, ``caption`` parquet for images 0..n-1 on a ``serve-files`` server of the image folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"url": [f"{base_url}/{i:06d}.jpg" for i in range(n)],
                      "caption": [caption_of(i) for i in range(n)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# ---- servers in their own processes ----------------------------------------------------------------------------
@contextmanager
def helper_process(*args: str, log_path: Path) -> Iterator[str]:
    """Start ``harness.py ARGS`` and yield the first line it prints (a port, a URL); stop it on exit."""
    log_file = open(log_path, "w")
    proc = subprocess.Popen([str(PYTHON), str(Path(__file__).resolve()), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log_file, text=True, env=child_env())
    try:
        line = proc.stdout.readline().strip()
        if not line:
            proc.wait(timeout=10)
            raise RuntimeError(f"helper {args[0]} exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        yield line
    finally:
        proc.stdin.close()  # the helper's signal to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


def _serve_files(folder: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    root = folder.resolve()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            name = self.path.split("?", 1)[0].lstrip("/")
            path = root / name
            if "/" in name or not name.endswith(".jpg") or not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # 32+ concurrent clients must not see SYN drops

        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin (or dies)
    server.shutdown()


def _serve_demo(root: Path) -> None:
    from mmcurate.pipeline.demo.server import serve_site

    with serve_site(root) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


@contextmanager
def served_images(folder: Path, log_path: Path) -> Iterator[str]:
    """Base URL of ``folder`` served by a threaded HTTP server in its own process."""
    with helper_process("serve-files", str(folder), log_path=log_path) as port:
        yield f"http://127.0.0.1:{port}"


@contextmanager
def served_demo_site(root: Path, log_path: Path) -> Iterator[str]:
    with helper_process("serve-demo", str(root), log_path=log_path) as base_url:
        yield base_url


def demo_site(pages: int, cache: Path = DEFAULT_CACHE, seed: int = 0) -> Path:
    """A built demo site (``build_site(root, seed, pages)``), cached by (seed, pages)."""
    from mmcurate.pipeline.demo.site import build_site

    root = cache / f"demo-site-seed{seed}-pages{pages}"
    stamp = root / "bench_built.json"
    if not stamp.exists():
        log(f"building the demo site ({pages} pages) in {root}")
        if root.exists():
            shutil.rmtree(root)
        build_site(root, seed=seed, pages=pages, trusted=0)  # no page links to the trusted section
        stamp.write_text(json.dumps({"seed": seed, "pages": pages}))
    return root


# ---- measured subprocesses -------------------------------------------------------------------------------------
@dataclass
class Measured:
    seconds: float
    returncode: int
    driver_peak_bytes: int  # peak RSS of the process started (not its children)
    machine_peak_bytes: int  # peak of virtual_memory().used minus its value just before the start
    tree_peak_bytes: int  # peak of the RSS summed over the process and its descendants (Ray's, for mmcurate)
    stdout: Path
    stderr: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def tail(self, chars: int = 3000) -> str:
        return (self.stderr.read_text(errors="replace")[-chars:] + "\n" +
                self.stdout.read_text(errors="replace")[-chars:])


def run_measured(cmd: list[str], log_prefix: Path, *, cwd: Path | None = None, interval_s: float = 0.05,
                 timeout_s: float | None = None) -> Measured:
    """Run ``cmd`` to completion, timing its wall clock (start-up included) and sampling memory every
    ``interval_s`` with psutil (the process tree every 4th sample: listing descendants scans /proc).

    The machine figure counts whatever else runs on the machine meanwhile; the tree figure does not, but counts
    shared pages (Ray's object store in /dev/shm) once per process that maps them."""
    psutil = _psutil()
    out, err = log_prefix.with_suffix(".stdout"), log_prefix.with_suffix(".stderr")
    baseline = psutil.virtual_memory().used
    peaks = {"driver": 0, "machine": 0, "tree": 0}
    with open(out, "w") as fo, open(err, "w") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=cwd, env=child_env())
        try:
            ps = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            ps = None
        deadline = None if timeout_s is None else t0 + timeout_s
        tick = 0
        while proc.poll() is None:
            try:
                if ps is not None:
                    rss = ps.memory_info().rss
                    peaks["driver"] = max(peaks["driver"], rss)
                    if tick % 4 == 0:
                        for child in ps.children(recursive=True):
                            try:
                                rss += child.memory_info().rss
                            except (psutil.NoSuchProcess, psutil.AccessDenied):
                                pass
                        peaks["tree"] = max(peaks["tree"], rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            tick += 1
            peaks["machine"] = max(peaks["machine"], psutil.virtual_memory().used - baseline)
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                break
            time.sleep(interval_s)
        proc.wait()
        seconds = time.perf_counter() - t0
    return Measured(seconds, proc.returncode, peaks["driver"], peaks["machine"], peaks["tree"], out, err)


def run_mmcurate(workflow: Path, run_dir: Path, log_prefix: Path, timeout_s: float | None = None) -> Measured:
    """``mmcurate run WORKFLOW --run-dir RUN_DIR`` (a fresh directory), as a user runs it."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    measured = run_measured([str(MMCURATE), "run", str(workflow), "--run-dir", str(run_dir)], log_prefix,
                            timeout_s=timeout_s)
    stats_path = run_dir / "stats.json"
    measured.extra["stats"] = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    measured.extra["run_dir"] = run_dir
    # ray.init() with no address joins a cluster registered by `ray start`; we want the run's own
    measured.extra["ray_local"] = "Started a local Ray instance" in measured.stderr.read_text(errors="replace")
    return measured


def warm_imports() -> None:
    """Import the stack once so neither side of a comparison pays for a cold page cache alone."""
    subprocess.run([str(PYTHON), "-c", "import img2dataset, ray, ray.data, pyarrow, mmcurate.pipeline.runner, "
                    "mmcurate.stages.crawl.url_list, mmcurate.stages.align.image, mmcurate.stages.shard"],
                   env=child_env(), check=True, capture_output=True)


# ---- outputs ---------------------------------------------------------------------------------------------------
def tar_images(folder: Path) -> tuple[int, set[tuple[int, int]]]:
    """(image members in the folder's tars, the distinct (width, height) among them)."""
    from PIL import Image

    count, sizes = 0, set()
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith((".jpg", ".png")):
                    count += 1
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                        sizes.add(image.size)
    return count, sizes


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def is_ratio(name: str) -> bool:
    return " / " in name or "_over_" in name or "_vs_" in name


def print_figures(figures: dict[str, Any]) -> None:
    """One ``name: value`` line per figure, ratios first (in their given order), then the rest."""
    ordered = [k for k in figures if is_ratio(k)] + [k for k in figures if not is_ratio(k)]
    for name in ordered:
        value = figures[name]
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def wait_for_load(max_load: float | None, max_wait_s: float = 600) -> None:
    """Wait until the 1-minute load average is below ``max_load`` (the machine is shared), at most ``max_wait_s``."""
    if max_load is None:
        return
    t0 = time.monotonic()
    while os.getloadavg()[0] >= max_load and time.monotonic() - t0 < max_wait_s:
        time.sleep(5)
    if os.getloadavg()[0] >= max_load:
        log(f"load average still {loadavg()} after {max_wait_s:.0f} s; running anyway")


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def mib(n: int) -> float:
    return n / (1 << 20)


def ratio(a: float | None, b: float | None) -> float | str:
    if a is None or b is None or b == 0:
        return "n/a"
    return a / b


def stage_seconds(stats: dict[str, Any]) -> dict[str, float]:
    return {name: float(s.get("seconds", 0.0)) for name, s in stats.items()}


def segments(stats: dict[str, Any], run_dir: Path | None = None) -> dict[str, float]:
    """Stages that ran as one streamed segment, joined by "+" as the run log names them (``segment crawl+align``),
    with the segment's seconds; other stages alone, with their own.

    A streamed stage's seconds run from its segment's start to its own commit (pipeline/runner.py), so the
    segment took its last stage's seconds, and summing per-stage seconds would count it once per stage."""
    import re

    seconds = stage_seconds(stats)
    log_path = run_dir / "logs" / "run.log" if run_dir else None
    named = []
    if log_path and log_path.exists():
        named = [m.group(1).split("+") for m in re.finditer(r"segment (\S+): \d+ blocks", log_path.read_text())]
    out: dict[str, float] = {}
    seen: set[str] = set()
    for name in seconds:
        if name in seen:
            continue
        group = next((g for g in named if name in g and all(s in seconds for s in g)), [name])
        seen.update(group)
        out["+".join(group)] = max(seconds[s] for s in group)
    return out


def work_dir(requested: str | None, name: str) -> Path:
    import tempfile

    if requested:
        path = Path(requested)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"mmcurate-bench-{name}-"))


def read_images(paths: Iterable[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def _img2dataset(args_path: Path) -> None:
    import img2dataset

    img2dataset.download(**json.loads(args_path.read_text()))


if __name__ == "__main__":
    command, argument = sys.argv[1], Path(sys.argv[2])
    if command == "serve-files":
        _serve_files(argument)
    elif command == "serve-demo":
        _serve_demo(argument)
    elif command == "img2dataset":
        _img2dataset(argument)
    else:
        raise SystemExit(f"unknown command {command}")
