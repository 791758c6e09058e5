"""The raster reader: PNG, JPEG, WebP and TIFF bytes to 8-bit grayscale (paper §2.1).

The public dataset ships 8-bit grayscale PNGs; copies in the wild are also WebP, JPEG or
TIFF, 16-bit, RGB or RGBA. Every image is brought to one form by this documented rule:

1. decode with OpenCV, keeping bit depth and channels (``IMREAD_UNCHANGED``);
2. 16-bit samples are scaled linearly from the full 0..65535 range to 0..255
   (``round(x / 257)``), so a 16-bit image of an 8-bit one decodes to the same pixels;
3. colour (BGR) becomes luma with OpenCV's BT.601 weights; an alpha channel is dropped
   (knee crops carry no meaningful transparency);
4. anything else (float images, more than four channels, an empty image, an image with more
   than :data:`MAX_PIXELS` pixels) is refused with a :class:`~koa_core.errors.KoaError`.

The DICOM reader (:mod:`.dicom`) shares the limits and the file reading; the front door
that chooses between the two is :mod:`.imaging`.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from koa_core.errors import KoaError

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "MAX_PIXELS", "decode_gray", "read_bytes",
           "to_gray_uint8"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")  # decoded by OpenCV
DICOM_SUFFIXES = (".dcm", ".dicom")  # decoded by koa_core.data.dicom (pydicom)
MAX_PIXELS = 64_000_000  # ~8000x8000: larger files are almost surely not knee crops

# OpenCV logs its own WARN or ERROR line (e.g. "[ERROR:0@...] global grfmt_png.cpp ... IHDR
# chunk shall be first") for a file it cannot decode; we report those ourselves, once.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - very old OpenCV builds
    pass


def decode_gray(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to an 8-bit grayscale array by the module's rule."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise KoaError(f"{name}: empty file")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise KoaError(f"{name}: not a readable PNG, JPEG, WebP or TIFF image "
                       "(truncated or corrupt?)")
    return to_gray_uint8(img, name)


def to_gray_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Apply the bit-depth and channel rule to an already decoded array."""
    if img.size == 0 or img.ndim not in (2, 3):
        raise KoaError(f"{name}: empty or malformed image")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise KoaError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels is larger than the "
                       f"{MAX_PIXELS:,}-pixel limit")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise KoaError(f"{name}: unsupported pixel type {img.dtype} (8- or 16-bit expected)")
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1:
            img = img[:, :, 0]
        elif channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        else:
            raise KoaError(f"{name}: {channels} channels (1, 3 or 4 expected)")
    return np.ascontiguousarray(img)


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes; a missing, unreadable or directory path is a one-line KoaError."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except IsADirectoryError:
        raise KoaError(f"{path}: is a directory, not an image") from None
    except FileNotFoundError:
        raise KoaError(f"{path}: no such file") from None
    except OSError as exc:
        raise KoaError(f"{path}: cannot read ({os.strerror(exc.errno) if exc.errno else exc})") \
            from None
