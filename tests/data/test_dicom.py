"""Tests for koa_core.data.dicom (and TIFF input): DICOM radiographs decode to 2-D uint8 by the
documented rule (Modality LUT, VOI transform, scaling, MONOCHROME1 inversion), record what
the file states, and every bad file is one KoaError line naming it, with no pydicom noise.

The DICOM files are built here with pydicom; expected pixels are computed independently
(the DICOM standard's formulas in plain Python), not with the functions under test.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from koa_core.data import dicom, raster
from koa_core.data.dicom import is_dicom, read_dicom
from koa_core.data.imaging import read_gray, read_image
from koa_core.errors import KoaError

H, W = 24, 40  # deliberately not square: a swapped axis would show


def _dicom(path: Path, arr: np.ndarray, *, photometric: str = "MONOCHROME2",
           bits_stored: int | None = None, tsyntax: str = ExplicitVRLittleEndian,
           pixel_data: bytes | None = None, **elements) -> Path:
    """Write ``arr`` as a DICOM file (preamble + file meta) with the given elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(tsyntax)
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixel_data is not None or not UID(tsyntax).is_compressed:
        ds.PixelData = arr.tobytes() if pixel_data is None else pixel_data
    else:
        ds.PixelData = encapsulate([b"junk" * 16])
    ds.save_as(path, enforce_file_format=True)
    return path


def _linear_window(x: float, c: float, w: float) -> float:
    """DICOM PS3.3 C.11.2.1.2.1 (VOI LUT Function LINEAR) with output range 0..255."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 255.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0


def _one_line_error(path, fragment: str, reader=read_gray) -> str:
    with pytest.raises(KoaError) as ei:
        reader(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: "), msg
    assert fragment in msg, msg
    assert "\n" not in msg
    assert ei.value.__cause__ is None  # raised "from None": no chained traceback
    return msg


# --- the rule ------------------------------------------------------------------------------
STORED = (400 + np.arange(H * W)).reshape(H, W).astype(np.uint16)  # 400..1359
WINDOW = {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 501.5,
          "WindowWidth": 1021}


def _expected_window(stored: np.ndarray, slope: float, intercept: float, c: float,
                     w: float) -> np.ndarray:
    out = [round(_linear_window(float(s) * slope + intercept, c, w)) for s in stored.ravel()]
    return np.array(out, np.uint8).reshape(stored.shape)


def test_rescale_then_window_exact(tmp_path):
    # modality value x = 2 s - 1000; the window maps x <= -9 to 0, x > 1011 to 255 and
    # (x + 9) / 4 in between: (2 s - 991) / 4 is never a tie, so rounding is unambiguous
    got, meta = read_dicom(_dicom(tmp_path / "w.dcm", STORED, **WINDOW))
    want = _expected_window(STORED, 2, -1000, 501.5, 1021)
    assert got.dtype == np.uint8 and got.shape == (H, W) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    flat = got.ravel()  # pixel i holds stored value 400 + i
    for s, v in [(400, 0), (495, 0), (496, 0), (497, 1), (750, 127), (1005, 255),
                 (1006, 255), (1359, 255)]:
        assert flat[s - 400] == v, (s, flat[s - 400], v)
    assert (np.diff(flat.astype(int)) >= 0).all()  # monotone in the stored value
    assert meta["window"] == [501.5, 1021.0]
    assert "voi_lut" not in meta


def test_window_with_negative_slope_keeps_below_window_black(tmp_path):
    # x = 1000 - s; window centre 500, width 52: x <= 474 -> 0, x > 525 -> 255, else 5 x - 2370
    stored = (np.arange(H * W) % 600).reshape(H, W).astype(np.uint16)
    got, _ = read_dicom(_dicom(tmp_path / "n.dcm", stored, RescaleSlope=-1,
                               RescaleIntercept=1000, WindowCenter=500, WindowWidth=52))
    np.testing.assert_array_equal(got, _expected_window(stored, -1, 1000, 500, 52))
    assert got.ravel()[1000 - 474] == 0 and got.ravel()[1000 - 526] == 255


def test_voi_lut_sequence_uses_the_lut_range(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]  # 4 entries, first input value 10, 16-bit entries
    item.add_new(0x00283006, "US", [0, 1000, 3000, 4000])  # LUT Data
    stored = (np.arange(H * W) % 20).reshape(H, W).astype(np.uint8)
    got, meta = read_dicom(_dicom(tmp_path / "v.dcm", stored, VOILUTSequence=Sequence([item]),
                                  WindowCenter=5, WindowWidth=3))  # the LUT wins
    lut = {10: 0, 11: 1000, 12: 3000, 13: 4000}
    want = [round(lut[min(max(int(s), 10), 13)] * 255 / 4000) for s in stored.ravel()]
    np.testing.assert_array_equal(got.ravel(), want)  # 0, 64, 191, 255
    assert meta["voi_lut"] is True and "window" not in meta


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path):
    m2, meta2 = read_dicom(_dicom(tmp_path / "m2.dcm", STORED, **WINDOW))
    m1, meta1 = read_dicom(_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1",
                                  **WINDOW))
    assert len(np.unique(m2)) > 100  # a real ramp, not a constant
    np.testing.assert_array_equal(m1, 255 - m2)
    assert m1.ravel()[0] == 255 and m1.ravel()[-1] == 0  # below the window is white
    assert (meta1["photometric"], meta2["photometric"]) == ("MONOCHROME1", "MONOCHROME2")


def test_8bit_without_window_is_scaled_min_to_max(tmp_path):
    stored = (np.arange(H * W) % 52 + 10).reshape(H, W).astype(np.uint8)  # 10..61
    got, meta = read_dicom(_dicom(tmp_path / "b8.dcm", stored))
    np.testing.assert_array_equal(got, ((stored.astype(int) - 10) * 5).astype(np.uint8))
    assert meta["bits_stored"] == 8 and "window" not in meta and "voi_lut" not in meta


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_12bit_in_16bit_storage(tmp_path, signed):
    k = (np.arange(H * W) % 256).reshape(H, W)
    if signed:
        stored = (16 * k - 2048).astype(np.int16)  # -2048..2032
        raw = stored.view(np.uint16) & 0x0FFF  # two's complement in 12 bits
        raw[::2] |= 0xF000  # garbage above the high bit: must be ignored
    else:
        stored = (16 * k).astype(np.uint16)  # 0..4080: 16 k -> k
        raw = stored | np.where(np.arange(W) % 3 == 0, 0xA000, 0).astype(np.uint16)
    got, meta = read_dicom(_dicom(tmp_path / "b12.dcm", stored, bits_stored=12,
                                  pixel_data=raw.astype(np.uint16).tobytes()))
    np.testing.assert_array_equal(got, k.astype(np.uint8))
    assert meta["bits_stored"] == 12


def test_constant_image_is_all_zeros(tmp_path):
    got, _ = read_dicom(_dicom(tmp_path / "c.dcm", np.full((H, W), 1000, np.uint16)))
    assert got.dtype == np.uint8 and not got.any()


def test_rgb_becomes_bt601_luma(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, W // 2:] = 255
    rgb[0, 0] = (200, 100, 10)  # R, G, B: luma 119.64 (BGR order would give 84.49)
    got, meta = read_dicom(_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert got.shape == (H, W)
    assert got[0, 0] == 120 and got[1, 0] == 0 and got[0, -1] == 255
    assert meta["photometric"] == "RGB"


def test_meta_records_what_the_file_states(tmp_path):
    p = _dicom(tmp_path / "m.dcm", STORED, photometric="MONOCHROME1", Modality="DX",
               PixelSpacing=["0.139", "0.14"], ImagerPixelSpacing=["0.15", "0.15"], **WINDOW)
    _, meta = read_dicom(p)
    assert meta == {"photometric": "MONOCHROME1", "pixel_spacing_mm": [0.139, 0.14],
                    "pixel_spacing_source": "PixelSpacing", "bits_stored": 16,
                    "window": [501.5, 1021.0], "modality": "DX",
                    "transfer_syntax": "Explicit VR Little Endian"}
    assert json.loads(json.dumps(meta)) == meta
    _, meta = read_dicom(_dicom(tmp_path / "i.dcm", STORED, ImagerPixelSpacing=["0.2", "0.1"]))
    assert meta["pixel_spacing_mm"] == [0.2, 0.1]
    assert meta["pixel_spacing_source"] == "ImagerPixelSpacing"
    _, meta = read_dicom(_dicom(tmp_path / "n.dcm", STORED))
    assert set(meta) == {"photometric", "bits_stored", "transfer_syntax"}


def test_file_without_preamble_is_read(tmp_path):
    """Older files lack the 128-byte preamble and DICM: read with force=True."""
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = H, W, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    stored = (np.arange(H * W) % 52 + 10).reshape(H, W).astype(np.uint8)
    ds.PixelData = stored.tobytes()
    p = tmp_path / "legacy.dcm"
    ds.save_as(p, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert p.read_bytes()[128:132] != b"DICM"
    got, meta = read_image(p)
    np.testing.assert_array_equal(got, ((stored.astype(int) - 10) * 5).astype(np.uint8))
    assert meta["transfer_syntax"] == "Implicit VR Little Endian"


# --- dispatch and detection ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["IM0001", "scan.IMA", "1.2.840.5", "misnamed.png"])
def test_dicom_is_found_by_its_preamble_whatever_the_name(tmp_path, name):
    want, want_meta = read_dicom(_dicom(tmp_path / "ref.dcm", STORED, **WINDOW))
    p = tmp_path / name
    shutil.copy(tmp_path / "ref.dcm", p)
    assert is_dicom(p)
    np.testing.assert_array_equal(read_gray(p), want)
    got, meta = read_image(p)
    np.testing.assert_array_equal(got, want)
    assert meta == want_meta


def test_is_dicom_never_raises(tmp_path):
    png = tmp_path / "a.png"
    assert cv2.imwrite(str(png), np.zeros((H, W), np.uint8))
    assert not is_dicom(png)
    (tmp_path / "empty").write_bytes(b"")
    assert not is_dicom(tmp_path / "empty")
    (tmp_path / "short").write_bytes(b"\0" * 130 + b"DI")
    assert not is_dicom(tmp_path / "short")
    assert not is_dicom(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    assert not is_dicom(tmp_path / "folder")
    assert is_dicom(tmp_path / "missing.DCM") and is_dicom("x.dicom")  # by the name alone


def test_png_reads_with_empty_meta(tmp_path):
    img = (np.arange(H * W) % 256).reshape(H, W).astype(np.uint8)
    png = tmp_path / "a.png"
    assert cv2.imwrite(str(png), img)
    got, meta = read_image(png)
    np.testing.assert_array_equal(got, img)
    assert meta == {}


def test_suffixless_non_dicom_is_unsupported(tmp_path):
    p = tmp_path / "README"
    p.write_text("not an image, not DICOM " * 20)
    _one_line_error(p, "unsupported file type")
    _one_line_error(tmp_path / "missing", "unsupported file type")


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_tiff_reads_like_png(tmp_path, depth, suffix):
    img8 = (np.arange(H * W) % 256).reshape(H, W).astype(np.uint8)
    img = img8 if depth == 8 else img8.astype(np.uint16) * 257
    tif, png = tmp_path / f"a{suffix}", tmp_path / "a.png"
    assert cv2.imwrite(str(tif), img) and cv2.imwrite(str(png), img)
    assert cv2.imread(str(tif), cv2.IMREAD_UNCHANGED).dtype == img.dtype  # really 16-bit
    np.testing.assert_array_equal(read_gray(tif), read_gray(png))
    np.testing.assert_array_equal(read_gray(tif), img8)


# --- errors ----------------------------------------------------------------------------------
COMPRESSED = [
    ("1.2.840.10008.1.2.4.70", "pip install pylibjpeg pylibjpeg-libjpeg"),  # JPEG Lossless SV1
    ("1.2.840.10008.1.2.4.80", "pip install pyjpegls"),  # JPEG-LS Lossless
    ("1.2.840.10008.1.2.4.90", "pip install pylibjpeg pylibjpeg-openjpeg"),  # JPEG 2000 Lossless
    ("1.2.840.10008.1.2.4.201", "pip install pylibjpeg pylibjpeg-openjpeg"),  # HTJ2K Lossless
]


@pytest.mark.parametrize("uid, plugin", COMPRESSED, ids=lambda v: v.rsplit(".", 1)[-1])
def test_compressed_without_plugin_names_the_plugin(tmp_path, uid, plugin):
    if get_decoder(uid).is_available:
        pytest.skip(f"a decoder for {UID(uid).name} is installed here")
    p = _dicom(tmp_path / "c.dcm", np.zeros((H, W), np.uint16), tsyntax=uid)
    msg = _one_line_error(p, plugin)
    assert f"pixel data is {UID(uid).name} ({uid}), which needs a decoder plugin" in msg


def test_rle_is_decoded_without_a_plugin(tmp_path):
    """pydicom 3 decodes RLE Lossless itself: no plugin message for it."""
    from pydicom import dcmread

    ref = _dicom(tmp_path / "ref.dcm", STORED, **WINDOW)
    ds = dcmread(ref)
    ds.compress("1.2.840.10008.1.2.5")  # pydicom's own RLE encoder
    ds.save_as(tmp_path / "rle.dcm")
    got, meta = read_dicom(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(got, read_dicom(ref)[0])
    assert meta["transfer_syntax"] == "RLE Lossless"


def test_corrupt_compressed_pixel_data(tmp_path):
    uid = "1.2.840.10008.1.2.4.90"
    if not get_decoder(uid).is_available:
        pytest.skip("no JPEG 2000 decoder installed here")
    p = _dicom(tmp_path / "j.dcm", np.zeros((H, W), np.uint16), tsyntax=uid)
    _one_line_error(p, "could not be decoded")


def err_empty(tmp):
    p = tmp / "empty.dcm"
    p.write_bytes(b"")
    return p, "empty file"


def err_text(tmp):
    p = tmp / "notes.dcm"
    p.write_text("this is not DICOM\n" * 20)
    return p, "not a DICOM file"


def err_truncated_half(tmp):
    data = _dicom(tmp / "full.dcm", STORED).read_bytes()
    p = tmp / "half.dcm"
    p.write_bytes(data[: len(data) // 2])
    return p, "pixel data is truncated"


def err_truncated_header(tmp):
    data = _dicom(tmp / "full.dcm", STORED).read_bytes()
    p = tmp / "head.dcm"
    p.write_bytes(data[:200])
    return p, "no pixel data"


def err_no_pixel_data(tmp):
    p = _dicom(tmp / "nopix.dcm", STORED)
    from pydicom import dcmread

    ds = dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    return p, "no pixel data"


def err_multiframe(tmp):
    both = np.concatenate([STORED, STORED])
    p = _dicom(tmp / "mf.dcm", STORED, pixel_data=both.tobytes(), NumberOfFrames=2)
    return p, "2 frames"


def err_palette(tmp):
    return _dicom(tmp / "pal.dcm", STORED, photometric="PALETTE COLOR"), "PALETTE COLOR"


def err_6bit(tmp):
    return _dicom(tmp / "b6.dcm", STORED.astype(np.uint8) % 64, bits_stored=6), "6-bit"


def err_bad_window(tmp):
    return _dicom(tmp / "ww.dcm", STORED, WindowCenter=500, WindowWidth=0), "window"


def err_directory(tmp):
    p = tmp / "folder.dcm"
    p.mkdir()
    return p, "is a directory"


def err_missing(tmp):
    return tmp / "nope.dcm", "no such file"


ERROR_CASES = [err_empty, err_text, err_truncated_half, err_truncated_header, err_no_pixel_data,
               err_multiframe, err_palette, err_6bit, err_bad_window, err_directory, err_missing]


@pytest.mark.parametrize("build", ERROR_CASES, ids=lambda f: f.__name__[4:])
def test_errors_are_one_line_koa_errors(build, tmp_path):
    path, fragment = build(tmp_path)
    _one_line_error(path, fragment, read_gray)
    _one_line_error(str(path), fragment, read_dicom)


def test_max_pixels_refused_before_decoding(tmp_path, monkeypatch):
    p = _dicom(tmp_path / "big.dcm", STORED)
    monkeypatch.setattr(raster, "MAX_PIXELS", H * W - 1)
    msg = _one_line_error(p, "larger than")
    assert f"{W}x{H}" in msg
    monkeypatch.setattr(raster, "MAX_PIXELS", H * W)  # exactly at the limit is fine
    assert read_gray(p).shape == (H, W)


def _padded(path: Path) -> Path:
    """A valid file whose pixel data has 8 bytes of padding: pydicom warns and logs."""
    return _dicom(path, STORED, pixel_data=STORED.tobytes() + b"\0" * 8, **WINDOW)


def test_pydicom_warnings_and_logs_are_silenced_and_restored(tmp_path, caplog):
    p = _padded(tmp_path / "pad.dcm")
    caplog.set_level(logging.DEBUG, logger="pydicom")
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inner = list(warnings.filters)
        img, _ = read_dicom(p)
        assert list(warnings.filters) == inner  # restored after the read
    assert img.shape == (H, W)
    assert [str(w.message) for w in caught] == []
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []
    assert logging.getLogger("pydicom").level == logging.DEBUG
    assert list(warnings.filters) == filters
    assert dicom._quiet._depth == 0


def test_cli_predict_dicom_one_line_per_bad_file(tmp_path, capfd, caplog):
    """`koa predict` (shipped checkpoint) grades a suffix-less DICOM and reports a truncated
    one as exactly one stderr line, with no pydicom warning or log line beside it."""
    from koa_core.cli import main

    good = tmp_path / "IM0001"
    shutil.copy(_padded(tmp_path / "pad.dcm"), good)
    bad = tmp_path / "bad.dcm"
    data = _dicom(tmp_path / "full.dcm", STORED).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    caplog.set_level(logging.DEBUG, logger="pydicom")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["predict", str(good), str(bad)])
    out, err = capfd.readouterr()
    assert rc == 1
    assert out.startswith(f"{good}: KL") and len(out.strip().splitlines()) == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(rf"{re.escape(str(bad))}: error: pixel data is truncated "
                        r"\([\d,]+ of 1,920 bytes\)", lines[0]), lines[0]
    assert not [w for w in caught
                if "pydicom" in (w.filename or "") or "pixel data" in str(w.message)]
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []


def test_data_check_reads_dicom_by_the_dicom_rule(tmp_path):
    """koa data check decodes a DICOM grade folder entry with the same rule as prediction:
    a good file is usable, a broken one is listed with its one-line reason."""
    from koa_core.data.check import scan
    from koa_core.data.index import discover

    arr = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 3)
    for split in ("train", "val", "test"):
        for g in range(5):
            d = tmp_path / split / str(g)
            d.mkdir(parents=True)
            _dicom(d / f"{split}{g}.dcm", arr + g, photometric="MONOCHROME1")
    broken = tmp_path / "val" / "2" / "broken.dcm"
    broken.write_bytes((tmp_path / "val" / "2" / "val2.dcm").read_bytes()[:200])
    rep = scan(discover(tmp_path), workers=1)
    assert len(rep.unreadable) == 1 and rep.unreadable[0].startswith(f"{broken}: ")
    assert "\n" not in rep.unreadable[0]
    assert rep.formats == {"DICOM MONOCHROME1": 15}
    assert rep.sizes == {f"{W}x{H}": 15}
