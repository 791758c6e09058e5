"""Batched, device-resident class-specific augmentation (paper §2.3a).

The same augmentation distribution as :class:`koa_core.train.augment.ClassAugment` (albumentations
2.0.8, CPU, one sample at a time), applied to a whole ``(B, 2, S, S)`` uint8 batch on the
tensor's own device, so that training can keep every view on the GPU and skip the DataLoader.
Per grade (``class_specific=True``):

* all grades: reflect-101 pad by 8 px, random crop back to ``S`` (an integer offset in
  [-8, 8] per axis, uniform), horizontal flip (p 0.5);
* KL1 first: ``Affine`` (p 0.8): integer translation ``int(U(-0.06, 0.06) * S)`` per axis
  (truncated toward zero, as albumentations does), independent scales ``U(0.9, 1.1)`` in x and
  y (``keep_ratio=False``), rotation ``U(-10, 10)`` degrees about the pixel centre
  ``(S/2 - 0.5, S/2 - 0.5)``, reflect-101 border; then ``RandomBrightnessContrast`` (p 0.5):
  ``trunc(clip(x * (1 + U(-0.2, 0.2)) + 255 * U(-0.2, 0.2), 0, 255))``;
* KL3, KL4 first: ``GridDistortion`` (p 0.5, 5 steps, each of the 6 steps per axis scaled by
  ``1 + U(-0.2, 0.2)``, then albumentations' normalisation and its piecewise ``linspace`` map,
  reflect-101 border); then ``RandomGamma`` (p 0.5): ``trunc(255 * (x / 255) ** U(0.8, 1.2))``.

With ``class_specific=False`` every grade gets the basic steps only.

Draws. Every random number is ``uniform_draws(seed, epoch, index, k)[:, column]``: a
counter-based hash of (seed, epoch, dataset index, column), computed with integer tensor ops on
the index's device. A sample therefore gets the same augmentation whatever batch it lands in,
in whatever order, on CPU or CUDA, and a resumed run replays its epochs exactly.

One resampling. A sample's geometry (crop offset, flip, then the inverse affine map or the
grid-distortion map) is composed into one sampling map in source-pixel coordinates; reflect-101
is applied by folding the coordinates into ``[0, S-1]`` with period ``2(S-1)`` (exact for
bilinear interpolation, since reflect-101 mirrors about the edge pixel), once for the padded
crop and once for the warp border, and the batch is resampled once with bilinear
interpolation (:func:`kornia.geometry.transform.remap`, ``align_corners=True``), rounded half up
to uint8. Integer shifts and flips are thus exact. Photometric ops follow as one per-sample
256-entry lookup table built exactly as albumentations builds its tables (they commute with the
crop and flip, which only move pixels). Both channels share every parameter.

Residual difference from the albumentations path: OpenCV's ``warpAffine``/``remap`` quantise
source coordinates to 1/32 px and weights to 15-bit fixed point, and this module does not, so
warped pixels may differ by about one grey level (more on steep edges); draws carry 24 random
bits instead of Python's 53; the random streams differ, so only the distributions agree.
"""

from __future__ import annotations

import math

import torch
from kornia.geometry.transform import remap

__all__ = ["GpuClassAugment", "uniform_draws"]

_PAD = 8  # reflect padding before the basic crop (as koa_core.train.augment)
_STEPS = 5  # GridDistortion num_steps
_MASK32 = 0xFFFFFFFF

# columns of the per-sample draws
_C_CROP_Y, _C_CROP_X, _C_FLIP = 0, 1, 2
_C_AFF, _C_TX, _C_TY, _C_SX, _C_SY, _C_ROT = 3, 4, 5, 6, 7, 8
_C_RBC, _C_CONTRAST, _C_BRIGHT = 9, 10, 11
_C_GRID = 12
_C_STEPS_X = 13  # 6 columns
_C_STEPS_Y = _C_STEPS_X + _STEPS + 1  # 6 columns
_C_GAMMA_ON = _C_STEPS_Y + _STEPS + 1
_C_GAMMA = _C_GAMMA_ON + 1
_K = _C_GAMMA + 1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for 32-bit x held in int64, without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32) on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_draws(seed: int, epoch: int, index: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k)`` float32 uniforms in [0, 1): a pure function of (seed, epoch, index, column).

    A chain of 32-bit hash rounds over the column, the index and the seed and epoch (each
    split into 32-bit halves), computed in int64 on ``index``'s device; the top 24 bits of
    the hash give the float exactly. Identical on CPU and CUDA; independent of the batch.
    """
    idx = index.reshape(-1).to(torch.int64)
    col = torch.arange(k, device=idx.device, dtype=torch.int64)
    h = _mix32((col * 0x9E3779B9 + 0x632BE5AB) & _MASK32)[None, :]
    h = _mix32(h ^ (idx & _MASK32)[:, None])
    h = _mix32(h ^ ((idx >> 32) & _MASK32)[:, None])
    for word in (seed, epoch):
        word = int(word) & 0xFFFFFFFFFFFFFFFF
        h = _mix32(h ^ (word & _MASK32))
        h = _mix32(h ^ (word >> 32))
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _fold(x: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-101 coordinates into ``[0, size-1]`` (period ``2(size-1)``)."""
    if size == 1:
        return torch.zeros_like(x)
    period = 2 * (size - 1)
    x = torch.remainder(x, period)
    return torch.where(x > size - 1, period - x, x)


def _grid_map_1d(steps: torch.Tensor, size: int, num_steps: int = _STEPS) -> torch.Tensor:
    """Albumentations' GridDistortion map along one axis (normalised, as in 2.0.8).

    ``steps``: ``(B, num_steps + 1)`` raw steps ``1 + d``; returns ``(B, size)`` source
    coordinates (``normalize_grid_distortion_steps`` then ``generate_grid``).
    """
    steps = steps.to(torch.float64).clone()
    step = size // num_steps
    last = min(size, (num_steps + 1) * step) - num_steps * step
    steps[:, -1] *= last / step
    steps = steps * ((size / math.floor(size / num_steps)) / steps.sum(1, keepdim=True))
    cur = step * torch.cumsum(steps, 1)  # segment ends
    prev = torch.cat([torch.zeros_like(cur[:, :1]), cur[:, :-1]], 1)
    x = torch.arange(size, device=steps.device)
    seg = torch.div(x, step, rounding_mode="floor")
    covered = seg <= num_steps  # albumentations leaves uncovered pixels at 0
    seg = seg.clamp(max=num_steps)
    start = seg * step
    n = (torch.minimum(start + step, torch.tensor(size, device=x.device)) - start)
    frac = ((x - start) / (n - 1).clamp(min=1)).to(torch.float64)
    p, c = prev[:, seg], cur[:, seg]
    at_end = (x - start == n - 1) & (n > 1)  # linspace(prev, cur, n) ends exactly at cur
    out = torch.where(at_end, c, p + (c - p) * frac)
    return torch.where(covered, out, torch.zeros_like(out))


class GpuClassAugment:
    """Callable ``(views, grades, index, epoch) -> views``: §2.3a augmentation of a batch."""

    def __init__(self, size: int = 224, class_specific: bool = True, seed: int = 0):
        self.size = size
        self.class_specific = class_specific
        self.seed = seed

    def params(self, grades: torch.Tensor, index: torch.Tensor, epoch: int
               ) -> dict[str, torch.Tensor]:
        """Per-sample parameters, in albumentations' terms, on ``index``'s device.

        ``crop_y``/``crop_x``: offsets in [-8, 8] (albumentations' crop corner minus 8);
        ``flip``; ``affine`` (applied), ``tx``/``ty`` (integer px), ``scale_x``/``scale_y``,
        ``angle`` (degrees); ``rbc`` (applied), ``alpha`` (1 + contrast), ``beta``
        (255 * brightness); ``grid`` (applied), ``steps_x``/``steps_y`` (``(B, 6)``, raw
        ``1 + d``), ``map_x``/``map_y`` (``(B, S)`` normalised 1-D maps); ``gamma_on``,
        ``gamma``. Flags are already restricted to the grades that carry the op.
        """
        s = self.size
        u = uniform_draws(self.seed, epoch, index, _K).to(torch.float64)
        g = grades.reshape(-1).to(u.device)
        kl1 = (g == 1) & self.class_specific
        kl34 = ((g == 3) | (g == 4)) & self.class_specific

        def unif(col: int | slice, lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * u[:, col]

        steps_x = 1 + unif(slice(_C_STEPS_X, _C_STEPS_X + _STEPS + 1), -0.2, 0.2)
        steps_y = 1 + unif(slice(_C_STEPS_Y, _C_STEPS_Y + _STEPS + 1), -0.2, 0.2)
        return {
            "crop_y": torch.floor(u[:, _C_CROP_Y] * (2 * _PAD + 1)).long() - _PAD,
            "crop_x": torch.floor(u[:, _C_CROP_X] * (2 * _PAD + 1)).long() - _PAD,
            "flip": u[:, _C_FLIP] < 0.5,
            "affine": kl1 & (u[:, _C_AFF] < 0.8),
            "tx": torch.trunc(unif(_C_TX, -0.06, 0.06) * s).long(),
            "ty": torch.trunc(unif(_C_TY, -0.06, 0.06) * s).long(),
            "scale_x": unif(_C_SX, 0.9, 1.1),
            "scale_y": unif(_C_SY, 0.9, 1.1),
            "angle": unif(_C_ROT, -10.0, 10.0),
            "rbc": kl1 & (u[:, _C_RBC] < 0.5),
            "alpha": 1 + unif(_C_CONTRAST, -0.2, 0.2),
            "beta": 255 * unif(_C_BRIGHT, -0.2, 0.2),
            "grid": kl34 & (u[:, _C_GRID] < 0.5),
            "steps_x": steps_x,
            "steps_y": steps_y,
            "map_x": _grid_map_1d(steps_x, s),
            "map_y": _grid_map_1d(steps_y, s),
            "gamma_on": kl34 & (u[:, _C_GAMMA_ON] < 0.5),
            "gamma": unif(_C_GAMMA, 80.0, 120.0) / 100.0,
        }

    def sampling_maps(self, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source-pixel coordinates ``(map_x, map_y)``, each ``(B, S, S)`` float32, folded."""
        s = self.size
        f32 = torch.float32
        dev = p["crop_x"].device
        j = torch.arange(s, device=dev, dtype=torch.float64)
        # basic steps, inverted: flip, then the crop of the reflect-101 padded image
        jx = torch.where(p["flip"][:, None], s - 1 - j, j)
        qx = _fold(jx + p["crop_x"][:, None], s)  # (B, S) integers
        qy = _fold(j + p["crop_y"][:, None], s)
        # grid distortion: separable, a lookup in the 1-D maps (which may reach S: fold)
        grid = p["grid"][:, None]
        qx = torch.where(grid, _fold(torch.gather(p["map_x"], 1, qx.long()), s), qx)
        qy = torch.where(grid, _fold(torch.gather(p["map_y"], 1, qy.long()), s), qy)
        qx, qy = qx.to(f32), qy.to(f32)
        mx = qx[:, None, :].expand(-1, s, -1)
        my = qy[:, :, None].expand(-1, -1, s)
        # The affine warp is computed for every sample and kept where drawn: selecting the
        # drawn samples first (nonzero) would make the host wait for the GPU every batch.
        # cv2 maps src -> dst by C T R Sc C^-1 with R = [[cos, sin], [-sin, cos]] and
        # C the pixel centre: the source of q is C + Sc^-1 R^T (q - C - T)
        c = s / 2 - 0.5
        rad = torch.deg2rad(torch.remainder(p["angle"], 360))

        def col(t: torch.Tensor) -> torch.Tensor:
            return t.to(f32)[:, None, None]

        cos, sin = col(torch.cos(rad)), col(torch.sin(rad))
        dx = mx - (c + col(p["tx"]))
        dy = my - (c + col(p["ty"]))
        affine = p["affine"][:, None, None]
        mx = torch.where(affine, _fold(c + (cos * dx - sin * dy) / col(p["scale_x"]), s), mx)
        my = torch.where(affine, _fold(c + (sin * dx + cos * dy) / col(p["scale_y"]), s), my)
        return mx, my

    @staticmethod
    def luts(p: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 256)`` int64 per-sample lookup tables (identity where no photometric op)."""
        dev = p["alpha"].device
        i32 = torch.arange(256, device=dev, dtype=torch.float32)
        # RandomBrightnessContrast: albucore's multiply_add LUT (float32, clip, astype uint8)
        alpha = p["alpha"].to(torch.float32)[:, None]
        beta = p["beta"].to(torch.float32)[:, None]
        rbc = torch.trunc((i32 * alpha + beta).clamp(0, 255))
        lut = torch.where(p["rbc"][:, None], rbc, i32).long()
        # RandomGamma: (i/255) ** gamma * 255 in float64, astype uint8
        i64 = torch.arange(256, device=dev, dtype=torch.float64) * (1.0 / 255)
        gam = torch.trunc(i64[None, :] ** p["gamma"][:, None] * 255).long()
        return torch.where(p["gamma_on"][:, None], torch.gather(gam, 1, lut), lut)

    def __call__(self, views: torch.Tensor, grades: torch.Tensor, index: torch.Tensor,
                 epoch: int) -> torch.Tensor:
        """views: (B, 2, S, S) uint8 on any device; grades: (B,) int64 (0..4) same device;
        index: (B,) int64 dataset indices of the samples; returns (B, 2, S, S) uint8 on the
        same device. Both channels get the same geometric and photometric parameters."""
        b, ch, h, w = views.shape
        if h != self.size or w != self.size:
            raise ValueError(f"expected {self.size}x{self.size} views, got {h}x{w}")
        if b == 0:
            return views.clone()
        p = self.params(grades, index.to(views.device), epoch)
        map_x, map_y = self.sampling_maps(p)
        out = remap(views.float(), map_x, map_y, mode="bilinear", padding_mode="border",
                    align_corners=True)
        out = out.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)  # cv2 rounds half up
        # every sample through its table (the identity where no photometric op was drawn):
        # no selection, so no host sync
        lut = self.luts(p)
        return torch.gather(lut, 1, out.reshape(b, -1).long()).reshape(b, ch, h, w).to(
            torch.uint8)
