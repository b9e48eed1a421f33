"""Align's image normalisation against the floor of one decode, one resize and one encode, one process per core.

    .venv/bin/python tests/bench/bench_image.py [--n N] [--processes P] [--max-side S] [--repeat R]

Builds N 480x360 JPEGs from scikit-image's photos (each a different crop, flip and JPEG quality), then times
three ways of turning them into JPEGs whose longer side is at most ``--max-side``, each on the same images in one
``spawn`` pool of P processes (default: ``os.cpu_count()``), cv2 single-threaded in every process:

* floor: ``cv2.imdecode`` + ``cv2.resize`` (INTER_AREA) + ``cv2.imencode`` (JPEG q90), the least any path can do;
* normalise: ``mmcurate.stages.align.image.normalise_image`` (strict Pillow decode, orientation, checks, one
  resize, one encode);
* old: the path before issue 7: Pillow decode, a lossless PNG, img2dataset's ``Resizer`` decoding that again.

Prints one ``name: value`` line per figure, the ratios first (floor seconds / path seconds: 1 means as fast as the
floor), by wall time (throughput of the pool) and by the CPU time the workers used (``*_cpu``: on a shared, loaded
machine the steadier of the two). Only the processing is timed: workers are started, handed the images and
warmed up on every path before the clock runs. Floor and normalise are timed ``--repeat`` times, alternating, and
the best of each is kept (a burst of load from elsewhere should not decide the ratio); the old path once.
``floor_seconds``, ``path_seconds`` and ``timing_pool`` are importable for other benchmarks.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WIDTH, HEIGHT = 480, 360
QUALITY = 90
# colour photos that scikit-image ships (no download)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def build_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` different 480x360 JPEGs: a random 4:3 crop (50-100% of the photo's width), maybe mirrored, q 80-95."""
    import cv2
    import numpy as np
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    photos = [np.ascontiguousarray(getattr(skdata, name)()[..., :3][..., ::-1]) for name in PHOTOS]  # BGR
    images = []
    for index in range(n):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        crop_w = int(min(width, height * 4 / 3) * rng.uniform(0.5, 1.0))
        crop_h = int(crop_w * 3 / 4)
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        crop = photo[top : top + crop_h, left : left + crop_w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        small = cv2.resize(np.ascontiguousarray(crop), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
        quality = int(rng.integers(80, 96))
        images.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return images


# --- the three paths: one image in, encoded bytes out


def floor(data: bytes, max_side: int) -> bytes:
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()


def normalise(data: bytes, max_side: int) -> bytes:
    from mmcurate.stages.align.image import normalise_image

    return normalise_image(data, max_side=max_side, max_pixels=50_000_000, min_side=1, encode_format="jpg",
                           quality=QUALITY).data


def old_two_pass(data: bytes, max_side: int) -> bytes:
    """Before issue 7: Pillow decode and orient, a lossless PNG (compress_level=1, as it was), the Resizer."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    out, *_, error = _old_resizer(max_side)(buffer)
    if error is not None:
        raise RuntimeError(error)
    return out


@cache
def _old_resizer(max_side: int):
    from img2dataset.resizer import Resizer

    return Resizer(image_size=max_side, resize_mode="keep_ratio_largest", resize_only_if_bigger=True,
                   downscale_interpolation="area", encode_format="jpg", encode_quality=QUALITY)


PATHS: dict[str, Callable[[bytes, int], bytes]] = {"floor": floor, "normalise": normalise, "old": old_two_pass}


# --- the pool: images handed over and every path warmed up before the clock starts

_IMAGES: list[bytes] = []


def _start_worker(images: list[bytes], paths: tuple[str, ...], max_side: int, ready) -> None:
    import cv2

    global _IMAGES
    _IMAGES = images
    cv2.setNumThreads(1)  # one process per core: no thread pool inside any of them
    for path in paths:
        PATHS[path](images[0], max_side)  # imports, caches
    ready.put(os.getpid())


def _run_slice(task: tuple[str, int, int, int]) -> float:
    """CPU seconds this worker spent on images ``start:stop``."""
    path, max_side, start, stop = task
    run = PATHS[path]
    cpu = time.process_time()
    for data in _IMAGES[start:stop]:
        run(data, max_side)
    return time.process_time() - cpu


@dataclass(frozen=True)
class Timing:
    wall_s: float  # what the pool took: the throughput figure
    cpu_s: float  # what the workers' processes used: less moved by other load on a shared machine


@contextmanager
def timing_pool(images: list[bytes], max_side: int, processes: int,
                paths: tuple[str, ...] = tuple(PATHS)) -> Iterator[Callable[[str], Timing]]:
    """A spawn pool of ready workers; yields ``seconds(path)``: the Timing of every image through a path."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    with context.Pool(processes, initializer=_start_worker, initargs=(images, paths, max_side, ready)) as pool:
        for _ in range(processes):
            ready.get(timeout=600)
        step = max(1, len(images) // (processes * 8))  # small slices: a slow worker does not hold the rest up

        def seconds(path: str) -> Timing:
            tasks = [(path, max_side, i, min(i + step, len(images))) for i in range(0, len(images), step)]
            start = time.perf_counter()
            cpu = pool.map(_run_slice, tasks, chunksize=1)
            return Timing(time.perf_counter() - start, sum(cpu))

        yield seconds


def path_seconds(path: str, images: list[bytes], max_side: int, processes: int) -> float:
    """Wall seconds for ``processes`` workers to put every image through ``path`` ("floor", "normalise", "old")."""
    with timing_pool(images, max_side, processes, (path,)) as seconds:
        return seconds(path).wall_s


def floor_seconds(images: list[bytes], max_side: int, processes: int) -> float:
    """The floor: cv2 decode + INTER_AREA resize (longer side ``max_side``) + JPEG q90 encode of every image."""
    return path_seconds("floor", images, max_side, processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images to build and time")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of floor and normalise, best kept")
    args = parser.parse_args()

    images = build_images(args.n)
    runs: dict[str, list[Timing]] = {path: [] for path in PATHS}
    with timing_pool(images, args.max_side, args.processes) as seconds:
        # floor and normalise alternate, so a burst of load from elsewhere hits both; the old path (an order of
        # magnitude slower: the "before" figure) runs once
        for _ in range(args.repeat):
            for path in ("floor", "normalise"):
                runs[path].append(seconds(path))
        runs["old"].append(seconds("old"))
    wall = {path: min(t.wall_s for t in timings) for path, timings in runs.items()}
    cpu = {path: min(t.cpu_s for t in timings) for path, timings in runs.items()}
    print(f"normalise_vs_floor: {wall['floor'] / wall['normalise']:.3f}")
    print(f"old_vs_floor: {wall['floor'] / wall['old']:.3f}")
    print(f"normalise_vs_floor_cpu: {cpu['floor'] / cpu['normalise']:.3f}")
    print(f"old_vs_floor_cpu: {cpu['floor'] / cpu['old']:.3f}")
    for path in ("floor", "normalise", "old"):
        print(f"{path}_images_per_s: {args.n / wall[path]:.1f}")
    for path in ("floor", "normalise", "old"):
        print(f"{path}_cpu_ms_per_image: {1000 * cpu[path] / args.n:.3f}")
    print(f"n: {args.n}")
    print(f"processes: {args.processes}")
    print(f"repeat: {args.repeat}")


if __name__ == "__main__":
    main()
