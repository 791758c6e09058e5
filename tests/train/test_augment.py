"""Tests for koa_core.train.augment: class-specific pipelines, paired views, seeding, and no
albumentations warnings (old argument names would only warn there)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from koa_core.train.augment import ClassAugment, build_pipelines

S = 64


def _img(seed=0, size=S) -> np.ndarray:
    """A knee-like test image: smooth structure plus texture (so any warp changes it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 100 + 60 * np.sin(x / 7.0 + seed) * np.cos(y / 9.0)
    return np.clip(base + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)


def _names(transforms) -> list[str]:
    return [type(t).__name__ for t in transforms]


@pytest.mark.parametrize("grade", range(5))
@pytest.mark.parametrize("class_specific", [True, False])
def test_every_grade_runs_and_keeps_shape(grade, class_specific):
    aug = ClassAugment(size=S, class_specific=class_specific, seed=0)
    raw, clahe = _img(1), _img(2)
    raw.setflags(write=False)  # cached views are read-only memory maps
    clahe.setflags(write=False)
    for _ in range(6):
        a, b = aug(raw, clahe, grade)
        assert a.shape == b.shape == (S, S)
        assert a.dtype == b.dtype == np.uint8
    assert np.array_equal(raw, _img(1)) and np.array_equal(clahe, _img(2))  # inputs untouched


@pytest.mark.parametrize("grade", range(5))
def test_grade_accepts_numpy_ints(grade):
    aug = ClassAugment(size=S, seed=0)
    a, _ = aug(_img(), _img(), np.int64(grade))
    assert a.shape == (S, S)


@pytest.mark.parametrize("grade", range(5))
@pytest.mark.parametrize("class_specific", [True, False])
def test_both_views_get_the_same_transform(grade, class_specific):
    aug = ClassAugment(size=S, class_specific=class_specific, seed=11)
    img = _img(3)
    for _ in range(8):
        a, b = aug(img, img.copy(), grade)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("grade", [0, 2])
def test_basic_pipeline_is_a_reflect_padded_crop(grade):
    # the basic pipeline is purely geometric, so even *different* raw and CLAHE images
    # must come out as the same window of their padded versions
    aug = ClassAugment(size=S, seed=5)
    raw, clahe = _img(4), _img(5)
    pad_r = cv2.copyMakeBorder(raw, 8, 8, 8, 8, cv2.BORDER_REFLECT_101)
    pad_c = cv2.copyMakeBorder(clahe, 8, 8, 8, 8, cv2.BORDER_REFLECT_101)
    offsets = set()
    flips = set()
    for _ in range(12):
        a, b = aug(raw, clahe, grade)
        flipped = not any(np.array_equal(pad_r[y:y + S, x:x + S], a)
                          for y in range(17) for x in range(17))
        if flipped:  # the basic pipeline ends with a horizontal flip (p = 0.5)
            a, b = a[:, ::-1], b[:, ::-1]
        found = [(y, x) for y in range(17) for x in range(17)
                 if np.array_equal(pad_r[y:y + S, x:x + S], a)]
        assert found, "output is not a (mirrored) window of the reflect-padded raw view"
        y, x = found[0]
        np.testing.assert_array_equal(pad_c[y:y + S, x:x + S], b)
        offsets.add((y, x))
        flips.add(flipped)
    assert len(offsets) > 1  # the crop position is random
    assert flips == {True, False}


def test_pipelines_per_grade_follow_the_paper():
    p = build_pipelines(S, class_specific=True)
    assert sorted(p) == [0, 1, 2, 3, 4]
    basic = ["PadIfNeeded", "RandomCrop", "HorizontalFlip"]
    assert _names(p[0]) == _names(p[2]) == basic
    assert _names(p[1]) == ["Affine", "RandomBrightnessContrast"] + basic
    assert _names(p[3]) == _names(p[4]) == ["GridDistortion", "RandomGamma"] + basic
    # no transform object is shared between grades (each Compose seeds its own)
    ids = [id(t) for g in p for t in p[g]]
    assert len(ids) == len(set(ids))
    affine = p[1][0]
    assert tuple(affine.rotate) == (-10, 10)  # §2.3a: ±10°


def test_class_specific_false_uses_basic_for_all():
    p = build_pipelines(S, class_specific=False)
    assert sorted(p) == [0, 1, 2, 3, 4]
    basic = ["PadIfNeeded", "RandomCrop", "HorizontalFlip"]
    for g in range(5):
        assert _names(p[g]) == basic
    aug = ClassAugment(size=S, class_specific=False, seed=0)
    for g in range(5):
        assert _names(aug._pipes[g].transforms) == basic


def test_kl1_is_actually_augmented():
    aug = ClassAugment(size=S, seed=0)
    img = _img(6)
    changed = sum(not np.array_equal(aug(img, img, 1)[0], img) for _ in range(10))
    assert changed >= 5


def _run(aug, seq, img_seed=7):
    img = _img(img_seed)
    return [aug(img, img, g)[0] for g in seq]


SEQ = [1, 3, 0, 1, 4, 2, 1, 3, 1, 1]


def test_same_seed_same_outputs():
    a, b = ClassAugment(size=S, seed=3), ClassAugment(size=S, seed=3)
    for x, y in zip(_run(a, SEQ), _run(b, SEQ)):
        np.testing.assert_array_equal(x, y)


def test_reseed_restarts_the_stream():
    aug = ClassAugment(size=S, seed=3)
    aug.reseed(9)
    first = _run(aug, SEQ)
    _run(aug, SEQ)  # advance the stream
    aug.reseed(9)
    again = _run(aug, SEQ)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    other = ClassAugment(size=S, seed=100)  # the same k restarts any instance identically
    other.reseed(9)
    for x, y in zip(first, _run(other, SEQ)):
        np.testing.assert_array_equal(x, y)
    aug.reseed(10)
    assert any(not np.array_equal(x, y) for x, y in zip(first, _run(aug, SEQ)))


def test_grade_streams_are_independent():
    # a grade's draws do not depend on how many other-grade samples came before
    a, b = ClassAugment(size=S, seed=2), ClassAugment(size=S, seed=2)
    only_kl1 = _run(a, [1, 1, 1, 1])
    mixed = _run(b, [3, 1, 0, 1, 4, 1, 2, 1])
    for x, y in zip(only_kl1, [mixed[i] for i in (1, 3, 5, 7)]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("grade", [1, 3])
def test_different_seeds_differ(grade):
    a, b = ClassAugment(size=S, seed=3), ClassAugment(size=S, seed=4)
    seq = [grade] * 6
    assert any(not np.array_equal(x, y) for x, y in zip(_run(a, seq), _run(b, seq)))


@pytest.mark.parametrize("class_specific", [True, False])
@pytest.mark.parametrize("size", [64, 224])
def test_no_albumentations_warnings(class_specific, size):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_pipelines(size, class_specific=class_specific)
        aug = ClassAugment(size=size, class_specific=class_specific, seed=0)
        img = _img(size=size)
        for g in range(5):
            aug(img, img, g)
        aug.reseed(1)
    assert [str(w.message) for w in caught] == []
