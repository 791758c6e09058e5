"""Tests for koa_core.data.preprocess: central crop by pixel density, resize, CLAHE, and the
two-view Preprocessor (plus a property test over encodings and shapes)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koa_core.config import Config, load_config
from koa_core.data.imaging import decode_gray
from koa_core.data.preprocess import (
    PREPROCESS_VERSION,
    Preprocessor,
    apply_clahe,
    central_crop,
    resize_square,
)
from koa_core.errors import KoaError


def _texture(h, w, lo=60, hi=250, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, (h, w)).astype(np.uint8)


# ------------------------------------------------------------------ central_crop
@pytest.mark.parametrize("side", [1, 7, 64, 224, 301])
def test_central_crop_identity_on_square(side):
    img = _texture(side, side, seed=side)
    out = central_crop(img)
    np.testing.assert_array_equal(out, img)


def test_central_crop_identity_on_phantom_knee():
    from koa_core.data.phantom import render_knee

    img = render_knee(2, np.random.default_rng(0), 224)
    np.testing.assert_array_equal(central_crop(img), img)


def _blob_image(h, w, cy, cx, r=12, base=40, blob=250):
    img = np.full((h, w), base, np.uint8)
    cv2.circle(img, (cx, cy), r, blob, -1)
    return img


@pytest.mark.parametrize("h, w, cy, cx", [
    (240, 120, 200, 60),  # tall, joint low
    (240, 120, 40, 60),  # tall, joint high
    (240, 120, 228, 60),  # tall, joint cut by the bottom edge: crop clamped to the image
    (120, 240, 60, 200),  # wide, joint right
    (120, 240, 60, 40),  # wide, joint left
    (120, 240, 90, 5),  # wide, joint at the very left: clamped
])
def test_central_crop_follows_bright_region(h, w, cy, cx):
    # dim soft tissue (above the 2% "empty" threshold, so nothing is trimmed) and one
    # bright off-centre joint that dominates the intensity mass
    img = _blob_image(h, w, cy, cx, r=25, base=8, blob=250)
    out = central_crop(img)
    side = min(h, w)
    assert out.shape == (side, side)
    axis_img = img if h > w else img.T
    axis_out = out if h > w else out.T
    starts = [t for t in range(max(h, w) - side + 1)
              if np.array_equal(axis_img[t:t + side], axis_out)]
    assert starts, "the crop is not a window of the image along its long axis"
    # the window holds the whole bright region ...
    assert (out == 250).sum() == (img == 250).sum()
    # ... and is not simply the geometric centre window
    assert (max(h, w) - side) // 2 not in starts


def test_central_crop_uses_centroid_formula():
    # intensity-weighted centroid along the long axis, clamped
    img = _blob_image(400, 100, 150, 50, r=10, base=30)
    weights = img.astype(float).sum(axis=1)
    centre = (weights @ np.arange(400)) / weights.sum()
    top = int(np.clip(round(centre - 50), 0, 300))
    np.testing.assert_array_equal(central_crop(img), img[top:top + 100])


@pytest.mark.parametrize("pad", [(20, 20, 20, 20), (30, 0, 5, 0), (0, 17, 0, 3), (1, 1, 1, 1)])
def test_black_padding_is_trimmed(pad):
    top, bottom, left, right = pad
    inner = _texture(90, 90, seed=1)
    img = cv2.copyMakeBorder(inner, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    np.testing.assert_array_equal(central_crop(img), inner)


def test_dark_but_not_empty_border_is_kept():
    # rows at 5% of the peak are not "empty" (threshold: 2% of the maximum)
    inner = np.full((80, 80), 200, np.uint8)
    img = cv2.copyMakeBorder(inner, 10, 10, 10, 10, cv2.BORDER_CONSTANT, value=10)
    assert central_crop(img).shape == (100, 100)


@pytest.mark.parametrize("shape", [(50, 50), (40, 90), (90, 40), (1, 1)])
def test_central_crop_black_image_is_safe(shape):
    out = central_crop(np.zeros(shape, np.uint8))
    assert out.shape == (min(shape),) * 2
    assert (out == 0).all()


def test_central_crop_does_not_modify_input():
    img = _blob_image(200, 80, 150, 40)
    copy = img.copy()
    central_crop(img)
    np.testing.assert_array_equal(img, copy)


# ------------------------------------------------------------------ resize / CLAHE
@pytest.mark.parametrize("shape, size", [
    ((50, 50), 224), ((500, 500), 224), ((224, 224), 224), ((300, 300), 64), ((1, 1), 32),
    ((64, 64), 64),
])
def test_resize_square_shapes(shape, size):
    img = _texture(*shape)
    out = resize_square(img, size)
    assert out.shape == (size, size)
    assert out.dtype == np.uint8
    if shape == (size, size):
        np.testing.assert_array_equal(out, img)


def test_resize_square_constant_stays_constant():
    for shape in [(30, 30), (400, 400)]:
        out = resize_square(np.full(shape, 77, np.uint8), 224)
        assert (out == 77).all()


def test_resize_square_uses_area_when_shrinking():
    img = _texture(448, 448, lo=0, hi=256)
    want = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_square(img, 224), want)


@pytest.mark.parametrize("clip, tiles", [(2.0, 8), (1.0, 8), (3.0, 4)])
def test_apply_clahe_is_opencv_clahe(clip, tiles):
    img = _texture(224, 224, lo=80, hi=140, seed=3)
    want = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(img)
    np.testing.assert_array_equal(apply_clahe(img, clip, tiles), want)


def test_apply_clahe_defaults_are_paper():
    img = _texture(128, 128, lo=100, hi=130, seed=4)
    want = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img)
    np.testing.assert_array_equal(apply_clahe(img), want)


def test_apply_clahe_increases_contrast():
    # smooth low-contrast gradient plus a faint disc: a washed-out radiograph
    y, x = np.mgrid[0:224, 0:224]
    img = (110 + 15 * np.sin(x / 20.0) * np.cos(y / 25.0)).astype(np.uint8)
    cv2.circle(img, (112, 112), 40, 128, -1)
    out = apply_clahe(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out.std() > 1.3 * img.std()
    assert int(out.max()) - int(out.min()) > int(img.max()) - int(img.min())


# ------------------------------------------------------------------ Preprocessor
@pytest.mark.parametrize("shape", [(224, 224), (64, 64), (512, 384), (300, 1000)])
@pytest.mark.parametrize("size", [224, 64])
def test_preprocessor_two_views(shape, size):
    img = _blob_image(*shape, cy=shape[0] // 2, cx=shape[1] // 3)
    pre = Preprocessor(size=size)
    raw, clahe = pre(img)
    for v in (raw, clahe):
        assert v.shape == (size, size)
        assert v.dtype == np.uint8
    # both views from the same decoded image: raw is crop+resize, CLAHE is CLAHE(raw)
    np.testing.assert_array_equal(raw, resize_square(central_crop(img), size))
    np.testing.assert_array_equal(clahe, apply_clahe(raw, 2.0, 8))


def test_preprocessor_without_crop_resizes_whole_image():
    img = _blob_image(100, 300, 50, 280)
    raw, _ = Preprocessor(size=64, crop=False)(img)
    np.testing.assert_array_equal(raw, resize_square(img, 64))
    raw_c, _ = Preprocessor(size=64, crop=True)(img)
    assert not np.array_equal(raw, raw_c)


def test_preprocessor_load_reads_file(tmp_path):
    img = _blob_image(120, 80, 90, 40)
    p = tmp_path / "k.png"
    cv2.imwrite(str(p), img)
    pre = Preprocessor(size=32)
    a = pre.load(p)
    b = pre(img)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_preprocessor_params():
    pre = Preprocessor(size=128, crop=False, clahe_clip=3.0, clahe_tiles=4)
    p = pre.params()
    assert p == {"size": 128, "crop": False, "clahe_clip": 3.0, "clahe_tiles": 4,
                 "input_clahe_clip": None, "input_clahe_tiles": 8,
                 "version": PREPROCESS_VERSION}
    # the input transform changes the pixels, so it is part of every cache key
    assert Preprocessor(size=128, crop=False, clahe_clip=3.0, clahe_tiles=4,
                        input_clahe_clip=5.0).params() != p
    assert isinstance(PREPROCESS_VERSION, int) and PREPROCESS_VERSION >= 1
    assert Preprocessor().params() != p
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.size = 5  # frozen: a preprocessor cannot drift after its key was computed


def test_preprocessor_from_config():
    assert Preprocessor.from_config(Config()) == Preprocessor(224, True, 2.0, 8)
    cfg = load_config(None, ["data.image_size=96", "preprocess.clahe_clip=1.0",
                             "preprocess.crop=false", "preprocess.clahe_tiles=4"])
    assert Preprocessor.from_config(cfg) == Preprocessor(96, False, 1.0, 4)
    cfg = load_config(None, ["preprocess.input_clahe_clip=5.0", "preprocess.input_clahe_tiles=4"])
    assert Preprocessor.from_config(cfg) == Preprocessor(224, True, 2.0, 8, 5.0, 4)


def test_the_input_transform_is_one_clahe_of_the_decoded_image_before_the_paper_steps():
    """input_clahe_clip reproduces an upstream-enhanced copy: its views of an original are
    exactly a plain preprocessor's views of cv2.createCLAHE(clip, 8x8).apply(original),
    also for an image that is cropped and resized (the transform comes first)."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (90, 140), dtype=np.uint8), (7, 7), 0)
    twin = cv2.createCLAHE(clipLimit=5.0, tileGridSize=(8, 8)).apply(img)
    got = Preprocessor(size=64, input_clahe_clip=5.0)(img)
    want = Preprocessor(size=64)(twin)
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(Preprocessor(size=64)(img)[0], want[0])
    assert Preprocessor(input_clahe_clip=5.0).describe_input() == "CLAHE clip 5, 8x8 tiles"
    assert Preprocessor().describe_input() == "none"


def test_from_sidecar_reads_the_input_transform_and_refuses_a_bare_sidecar():
    side = {"preprocess": {"size": 96, "crop": True, "clahe_clip": 2.0, "clahe_tiles": 8,
                           "input_clahe_clip": 5.0, "input_clahe_tiles": 4}}
    assert Preprocessor.from_sidecar(side) == Preprocessor(96, True, 2.0, 8, 5.0, 4)
    del side["preprocess"]["input_clahe_clip"]  # a checkpoint from before the field
    assert Preprocessor.from_sidecar(side).input_clahe_clip is None
    for bad in ({}, {"preprocess": {"size": 96}}, {"preprocess": "x"}):
        with pytest.raises(KoaError, match="^checkpoint sidecar lacks its preprocessing"):
            Preprocessor.from_sidecar(bad)


# ------------------------------------------------------------------ property test
@st.composite
def encoded_images(draw):
    h = draw(st.integers(1, 600))
    w = draw(st.integers(1, 600))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    depth = draw(st.sampled_from([np.uint8, np.uint16]))
    kind = draw(st.sampled_from(["noise", "constant", "zeros", "ramp", "padded"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    top = 255 if depth == np.uint8 else 65535
    shape = (h, w) if channels is None else (h, w, channels)
    if kind == "noise":
        img = rng.integers(0, top + 1, shape)
    elif kind == "constant":
        img = np.full(shape, int(rng.integers(0, top + 1)))
    elif kind == "zeros":
        img = np.zeros(shape)
    elif kind == "ramp":
        img = np.broadcast_to(np.linspace(0, top, w)[None, :, None] if channels else
                              np.linspace(0, top, w)[None, :], shape)
    else:  # bright content surrounded by black padding
        img = np.zeros(shape)
        img[h // 4: max(h // 4 + 1, 3 * h // 4), w // 5: max(w // 5 + 1, 4 * w // 5)] = top
    img = np.ascontiguousarray(img).astype(depth)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes(), (h, w)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(encoded_images())
def test_any_png_gives_two_224_views(case):
    data, (h, w) = case
    gray = decode_gray(data, "prop.png")
    assert gray.shape == (h, w) and gray.dtype == np.uint8
    raw, clahe = Preprocessor(size=224)(gray)
    assert raw.shape == clahe.shape == (224, 224)
    assert raw.dtype == clahe.dtype == np.uint8
