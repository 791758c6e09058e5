"""The forward pass: views in, class probabilities and fusion gates out (paper §2.4, §3.1).

:func:`predict_views` is the one place a network grades views: training's validation, the
campaign's records and the torch backend of :mod:`koa_core.infer.backends` all call it.
Views are ``(N, 2, S, S)`` uint8 (raw, CLAHE); the result is float32 whatever precision
ran the network.
"""

from __future__ import annotations

import numpy as np
import torch

from koa_core.config import TTA_CHOICES
from koa_core.errors import KoaError
from koa_core.runtime import autocast

__all__ = ["TTA_CHOICES", "check_tta", "predict_views", "to_model_layout"]



def to_model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in the memory layout the model runs fastest in (channels_last or as is)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def check_tta(tta: str | None) -> None:
    """Refuse a test-time augmentation that is not one of :data:`TTA_CHOICES`."""
    if tta not in (None, *TTA_CHOICES):
        raise KoaError(f"tta: {tta!r} is not one of {', '.join(TTA_CHOICES)}")


@torch.no_grad()
def predict_views(model: torch.nn.Module, views: np.ndarray | torch.Tensor, batch_size: int = 64,
                  device: torch.device | None = None, dtype: torch.dtype | None = None,
                  channels_last: bool = False, tta: str | None = None,
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (N, 5) and fusion gates (N, 2) or None for (N, 2, S, S) views.

    ``views`` may be a host array (a memory map is copied chunk by chunk) or a tensor
    already on the device; results stay on the device until one final copy.
    ``tta="flip"``: the mean of the probabilities (and gates) of each knee and its left-right
    mirror (both views mirrored; a left knee's mirror looks like a right knee).
    """
    check_tta(tta)
    device = device or next(model.parameters()).device
    model.eval()
    probs, gates = [], []
    for i in range(0, len(views), batch_size):
        chunk = views[i:i + batch_size]
        if not isinstance(chunk, torch.Tensor):
            chunk = torch.from_numpy(np.array(chunk))  # copy off the memmap
        x = to_model_layout(chunk.to(device, non_blocking=True), channels_last)
        with autocast(device, dtype):
            out = model(x)
        p = torch.softmax(out["logits"].float(), dim=1)
        g = out["gate"].float() if out["gate"] is not None else None
        if tta == "flip":
            with autocast(device, dtype):
                out = model(x.flip(-1))
            p = (p + torch.softmax(out["logits"].float(), dim=1)) / 2
            g = (g + out["gate"].float()) / 2 if g is not None else None
        probs.append(p)
        if g is not None:
            gates.append(g)
    if not probs:
        return np.zeros((0, 5), np.float32), None
    p = torch.cat(probs).cpu().numpy()
    return p, (torch.cat(gates).cpu().numpy() if gates else None)
