"""Faces blurred in images with OpenCV's shipped Haar cascades (``cv2.data.haarcascades``: the model is inside
the opencv wheel, nothing to download).

Each detected box is grown by ``margin`` of its size on every side (a cascade's box stops at the brows and the
chin; hair and ears identify too) and blurred with a Gaussian whose kernel is the box's size, then the blurred
image is searched again with the same detector: a box it still finds is blurred again, harder, up to
``MAX_PASSES`` times. An image is re-encoded only when a face was found, in its own format, by OpenCV (which writes
no metadata block).

With ``cache`` on, what the search found in an image (the boxes of every pass) is kept by the image's SHA-256 in
``FaceCache``; an image seen before is blurred again from its boxes, with no search, to the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmcurate.schemas.stage_configs import FacesConfig

MAX_PASSES = 4
JPEG_QUALITY = 90  # align's default image_quality

log = logging.getLogger("mmcurate.pii")
Box = tuple[int, int, int, int]


@dataclass
class BlurResult:
    faces: int  # boxes blurred
    remaining: int  # what the detector still finds after the last pass (0 unless MAX_PASSES ran out)
    image: bytes | None  # re-encoded bytes, None when nothing was found


class FaceBlurrer:
    """The cascades load once (``__init__``, in the stage's ``setup``)."""

    def __init__(self, config: FacesConfig):
        import cv2

        self.config = config
        root = cv2.data.haarcascades
        # (file, scale step, also on the mirror image): the profile cascade knows one direction only
        plan = [(config.frontal, config.frontal_scale_factor, False)]
        if config.profile:
            plan.append(("haarcascade_profileface.xml", config.profile_scale_factor, True))
        self.cascades = [(cv2.CascadeClassifier(root + name), factor, mirror) for name, factor, mirror in plan]
        for (cascade, _, _), (name, _, _) in zip(self.cascades, plan):
            if cascade.empty():
                raise RuntimeError(f"OpenCV could not load its cascade {root + name}")
        settings = config.model_dump(exclude={"enabled", "cache"})
        self.detector_id = json.dumps({**settings, "opencv": cv2.__version__, "passes": MAX_PASSES,
                                       "jpeg_quality": JPEG_QUALITY}, sort_keys=True)
        self.cache = FaceCache.open() if config.cache else None

    def detect(self, pixels: np.ndarray) -> list[Box]:
        """Face boxes (x, y, w, h) in a BGR or grey image: every cascade, the profile one on the mirror too."""
        import cv2

        grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        grey = cv2.equalizeHist(grey)
        size = (self.config.min_size, self.config.min_size)
        boxes: list[Box] = []
        for cascade, factor, mirror in self.cascades:
            views = [(grey, False)] + ([(cv2.flip(grey, 1), True)] if mirror else [])
            for view, mirrored in views:
                found = cascade.detectMultiScale(view, scaleFactor=factor,
                                                 minNeighbors=self.config.min_neighbors, minSize=size)
                for x, y, w, h in (found if len(found) else []):
                    boxes.append((int(grey.shape[1] - x - w) if mirrored else int(x), int(y), int(w), int(h)))
        return _merged(boxes)

    def _blur(self, pixels: np.ndarray, box: tuple[int, int, int, int], strength: int) -> None:
        import cv2

        x, y, w, h = box
        grow_x, grow_y = int(w * self.config.margin), int(h * self.config.margin)
        x0, y0 = max(0, x - grow_x), max(0, y - grow_y)
        x1, y1 = min(pixels.shape[1], x + w + grow_x), min(pixels.shape[0], y + h + grow_y)
        region = pixels[y0:y1, x0:x1]
        # a kernel as large as the face (odd), applied ``strength`` times: the features a cascade keys on
        # (eyes darker than cheeks, a bridge of the nose) are gone after one pass at this size
        k = max(3, (max(x1 - x0, y1 - y0) // 2) | 1)
        for _ in range(strength):
            region = cv2.GaussianBlur(region, (k, k), 0)
        pixels[y0:y1, x0:x1] = region

    def blur(self, data: bytes, fmt: str) -> BlurResult:
        """Blur every face in encoded image ``data`` (``jpg`` or ``png``)."""
        import cv2

        key = hashlib.sha256(self.detector_id.encode() + b"\0" + data).digest() if self.cache else None
        known = self.cache.get(key) if key is not None else None
        if known is not None and not known[0]:
            return BlurResult(0, 0, None)
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ValueError("image does not decode")
        colour = pixels if pixels.ndim == 2 or pixels.shape[2] == 3 else pixels[:, :, :3].copy()
        if known is not None:
            passes, remaining = known
            for strength, boxes in enumerate(passes, start=1):
                for box in boxes:
                    self._blur(colour, box, strength)
        else:
            passes, remaining = self._search_and_blur(colour)
            if key is not None:
                self.cache.put(key, passes, remaining)
        if not passes:
            return BlurResult(0, 0, None)
        if colour is not pixels:
            pixels[:, :, :3] = colour
        return BlurResult(len(passes[0]), len(remaining), encode(pixels, fmt))

    def _search_and_blur(self, colour: np.ndarray) -> tuple[list[list[Box]], list[Box]]:
        """The boxes blurred at each strength (none: no face), and what the detector still finds after the last."""
        remaining = self.detect(colour)
        passes: list[list[Box]] = []
        for strength in range(1, MAX_PASSES + 1):
            if not remaining:
                break
            for box in remaining:
                self._blur(colour, box, strength)
            passes.append(remaining)
            remaining = self.detect(colour)
        return passes, remaining


class FaceCache:
    """Detector results by image digest, in one SQLite file shared by every worker on the machine (WAL: readers do
    not wait for a writer). A cache: a file that cannot be opened or written is logged once and the search runs.
    A Ray actor is built on one thread and called on another, so the connection is not bound to its thread; the
    lock keeps its use one call at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.db: sqlite3.Connection | None = sqlite3.connect(path, timeout=30, isolation_level=None,
                                                             check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS faces (key BLOB PRIMARY KEY, passes TEXT NOT NULL, "
                        "remaining TEXT NOT NULL)")

    @classmethod
    def open(cls) -> FaceCache | None:
        from mmcurate.pipeline.storage import cache_root

        root = cache_root()
        try:
            root.mkdir(parents=True, exist_ok=True)
            return cls(root / "faces.sqlite3")
        except (OSError, sqlite3.Error) as err:
            log.warning("pii: face cache %s unusable (%s): every image is searched", root, err)
            return None

    def get(self, key: bytes) -> tuple[list[list[Box]], list[Box]] | None:
        if self.db is None:
            return None
        try:
            with self.lock:
                row = self.db.execute("SELECT passes, remaining FROM faces WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as err:
            self._give_up(err)
            return None
        if row is None:
            return None
        return [[tuple(b) for b in boxes] for boxes in json.loads(row[0])], [tuple(b) for b in json.loads(row[1])]

    def put(self, key: bytes, passes: list[list[Box]], remaining: list[Box]) -> None:
        if self.db is None:
            return
        try:
            with self.lock:
                self.db.execute("INSERT OR IGNORE INTO faces VALUES (?, ?, ?)",
                                (key, json.dumps(passes), json.dumps(remaining)))
        except sqlite3.Error as err:
            self._give_up(err)

    def _give_up(self, err: sqlite3.Error) -> None:
        log.warning("pii: face cache %s failed (%s): searching every image from here", self.path, err)
        self.db = None


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    import cv2

    ext, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]) if fmt == "png" else (
        ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    ok, out = cv2.imencode(ext, pixels, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {fmt} image")
    return out.tobytes()


def _merged(boxes: list[Box]) -> list[Box]:
    """One box per face: a box mostly inside a bigger one is dropped (two cascades find the same face)."""
    ordered = sorted(boxes, key=lambda b: -(b[2] * b[3]))
    kept: list[Box] = []
    for x, y, w, h in ordered:
        inside = False
        for X, Y, W, H in kept:
            ix = max(0, min(x + w, X + W) - max(x, X))
            iy = max(0, min(y + h, Y + H) - max(y, Y))
            if ix * iy > 0.5 * w * h:
                inside = True
                break
        if not inside:
            kept.append((x, y, w, h))
    return kept
