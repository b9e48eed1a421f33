"""The clip_score stage's throughput against its own model's, for one model and batch size on this machine.

    .venv/bin/python tests/bench/bench_clip.py [--model ViT-B-32] [--n 192] [--batch-size 64] [--threads 4]
                                               [--repeat 2] [--quick] [--max-load L]

Images: harness.image_set (480x360 quality-90 JPEGs cut from scikit-image's photos), with harness.caption_of
captions. The model is ``--model`` with random weights, saved to a file and given as ``model.pretrained`` (the
stage refuses a name without weights): throughput only, its scores mean nothing. Figures, ratios first:

* ``clip_stage_images_per_s / raw_encode_image_images_per_s`` (goal >= 0.9): the stage's ``process_table`` over
  RECORD_SCHEMA windows of ``--batch-size`` records (JPEG bytes and captions: decode, preprocess, text tower,
  image tower, scores), against ``model.encode_image`` alone on tensors preprocessed beforehand.
* ``clip_stage_images_per_s / raw_model_work_images_per_s``: against the model work the stage asks for,
  ``encode_image`` plus its text encoding (``model.encode_tokens``, padding cut) on tensors and tokens made
  beforehand: what is left below 1 is the stage's own overhead (decoding not hidden, Arrow, scores).
* ``clip_stage_images_per_s / raw_encode_image_and_text_images_per_s``: against ``encode_image`` plus open_clip's
  own ``encode_text`` (77 tokens): what a scoring script that encodes both would do.
* ``raw_encode_image_cpu_s / clip_stage_cpu_s``: the first ratio by the CPU time this process used (all its
  threads), the steadier figure on a shared, loaded machine.
* ``cpu_decode_preprocess_floor_images_per_s_per_core``: Pillow decode + the model's transform, one thread;
  ``..._<T>_threads`` the same on the stage's T threads: the most images/s the stage's decoding can feed.
* with CUDA: the same for ViT-B-32 on the GPU (``gpu_*``, random weights, ``--gpu-precision``, ``--gpu-batch-size``,
  every core decoding), the CPU floor beside it, and ``gpu_decode_jpeg_images_per_s``:
  ``torchvision.io.decode_jpeg(device="cuda")`` on the same JPEGs. Without CUDA: ``gpu: none``.

Each side runs ``--repeat`` times, alternating, after a warm-up window; the best of each is kept (a burst of load
from elsewhere on a shared machine should not decide the ratio).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def random_weights(model: str, folder: Path) -> Path:
    """A weights file for ``model`` at open_clip's random init: the stage scores only through weights it is given."""
    import open_clip
    import torch

    path = folder / f"{model}-random-init.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(model).state_dict(), path)
    return path


def records(images: list[bytes]):
    import pyarrow as pa

    from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key

    rows = [empty_record(key=stable_key("bench-clip", i), image=data, image_format="jpg", text=harness.caption_of(i),
                         text_source="caption") for i, data in enumerate(images)]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def best_of(repeat: int, runs: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Each named run ``repeat`` times, alternating: its fastest wall seconds, and its least CPU seconds (every
    thread of this process: steadier than wall time on a loaded machine)."""
    wall = {name: float("inf") for name in runs}
    cpu = dict(wall)
    for _ in range(repeat):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return wall, cpu


def measure(model: str, weights: Path, images: list[bytes], *, batch_size: int, threads: int, repeat: int,
            num_gpus: float = 0, precision: str = "fp32", prefix: str = "") -> dict[str, float]:
    import torch
    from PIL import Image

    from mmcurate.schemas.stage_configs import ClipScoreConfig
    from mmcurate.stages.clip_score import ClipScoreStage
    from mmcurate.stages.clip_score.model import encode_tokens

    stage = ClipScoreStage(ClipScoreConfig(model={"name": model, "pretrained": str(weights), "precision": precision},
                                           batch_size=batch_size, threads=threads, num_gpus=num_gpus))
    stage.setup()
    scorer = stage.scorer
    table = records(images)
    windows = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]

    def decode(data: bytes):
        with Image.open(io.BytesIO(data)) as img:
            return scorer.preprocess(img.convert("RGB"))

    pixels = [torch.stack([decode(d) for d in images[i:i + batch_size]]).to(scorer.device)
              for i in range(0, len(images), batch_size)]
    tokens = [scorer.tokenizer([harness.caption_of(j) for j in range(i, min(i + batch_size, len(images)))])
              .to(scorer.device) for i in range(0, len(images), batch_size)]
    amp = scorer.autocast

    def sync() -> None:
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def raw_image() -> None:
        with amp():
            for x in pixels:
                scorer.clip.encode_image(x, normalize=True)
        sync()

    @torch.inference_mode()
    def raw_image_and_text(text: Callable = scorer.clip.encode_text) -> None:
        with amp():
            for x, t in zip(pixels, tokens):
                scorer.clip.encode_image(x, normalize=True)
                text(t, normalize=True)
        sync()

    def raw_model_work() -> None:  # what the stage asks of the model: its own text encoding, padding cut
        raw_image_and_text(lambda t, normalize: encode_tokens(scorer.clip, t))

    def stage_run() -> None:
        for window in windows:
            stage.process_table(window)

    def floor_one_core() -> None:
        for data in images:
            decode(data)

    pool = ThreadPoolExecutor(threads)

    def floor_threads() -> None:
        list(pool.map(decode, images))

    stage.process_table(windows[0])  # warm-up: kernels, allocator, thread pool
    raw_image_and_text()
    harness.log(f"{prefix or 'cpu'}: {model} {precision} on {scorer.device}, batch {batch_size}, {len(images)} images, "
                f"torch threads {torch.get_num_threads()}")
    seconds, cpu = best_of(repeat, {"stage": stage_run, "raw_image": raw_image, "raw_model_work": raw_model_work,
                                    "raw_image_and_text": raw_image_and_text, "floor_1": floor_one_core,
                                    "floor_t": floor_threads})
    pool.shutdown()
    n = len(images)
    rate = {name: n / s for name, s in seconds.items()}
    return {
        f"{prefix}clip_stage_images_per_s / {prefix}raw_encode_image_images_per_s": rate["stage"] / rate["raw_image"],
        f"{prefix}clip_stage_images_per_s / {prefix}raw_model_work_images_per_s":
            rate["stage"] / rate["raw_model_work"],
        f"{prefix}clip_stage_images_per_s / {prefix}raw_encode_image_and_text_images_per_s":
            rate["stage"] / rate["raw_image_and_text"],
        f"{prefix}raw_encode_image_cpu_s / {prefix}clip_stage_cpu_s": cpu["raw_image"] / cpu["stage"],
        f"{prefix}clip_stage_cpu_ms_per_image": 1000 * cpu["stage"] / n,
        f"{prefix}raw_encode_image_cpu_ms_per_image": 1000 * cpu["raw_image"] / n,
        f"{prefix}clip_stage_images_per_s": rate["stage"],
        f"{prefix}raw_encode_image_images_per_s": rate["raw_image"],
        f"{prefix}raw_model_work_images_per_s": rate["raw_model_work"],
        f"{prefix}raw_encode_image_and_text_images_per_s": rate["raw_image_and_text"],
        f"{prefix}cpu_decode_preprocess_floor_images_per_s_per_core": rate["floor_1"],
        f"{prefix}cpu_decode_preprocess_floor_images_per_s_{threads}_threads": rate["floor_t"],
    }


def gpu_decode_rate(images: list[bytes], batch_size: int, repeat: int) -> float:
    """JPEGs/s through nvJPEG (``torchvision.io.decode_jpeg`` on lists, ``device="cuda"``), bytes already in RAM."""
    import torch
    from torchvision.io import decode_jpeg

    data = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in images]
    batches = [data[i:i + batch_size] for i in range(0, len(data), batch_size)]

    def run() -> None:
        for batch in batches:
            decode_jpeg(batch, device="cuda")
        torch.cuda.synchronize()

    run()
    return len(images) / best_of(repeat, {"decode": run})[0]["decode"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="an open_clip model name (random weights)")
    parser.add_argument("--n", type=int, default=192, help="images through each side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=4, help="the stage's decode threads (config.threads)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every side, best kept")
    parser.add_argument("--gpu-n", type=int, default=4096)
    parser.add_argument("--gpu-batch-size", type=int, default=256)
    parser.add_argument("--gpu-precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--quick", action="store_true", help="smoke-test size: 64 images, one round")
    parser.add_argument("--max-load", type=float, help="first wait (up to 10 min) for a 1-minute load below this")
    args = parser.parse_args()
    harness.wait_for_load(args.max_load)
    if args.quick:
        args.n, args.repeat, args.gpu_n = 64, 1, 1024

    import torch

    folder = Path(tempfile.mkdtemp(prefix="mmcurate-bench-clip-"))
    figures: dict[str, object] = {}
    weights = random_weights(args.model, folder)
    images = harness.read_images(harness.image_set(args.n))
    figures.update(measure(args.model, weights, images, batch_size=args.batch_size, threads=args.threads,
                           repeat=args.repeat))
    if torch.cuda.is_available():
        gpu_weights = weights if args.model == "ViT-B-32" else random_weights("ViT-B-32", folder)
        gpu_images = harness.read_images(harness.image_set(args.gpu_n))
        cores = os.cpu_count() or 1
        figures.update(measure("ViT-B-32", gpu_weights, gpu_images, batch_size=args.gpu_batch_size, threads=cores,
                               repeat=args.repeat, num_gpus=1, precision=args.gpu_precision, prefix="gpu_"))
        figures["gpu_decode_jpeg_images_per_s"] = gpu_decode_rate(gpu_images, args.gpu_batch_size, args.repeat)
        figures["gpu"] = f"{torch.cuda.get_device_name()} (ViT-B-32 random init: a throughput figure only)"
    else:
        figures["gpu"] = "none"
    figures.update({"model": f"{args.model} random init (a throughput figure only)", "n": args.n,
                    "batch_size": args.batch_size, "threads": args.threads, "cpu_cores": os.cpu_count(),
                    "loadavg": harness.loadavg(), "code": harness.code_version()})
    harness.print_figures(figures)


if __name__ == "__main__":
    main()
