"""Tests for koa_core.data.imaging: every supported encoding decodes to 2-D uint8 by the
documented rule, and every bad input is a one-line KoaError naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from koa_core.data import raster
from koa_core.data.imaging import decode_gray, is_image_file, read_gray, to_gray_uint8
from koa_core.errors import KoaError

H, W = 24, 40  # deliberately not square: a swapped axis would show


def _ramp() -> np.ndarray:
    """8-bit gray test pattern using every value 0..255 (H*W = 960 pixels)."""
    return (np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)


def _bt601(b, g, r) -> np.ndarray:
    """Luma with the BT.601 weights, computed independently of OpenCV."""
    b, g, r = (np.asarray(v, float) for v in (b, g, r))
    return 0.114 * b + 0.587 * g + 0.299 * r


def _write(path: Path, img: np.ndarray, params=()) -> Path:
    assert cv2.imwrite(str(path), img, list(params)), f"cv2 could not write {path}"
    return path


# --- case builders: each returns (path, expected 2-D array, tolerance) -------------------
def case_png8(tmp):
    img = _ramp()
    return _write(tmp / "gray8.png", img), img, 0


def case_png8_upper_suffix(tmp):
    img = _ramp()
    return _write(tmp / "GRAY8.PNG", img), img, 0


def case_png16_scaled(tmp):
    # 257*k is the exact 16-bit image of the 8-bit value k
    img = _ramp()
    return _write(tmp / "gray16.png", img.astype(np.uint16) * 257), img, 0


def case_png16_full_range(tmp):
    img16 = np.zeros((H, W), np.uint16)
    img16[:, : W // 2] = 65535
    img16[:, W // 2:] = 128  # 128/257 = 0.498 -> 0
    want = np.where(np.arange(W) < W // 2, 255, 0).astype(np.uint8)[None].repeat(H, 0)
    return _write(tmp / "full16.png", img16), want, 0


def case_png16_rgb(tmp):
    img = _ramp()
    bgr = np.dstack([img, img, img]).astype(np.uint16) * 257
    return _write(tmp / "rgb16.png", bgr), img, 0


def case_png_rgb(tmp):
    b, g, r = 10, 100, 200
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[:] = (b, g, r)
    want = np.full((H, W), np.round(_bt601(b, g, r)), np.uint8)
    return _write(tmp / "rgb.png", bgr), want, 1


def case_png_rgb_gray_content(tmp):
    img = _ramp()
    return _write(tmp / "rgb_gray.png", np.dstack([img, img, img])), img, 0


def case_png_rgba(tmp):
    b, g, r = 200, 30, 90
    bgra = np.zeros((H, W, 4), np.uint8)
    bgra[:] = (b, g, r, 0)  # fully transparent: alpha must be ignored, not composited
    want = np.full((H, W), np.round(_bt601(b, g, r)), np.uint8)
    return _write(tmp / "rgba.png", bgra), want, 1


def case_jpeg(tmp):
    img = np.full((H, W), 137, np.uint8)
    img[:, W // 2:] = 60
    return _write(tmp / "gray.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100]), img, 3


def case_jpeg_suffix_jpeg(tmp):
    img = np.full((H, W), 90, np.uint8)
    return _write(tmp / "gray.jpeg", img, [cv2.IMWRITE_JPEG_QUALITY, 95]), img, 3


def case_webp_lossless(tmp):
    img = _ramp()
    return _write(tmp / "gray.webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101]), img, 0


def case_webp_rgba_lossless(tmp):
    img = _ramp()
    bgra = np.dstack([img, img, img, np.full_like(img, 5)])
    return _write(tmp / "rgba.webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 101]), img, 0


GOOD_CASES = [
    case_png8, case_png8_upper_suffix, case_png16_scaled, case_png16_full_range,
    case_png16_rgb, case_png_rgb, case_png_rgb_gray_content, case_png_rgba, case_jpeg,
    case_jpeg_suffix_jpeg, case_webp_lossless, case_webp_rgba_lossless,
]


@pytest.mark.parametrize("build", GOOD_CASES, ids=lambda f: f.__name__[5:])
def test_read_gray_decodes_to_2d_uint8(build, tmp_path):
    path, want, tol = build(tmp_path)
    got = read_gray(path)
    assert got.dtype == np.uint8
    assert got.ndim == 2
    assert got.shape == want.shape == (H, W)
    assert got.flags.c_contiguous
    diff = np.abs(got.astype(int) - want.astype(int)).max()
    assert diff <= tol, f"max abs difference {diff} > {tol}"


@pytest.mark.parametrize("build", GOOD_CASES, ids=lambda f: f.__name__[5:])
def test_decode_gray_bytes_equals_read_gray(build, tmp_path):
    path, _, _ = build(tmp_path)
    data = path.read_bytes()
    np.testing.assert_array_equal(decode_gray(data, "x"), read_gray(path))
    np.testing.assert_array_equal(decode_gray(bytearray(data)), read_gray(path))


def test_16bit_of_8bit_image_decodes_identically(tmp_path):
    img = _ramp()
    a = read_gray(_write(tmp_path / "a.png", img))
    b = read_gray(_write(tmp_path / "b.png", img.astype(np.uint16) * 257))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("v16, v8", [(0, 0), (128, 0), (129, 1), (257, 1), (385, 1),
                                     (386, 2), (32896, 128), (65278, 254), (65535, 255)])
def test_16bit_rounding_rule(v16, v8):
    # round(x / 257): the documented rule, checked on single values
    got = to_gray_uint8(np.full((2, 3), v16, np.uint16))
    assert got.dtype == np.uint8
    assert (got == v8).all(), (v16, got[0, 0], v8)


@pytest.mark.parametrize("arr, msg", [
    (np.zeros((4, 4), np.float32), "unsupported pixel type"),
    (np.zeros((4, 4), np.int16), "unsupported pixel type"),
    (np.zeros((4, 4, 2), np.uint8), "2 channels"),
    (np.zeros((4, 4, 5), np.uint8), "5 channels"),
    (np.zeros((0, 4), np.uint8), "empty"),
    (np.zeros((4,), np.uint8), "malformed"),
    (np.zeros((2, 2, 2, 2), np.uint8), "malformed"),
])
def test_to_gray_uint8_refuses(arr, msg):
    with pytest.raises(KoaError, match=msg) as ei:
        to_gray_uint8(arr, "thing.png")
    assert "thing.png" in str(ei.value)


def test_single_channel_3d_is_squeezed():
    img = _ramp()
    np.testing.assert_array_equal(to_gray_uint8(img[:, :, None]), img)


@pytest.mark.parametrize("name, ok", [
    ("a.png", True), ("a.PNG", True), ("a.jpg", True), ("a.JPEG", True), ("a.webp", True),
    ("a.tif", True), ("a.TIFF", True), ("a.dcm", True), ("a.DICOM", True),
    ("a.bmp", False), ("a.txt", False), ("png", False), ("a.png.bak", False), ("a.dcm.gz", False),
])
def test_is_image_file(name, ok):
    assert is_image_file(name) is ok


# --- errors: (builder -> path, expected message fragment) --------------------------------
def err_zero_byte(tmp):
    p = tmp / "empty.png"
    p.write_bytes(b"")
    return p, "empty file"


def err_truncated_png(tmp):
    _write(tmp / "full.png", (np.random.default_rng(0).integers(0, 256, (64, 64))).astype(np.uint8))
    data = (tmp / "full.png").read_bytes()
    p = tmp / "trunc.png"
    p.write_bytes(data[: len(data) // 2])
    return p, "not a readable"


def err_text_as_png(tmp):
    p = tmp / "notes.png"
    p.write_text("this is not an image\n")
    return p, "not a readable"


def err_bmp_suffix(tmp):
    p = _write(tmp / "x.bmp", _ramp())  # a real, decodable BMP: refused by suffix
    return p, "unsupported file type"


def err_txt_suffix(tmp):
    p = tmp / "x.txt"
    p.write_text("hello")
    return p, "unsupported file type"


def err_directory(tmp):
    p = tmp / "folder.png"
    p.mkdir()
    return p, "is a directory"


def err_missing(tmp):
    return tmp / "nope.png", "no such file"


def err_symlink_loop(tmp):
    a, b = tmp / "a.png", tmp / "b.png"
    os.symlink(b, a)
    os.symlink(a, b)
    return a, "cannot read"


def err_dangling_symlink(tmp):
    a = tmp / "dangling.png"
    os.symlink(tmp / "gone.png", a)
    return a, "no such file"


ERROR_CASES = [err_zero_byte, err_truncated_png, err_text_as_png, err_bmp_suffix,
               err_txt_suffix, err_directory, err_missing, err_symlink_loop,
               err_dangling_symlink]


@pytest.mark.parametrize("build", ERROR_CASES, ids=lambda f: f.__name__[4:])
def test_read_gray_errors_are_one_line_koa_errors(build, tmp_path):
    path, fragment = build(tmp_path)
    with pytest.raises(KoaError) as ei:
        read_gray(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert fragment in msg
    assert "\n" not in msg
    assert ei.value.__cause__ is None  # raised "from None": no chained traceback
    # str paths are accepted too
    with pytest.raises(KoaError):
        read_gray(str(path))


def test_decode_gray_names_the_source():
    with pytest.raises(KoaError, match=r"^scan\.png: empty file$"):
        decode_gray(b"", "scan.png")
    with pytest.raises(KoaError, match=r"^scan\.png: not a readable"):
        decode_gray(b"\x89PNG\r\n\x1a\n garbage", "scan.png")


def test_max_pixels_refused(tmp_path, monkeypatch):
    p = _write(tmp_path / "big.png", np.zeros((20, 30), np.uint8))
    monkeypatch.setattr(raster, "MAX_PIXELS", 599)
    with pytest.raises(KoaError, match="larger than") as ei:
        read_gray(p)
    assert str(p) in str(ei.value)
    assert "30x20" in str(ei.value)
    monkeypatch.setattr(raster, "MAX_PIXELS", 600)  # exactly at the limit is fine
    assert read_gray(p).shape == (20, 30)


def test_corrupt_png_gives_exactly_the_projects_line(tmp_path):
    """No OpenCV log line beside ours (a bad IHDR chunk makes OpenCV print an ERROR)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDX" + b"0" * 40)
    code = ("import sys; from koa_core.data.imaging import read_gray\n"
            "try:\n    read_gray(sys.argv[1])\nexcept Exception as e:\n"
            "    print('koa: error:', e, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True,
                       timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("koa: error:"), r.stderr
