"""Hostile files, round two: every decoder is bounded before it allocates, and a photo is
graded the way it is displayed.

Each reader holds the decoded size (all frames, all samples, at the stored bit depth) to
one rule read from the header (:func:`koa_core.data.raster.check_decoded_size`); a deflated
DICOM is inflated by a bounded decompressor; the TIFF page count and the PNG and JPEG
header walks stop at their limits; colour becomes grey without a float copy of the whole
image; the --cam and --report pictures are drawn from a copy no larger than
:data:`koa_core.infer.knee_report.PICTURE_SIDE`; EXIF orientation is applied as browsers
apply it. The files are small versions of ``koa bench --bomb``'s (a limit patched lower,
or a file just over it): the benchmark measures the full-size bombs' memory, these tests
check that nothing is decoded or inflated past the limit.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, TiffImagePlugin
from test_dicom import _dicom
from test_hostile import _ckpt, _knee, _no_decode, _one_line

from koa_core.bench import (
    write_deflated_dicom,
    write_jpeg_dicom,
    write_jpeg_segments,
    write_png_chunks,
    write_rle_dicom,
    write_tiff_pages,
)
from koa_core.data import raster
from koa_core.data.imaging import read_image
from koa_core.errors import KoaError
from koa_core.infer.knee_report import KneeReport, build_figure

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "book" / "sample" / "val" / "3" / "9568706R.webp"  # KL3; sideways: KL0/KL4


# ------------------------------------------------------------------ helpers
def _peak(fn, *args, **kw) -> tuple[object, int]:
    """``fn``'s result and the most memory traced while it ran (numpy arrays included)."""
    tracemalloc.start()
    try:
        out = fn(*args, **kw)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _counted(monkeypatch, owner, name: str) -> list:
    """Count calls of ``owner.name`` (still calling it)."""
    calls, real = [], getattr(owner, name)

    def wrapper(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def _no_dicom_decode(monkeypatch) -> list:
    """Make pydicom's pixel decoding fail the file, and record that it was tried."""
    from pydicom.pixels.decoders.base import Decoder

    calls = []

    def refuse(*a, **k):
        calls.append(1)
        raise AssertionError("pixels were decoded")

    for name in ("as_array", "iter_array"):
        monkeypatch.setattr(Decoder, name, refuse)
    return calls


def _ramp_rgb(h: int, w: int, dtype=np.uint8) -> np.ndarray:
    """A smooth colour image (no JPEG-hostile noise): three different ramps."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    top = np.iinfo(dtype).max
    rgb = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=2)
    return np.round(rgb * top).astype(dtype)


# ------------------------------------------------------------------ 1. deflated DICOM
def test_a_deflated_dicom_is_inflated_no_further_than_the_file_cap(tmp_path, monkeypatch):
    """16 MiB of zeros in a 16 KB file, with the cap at 4 MiB: refused while inflating,
    never inflated whole (pydicom's own zlib.decompress of the whole dataset is not
    called, and no more than the cap and a step of the decompressor is ever held)."""
    import pydicom.filereader

    path = write_deflated_dicom(tmp_path / "zeros.dcm", 4096, 4096)
    assert path.stat().st_size < 20_000
    monkeypatch.setattr(raster, "MAX_FILE_BYTES", 4 * 2 ** 20)
    whole = []
    monkeypatch.setattr(pydicom.filereader.zlib, "decompress",
                        lambda *a, **k: whole.append(1) or b"")
    tracemalloc.start()
    try:
        with pytest.raises(KoaError) as ei:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _one_line(ei, "the deflated dataset inflates to more than 4,194,304 bytes")
    assert not whole
    assert peak < 7 * 2 ** 20, f"{peak / 2 ** 20:.1f} MiB"  # the cap and a step (twice)


def test_a_legal_deflated_dicom_reads_like_the_plain_file(tmp_path):
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stored = (np.arange(48 * 40).reshape(48, 40) % 4000).astype(np.uint16)
    ref = _dicom(tmp_path / "ref.dcm", stored, WindowCenter=2000, WindowWidth=3000)
    ds = dcmread(ref)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # pydicom deflates it
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    got, meta = read_image(tmp_path / "deflated.dcm")
    np.testing.assert_array_equal(got, read_image(ref)[0])
    assert meta["transfer_syntax"] == "Deflated Explicit VR Little Endian"
    assert meta["window"] == [2000.0, 3000.0]


# ------------------------------------------------------------------ 2. DICOM decoded size
def test_dicom_pixel_data_is_held_to_the_decoded_size_limit(tmp_path, monkeypatch):
    """An RLE 16-bit RGB file (a small 8000 x 8000 one): 3 MiB decoded against a 2 MiB
    limit is refused from its header; pydicom never decodes it."""
    path = write_rle_dicom(tmp_path / "rle.dcm", 512, 1024)  # 3 MiB of 16-bit RGB
    monkeypatch.setattr(raster, "MAX_DECODED_BYTES", 2 * 2 ** 20)
    decoded = _no_dicom_decode(monkeypatch)
    with pytest.raises(KoaError) as ei:
        read_image(path)
    _one_line(ei, "1024x512 pixels would decode to 3 MiB, more than the 2 MiB limit")
    assert not decoded


@pytest.mark.parametrize("kind", ["jpeg-ybr", "rgb16"])
def test_colour_dicom_becomes_grey_without_a_float_copy(tmp_path, monkeypatch, kind):
    """A legal colour file (JPEG YBR_FULL_422, or native 16-bit RGB) is made grey in about
    its own decoded size: no float64 (or float32) copy of the full colour image, only of
    a strip of it (a small strip here, so that the image spans many)."""
    from koa_core.data import dicom

    monkeypatch.setattr(dicom, "STRIP_PIXELS", 2 ** 12, raising=False)
    h, w = 384, 512
    if kind == "jpeg-ybr":
        rgb = _ramp_rgb(h, w)
        path = write_jpeg_dicom(tmp_path / "ybr.dcm", rgb, quality=95)
    else:
        rgb = _ramp_rgb(h, w, np.uint16)
        path = _dicom(tmp_path / "rgb16.dcm", rgb, photometric="RGB")
    (img, meta), peak = _peak(read_image, path)
    decoded = rgb.nbytes  # the file, pydicom's copy of its pixel data and the array: 3x
    assert peak < 4 * decoded, f"{peak / decoded:.1f}x the decoded size"
    luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    want = np.round((luma - luma.min()) * 255 / (luma.max() - luma.min()))
    tolerance = 3 if kind == "jpeg-ybr" else 0  # JPEG's own error
    assert img.shape == (h, w) and np.abs(img - want).max() <= tolerance


# ------------------------------------------------------------------ 3. TIFF pages, PNG chunks
def test_a_many_page_tiff_is_refused_after_a_bounded_scan(tmp_path, monkeypatch):
    """Counting 100,000 pages with Pillow's n_frames takes minutes (each step searches the
    pages seen so far); the scan stops at the limit instead."""
    path = write_tiff_pages(tmp_path / "pages.tif", 2_000)
    seeks = _counted(monkeypatch, TiffImagePlugin.TiffImageFile, "_seek")
    _no_decode(monkeypatch)
    with pytest.raises(KoaError) as ei:
        read_image(path)
    _one_line(ei, "100 or more frames (a multi-page or animated image")
    assert len(seeks) <= 101
    assert raster.MAX_FRAMES_COUNTED == 100


def test_a_png_with_too_many_chunks_is_refused_after_a_bounded_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(raster, "MAX_CHUNKS", 500, raising=False)
    path = write_png_chunks(tmp_path / "chunks.png", 5_000)
    steps = _counted(monkeypatch, PngImagePlugin.ChunkStream, "read")
    opened = _counted(monkeypatch, PngImagePlugin.PngImageFile, "_open")
    _no_decode(monkeypatch)
    with pytest.raises(KoaError) as ei:
        read_image(path)
    _one_line(ei, "more than 500 chunks (refused before decoding)")
    assert len(steps) <= 501 and not opened  # Pillow's own walk never started


def test_a_png_with_too_many_ancillary_bytes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(raster, "MAX_METADATA_BYTES", 2 ** 20, raising=False)
    path = write_png_chunks(tmp_path / "big.png", 3, extra_bytes=2 * 2 ** 20)
    opened = _counted(monkeypatch, PngImagePlugin.PngImageFile, "_open")
    _no_decode(monkeypatch)
    with pytest.raises(KoaError) as ei:
        read_image(path)
    _one_line(ei, "2,097,152 bytes of ancillary chunks, more than the 1,048,576 allowed")
    assert not opened
    monkeypatch.undo()
    ok = write_png_chunks(tmp_path / "ok.png", 20, extra_bytes=1000)
    assert read_image(ok)[0].shape == (64, 64)  # a few metadata chunks are fine


def test_a_jpeg_with_too_many_segments_is_refused_after_a_bounded_scan(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(raster, "MAX_CHUNKS", 500, raising=False)
    path = write_jpeg_segments(tmp_path / "segments.jpg", 5_000)
    opened = _counted(monkeypatch, JpegImagePlugin.JpegImageFile, "_open")
    _no_decode(monkeypatch)
    with pytest.raises(KoaError) as ei:
        read_image(path)
    _one_line(ei, "more than 500 segments before its image data (refused before decoding)")
    assert not opened
    monkeypatch.undo()
    assert read_image(write_jpeg_segments(tmp_path / "ok.jpg", 20))[0].shape == (64, 64)


# ------------------------------------------------------------------ 4. 16-bit colour raster
def test_a_legal_16_bit_colour_image_decodes_in_about_its_own_size(tmp_path):
    """Each sample to 8 bits (round(x / 257)), then BT.601 luma: the same pixels as before,
    without float32 copies of the colour image (they made it five times its size)."""
    bgr = _ramp_rgb(384, 512, np.uint16)
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), bgr)
    (img, _), peak = _peak(read_image, path)
    assert peak < 2.0 * bgr.nbytes, f"{peak / bgr.nbytes:.1f}x the decoded size"
    want = cv2.cvtColor(np.round(bgr / 257.0).astype(np.uint8), cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(img, want)


def test_16_bit_to_8_bit_is_round_x_over_257_for_every_value():
    x = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    want = np.round(x / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(raster.to_gray_uint8(x), want)
    bgr = np.stack([x, x[::-1], x.T], axis=2)
    np.testing.assert_array_equal(raster.to_gray_uint8(bgr), cv2.cvtColor(
        np.round(bgr / 257.0).astype(np.uint8), cv2.COLOR_BGR2GRAY))


# ------------------------------------------------------------------ 5. --cam and --report
def test_report_pictures_draw_a_copy_no_larger_than_the_picture_side():
    """A 2048 x 2048 knee's picture costs what a 1024 one does; its title keeps the size
    of the image as read."""
    from koa_core.infer.knee_report import PICTURE_SIDE

    n = 2048
    img = (np.indices((n, n)).sum(0) % 256).astype(np.uint8)
    cam = np.linspace(0, 1, n * n, dtype=np.float32).reshape(n, n)
    rep = KneeReport(name="big.png", image=img, probabilities=[0.2] * 5, grade=0,
                     gate=[0.5, 0.5], cams={"raw": cam, "clahe": cam}, clahe_image=img)
    fig, peak = _peak(build_figure, rep)
    assert {ax.get_label(): ax for ax in fig.axes}["image"].get_title() == \
        "big.png\n2048 x 2048 px"
    drawn = [im.get_array().shape for ax in fig.axes for im in ax.get_images()]
    assert drawn and all(max(s) <= PICTURE_SIDE for s in drawn)
    assert peak < 40 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB"


def test_shrink_bounds_the_long_side_and_maps_the_crop_box():
    from koa_core.infer.knee_report import PICTURE_SIDE, shrink

    img = np.zeros((3000, 1500), np.uint8)
    img[1000:2000, 500:1000] = 200
    small, box = shrink(img, (1000, 500, 1000, 500))
    assert small.shape == (PICTURE_SIDE, PICTURE_SIDE // 2) and small.dtype == np.uint8
    top, left, h, w = box
    assert (top, left, h, w) == (341, 171, 342, 170)  # its edges scaled
    assert (small[top:top + h, left:left + w] > 150).mean() > 0.95
    same, same_box = shrink(img[:800, :600], (0, 0, 800, 600))
    assert same.shape == (800, 600) and same_box == (0, 0, 800, 600)  # small: as it is


def test_cam_and_report_pictures_cost_the_views_not_the_input(tiny_run, tmp_path,
                                                              monkeypatch):
    """``koa predict --cam --report`` on a 2048 x 2048 knee: the CAM files and the report's
    arrays are a copy at most PICTURE_SIDE pixels on its long side (the report states the
    size as read), so the pictures' memory does not grow with the input: full-size float
    copies of the image and the maps cost 270 MiB at 2048 pixels, 1.1 GiB at 4096. The
    report's own drawing is measured above; here it is recorded, not drawn."""
    from koa_core.infer import predict
    from koa_core.infer.knee_report import PICTURE_SIDE

    knee = cv2.resize(_knee(tiny_run), (2048, 2048), interpolation=cv2.INTER_LINEAR)
    src = tmp_path / "big.png"
    assert cv2.imwrite(str(src), knee)
    reports = []

    def record(report, path, **kw):
        reports.append(report)
        Path(path).write_bytes(b"")  # a file to put in place, as the real one writes
        return Path(path)

    monkeypatch.setattr(predict, "render_report", record)
    opts = predict.BatchOptions(checkpoint=_ckpt(tiny_run), cam_dir=tmp_path / "cams",
                                report_dir=tmp_path / "rep")
    result, peak = _peak(predict.grade_batch, [str(src)], opts)
    assert result.failed == 0 and len(reports) == 1
    assert peak < 120 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB"  # the same at 1024 pixels
    for pic in (tmp_path / "cams").glob("*.png"):
        assert max(cv2.imread(str(pic)).shape[:2]) == PICTURE_SIDE
    report = reports[0]
    arrays = [report.image, report.clahe_image, *report.cams.values()]
    assert all(max(a.shape) == PICTURE_SIDE for a in arrays)
    assert tuple(report.size) == (2048, 2048)


# ------------------------------------------------------------------ 6. EXIF orientation
# what the display applies for each EXIF orientation (Pillow's ImageOps.exif_transpose),
# and so the transform that stores an upright image under that orientation
_STORE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def _oriented(path: Path, upright: np.ndarray, orientation: int, **save) -> Path:
    """``upright`` stored as a phone stores it under ``orientation`` (the pixels turned,
    the EXIF tag saying how to turn them back); Pillow's exif_transpose is the oracle (a
    TIFF's orientation tag is Pillow's and OpenCV's to apply on their own)."""
    im = Image.fromarray(upright)
    if _STORE[orientation] is not None:
        im = im.transpose(_STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, **save)
    if path.suffix != ".tif":
        with Image.open(path) as shown:
            np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(shown).convert(
                "L")).shape, upright.shape)
    return path


@pytest.mark.parametrize("suffix, save", [(".png", {}), (".webp", {"lossless": True}),
                                          (".tif", {})], ids=["png", "webp", "tiff"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_displayed(tmp_path, orientation, suffix, save):
    upright = np.zeros((30, 50), np.uint8)  # not square, not symmetric
    upright[:10, :20] = 250
    upright[20:, 45:] = 120
    path = _oriented(tmp_path / f"o{orientation}{suffix}", upright, orientation, **save)
    got, _ = read_image(path)
    np.testing.assert_array_equal(got, upright)


def test_a_phone_photo_is_graded_as_displayed(tmp_path):
    """A sample knee saved as JPEG under EXIF orientations 3, 6 and 8 (stored turned,
    displayed upright) gets the grade and probabilities of the upright JPEG written the
    same way; the turned pixels without the tag are graded differently (KL0 or KL4)."""
    from koa_core.infer.predict import predict_files

    upright = cv2.imread(str(SAMPLE), cv2.IMREAD_GRAYSCALE)
    files = [_oriented(tmp_path / "o1.jpg", upright, 1, quality=95)]
    files += [_oriented(tmp_path / f"o{o}.jpg", upright, o, quality=95) for o in (3, 6, 8)]
    sideways = Image.open(files[2])
    sideways.save(tmp_path / "sideways.jpg", quality=95)  # the same pixels, no tag
    preds = predict_files([*map(str, files), str(tmp_path / "sideways.jpg")],
                          engine="torch")
    assert all(p.error is None for p in preds)
    ref = np.array(preds[0].probabilities)
    for p in preds[1:4]:
        assert p.grade == preds[0].grade == 3, p.path
        assert np.abs(np.array(p.probabilities) - ref).max() < 0.03, p.path
    assert preds[4].grade != 3
