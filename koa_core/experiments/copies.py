"""The names of the copies of the images a record can have seen (``data.copy``).

* ``original`` - the images as published (whatever their lossless file format);
* ``clahe-CLIP-TxT (enhanced upstream)`` - every image one CLAHE pass at clip CLIP with a
  TxT tile grid away from the original, e.g. ``clahe-5.0-8x8 (enhanced upstream)``;
* ``phantom`` - the synthetic knee phantom (:mod:`koa_core.data.phantom`).

The check that names a record's copy from its pixels is :mod:`.datacopy`.
"""

from __future__ import annotations

import re

from koa_core.errors import KoaError

__all__ = ["COPY_HELP", "ORIGINAL", "PHANTOM", "UPSTREAM_CLAHE", "clahe_copy", "parse_copy"]

ORIGINAL = "original"
PHANTOM = "phantom"
UPSTREAM_CLAHE = (5.0, 8)  # the enhanced copy the first campaigns trained on: clip, tiles
_CLAHE = re.compile(r"^clahe-(\d+(?:\.\d+)?)-(\d+)x(\d+)(?: \(enhanced upstream\))?$")
COPY_HELP = ("which copy of the images: original (as published), clahe-CLIP-TxT (every "
             "image enhanced upstream by CLAHE, e.g. clahe-5.0-8x8) or phantom")


def clahe_copy(clip: float, tiles: int) -> str:
    """The name of the copy enhanced upstream by CLAHE at ``clip`` with a tiles x tiles grid."""
    return f"clahe-{float(clip)!r}-{int(tiles)}x{int(tiles)} (enhanced upstream)"


def parse_copy(text: str) -> str:
    """The canonical name of a data copy given in words (``original``, ``phantom``,
    ``clahe-5-8x8``, ``clahe-5.0-8x8 (enhanced upstream)``); anything else is refused."""
    t = " ".join(str(text).split()).lower()
    if t in (ORIGINAL, PHANTOM):
        return t
    m = _CLAHE.match(t)
    if m and m.group(2) == m.group(3) and float(m.group(1)) > 0 and int(m.group(2)) > 0:
        return clahe_copy(float(m.group(1)), int(m.group(2)))
    raise KoaError(f"data copy {text!r}: not a copy name ({COPY_HELP})")
