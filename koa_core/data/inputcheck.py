"""Know your input: does an image look like the knees a checkpoint was trained on? (ours)

The paper grades 224x224 knee-joint crops of one public dataset (§2.1); the network answers
whatever it is given. This module is a cheap check (about a millisecond an image) of one
decoded image against a profile of the checkpoint's training images, kept in its sidecar
under ``input_profile`` (:func:`fit_profile`; ``koa input-profile`` and the choice of
profile are :mod:`koa_core.infer.profile`). The image is judged
as read, before the checkpoint's input transform, on the paper's square crop resized to
224 pixels. A flagged image is still graded: the flags go beside its grade.

Flags:

* ``enhanced``: it looks CLAHE-enhanced already. Six local-contrast and histogram measures
  (:data:`FEATURES`: mean and spread of the 8x8 tiles' statistics, the mean absolute
  Laplacian, how far one CLAHE pass at clip 5.0 moves it, histogram entropy, global spread)
  are combined by a logistic regression (scikit-learn) fitted on training crops against
  their CLAHE twins (clip 5.0, 8x8 tiles: how the enhanced copies in circulation were made);
  the threshold is the 99.5th percentile of the training crops' own scores, so about 0.5 %
  of knees like the training ones are flagged by construction.
* ``not-a-knee-crop``: the 32x32 thumbnail of the crop correlates with the training crops'
  mean thumbnail (knees both ways round; a second template of their CLAHE twins, whose
  large-scale shading CLAHE flattens) less than all but 0.5 % of them - a full radiograph,
  both knees, a photograph, another joint - or its aspect ratio lies outside the training
  range widened by a quarter. ``enhanced`` is judged only on images whose thumbnail
  correlates (either way round) at least half as well and whose aspect passes: that score
  was fitted on knees only, and a photograph scores high on it.
* ``inverted``: the thumbnail correlates negatively with both templates as strongly as
  nine in ten training knees correlate positively: bone dark on bright, e.g. a negative
  or a MONOCHROME1 image read without its photometry. About 1 % of the public dataset's
  own crops are stored so (the profile counts them: ``inverted_in_training``).
* ``small``: a side shorter than half the training images' shortest side (upsampled: the
  joint's fine detail is not there).
* ``low-contrast``: the crop's intensity spread below half the training crops' 0.1 %
  quantile: blank, saturated or washed out.

A profile is fitted on at least 20 training images with contrast: blank ones (an intensity
spread under one grey level) are left out and counted, and too few images, or statistics
that come out degenerate, are refused in one line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from koa_core.data.imaging import read_gray
from koa_core.data.preprocess import apply_clahe, central_crop, resize_square
from koa_core.errors import KoaError

__all__ = ["FEATURES", "FLAG_WORDS", "GRID", "SIZE", "THUMB", "TWIN_CLIP", "TWIN_TILES",
           "InputCheck", "describe", "fit_profile", "image_features", "profile_images",
           "summarize_flags"]

PROFILE_VERSION = 1
SIZE = 224  # the crop side the measures are taken at, whatever the model's input size
THUMB = 32  # the side of the thumbnail compared with the knee templates
GRID = 8  # the tile statistics: GRID x GRID tiles of the crop
TWIN_CLIP, TWIN_TILES = 5.0, 8  # the CLAHE twin: how the enhanced copies were made
FEATURES = ("tile_std", "tile_mean_spread", "laplacian", "clahe5_change", "entropy", "std")
FLAG_WORDS = {
    "enhanced": "looks CLAHE-enhanced already",
    "not-a-knee-crop": "does not look like a knee-joint crop",
    "inverted": "looks inverted (bone dark)",
    "small": "smaller than the training crops",
    "low-contrast": "almost no contrast",
}
_QUANTILE = 0.995  # share of training crops each learned threshold lets through
MIN_IMAGES = 20  # training images a profile is fitted on, at least
MIN_SPREAD = 1.0  # grey levels: a crop whose intensities spread less is blank


def _crop224(img: np.ndarray) -> np.ndarray:
    return resize_square(central_crop(img), SIZE)


def image_features(img: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of one decoded 8-bit image (its 224-pixel crop), as logs."""
    return _features(_crop224(img))


def _features(x: np.ndarray) -> np.ndarray:
    """:func:`image_features` of an image already cropped by :func:`_crop224`."""
    t = x.reshape(GRID, SIZE // GRID, GRID, SIZE // GRID).astype(np.float32)
    hist = np.bincount(x.ravel(), minlength=256) / x.size
    nz = hist[hist > 0]
    raw = [t.std(axis=(1, 3)).mean(), t.mean(axis=(1, 3)).std(),
           np.abs(cv2.Laplacian(x, cv2.CV_32F)).mean(),
           np.abs(apply_clahe(x, TWIN_CLIP, TWIN_TILES).astype(np.float32) - x).mean(),
           -(nz * np.log2(nz)).sum(), x.std()]
    return np.log(np.maximum(np.array(raw, np.float64), 1e-3))


def _thumb(x: np.ndarray) -> np.ndarray:
    """The z-scored 32x32 thumbnail of a :func:`_crop224` crop."""
    t = cv2.resize(x, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    t = t.astype(np.float64)
    return (t - t.mean()) / (t.std() + 1e-6)


def _corr(thumb: np.ndarray, template: np.ndarray) -> float:
    return float((thumb * template).mean())


def _template(thumbs: np.ndarray) -> np.ndarray:
    t = (thumbs + thumbs[:, :, ::-1]).mean(0)  # left and right knees alike
    return (t - t.mean()) / t.std()


def _fit_template(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean knee thumbnail and each thumbnail's correlation with it. A second pass
    leaves out the inverted knees (about 1 % of the public dataset's crops are stored
    bone-dark), which would otherwise pull the mean towards flat grey."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a flat mean: judged below
        template = _template(thumbs)
        corrs = np.array([_corr(t, template) for t in thumbs])
        if (corrs > 0).any():
            template = _template(thumbs[corrs > 0])
            corrs = np.array([_corr(t, template) for t in thumbs])
    if not (corrs > 0).any() or not np.isfinite(template).all():
        raise KoaError("the training images' statistics are degenerate (no image resembles "
                       "their mean thumbnail): profile images that vary like knees")
    return template, corrs


def _fit_enhanced(crops: Sequence[np.ndarray], twin_crops: Sequence[np.ndarray]) -> dict:
    """The 'enhanced' score: a logistic regression of training crops against their twins."""
    from sklearn.linear_model import LogisticRegression

    feats = np.array([_features(x) for x in crops])
    twins = np.array([_features(x) for x in twin_crops])
    mean, scale = feats.mean(0), feats.std(0) + 1e-9
    X = (np.vstack([feats, twins]) - mean) / scale
    y = np.r_[np.zeros(len(feats)), np.ones(len(twins))]
    clf = LogisticRegression(C=10.0, max_iter=5000).fit(X, y)
    scores = clf.decision_function((feats - mean) / scale)
    return {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": clf.coef_[0].tolist(), "intercept": float(clf.intercept_[0]),
            "threshold": float(np.quantile(scores, _QUANTILE)),
            "twins": f"CLAHE clip {TWIN_CLIP:g}, {TWIN_TILES}x{TWIN_TILES} tiles"}


def _fit_knee(crops: Sequence[np.ndarray], twin_crops: Sequence[np.ndarray]) -> dict:
    """The knee templates (originals, CLAHE twins) and their correlation thresholds."""
    fits = [_fit_template(np.array([_thumb(x) for x in group]))
            for group in (crops, twin_crops)]
    return {"templates": [np.round(t, 4).ravel().tolist() for t, _ in fits],
            "min_correlation": min(float(np.quantile(c[c > 0], 1 - _QUANTILE))
                                   for _, c in fits),
            "typical_correlation": [float(np.quantile(c[c > 0], 0.1)) for _, c in fits],
            "inverted_in_training": int((fits[0][1] < 0).sum())}


def _with_contrast(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images whose crop has an intensity spread (:data:`MIN_SPREAD`); at least
    :data:`MIN_IMAGES` of them, or one line saying how many there were."""
    kept = [im for im in images if _crop224(im).std() >= MIN_SPREAD]
    if len(kept) < MIN_IMAGES:
        raise KoaError(f"an input profile needs at least {MIN_IMAGES} training images with "
                       f"contrast (an intensity spread of at least {MIN_SPREAD:g} grey level); "
                       f"{len(kept)} of the {len(images)} drawn have it")
    return kept


def _check_finite(profile: dict) -> dict:
    """Refuse a profile whose statistics are degenerate (NaN or infinite anywhere)."""
    def numbers(v):
        if isinstance(v, dict):
            return [x for item in v.values() for x in numbers(item)]
        if isinstance(v, (list, tuple)):
            return [x for item in v for x in numbers(item)]
        return [v] if isinstance(v, float) else []

    if not np.isfinite(numbers(profile)).all():
        raise KoaError("the training images' statistics are degenerate (a NaN or infinite "
                       "value in the input profile): profile images that vary like knees")
    return profile


def fit_profile(images: Sequence[np.ndarray], what: str) -> dict:
    """The ``input_profile`` of a set of decoded training images (``what`` names them).
    Blank images (no intensity spread) are left out and counted; too few images with
    contrast, or statistics that are degenerate, are one line."""
    if len(images) < MIN_IMAGES:
        raise KoaError(f"an input profile needs at least {MIN_IMAGES} training images "
                       f"({len(images)} given)")
    kept = _with_contrast(images)
    shapes = np.array([im.shape for im in kept], np.float64)
    aspects = shapes[:, 1] / shapes[:, 0]
    crops = [_crop224(im) for im in kept]  # each image and its twin cropped once
    twin_crops = [_crop224(apply_clahe(im, TWIN_CLIP, TWIN_TILES)) for im in kept]
    return _check_finite({
        "version": PROFILE_VERSION, "images": len(kept), "what": what,
        "blank_left_out": len(images) - len(kept),
        "enhanced": _fit_enhanced(crops, twin_crops), "knee": _fit_knee(crops, twin_crops),
        "min_side": int(shapes.min()), "aspect": [float(aspects.min()), float(aspects.max())],
        "min_std": float(np.quantile([x.std() for x in crops], 0.001))})


@dataclass
class InputCheck:
    """A fitted profile, ready to judge images (:meth:`flags`)."""

    profile: dict
    source: str  # where the profile came from, in words

    def __post_init__(self):
        try:
            e, k = self.profile["enhanced"], self.profile["knee"]
            self._mean, self._scale = np.array(e["mean"]), np.array(e["scale"])
            self._coef, self._b = np.array(e["coef"]), float(e["intercept"])
            self._t = float(e["threshold"])
            self._templates = [np.array(t, np.float64).reshape(THUMB, THUMB)
                               for t in k["templates"]]
            self._min_corr = float(k["min_correlation"])
            self._typical = [float(t) for t in k["typical_correlation"]]
            self._min_side = int(self.profile["min_side"])
            self._aspect = [float(a) for a in self.profile["aspect"]]
            self._min_std = float(self.profile["min_std"])
        except (KeyError, TypeError, ValueError):
            raise KoaError(f"input profile of {self.source}: unreadable (refit it with koa "
                           "input-profile)") from None

    def enhanced_score(self, img: np.ndarray) -> float:
        """The logistic score of 'CLAHE-enhanced already' (flagged above the threshold)."""
        return self._score(_crop224(img))

    def _score(self, x: np.ndarray) -> float:
        z = (_features(x) - self._mean) / self._scale
        return float(z @ self._coef + self._b)

    def flags(self, img: np.ndarray) -> list[str]:
        """The :data:`FLAG_WORDS` keys that apply to one decoded 8-bit image."""
        out = []
        h, w = img.shape
        lo, hi = self._aspect
        x = _crop224(img)  # cropped once for every measure below
        thumb = _thumb(x)
        corrs = [_corr(thumb, t) for t in self._templates]  # as an original or enhanced
        corr = max(corrs)
        square_enough = lo / 1.25 <= w / h <= hi * 1.25
        if any(-c >= t for c, t in zip(corrs, self._typical)):  # its negative: a typical knee
            out.append("inverted")
        elif corr < self._min_corr or not square_enough:
            out.append("not-a-knee-crop")
        knee_like = square_enough and max(abs(c) for c in corrs) >= self._min_corr / 2
        if knee_like and self._score(x) > self._t:
            out.append("enhanced")  # the score was fitted on knees: judged on knee-like only
        if min(h, w) < self._min_side / 2:
            out.append("small")
        if x.std() < self._min_std / 2:
            out.append("low-contrast")
        return out


def describe(flags: Sequence[str]) -> str:
    """Flags in words, for report pictures and messages ('' when none)."""
    return "; ".join(FLAG_WORDS[f] for f in flags)


def summarize_flags(flag_lists: Sequence[Sequence[str]]) -> str:
    """'3 flagged by the input check (enhanced 2, not-a-knee-crop 1)' or ''."""
    flagged = sum(1 for f in flag_lists if f)
    if not flagged:
        return ""
    counts = Counter(f for fl in flag_lists for f in fl)
    kinds = ", ".join(f"{k} {counts[k]}" for k in FLAG_WORDS if counts[k])
    return f"{flagged} flagged by the input check ({kinds})"


def profile_images(paths: Sequence[str | Path], n: int = 1000, seed: int = 0
                   ) -> list[np.ndarray]:
    """Up to ``n`` of ``paths`` drawn with ``seed``, decoded (the profile's sample)."""
    pick = np.random.default_rng(seed).choice(len(paths), min(n, len(paths)), replace=False)
    return [read_gray(paths[i]) for i in sorted(pick)]
