"""Mixup and CutMix on two-view batches (beyond the paper: a lever for training without
ImageNet weights; off by default, so the paper's recipe of §2.3 is unchanged).

mixup (Zhang et al. 2018) blends each knee with a partner from the same batch,
``lam * x + (1 - lam) * x[perm]``; CutMix (Yun et al. 2019) pastes a box of the partner
knee instead, and ``lam`` becomes the share of the image left unpasted. ``lam`` is drawn
from Beta(a, a). Both views of a knee (raw and CLAHE) get the same partner, ``lam`` and
box, so the two streams still look at one (mixed) knee. With both levers on, each batch
uses one of them, chosen with equal odds (as timm's ``Mixup``); ``mix_prob`` is the chance
that a batch is mixed at all.

The loss is the same mix of the losses against both grades,
``lam * L(y) + (1 - lam) * L(y[perm])`` (:func:`mixed_loss`), which also covers the
auxiliary heads and their label masks; torchvision's ``MixUp``/``CutMix`` mix one-hot
targets of a single head and cannot. Every draw is a function of
``(seed, epoch, step)``, so runs stay reproducible and resumable, and it is made on the
host, so a GPU step does not wait for the device. The history's ``train_accuracy`` counts
a mixed knee as correct when the model gives its own grade (not its partner's): under
mixing it runs below the accuracy on clean knees; validation figures are never mixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Mix", "Mixer", "mixed_loss"]


@dataclass
class Mix:
    """A mixed batch: ``x`` (float in [0, 1] for mixup, uint8 for CutMix), the partner of
    each sample (``perm``) and the weight ``lam`` of the sample's own grade."""

    x: Tensor
    perm: Tensor
    lam: float
    kind: str  # "mixup" | "cutmix"
    box: tuple[int, int, int, int] | None = None  # CutMix: (y0, y1, x0, x1), end-exclusive


class Mixer:
    """``Mixer(mixup, cutmix, prob, seed)(x, epoch, step)`` -> :class:`Mix` or None.

    ``x``: a batch of views ``(B, V, H, W)`` (uint8 or float in [0, 1]); ``mixup`` and
    ``cutmix`` are the Beta(a, a) parameters (0 turns a lever off)."""

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 seed: int = 0) -> None:
        self.mixup, self.cutmix, self.prob, self.seed = float(mixup), float(cutmix), \
            float(prob), int(seed)

    @classmethod
    def from_config(cls, augment) -> Mixer | None:
        """The mixer of an ``AugmentConfig``, or None when both levers are off."""
        if not (augment.mixup > 0 or augment.cutmix > 0) or augment.mix_prob <= 0:
            return None
        return cls(augment.mixup, augment.cutmix, augment.mix_prob, augment.seed)

    def __call__(self, x: Tensor, epoch: int, step: int) -> Mix | None:
        # 0x6D6978 ("mix") keeps this stream apart from the augmentation's own draws
        rng = np.random.default_rng([self.seed, int(epoch), int(step), 0x6D6978])
        b = x.shape[0]
        if b < 2 or rng.random() >= self.prob:
            return None
        kinds = [k for k, a in (("mixup", self.mixup), ("cutmix", self.cutmix)) if a > 0]
        kind = kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
        a = self.mixup if kind == "mixup" else self.cutmix
        lam = float(rng.beta(a, a))
        perm = torch.from_numpy(rng.permutation(b)).to(x.device, non_blocking=True)
        if kind == "mixup":
            xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            return Mix(lam * xf + (1.0 - lam) * xf[perm], perm, lam, kind)
        h, w = x.shape[-2:]
        # the box of Yun et al.: sides sqrt(1 - lam) of the image's, centred anywhere,
        # clipped to the image; lam is then the share actually left unpasted
        r = np.sqrt(1.0 - lam)
        ch, cw = int(h * r), int(w * r)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        out = x.clone()
        out[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1][perm]  # gathers the box only
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        return Mix(out, perm, lam, kind, (y0, y1, x0, x1))


def mixed_loss(loss_fn: Callable[[Mapping[str, Tensor | None], Tensor], dict[str, Tensor]],
               outputs: Mapping[str, Tensor | None], y: Tensor, mix: Mix | None
               ) -> dict[str, Tensor]:
    """``loss_fn(outputs, y)``, or for a mixed batch every part of it as
    ``lam * part(y) + (1 - lam) * part(y[perm])``."""
    parts = loss_fn(outputs, y)
    if mix is None:
        return parts
    other = loss_fn(outputs, y[mix.perm])
    return {k: mix.lam * v + (1.0 - mix.lam) * other[k] for k, v in parts.items()}
