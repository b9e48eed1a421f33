"""Faces blurred in images with OpenCV's shipped Haar cascades (``cv2.data.haarcascades``: the model is inside
the opencv wheel, nothing to download).

Each detected box is grown by ``margin`` of its size on every side (a cascade's box stops at the brows and the
chin; hair and ears identify too) and blurred with a Gaussian whose kernel is the box's size, then the blurred
image is searched again with the same detector: a box it still finds is blurred again, harder, up to
``MAX_PASSES`` times. An image is re-encoded only when a face was found, in its own format, by OpenCV (which writes
no metadata block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcurate.schemas.stage_configs import FacesConfig

MAX_PASSES = 4
JPEG_QUALITY = 90  # align's default image_quality


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
        names = ["haarcascade_frontalface_default.xml"]
        if config.profile:
            names.append("haarcascade_profileface.xml")
        self.cascades = [(name, cv2.CascadeClassifier(root + name)) for name in names]
        for name, cascade in self.cascades:
            if cascade.empty():
                raise RuntimeError(f"OpenCV could not load its cascade {root + name}")

    def detect(self, pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in a BGR or grey image: every cascade, the profile one on the mirror too."""
        import cv2

        grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        grey = cv2.equalizeHist(grey)
        size = (self.config.min_size, self.config.min_size)
        boxes: list[tuple[int, int, int, int]] = []
        for name, cascade in self.cascades:
            views = [(grey, False)] + ([(cv2.flip(grey, 1), True)] if "profile" in name else [])
            for view, mirrored in views:
                found = cascade.detectMultiScale(view, scaleFactor=self.config.scale_factor,
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

        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ValueError("image does not decode")
        colour = pixels if pixels.ndim == 2 or pixels.shape[2] == 3 else pixels[:, :, :3].copy()
        boxes = self.detect(colour)
        if not boxes:
            return BlurResult(0, 0, None)
        blurred, remaining = 0, boxes
        for strength in range(1, MAX_PASSES + 1):
            for box in remaining:
                self._blur(colour, box, strength)
            blurred += len(remaining)
            remaining = self.detect(colour)
            if not remaining:
                break
        if colour is not pixels:
            pixels[:, :, :3] = colour
        return BlurResult(len(boxes), len(remaining), encode(pixels, fmt))


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    import cv2

    ext, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]) if fmt == "png" else (
        ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    ok, out = cv2.imencode(ext, pixels, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {fmt} image")
    return out.tobytes()


def _merged(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """One box per face: a box mostly inside a bigger one is dropped (two cascades find the same face)."""
    ordered = sorted(boxes, key=lambda b: -(b[2] * b[3]))
    kept: list[tuple[int, int, int, int]] = []
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
