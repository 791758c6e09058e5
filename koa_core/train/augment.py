"""Class-specific online augmentation with albumentations (paper §2.3a).

The paper augments each grade differently:

* KL1 (doubtful, the most confusable grade): strong - affine shift/scale/rotate (±10°),
  random brightness/contrast (and the flip below);
* KL3-4 (moderate, severe): GridDistortion and RandomGamma, imitating deformed joint
  space and bone surfaces;
* KL0 and KL2 (the stable grades): basic - a random crop after reflect padding
  (the paper's "Resize, RandomCrop"; normalisation happens in the model) and a
  horizontal flip. The basic steps close EVERY grade's pipeline (see
  :func:`build_pipelines` for why).

Both views of a sample go through one ``A.Compose`` call with the CLAHE view as an
additional target, so they get the same geometric (and photometric) parameters. Every
pipeline is seeded; the datasets pass a per-sample seed (from the epoch and the sample's
index) so that runs, resumed runs included, see the same draws with any number of workers.
Argument names are those of albumentations 2.x (old names are ignored with a mere
warning there; the test suite turns albumentations warnings into errors). albumentations
is imported when a pipeline is first built, so a GPU training process that augments on the
device (:mod:`koa_core.train.gpu_augment`) needs no albumentations.
"""

from __future__ import annotations

import os

import cv2

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np

__all__ = ["ClassAugment", "build_pipelines"]

_PAD = 8  # pixels of reflect padding before the basic random crop


def _basic(size: int) -> list:
    import albumentations as A

    return [
        A.PadIfNeeded(min_height=size + 2 * _PAD, min_width=size + 2 * _PAD,
                      border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(height=size, width=size),
        A.HorizontalFlip(p=0.5),  # ours: a mirrored knee is a plausible knee of the other side
    ]


def build_pipelines(size: int, class_specific: bool = True) -> dict[int, list]:
    """Transform lists per grade (0..4): the grade's extras, then the basic pipeline.

    Every grade ends with the same basic random crop and flip. Were KL0/KL2 alone cropped
    (a literal reading of §2.3a), an uncropped, undistorted image would itself announce
    KL1/KL3/KL4: a shortcut that training learns and validation punishes. With
    ``class_specific=False`` every grade gets the basic pipeline only.
    """
    if not class_specific:
        return {g: _basic(size) for g in range(5)}
    import albumentations as A

    def strong():
        return [
            A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-10, 10),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ]

    def severe():
        return [
            A.GridDistortion(num_steps=5, distort_limit=(-0.2, 0.2),
                             border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.RandomGamma(gamma_limit=(80, 120), p=0.5),
        ]

    # fresh transform objects per grade: each Compose seeds its own transforms
    extras = {0: [], 1: strong(), 2: [], 3: severe(), 4: severe()}
    return {g: extras[g] + _basic(size) for g in range(5)}


class ClassAugment:
    """Callable ``(raw, clahe, grade) -> (raw, clahe)`` applying the grade's pipeline."""

    def __init__(self, size: int = 224, class_specific: bool = True, seed: int = 0):
        self.size = size
        self.class_specific = class_specific
        self.seed = seed
        self._built: dict | None = None

    @property
    def _pipes(self) -> dict:
        if self._built is None:  # built on first use (imports albumentations)
            import albumentations as A

            self._built = {
                g: A.Compose(t, additional_targets={"clahe": "image"}, seed=self.seed + g)
                for g, t in build_pipelines(self.size, self.class_specific).items()
            }
        return self._built

    def reseed(self, seed: int) -> None:
        """Restart every grade's random stream from ``seed`` (per epoch / per worker)."""
        for g in self._pipes:
            self._seed_grade(g, seed)

    def _seed_grade(self, grade: int, seed: int) -> None:
        self._pipes[grade].set_random_seed(int(seed) * 7 + grade)

    def __call__(self, raw: np.ndarray, clahe: np.ndarray, grade: int, seed: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample; ``seed`` first restarts this grade's stream (per-sample draws)."""
        grade = int(grade)
        if seed is not None:
            self._seed_grade(grade, seed)
        out = self._pipes[grade](image=np.asarray(raw), clahe=np.asarray(clahe))
        return out["image"], out["clahe"]
