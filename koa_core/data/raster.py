"""The raster reader: PNG, JPEG, WebP and TIFF bytes to 8-bit grayscale (paper §2.1).

The public dataset ships 8-bit grayscale PNGs; copies in the wild are also WebP, JPEG or
TIFF, 16-bit, RGB or RGBA. Every image is brought to one form by this documented rule:

0. the file is read only when it is a regular file no larger than :data:`MAX_FILE_BYTES`
   (a FIFO, a device such as ``/dev/zero`` or a socket is refused before it is opened, and
   the open is non-blocking in case one is swapped in), and its header is read first with
   Pillow. What must not be decoded is refused before any pixel is: a decoded size over
   the one rule of :func:`check_decoded_size` (more than :data:`MAX_PIXELS` pixels - a
   100 KB PNG can declare 30,000 x 30,000 - or more than :data:`MAX_DECODED_BYTES`, all
   frames and samples at the bit depth decoded), more than one frame (a multi-page TIFF,
   an animated PNG or WebP: grading the first frame silently could mislead; a TIFF's pages
   are counted up to :data:`MAX_FRAMES_COUNTED`) or, for a PNG, a damaged chunk
   (truncated, bad CRC) - which also keeps libpng's own ``libpng error:`` lines off the
   terminal. Before Pillow walks a PNG's chunks or a JPEG's segments (a step and a kept
   copy for each), a bounded walk refuses more than :data:`MAX_CHUNKS` of them or more
   than :data:`MAX_METADATA_BYTES` of metadata (ancillary chunks, APPn and COM segments);
1. decode with OpenCV, keeping bit depth and channels (``IMREAD_UNCHANGED``), then turn
   the pixels as the EXIF orientation of a JPEG, PNG or WebP says, as browsers and
   Pillow's ``ImageOps.exif_transpose`` do (phones store photos turned, with the tag;
   OpenCV applies a TIFF's own orientation tag itself);
2. 16-bit samples are scaled linearly from the full 0..65535 range to 0..255
   (``round(x / 257)``), so a 16-bit image of an 8-bit one decodes to the same pixels;
3. colour (BGR) becomes luma with OpenCV's BT.601 weights; an alpha channel is dropped
   (knee crops carry no meaningful transparency); steps 2 and 3 work on 8- and 16-bit
   arrays, so an image costs about its decoded size, never a float copy of it;
4. anything else (float images, more than four channels, an empty image, an image with more
   than :data:`MAX_PIXELS` pixels) is refused with a :class:`~koa_core.errors.KoaError`.

The DICOM reader (:mod:`.dicom`) shares the limits, the rule and the file reading; the
front door that chooses between the two is :mod:`.imaging`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from koa_core.errors import KoaError

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "MAX_CHUNKS", "MAX_DECODED_BYTES",
           "MAX_FILE_BYTES", "MAX_FRAMES_COUNTED", "MAX_METADATA_BYTES", "MAX_PIXELS", "Header",
           "check_decoded_size", "check_header", "decode_gray", "decode_raw", "is_regular_file",
           "read_bytes", "read_head", "to_gray_uint8"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")  # decoded by OpenCV
DICOM_SUFFIXES = (".dcm", ".dicom")  # decoded by koa_core.data.dicom (pydicom)
MAX_PIXELS = 64_000_000  # ~8000x8000: larger files are almost surely not knee crops
MAX_FILE_BYTES = 256 * 2 ** 20  # a knee crop is kilobytes; a whole radiograph a few MB
# the decoded array, before it becomes 8-bit grey: 64 M pixels of 16-bit RGBA would be 512 MB
MAX_DECODED_BYTES = 256 * 2 ** 20
# one frame is read; a multi-page TIFF's pages are counted up to this many (Pillow's own
# count of a TIFF's pages grows with their square: 100,000 pages took 97 s)
MAX_FRAMES_COUNTED = 100
# the header walks: PNG chunks or JPEG segments (and fill bytes) before the image data. A
# 256 MiB PNG split in libpng's 8 KiB IDAT chunks has 32,768; metadata (text, ICC profile,
# EXIF) is a few chunks of kilobytes. Pillow keeps a copy of each: 4 million empty chunks
# took 44 s and 1 GB in its header check alone
MAX_CHUNKS = 65_536
MAX_METADATA_BYTES = 16 * 2 ** 20
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


class Header(NamedTuple):
    """What :func:`check_header` read: the size as displayed and the EXIF orientation."""

    width: int
    height: int
    orientation: int = 1  # 1-8 (EXIF); 1 when absent


def check_decoded_size(name: str, width: int, height: int, samples: int = 1, bits: int = 8,
                       frames: int = 1) -> int:
    """The one rule every reader applies, from the header, before it allocates pixels: the
    pixels of all frames against :data:`MAX_PIXELS`, then their decoded bytes (``samples``
    per pixel at ``bits`` each) against :data:`MAX_DECODED_BYTES`. Returns the bytes."""
    size = f"{width}x{height} pixels" + (f" x {frames} frames" if frames > 1 else "")
    pixels = width * height * frames
    if pixels > MAX_PIXELS:
        raise KoaError(f"{name}: {size} is larger than the {MAX_PIXELS:,}-pixel limit "
                       "(refused before decoding)")
    decoded = pixels * samples * bits // 8
    if decoded > MAX_DECODED_BYTES:
        raise KoaError(f"{name}: {size} would decode to {_mib(decoded)}, more than the "
                       f"{_mib(MAX_DECODED_BYTES)} limit (refused before decoding)")
    return decoded


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:,.0f} MiB" if n >= 2 ** 20 else f"{n:,} bytes"


def decode_raw(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes as they are stored (bit depth and channels kept), after
    :func:`check_header` has accepted them, turned as their EXIF orientation says; errors
    are one-line KoaErrors."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise KoaError(f"{name}: empty file")
    header = check_header(buf.tobytes() if not isinstance(data, (bytes, bytearray)) else data,
                          name)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise KoaError(f"{name}: not a readable PNG, JPEG, WebP or TIFF image "
                       "(truncated or corrupt?)")
    return _orient(img, header.orientation)


# each EXIF orientation's turn from the stored pixels to the displayed ones (the TIFF/EXIF
# standard; Pillow's ImageOps.exif_transpose: 6 is a quarter turn clockwise)
_TURNS = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
          7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    turn = _TURNS.get(orientation)
    return img if turn is None else np.ascontiguousarray(turn(img))


def check_header(data: bytes, name: str = "image") -> Header:
    """Read the image's header only (Pillow's lazy open, after :func:`_check_walk`) and
    refuse, in one line, what must not be decoded: a decoded size over the rule of
    :func:`check_decoded_size`, more than one frame, a file that is no image, or a PNG with
    a damaged chunk. No pixel is decoded."""
    unreadable = f"{name}: not a readable PNG, JPEG, WebP or TIFF image (truncated or corrupt?)"
    _check_walk(data, name)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            samples, bits = _decoded_sample(im, data)
            frames = _frames(im)
            check_decoded_size(name, w, h, samples, bits, frames)
            fmt, orientation = im.format, _orientation(im)
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
        count = f"{frames} or more" if frames >= MAX_FRAMES_COUNTED else str(frames)
        raise KoaError(f"{name}: {count} frames (a multi-page or animated image; one knee "
                       "image expected, and its first frame is not graded silently)")
    if fmt == "PNG":  # chunks and CRCs, without inflating the pixels: libpng stays quiet
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception:
            raise KoaError(unreadable) from None
    return Header(w, h, orientation)


def _frames(im) -> int:
    """The frame count; a TIFF's pages are counted one by one up to MAX_FRAMES_COUNTED."""
    if im.format != "TIFF":
        return getattr(im, "n_frames", 1)
    count = 1
    while count < MAX_FRAMES_COUNTED:
        try:
            im.seek(count)
        except EOFError:
            break
        count += 1
    im.seek(0)
    return count


def _orientation(im) -> int:
    """The EXIF orientation (1-8) of a JPEG, PNG (eXIf before the image data) or WebP, read
    from the header's EXIF block; 1 when absent or malformed, as browsers take it. A TIFF's
    is 1 here: OpenCV applies its orientation tag itself."""
    exif = im.info.get("exif")
    if im.format == "TIFF" or not isinstance(exif, (bytes, bytearray)):
        return 1
    try:
        tags = Image.Exif()
        tags.load(bytes(exif))
        value = int(tags.get(0x0112, 1))
    except Exception:  # a damaged EXIF block is ignored, as browsers ignore it
        return 1
    return value if 1 <= value <= 8 else 1


def _decoded_sample(im, data: bytes) -> tuple[int, int]:
    """Samples per pixel and bits per sample of the array OpenCV will decode
    (``IMREAD_UNCHANGED``). Pillow reduces 16-bit colour PNGs and TIFFs to 8 bits, so their
    own bit depth is read from the header (a PNG's IHDR, a TIFF's BitsPerSample); palette
    images decode to BGR(A), grey with alpha to BGRA."""
    bands = len(im.getbands())
    if im.mode in ("P", "PA", "LA", "La"):
        bands = 4 if im.mode != "P" or "transparency" in im.info else 3
    if im.format == "PNG" and len(data) > 25:
        return bands, 16 if data[24] == 16 else 8
    if im.format == "TIFF":
        depth = im.tag_v2.get(258, (8,))
        bits = max(depth) if isinstance(depth, tuple) else int(depth)
        return bands, max(8, -(-bits // 8) * 8)
    return bands, 16 if im.mode.startswith("I;16") else 32 if im.mode in ("I", "F") else 8


def _check_walk(data: bytes, name: str) -> None:
    """The bounded walk of a PNG's chunks or a JPEG's segments, before Pillow's."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        _check_png_chunks(data, name)
    elif data[:2] == b"\xff\xd8":
        _check_jpeg_segments(data, name)


def _check_png_chunks(data: bytes, name: str) -> None:
    """Walk the chunk list once with Pillow's ChunkStream, skipping each chunk's data:
    more than MAX_CHUNKS chunks, or more than MAX_METADATA_BYTES in ancillary ones (a
    lower-case first letter), are refused. A damaged list ends the walk: Pillow's own
    check refuses it."""
    stream = PngImagePlugin.ChunkStream(io.BytesIO(data))
    stream.fp.seek(8)
    count = extra = 0
    try:
        while True:
            cid, pos, length = stream.read()
            count += 1
            if count > MAX_CHUNKS:
                raise KoaError(f"{name}: more than {MAX_CHUNKS:,} chunks (refused before "
                               "decoding)")
            if pos + length + 4 > len(data):  # runs past the end: damaged
                return
            if cid[0] & 0x20:
                extra += length
                _check_metadata(name, extra, "of ancillary chunks")
            if cid == b"IEND":
                return
            stream.fp.seek(pos + length + 4)
    except (SyntaxError, struct.error, ValueError, IndexError):
        return


def _check_metadata(name: str, size: int, what: str) -> None:
    if size > MAX_METADATA_BYTES:
        raise KoaError(f"{name}: {size:,} bytes {what}, more than the "
                       f"{MAX_METADATA_BYTES:,} allowed (refused before decoding)")


def _check_jpeg_segments(data: bytes, name: str) -> None:
    """Walk the markers up to the first scan (SOS), where Pillow's header parser stops:
    more than MAX_CHUNKS steps (segments, fill bytes or stray bytes, each one step of
    Pillow's), or more than MAX_METADATA_BYTES in APPn and COM segments, are refused."""
    pos, count, extra = 2, 0, 0
    while pos + 4 <= len(data):
        count += 1
        if count > MAX_CHUNKS:
            raise KoaError(f"{name}: more than {MAX_CHUNKS:,} segments before its image data "
                           "(refused before decoding)")
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker == 0xFF:  # a stray or a fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xFE or 0xE0 <= marker <= 0xEF:
            extra += length
            _check_metadata(name, extra, "of APPn and COM segments")
        pos += 2 + max(length, 2)


def to_gray_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Apply the bit-depth and channel rule to an already decoded array."""
    if img.size == 0 or img.ndim not in (2, 3):
        raise KoaError(f"{name}: empty or malformed image")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise KoaError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels is larger than the "
                       f"{MAX_PIXELS:,}-pixel limit")
    if img.dtype == np.uint16:  # round(x / 257), exactly: x / 257 is never a tie
        img = cv2.convertScaleAbs(img, alpha=1 / 257)
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
            data = fh.read(min(st.st_size, limit) + 1)  # a larger request is allocated
            if len(data) > st.st_size:  # it grew since it was looked at: read on
                data += fh.read(limit + 1 - len(data))
    except FileNotFoundError:
        raise KoaError(f"{path}: no such file") from None
    except OSError as exc:
        raise KoaError(f"{path}: cannot read ({os.strerror(exc.errno) if exc.errno else exc})") \
            from None
    if len(data) > limit:  # grew since it was looked at
        raise KoaError(f"{path}: larger than the {limit:,}-byte limit for one image; not read")
    return data
