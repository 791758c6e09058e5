"""The raster reader: PNG, JPEG, WebP and TIFF bytes to 8-bit grayscale (paper §2.1).

The public dataset ships 8-bit grayscale PNGs; copies in the wild are also WebP, JPEG or
TIFF, 16-bit, RGB or RGBA. Every image is brought to one form by this documented rule:

0. the file is read only when it is a regular file no larger than :data:`MAX_FILE_BYTES`
   (a FIFO, a device such as ``/dev/zero`` or a socket is refused before it is opened, and
   the open is non-blocking in case one is swapped in), and its header is read first with
   Pillow: an image of more than :data:`MAX_PIXELS` pixels (a decompression bomb: a 100 KB
   PNG can declare 30,000 x 30,000 pixels), more than one frame (a multi-page TIFF, an
   animated PNG or WebP: grading the first frame silently could mislead) or, for a PNG, a
   damaged chunk (truncated, bad CRC) is refused before any pixel is decoded - which also
   keeps libpng's own ``libpng error:`` lines off the terminal;
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

import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from koa_core.errors import KoaError

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "MAX_DECODED_BYTES", "MAX_FILE_BYTES",
           "MAX_PIXELS", "check_header",
           "decode_gray", "decode_raw", "is_regular_file", "read_bytes", "read_head",
           "to_gray_uint8"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")  # decoded by OpenCV
DICOM_SUFFIXES = (".dcm", ".dicom")  # decoded by koa_core.data.dicom (pydicom)
MAX_PIXELS = 64_000_000  # ~8000x8000: larger files are almost surely not knee crops
MAX_FILE_BYTES = 256 * 2 ** 20  # a knee crop is kilobytes; a whole radiograph a few MB
# the decoded array, before it becomes 8-bit grey: 64 M pixels of 16-bit RGBA would be 512 MB
MAX_DECODED_BYTES = 256 * 2 ** 20
# OpenCV's own pixel limit (read once, on its first decode) matches ours; the Pillow header
# check below refuses such images first, and Pillow's own bomb warning is ours to give
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# OpenCV logs its own WARN or ERROR line (e.g. "[ERROR:0@...] global grfmt_png.cpp ... IHDR
# chunk shall be first") for a file it cannot decode; we report those ourselves, once.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - very old OpenCV builds
    pass


def decode_gray(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to an 8-bit grayscale array by the module's rule."""
    return to_gray_uint8(decode_raw(data, name), name)


def decode_raw(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes as they are stored (bit depth and channels kept), after
    :func:`check_header` has accepted them; errors are one-line KoaErrors."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise KoaError(f"{name}: empty file")
    check_header(buf.tobytes() if not isinstance(data, (bytes, bytearray)) else data, name)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise KoaError(f"{name}: not a readable PNG, JPEG, WebP or TIFF image "
                       "(truncated or corrupt?)")
    return img


def check_header(data: bytes, name: str = "image") -> tuple[int, int]:
    """Read the image's header only (Pillow's lazy open) and refuse, in one line, what must
    not be decoded: more than :data:`MAX_PIXELS` pixels, more than one frame, a file that is
    no image, or a PNG with a damaged chunk. Returns (width, height); no pixel is decoded."""
    unreadable = f"{name}: not a readable PNG, JPEG, WebP or TIFF image (truncated or corrupt?)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise KoaError(f"{name}: {w}x{h} pixels is larger than the {MAX_PIXELS:,}-pixel "
                               "limit (refused before decoding)")
            frames = getattr(im, "n_frames", 1)
            fmt = im.format
            decoded = w * h * _sample_bytes(im, data)
            if decoded > MAX_DECODED_BYTES:
                raise KoaError(f"{name}: {w}x{h} pixels would decode to {decoded / 2 ** 20:,.0f} "
                               f"MiB, more than the {MAX_DECODED_BYTES // 2 ** 20} MiB limit "
                               "(refused before decoding)")
    except Image.DecompressionBombError as exc:  # Pillow's own, higher limit: the same refusal
        size = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{int(size.group(1)):,} pixels is" if size else "the image is"
        raise KoaError(f"{name}: {what} larger than the {MAX_PIXELS:,}-pixel limit (refused "
                       "before decoding)") from None
    except KoaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError,
            struct.error):
        raise KoaError(unreadable) from None
    if w * h == 0:
        raise KoaError(f"{name}: empty image ({w}x{h} pixels)")
    if frames > 1:
        raise KoaError(f"{name}: {frames} frames (a multi-page or animated image; one knee "
                       "image expected, and its first frame is not graded silently)")
    if fmt == "PNG":  # chunks and CRCs, without inflating the pixels: libpng stays quiet
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception:
            raise KoaError(unreadable) from None
    return w, h


def _sample_bytes(im, data: bytes) -> int:
    """Bytes per pixel of the array OpenCV will decode (``IMREAD_UNCHANGED``): the bands
    times 1 or 2 bytes. Pillow reduces 16-bit colour PNGs to 8 bits, so a PNG's own bit
    depth is read from its header (IHDR: byte 24)."""
    bands = len(im.getbands())
    if im.format == "PNG" and len(data) > 25:
        return bands * (2 if data[24] == 16 else 1)
    return bands * (2 if im.mode.startswith("I;16") else 4 if im.mode in ("I", "F") else 1)


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


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (links followed); False for a FIFO, a device, a socket, a
    folder, a missing path or a link loop. Never opens the path, so it cannot block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def read_head(path: str | Path, n: int) -> bytes:
    """The first ``n`` bytes of a regular file; b"" for anything else (never blocks)."""
    if not is_regular_file(path):
        return b""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb", closefd=True) as fh:
            return fh.read(n) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except (OSError, ValueError):
        return b""


def read_bytes(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most ``limit`` of them; a missing, unreadable, special
    (FIFO, device, socket), oversized or directory path is a one-line KoaError.

    The path is checked with ``stat`` before it is opened, opened non-blocking (a FIFO put
    in its place between the two cannot hang the read) and checked again on the open file.
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise KoaError(f"{path}: is a directory, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise KoaError(f"{path}: {_kind(st.st_mode)}, not a regular file; not read")
        if st.st_size > limit:
            raise KoaError(f"{path}: {st.st_size:,} bytes is larger than the {limit:,}-byte "
                           "limit for one image; not read")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb", closefd=True) as fh:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise KoaError(f"{path}: {_kind(mode)}, not a regular file; not read")
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise KoaError(f"{path}: no such file") from None
    except OSError as exc:
        raise KoaError(f"{path}: cannot read ({os.strerror(exc.errno) if exc.errno else exc})") \
            from None
    if len(data) > limit:  # grew since it was looked at
        raise KoaError(f"{path}: larger than the {limit:,}-byte limit for one image; not read")
    return data
