"""Grad-CAM of both streams (paper Fig. 7) through pytorch-grad-cam."""

import numpy as np
import pytest
import torch

from koa_core.config import ModelConfig
from koa_core.infer.explain import grad_cam, overlay, save_cam_overlays, stream_layers
from koa_core.model.network import build_model


def _views(size=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, size, size), dtype=np.uint8)


@pytest.mark.parametrize("streams,expected", [("dual", ["raw", "clahe"]), ("raw", ["raw"]),
                                              ("clahe", ["clahe"])])
def test_maps_per_stream(streams, expected):
    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained="none", streams=streams)).eval()
    assert list(stream_layers(model)) == expected
    for s in expected:
        m = grad_cam(model, _views(), target_class=2, stream=s)
        assert m.shape == (64, 64) and np.isfinite(m).all()
        assert m.min() >= 0 and m.max() <= 1
        # hooks released: nothing left on the taps or the model
        for layer in stream_layers(model).values():
            assert not layer._forward_hooks
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_errors_propagate_and_hooks_are_released():
    model = build_model(ModelConfig(pretrained="none")).eval()
    with pytest.raises(IndexError):  # the library's context manager would swallow this
        grad_cam(model, _views(), target_class=7, stream="raw")
    assert not model.tap_raw._forward_hooks
    with pytest.raises(ValueError, match="not used"):
        grad_cam(build_model(ModelConfig(pretrained="none", streams="raw")), _views(), 0,
                 "clahe")


def test_overlay_and_files(tmp_path):
    model = build_model(ModelConfig(pretrained="none")).eval()
    views = _views()
    rgb = overlay(views[0], grad_cam(model, views, 1, "raw"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    paths = save_cam_overlays(model, views, tmp_path, "knee", 1)
    assert [p.name for p in paths] == ["knee_raw_cam.png", "knee_clahe_cam.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def _structured(size=64, shift=0):
    """A bright disc on a gradient: something for the trunk to respond to."""
    yy, xx = np.mgrid[:size, :size]
    img = (xx * 2 + 20).astype(np.float32)
    img[(yy - size // 2) ** 2 + (xx - size // 3 - shift) ** 2 < (size // 6) ** 2] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def test_each_stream_map_responds_to_its_own_view():
    """Without cross-attention and the gate (mean fusion), the raw map depends on the raw
    view only and the CLAHE map on the CLAHE view only (with them, each map also carries
    gradient through the other stream); the two maps differ; neither is all zero."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained="none", cross_attention=False,
                                    fusion="mean")).eval()
    a, b = _structured(), _structured(shift=18)[:, ::-1].copy()
    views = np.stack([a, b])
    base = {s: grad_cam(model, views, 2, s) for s in ("raw", "clahe")}
    for m in base.values():
        assert m.max() == pytest.approx(1.0) and m.std() > 0.01  # not an all-zero map
    assert np.abs(base["raw"] - base["clahe"]).mean() > 0.01
    new_clahe = np.stack([a, _structured(shift=-15)])
    new_raw = np.stack([_structured(shift=-15), b])
    assert np.allclose(grad_cam(model, new_clahe, 2, "raw"), base["raw"], atol=1e-5)
    assert np.allclose(grad_cam(model, new_raw, 2, "clahe"), base["clahe"], atol=1e-5)
    assert np.abs(grad_cam(model, new_raw, 2, "raw") - base["raw"]).mean() > 0.01
    assert np.abs(grad_cam(model, new_clahe, 2, "clahe") - base["clahe"]).mean() > 0.01
