"""Decoding DICOM radiographs into 8-bit grayscale arrays (extends paper §2.1).

The paper's input (§2.1) were 8-bit grayscale PNG crops. A radiograph straight from a scanner
or a PACS is a DICOM file instead: 8 to 16 stored bits, a modality rescale, a display window
chosen at acquisition, sometimes stored "inverted" (MONOCHROME1) or compressed. Such a file is
brought to the same form as :mod:`koa_core.data.raster` produces, with pydicom (the field's
library), by this documented rule:

1. read with :func:`pydicom.dcmread`; a file without the ``DICM`` preamble is read again with
   ``force=True`` and kept only if it then holds an image (older files without the
   preamble), else it is refused as not a DICOM file. A dataset in the Deflated transfer
   syntax is inflated first by a bounded decompressor, no further than
   :data:`~koa_core.data.raster.MAX_FILE_BYTES` (what a plain file may hold): a 1 MB file
   can inflate to gigabytes, and pydicom inflates it whole;
2. only single-frame images are accepted (a knee radiograph is one frame; a multi-frame
   object is a series or a cine loop, and grading one frame of it silently could mislead),
   with 8 to 16 stored bits (``BitsStored``), a decoded size (Rows x Columns x
   SamplesPerPixel x NumberOfFrames at BitsAllocated) within the one rule of
   :func:`~koa_core.data.raster.check_decoded_size` - read from the header, before any
   pixel is decoded, whatever the transfer syntax - and photometric interpretation
   MONOCHROME1, MONOCHROME2, RGB or YBR_*;
3. the stored values are decoded by pydicom (bits above ``BitsStored`` are masked, signed
   values sign-extended; colour is kept as stored); a compressed transfer syntax whose
   decoder plugin is not installed is refused with one line naming the plugin to install;
4. the Modality LUT is applied: the Modality LUT Sequence, or ``RescaleSlope`` and
   ``RescaleIntercept`` (:func:`pydicom.pixels.apply_modality_lut`);
5. the VOI transform is applied when present: the first VOI LUT of the VOI LUT Sequence,
   or else the first ``WindowCenter``/``WindowWidth`` pair with its ``VOILUTFunction``
   (pydicom's :func:`~pydicom.pixels.apply_voi` / :func:`~pydicom.pixels.apply_windowing`;
   the same choice as :func:`~pydicom.pixels.apply_voi_lut`);
6. the result is scaled linearly to 0..255 and rounded to the nearest integer. With a VOI
   transform the input range is that transform's output range (what a window maps values
   far below and far above it to; a LUT's smallest and largest entry), so the window the
   acquisition chose becomes the displayed range: below it is 0, above it 255. Without
   one, the range is the image's own minimum..maximum, because the stored bit depth varies
   from 8 to 16 bits and detectors rarely fill it: the fixed ``x / 257`` rule
   :mod:`~koa_core.data.raster` uses for 16-bit PNGs would leave a 12-bit radiograph nearly
   black. A constant image (an empty range) becomes all zeros, with no division by zero;
7. MONOCHROME1 (the smallest value is displayed white) is inverted, ``255 - x``, so that
   bone is bright as in MONOCHROME2, the convention of the PNGs the model was trained on;
8. colour becomes luma, then step 6 (minimum..maximum) applies: RGB with the BT.601 weights
   as in :mod:`~koa_core.data.raster`; YBR_FULL and YBR_PARTIAL (a JPEG's YCbCr) are
   kept as decoded and their Y, which is that luma (scaled, for PARTIAL), is taken as it
   is. The Modality and VOI LUTs are defined for monochrome images only and are not
   applied.

Steps 4 to 8 run a strip of rows at a time (:data:`STRIP_PIXELS` pixels), so the float
values exist for one strip only: an image costs its decoded array and the 8-bit result.

A Presentation LUT is not applied: in a DX image its INVERSE shape accompanies
MONOCHROME1 and describes the same inversion as step 7. Every problem is one
:class:`~koa_core.errors.KoaError` line, ``PATH: what went wrong``; pydicom's own warnings
and log lines are silenced while a file is read. :func:`decode_dicom` also returns a small,
JSON-serialisable dict of what was read (see its docstring). pydicom is imported on first
use, so importing this module stays cheap.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np

from koa_core.data import raster
from koa_core.errors import KoaError

__all__ = ["STRIP_PIXELS", "decode_dicom", "has_dicom_magic", "is_dicom", "read_dicom"]

STRIP_PIXELS = 2 ** 18  # pixels per strip of steps 4-8 (their float values: 2 MiB a copy)
_INFLATE_STEP = 2 ** 20  # bytes a deflated dataset is inflated by at a time

_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
_MONO = ("MONOCHROME1", "MONOCHROME2")

# pip packages that give pydicom a decoder, by transfer syntax UID (pydicom 3 plugins).
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)"
_PLUGINS = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,  # JPEG Baseline (Pillow decodes it too)
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "pyjpegls (or python-gdcm)",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls (or python-gdcm)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 Lossless (Pillow decodes it too)
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE: pydicom decodes it itself
}


def has_dicom_magic(head: bytes) -> bool:
    """True when the bytes carry the DICOM file preamble: ``DICM`` at offset 128."""
    return head[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] == _MAGIC


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name (any case) or a file with the DICM preamble.

    Files from scanners often have no suffix, hence the look at the content. Never raises
    nor blocks: a missing, unreadable, short or special file (a FIFO, a device) without a
    DICOM suffix is simply not DICOM.
    """
    p = Path(path)
    if p.suffix.lower() in raster.DICOM_SUFFIXES:
        return True
    return has_dicom_magic(raster.read_head(p, _MAGIC_OFFSET + 4))


class _Quiet:
    """Silence pydicom's warnings and log records while a file is read.

    Re-entrant across threads (the view cache decodes in a thread pool): the first reader
    saves the warning filters and the ``pydicom`` logger's level, the last one restores
    them, so concurrent readers cannot leave the process's filters changed.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                cm = warnings.catch_warnings()
                cm.__enter__()
                warnings.simplefilter("ignore")
                log = logging.getLogger("pydicom")
                self._saved = (cm, log.level)
                log.setLevel(logging.CRITICAL + 1)
            self._depth += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                cm, level = self._saved
                self._saved = None
                logging.getLogger("pydicom").setLevel(level)
                cm.__exit__(None, None, None)
        return False


_quiet = _Quiet()


def read_dicom(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a DICOM file as (8-bit grayscale array, meta) by the module's rule."""
    path = Path(path)
    return decode_dicom(raster.read_bytes(path), str(path))


def decode_dicom(data: bytes, name: str = "image") -> tuple[np.ndarray, dict]:
    """Decode DICOM file bytes to (2-D uint8 array, meta) by the module's rule.

    ``meta`` is JSON-serialisable and holds only what the file states: ``photometric``
    (e.g. ``"MONOCHROME1"``), ``pixel_spacing_mm`` ([row, column] in mm) with
    ``pixel_spacing_source`` (``"PixelSpacing"``, else ``"ImagerPixelSpacing"``: the
    detector plane), ``bits_stored``, ``window`` ([centre, width], when a window was
    applied) or ``voi_lut: True`` (when a VOI LUT was), ``modality`` and ``transfer_syntax``
    (the UID's name).
    """
    if not data:
        raise KoaError(f"{name}: empty file")
    with _quiet, np.errstate(all="ignore"):
        try:
            return _decode(data, name)
        except KoaError:
            raise
        except Exception as exc:  # a malformed element pydicom chokes on: still one line
            raise KoaError(f"{name}: not a readable DICOM image ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from None


def _decode(data: bytes, name: str) -> tuple[np.ndarray, dict]:
    ds = _read_dataset(data, name)
    rows, cols, photometric, colour, bits_stored = _check_header(ds, name)
    _check_finite(ds, name)
    tsyntax = _transfer_syntax(ds)
    _check_decodable(ds, tsyntax, name, rows * cols * _int(ds.get("SamplesPerPixel"), 1))
    from pydicom.pixels import get_decoder

    try:  # raw: colour as stored (pydicom's YBR to RGB goes through float32 copies)
        arr, decoded = get_decoder(tsyntax).as_array(ds, raw=True)
    except Exception:
        raise KoaError(f"{name}: pixel data ({tsyntax.name}) could not be decoded "
                       "(truncated or corrupt?)") from None

    meta: dict = {"photometric": photometric}
    if colour:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise KoaError(f"{name}: {photometric} pixel data of shape {arr.shape} "
                           "(rows x columns x 3 expected)")
        values_of, lo, hi = _luma(str(decoded.get("photometric_interpretation", ""))), None, None
    else:
        if arr.ndim != 2:
            raise KoaError(f"{name}: pixel data of shape {arr.shape} (rows x columns expected)")
        values_of, lo, hi = _grayscale_pipeline(ds, meta, name)
    img = _render(arr, values_of, lo, hi, name)
    if photometric == "MONOCHROME1":
        np.subtract(255, img, out=img)
    meta.update(_describe(ds, bits_stored, tsyntax))
    return img, meta


def _read_dataset(data: bytes, name: str):
    """Step 1: the dataset, read by pydicom (a deflated one inflated within the cap)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = _read_deflated(data, name)
        return ds if ds is not None else pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = _read_forced(data)
        if ds is None:
            raise KoaError(f"{name}: not a DICOM file") from None
        return ds
    except KoaError:
        raise
    except Exception:  # pydicom raises many kinds on a damaged header
        raise KoaError(f"{name}: not a readable DICOM file (truncated or corrupt?)") from None


def _read_deflated(data: bytes, name: str):
    """A dataset in the Deflated transfer syntax, read as pydicom reads it but with its
    deflate stream inflated by :func:`_inflate`; None for any other transfer syntax."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    try:
        preamble = read_preamble(fp, True)
        file_meta = _read_file_meta_info(fp)
    except Exception:  # not a file meta: pydicom's own reading says what it is
        return None
    if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    body = _inflate(memoryview(data)[fp.tell():], name)
    dataset = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(io.BytesIO(), dataset, preamble, file_meta, is_implicit_VR=False,
                     is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _inflate(stream: memoryview, name: str) -> bytes:
    """A raw deflate stream inflated a step at a time, refused once it passes
    :data:`~koa_core.data.raster.MAX_FILE_BYTES` (nothing past the cap is inflated)."""
    cap = raster.MAX_FILE_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts, size = [], 0
    for start in range(0, len(stream), _INFLATE_STEP):
        pending = stream[start:start + _INFLATE_STEP]
        while not inflater.eof:
            out = inflater.decompress(pending, min(_INFLATE_STEP, cap + 1 - size))
            pending = inflater.unconsumed_tail
            size += len(out)
            if size > cap:
                raise KoaError(f"{name}: the deflated dataset inflates to more than {cap:,} "
                               "bytes, the limit for one image (refused before it is read)")
            parts.append(out)
            if not out and not pending:  # this step's input is used up
                break
        if inflater.eof:
            break
    return b"".join(parts)


def _render(arr: np.ndarray, values_of, lo: float | None, hi: float | None,
            name: str) -> np.ndarray:
    """Steps 4-8 a strip of rows at a time: ``values_of`` maps a strip of decoded values
    to the values to display; ``lo``/``hi`` None takes their own range (a first pass)."""
    step = max(1, STRIP_PIXELS // max(1, arr.shape[1]))
    strips = [slice(i, i + step) for i in range(0, arr.shape[0], step)]

    def finite(values):
        if not np.isfinite(values).all():
            raise KoaError(f"{name}: the rescale or window gives values that are not finite "
                           "(NaN or infinite); refused rather than graded as a blank image")
        return values

    if lo is None:
        ranges = [(float(v.min()), float(v.max()))
                  for v in (finite(values_of(arr[s])) for s in strips)]
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    finite(np.array([lo, hi]))
    img = np.empty(arr.shape[:2], np.uint8)
    for s in strips:
        img[s] = _to_uint8(finite(values_of(arr[s])), lo, hi)
    return img


def _luma(decoded_as: str):
    """Step 8's values of a strip of colour pixels: Y of YBR_FULL / YBR_PARTIAL as decoded,
    else BT.601 luma of RGB (pydicom decodes YBR_ICT and YBR_RCT to RGB)."""
    if decoded_as.startswith(("YBR_FULL", "YBR_PARTIAL")):
        return lambda strip: strip[..., 0].astype(np.float64)

    def luma(strip):
        rgb = strip.astype(np.float64)
        return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return luma


def _check_header(ds, name: str) -> tuple[int, int, str, bool, int]:
    """Refuse, in one line, what the decoder does not take (no or floating-point pixel
    data, a missing size, too many pixels or frames, other photometry, other bit depths);
    the image's rows, columns, photometry, whether it is colour, and its stored bits."""
    if "PixelData" not in ds:
        other = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        if other:
            raise KoaError(f"{name}: floating-point pixel data ({other}) is not supported "
                           "(8- to 16-bit stored values expected)")
        raise KoaError(f"{name}: no pixel data (not an image, or a truncated file)")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
    if missing:
        raise KoaError(f"{name}: incomplete image header (no {', '.join(missing)})")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols == 0:
        raise KoaError(f"{name}: empty image ({cols}x{rows} pixels)")
    frames = max(1, _int(ds.get("NumberOfFrames"), 1))
    raster.check_decoded_size(name, cols, rows, max(1, _int(ds.get("SamplesPerPixel"), 1)),
                              _int(ds.BitsAllocated, 8), frames)
    if frames > 1:
        raise KoaError(f"{name}: {frames} frames (a single-frame radiograph expected)")
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if not photometric:  # required, yet absent in some files: one sample can only be gray
        if _int(ds.get("SamplesPerPixel"), 1) != 1:
            raise KoaError(f"{name}: no PhotometricInterpretation for "
                           f"{ds.get('SamplesPerPixel')} samples per pixel (the colour "
                           "model cannot be known)")
        photometric = "MONOCHROME2"
        ds.PhotometricInterpretation = photometric  # pydicom needs it to decode
    colour = photometric == "RGB" or photometric.startswith("YBR")
    if photometric not in _MONO and not colour:
        raise KoaError(f"{name}: photometric interpretation {photometric} is not supported "
                       "(MONOCHROME1, MONOCHROME2, RGB or YBR expected)")
    bits_stored = _int(ds.get("BitsStored"), int(ds.BitsAllocated))
    if not 8 <= bits_stored <= 16:
        raise KoaError(f"{name}: {bits_stored}-bit stored values (8 to 16 bits expected)")
    return rows, cols, photometric, colour, bits_stored


_NUMERIC = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def _check_finite(ds, name: str) -> None:
    """Refuse a NaN or infinite rescale or window value: it would turn every pixel into
    NaN or a constant, and the image into a silent all-black one."""
    for key in _NUMERIC:
        value = ds.get(key)
        if value in (None, ""):
            continue
        try:
            values = [float(v) for v in value] if not isinstance(value, (str, float, int)) \
                else [float(value)]
        except (TypeError, ValueError):
            raise KoaError(f"{name}: {key} {str(value)[:40]!r} is not a number") from None
        bad = next((v for v in values if not np.isfinite(v)), None)
        if bad is not None:
            raise KoaError(f"{name}: {key} is {bad} (a finite number expected); refused "
                           "rather than graded as a blank image")


def _read_forced(data: bytes):
    """A file without the preamble: read with ``force=True``; None unless it is an image."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" in ds and "Rows" in ds and "Columns" in ds:
            return ds
    except Exception:
        pass
    return None


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _transfer_syntax(ds):
    """The file's transfer syntax; for a file without one, the encoding it was read with."""
    from pydicom import uid as uids
    from pydicom.dataset import FileMetaDataset

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if ds.file_meta.get("TransferSyntaxUID"):
        return uids.UID(str(ds.file_meta.TransferSyntaxUID))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little is False:
        uid = uids.ExplicitVRBigEndian
    elif implicit is False:
        uid = uids.ExplicitVRLittleEndian
    else:
        uid = uids.ImplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = uid  # pydicom needs it to decode the pixel data
    return uid


def _check_decodable(ds, tsyntax, name: str, samples: int) -> None:
    """One clear line for pixel data pydicom cannot decode here, before trying."""
    if not tsyntax.is_compressed:
        need = samples * ((int(ds.BitsAllocated) + 7) // 8)
        have = len(ds.PixelData)
        if have < need:
            raise KoaError(f"{name}: pixel data is truncated ({have:,} of {need:,} bytes)")
        return
    from pydicom.pixels import get_decoder

    what = f"pixel data is {tsyntax.name} ({tsyntax})"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise KoaError(f"{name}: {what}, which pydicom cannot decode") from None
    if decoder.is_available:
        return
    plugin = _PLUGINS.get(str(tsyntax))
    if plugin is None:  # a syntax newer than this table: pydicom's own list of plugins
        plugin = "; ".join(decoder.missing_dependencies) or "a pydicom decoder plugin"
        raise KoaError(f"{name}: {what}, which needs a decoder plugin: {plugin}")
    raise KoaError(f"{name}: {what}, which needs a decoder plugin: pip install {plugin}")


def _grayscale_pipeline(ds, meta: dict, name: str):
    """Steps 4-5 as a function of a strip of stored values (the Modality LUT, then the VOI
    transform), with the VOI transform's output range (None, None without one)."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    voi_seq = ds.get("VOILUTSequence")
    has_lut = bool(voi_seq) and all(k in voi_seq[0] for k in ("LUTDescriptor", "LUTData"))
    has_window = ds.get("WindowCenter") not in (None, "") and \
        ds.get("WindowWidth") not in (None, "")
    what = "VOI LUT" if has_lut else "window"
    lo = hi = None
    try:
        if has_lut:
            first_map, entries = int(voi_seq[0].LUTDescriptor[1]), \
                int(voi_seq[0].LUTDescriptor[0]) or 2 ** 16
            table = apply_voi(np.arange(first_map, first_map + entries), ds, 0)
            lo, hi = float(table.min()), float(table.max())
            meta["voi_lut"] = True
        elif has_window:
            lo, hi = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds, 0))
            meta["window"] = [_first(ds.WindowCenter), _first(ds.WindowWidth)]
    except Exception as exc:
        raise KoaError(f"{name}: cannot apply the {what} ({_first_line(exc)})") from None

    def values_of(strip: np.ndarray) -> np.ndarray:
        try:
            values = apply_modality_lut(strip, ds)
        except Exception as exc:
            raise KoaError(f"{name}: cannot apply the Modality LUT ({_first_line(exc)})") \
                from None
        try:
            if has_lut:
                return apply_voi(values, ds, 0)
            if has_window:
                return apply_windowing(values, ds, 0)
            return np.asarray(values, dtype=np.float64)
        except Exception as exc:
            raise KoaError(f"{name}: cannot apply the {what} ({_first_line(exc)})") from None
    return values_of, lo, hi


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Step 6: lo..hi -> 0..255, rounded; an empty range gives zeros."""
    span = hi - lo
    if not np.isfinite(span) or span == 0:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / span)
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _first(value) -> float:
    """The first value of a possibly multi-valued DS element, as a float."""
    try:
        value = value[0]  # MultiValue; a single DSfloat is not subscriptable
    except (TypeError, IndexError):
        pass
    return float(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(ds, bits_stored: int, tsyntax) -> dict:
    """The JSON-serialisable facts of the file that a prediction records."""
    meta: dict = {}
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            spacing = [float(v) for v in ds.get(key) or ()]
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2:
            meta["pixel_spacing_mm"] = spacing
            meta["pixel_spacing_source"] = key
            break
    meta["bits_stored"] = bits_stored
    modality = str(ds.get("Modality") or "").strip()
    if modality:
        meta["modality"] = modality
    meta["transfer_syntax"] = tsyntax.name
    return meta
