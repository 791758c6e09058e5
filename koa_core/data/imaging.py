"""Reading knee radiographs: the one front door for every file format (paper §2.1).

:func:`read_image` looks at a file once and hands it to the reader that knows it: DICOM
files (a ``.dcm``/``.dicom`` name, or the ``DICM`` preamble whatever the name, since files
from scanners often have no suffix) to :mod:`.dicom`, which applies the file's rescale and
window and returns what the file states (pixel spacing, photometric interpretation...)
beside the pixels; everything else to :mod:`.raster` (PNG, JPEG, WebP, TIFF), whose rule
brings any bit depth and channel count to 8-bit grayscale. pydicom is imported only when a
DICOM file is read. The readers' names are re-exported here, so callers need this module
only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from koa_core.data import dicom
from koa_core.data.raster import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    decode_gray,
    read_bytes,
    to_gray_uint8,
)
from koa_core.errors import KoaError

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "MAX_PIXELS", "decode_gray", "is_image_file",
           "read_bytes", "read_gray", "read_image", "to_gray_uint8"]


def is_image_file(path: str | Path) -> bool:
    """True when the name has one of the supported image or DICOM suffixes (any case).

    Only the name is looked at: a DICOM file without a suffix is not listed by folder scans,
    but :func:`read_image` reads it when named.
    """
    return Path(path).suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES


def read_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read an image or DICOM file as (8-bit grayscale array, meta).

    A file is DICOM when :func:`koa_core.data.dicom.is_dicom` says so (suffix or preamble); it is
    decoded by :func:`koa_core.data.dicom.decode_dicom`, whose ``meta`` records pixel spacing,
    photometric interpretation and the like. Any other file needs an image suffix, is decoded
    by :func:`decode_gray` and has ``meta == {}``. Errors are one-line KoaErrors. Only a
    regular file is opened, and only up to :data:`~koa_core.data.raster.MAX_FILE_BYTES`
    (:func:`read_bytes`): a FIFO or a device is refused without being read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + DICOM_SUFFIXES and not dicom.is_dicom(path):
        raise KoaError(f"{path}: unsupported file type (expected "
                       f"{', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)} or a DICOM file)")
    data = read_bytes(path)
    if suffix in DICOM_SUFFIXES or dicom.has_dicom_magic(data):
        return dicom.decode_dicom(data, str(path))
    return decode_gray(data, str(path)), {}


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image or DICOM file as an 8-bit grayscale array; errors are one-line KoaErrors."""
    return read_image(path)[0]
