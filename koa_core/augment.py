"""Class-specific online augmentation with albumentations (paper §2.3a).

The paper augments each grade differently:

* KL1 (doubtful, the most confusable grade): strong - affine shift/scale/rotate (±10°),
  horizontal flip, random brightness/contrast;
* KL3-4 (moderate, severe): GridDistortion and RandomGamma, imitating deformed joint
  space and bone surfaces;
* KL0 and KL2 (the stable grades): basic - a random crop after reflect padding
  (the paper's "Resize, RandomCrop"; normalisation happens in the model).

Both views of a sample go through one ``A.Compose`` call with the CLAHE view as an
additional target, so they get the same geometric (and photometric) parameters. Every
pipeline is seeded; :meth:`ClassAugment.reseed` restarts the random streams (per epoch
and per DataLoader worker) so that runs, resumed runs included, see the same draws.
Argument names are those of albumentations 2.x (old names are ignored with a mere
warning there; the test suite turns albumentations warnings into errors).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np

__all__ = ["ClassAugment", "build_pipelines"]

_PAD = 8  # pixels of reflect padding before the basic random crop


def _basic(size: int) -> list:
    return [
        A.PadIfNeeded(min_height=size + 2 * _PAD, min_width=size + 2 * _PAD,
                      border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(height=size, width=size),
    ]


def build_pipelines(size: int, class_specific: bool = True) -> dict[int, list]:
    """Transform lists per grade (0..4); with ``class_specific=False`` all get the basic one."""
    basic = _basic(size)
    if not class_specific:
        return {g: list(basic) for g in range(5)}
    strong = [
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-10, 10),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.8),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]
    severe = [
        A.GridDistortion(num_steps=5, distort_limit=(-0.2, 0.2),
                         border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.RandomGamma(gamma_limit=(80, 120), p=0.5),
    ]
    return {0: basic, 1: strong, 2: list(basic), 3: severe, 4: list(severe)}


class ClassAugment:
    """Callable ``(raw, clahe, grade) -> (raw, clahe)`` applying the grade's pipeline."""

    def __init__(self, size: int = 224, class_specific: bool = True, seed: int = 0):
        self.size = size
        self.class_specific = class_specific
        self.seed = seed
        self._pipes = {
            g: A.Compose(t, additional_targets={"clahe": "image"}, seed=seed + g)
            for g, t in build_pipelines(size, class_specific).items()
        }

    def reseed(self, seed: int) -> None:
        """Restart every grade's random stream from ``seed`` (per epoch / per worker)."""
        for g, pipe in self._pipes.items():
            pipe.set_random_seed(int(seed) * 7 + g)

    def __call__(self, raw: np.ndarray, clahe: np.ndarray, grade: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        out = self._pipes[int(grade)](image=np.asarray(raw), clahe=np.asarray(clahe))
        return out["image"], out["clahe"]
