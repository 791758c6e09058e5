"""Grad-CAM for both streams of the model (paper §3.1, Fig. 7).

pytorch-grad-cam expects a model that takes one tensor and returns logits. Our model takes
one ``(B, 2, H, W)`` tensor (raw and CLAHE views) already; :class:`LogitsOnly` drops the
other outputs. Each stream has its own identity "tap" on the shared trunk's output
(``model.tap_raw`` / ``model.tap_clahe``), so the heat map of each stream is computed
separately even though the trunk's weights are shared.

Hooks are always released (``try/finally``) and errors propagate: we do not use the
library's context manager, whose ``__exit__`` swallows ``IndexError``.

:func:`cam_picture` draws a map over the image it was computed for, inside the crop the
model looked at; ``koa predict --cam`` gives it a copy of the input no larger than
:data:`~koa_core.infer.knee_report.PICTURE_SIDE` (:func:`~koa_core.infer.knee_report.shrink`),
so a picture's float work is bounded whatever the input's size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

__all__ = ["LogitsOnly", "cam_picture", "grad_cam", "overlay", "save_cam_overlays",
           "stream_layers"]


class LogitsOnly(nn.Module):
    """Adapter: ``x -> model(x)["logits"]`` for libraries that expect plain logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["logits"]


def stream_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Grad-CAM target layer of each stream the model actually uses."""
    streams = model.cfg.streams
    out = {}
    if streams in ("dual", "raw"):
        out["raw"] = model.tap_raw
    if streams in ("dual", "clahe"):
        out["clahe"] = model.tap_clahe
    return out


def grad_cam(model: nn.Module, views: np.ndarray | torch.Tensor, target_class: int,
             stream: str) -> np.ndarray:
    """Grad-CAM map (H, W) in [0, 1] of one stream for one class, for (2, H, W) views."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layers = stream_layers(model)
    if stream not in layers:
        raise ValueError(f"stream {stream!r} is not used by this model ({', '.join(layers)})")
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(views)).float().div(255.0)[None].to(device)
    cam = GradCAM(model=LogitsOnly(model), target_layers=[layers[stream]])
    try:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target_class))])
    finally:
        cam.activations_and_grads.release()
    return maps[0]


def overlay(gray: np.ndarray, cam_map: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of a grayscale view with a jet-coloured heat map on top."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32) / 255.0
    return show_cam_on_image(rgb, cam_map.astype(np.float32), use_rgb=True,
                             image_weight=1 - weight)


def cam_picture(gray: np.ndarray, cam_map: np.ndarray, box: tuple[int, int, int, int],
                weight: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of a grayscale image with its heat map (same shape) drawn inside
    the crop box ``(top, left, height, width)`` only: heat where the model looked, the
    plain image elsewhere."""
    top, left, h, w = box
    pic = np.repeat(gray[..., None], 3, axis=2)
    pic[top:top + h, left:left + w] = overlay(gray[top:top + h, left:left + w],
                                              cam_map[top:top + h, left:left + w], weight)
    return pic


def save_cam_overlays(model: nn.Module, views: np.ndarray, out_dir: str | Path, stem: str,
                      target_class: int) -> list[Path]:
    """Write ``STEM_raw_cam.png`` / ``STEM_clahe_cam.png`` for the streams the model uses."""
    out_dir = Path(out_dir)
    written = []
    for stream in stream_layers(model):
        cam_map = grad_cam(model, views, target_class, stream)
        gray = views[0] if stream == "raw" else views[1]
        path = out_dir / f"{stem}_{stream}_cam.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(overlay(gray, cam_map), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        written.append(path)
    return written
