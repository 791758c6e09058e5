"""Preprocessing: central crop by pixel density, resize, CLAHE (paper §2.2, Figs. 2-3).

The paper crops "the central region by pixel density" to keep the knee joint, resizes to
224x224 and enhances a second copy with CLAHE (clip limit 2.0). Its crop algorithm is
not specified further; ours, documented here, is:

1. trim empty borders: rows and columns whose mean intensity is below 2% of the image
   maximum (black padding, collimator edges) are dropped from the outside in;
2. if the remainder is not square, take the square of side ``min(h, w)`` along the long
   axis centred on the intensity-weighted centroid (bone is bright on a radiograph, so
   the centroid sits on the joint), clamped to the image.

On crops that are already square knee joints (the public dataset's 224x224 images) this
is the identity. The raw and the CLAHE views come from the same decoded image; CLAHE is
OpenCV's (``cv2.createCLAHE``) with an 8x8 tile grid.

The input transform (ours, not the paper's): a model trained on a copy whose images were
enhanced upstream expects that enhancement on whatever it grades. ``input_clahe_clip``
applies it to the decoded image before every step above, exactly as the copy was made
(one CLAHE of the whole crop), and the checkpoint's sidecar carries it with the other
parameters, so every backend grades an original radiograph as the model was trained. The
shipped checkpoint was trained on a copy enhanced with CLAHE at clip 5.0, 8x8 tiles: its
"raw" stream sees that enhancement, its CLAHE stream a second pass at clip 2.0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from koa_core.config import SIDECAR_PREPROCESS_REQUIRED, validate_preprocess
from koa_core.data.imaging import read_gray
from koa_core.errors import KoaError

__all__ = ["PREPROCESS_VERSION", "Preprocessor", "apply_clahe", "central_crop", "crop_box",
           "resize_square"]

# Bumped whenever the pixels this module produces change: part of every cache key.
PREPROCESS_VERSION = 1
_EMPTY_FRACTION = 0.02


def _trim_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image without its empty borders."""
    h, w = img.shape
    peak = float(img.max())
    if peak == 0:
        return 0, 0, h, w
    thresh = _EMPTY_FRACTION * peak
    rows = np.flatnonzero(img.mean(axis=1) > thresh)
    cols = np.flatnonzero(img.mean(axis=0) > thresh)
    if rows.size == 0 or cols.size == 0:
        return 0, 0, h, w
    return int(rows[0]), int(cols[0]), int(rows[-1] + 1 - rows[0]), int(cols[-1] + 1 - cols[0])


def crop_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) in ``img`` of :func:`central_crop`'s square: where the
    model's input came from, so its Grad-CAM maps can be drawn back on the whole image."""
    top, left, h, w = _trim_box(img)
    if h == w:
        return top, left, h, w
    side = min(h, w)
    weights = img[top:top + h, left:left + w].astype(np.float64)
    total = weights.sum()
    if h > w:
        centre = (weights.sum(axis=1) @ np.arange(h)) / total if total else h / 2
        return top + int(np.clip(round(centre - side / 2), 0, h - side)), left, side, side
    centre = (weights.sum(axis=0) @ np.arange(w)) / total if total else w / 2
    return top, left + int(np.clip(round(centre - side / 2), 0, w - side)), side, side


def central_crop(img: np.ndarray) -> np.ndarray:
    """Square crop of the knee region by pixel density (identity on square joint crops)."""
    top, left, h, w = crop_box(img)
    return img[top:top + h, left:left + w]


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size: area averaging when shrinking, bilinear when enlarging."""
    if img.shape == (size, size):
        return img
    shrinking = img.shape[0] * img.shape[1] > size * size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def apply_clahe(img: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """OpenCV CLAHE on an 8-bit grayscale image (paper §2.2: clip limit 2.0)."""
    return cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(tiles, tiles)).apply(img)


@dataclass(frozen=True)
class Preprocessor:
    """Turns one decoded image into the two 8-bit views: (raw, CLAHE), both size x size."""

    size: int = 224
    crop: bool = True
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    input_clahe_clip: float | None = None  # ours: see the module docstring
    input_clahe_tiles: int = 8

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.paper_views(self.transform_input(img))

    def transform_input(self, img: np.ndarray) -> np.ndarray:
        """The decoded image as the model's training images were before the paper's steps:
        the input transform applied, or the image itself when there is none."""
        if self.input_clahe_clip is None:
            return img
        return apply_clahe(img, self.input_clahe_clip, self.input_clahe_tiles)

    def paper_views(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The paper's steps on an already transformed image: crop, resize, CLAHE."""
        if self.crop:
            img = central_crop(img)
        raw = resize_square(img, self.size)
        return raw, apply_clahe(raw, self.clahe_clip, self.clahe_tiles)

    def describe_input(self) -> str:
        """The input transform in words, for reports and rows."""
        if self.input_clahe_clip is None:
            return "none"
        t = self.input_clahe_tiles
        return f"CLAHE clip {self.input_clahe_clip:g}, {t}x{t} tiles"

    def load(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """Read a file and return its two views."""
        return self(read_gray(path))

    def params(self) -> dict:
        """The parameters that determine the output pixels (for cache keys, sidecars)."""
        return {**asdict(self), "version": PREPROCESS_VERSION}

    @classmethod
    def from_config(cls, cfg) -> Preprocessor:
        """Build from a :class:`~koa_core.config.Config`."""
        p = cfg.preprocess
        return cls(size=cfg.data.image_size, crop=p.crop, clahe_clip=p.clahe_clip,
                   clahe_tiles=p.clahe_tiles, input_clahe_clip=p.input_clahe_clip,
                   input_clahe_tiles=p.input_clahe_tiles)

    @classmethod
    def from_sidecar(cls, side: dict, origin: str = "checkpoint sidecar") -> Preprocessor:
        """The preprocessing a checkpoint's sidecar prescribes (``preprocess``), its input
        transform included (a sidecar from before the input transform has none), its values
        checked against the configuration's ranges first
        (:func:`~koa_core.config.validate_preprocess`)."""
        p = side.get("preprocess") if isinstance(side, dict) else None
        if not isinstance(p, dict) or any(k not in p for k in SIDECAR_PREPROCESS_REQUIRED):
            raise KoaError(f"{origin} lacks its preprocessing parameters")
        validate_preprocess(p, origin)
        clip = p.get("input_clahe_clip")
        return cls(size=int(p["size"]), crop=bool(p["crop"]),
                   clahe_clip=float(p["clahe_clip"]), clahe_tiles=int(p["clahe_tiles"]),
                   input_clahe_clip=None if clip is None else float(clip),
                   input_clahe_tiles=int(p.get("input_clahe_tiles", 8)))
