"""Self-supervised pretraining of the shared trunk (beyond the paper; stands in for §2.4a's
ImageNet initialisation where those weights cannot be had).

``koa pretrain --data ROOT --out trunk.safetensors`` trains the ResNet-18 trunk the model
shares between its streams with SimCLR (lightly's projection head and NT-Xent loss) on
the **train and validation** knees only - never the test split - and writes it as a
torchvision ``resnet18`` state dict, so ``--set model.pretrained=trunk.safetensors`` starts
any configuration from it exactly as from ImageNet weights.

The positive pair of a knee is its two views, each augmented on the fly (batched on the
device with kornia): the raw view and the CLAHE view, so the trunk learns what the two
streams share, which is what the cross-attention and the gate then combine. Each
augmentation is a random resized crop (scale 0.5-1), a left-right flip, a rotation of up
to 15 degrees, brightness and contrast jitter and a light Gaussian blur. The labels are
never read. A sidecar ``.json`` beside the weights records the method, the settings, the
loss of every epoch and the provenance.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from koa_core.config import MIN_IMAGE_SIZE, check_values, finite_number, int_at_least, optional
from koa_core.data.cache import ViewCache
from koa_core.data.index import discover
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError
from koa_core.locking import FolderLock
from koa_core.model.checkpoint import read_sidecar, write_pair
from koa_core.model.network import FEATURES, IMAGENET_MEAN, IMAGENET_STD, resnet_trunk
from koa_core.runtime import (
    amp_dtype,
    autocast,
    provenance,
    require,
    resolve_device,
    seed_everything,
)

__all__ = ["PretrainConfig", "pretrain", "trunk_state_dict"]

_NAMES = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def _at_least(lo: int, why: str):
    """An integer rule whose refusal says why the bound is there."""
    return lambda v: int_at_least(lo)(v) and f"an integer at least {lo} ({why})"


# The pretraining settings' ranges, checked by the configuration's own machinery
# (:func:`koa_core.config.check_values`).
PRETRAIN_RULES = {
    "epochs": int_at_least(1),
    "batch_size": _at_least(2, "a contrastive batch needs two knees"),
    "lr": finite_number(0, lo_open=True),
    "weight_decay": finite_number(0),
    "temperature": finite_number(0, lo_open=True),
    "projection_dim": int_at_least(1),
    "image_size": _at_least(MIN_IMAGE_SIZE, f"ResNet-18 downsamples {MIN_IMAGE_SIZE}x"),
    "seed": int_at_least(0),
    "max_steps_per_epoch": optional(int_at_least(1)),
}


@dataclass
class PretrainConfig:
    """``koa pretrain``'s settings (beyond the paper: the paper starts from ImageNet)."""

    epochs: int = 20  # ours
    batch_size: int = 256  # ours
    lr: float = 1e-3  # ours
    weight_decay: float = 1e-4  # ours
    temperature: float = 0.1  # ours: NT-Xent (SimCLR) temperature
    projection_dim: int = 128  # ours
    image_size: int = 224  # the paper's crop size
    seed: int = 0  # ours
    max_steps_per_epoch: int | None = None  # ours: for rehearsals

    def check(self) -> None:
        """Every setting in its range (:data:`PRETRAIN_RULES`), one KoaError line."""
        check_values(PRETRAIN_RULES, self,
                     lambda k, v, p: f"pretrain {k}: expected {p}, got {v!r}")


class _SimCLR(nn.Module):
    """Trunk (the model's own, :func:`koa_core.model.network.resnet_trunk`) + pooled
    projection."""

    def __init__(self, projection_dim: int):
        super().__init__()
        heads = require("lightly.models.modules", "koa pretrain", extra="ssl")
        self.trunk = resnet_trunk()
        self.head = heads.SimCLRProjectionHead(FEATURES, FEATURES, projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x).mean(dim=(2, 3))
        return self.head(f)


def _augment(size: int):
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(0.5, 1.0)),
        K.RandomHorizontalFlip(),
        K.RandomRotation(15.0),
        K.ColorJitter(brightness=0.3, contrast=0.3, p=0.8),
        K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=0.3),
    )


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def trunk_state_dict(trunk: nn.Sequential) -> dict[str, torch.Tensor]:
    """The trunk's weights under torchvision ``resnet18`` names (conv1..., layer4...)."""
    out = {}
    for k, v in trunk.state_dict().items():
        index, _, rest = k.partition(".")
        out[f"{_NAMES[int(index)]}.{rest}"] = v.detach().cpu().contiguous()
    return out


def _views(root: str, size: int, progress: bool) -> tuple[np.ndarray, dict]:
    index = discover(root)
    records = index.split("train") + index.split("val")  # never the test split
    if len(records) < 2:
        raise KoaError(f"{root}: pretraining needs train/val images (found {len(records)})")
    views = ViewCache().get(records, Preprocessor(size=size), root=str(root), progress=progress)
    return views, {"train": len(index.split("train")), "val": len(index.split("val"))}


@dataclass
class _Pretraining:
    """What the epochs of one pretraining share."""

    model: nn.Module
    augment: nn.Module
    loss_fn: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    views: object  # (N, 2, S, S) uint8 knees
    gen: torch.Generator
    dev: torch.device
    dtype: torch.dtype | None
    batch: int
    steps: int


def pretrain(root: str | Path, out: str | Path, cfg: PretrainConfig | None = None,
             device: str | torch.device | None = None, progress: bool = False,
             command: str | None = None) -> dict:
    """Pretrain the trunk on ROOT's train+val knees; write ``out`` and its sidecar."""
    NTXentLoss = require("lightly.loss", "koa pretrain", extra="ssl").NTXentLoss
    cfg = cfg or PretrainConfig()
    cfg.check()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise KoaError(f"{out}: the trunk is written as .safetensors")
    if not out.parent.is_dir():
        raise KoaError(f"{out.parent}: no such folder")
    dev = torch.device(device) if device else resolve_device()
    seed_everything(cfg.seed)
    views, counts = _views(str(root), cfg.image_size, progress)
    run = _set_up(cfg, views, dev, NTXentLoss(temperature=cfg.temperature))
    history = []
    t_start = time.perf_counter()
    with FolderLock(out.parent, "pretraining a trunk"):
        for epoch in range(1, cfg.epochs + 1):
            row, mean, seconds = _epoch(run, epoch)
            history.append(row)
            if progress:
                print(f"pretrain epoch {epoch}/{cfg.epochs}: NT-Xent {mean:.4f} "
                      f"({seconds:.1f} s)", flush=True)
        side = {"format": "koa_core-trunk-1", "method": "SimCLR (lightly NTXentLoss, "
                "SimCLRProjectionHead); positives: the raw and CLAHE views of one knee",
                "config": asdict(cfg), "data": {"root": Path(root).name, "counts": counts,
                                                "splits": ["train", "val"]},
                "steps_per_epoch": run.steps, "batch_size": run.batch, "history": history,
                "seconds": round(time.perf_counter() - t_start, 1),
                "precision": "bf16 autocast" if run.dtype is not None else "fp32",
                **provenance(command, dev)}
        write_pair(out, trunk_state_dict(run.model.trunk), side,
                   metadata={"format": "koa_core-trunk-1"})
    return read_sidecar(out)  # what was written, with the weights' SHA-256


def _set_up(cfg: PretrainConfig, views, dev: torch.device, loss_fn: nn.Module) -> _Pretraining:
    """Model, augmentation, optimizer and cosine schedule for ``views``."""
    n = len(views)
    if n < 2:
        raise KoaError("pretraining needs at least 2 knees")
    batch = min(cfg.batch_size, n)
    steps = n // batch
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    model = _SimCLR(cfg.projection_dim).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = _augment(cfg.image_size).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    return _Pretraining(model, augment, loss_fn, opt, sched, views,
                        torch.Generator().manual_seed(cfg.seed), dev,
                        amp_dtype("auto", dev), batch, steps)


def _epoch(run: _Pretraining, epoch: int) -> tuple[dict, float, float]:
    """One epoch (each knee's raw and CLAHE views, augmented, are a positive pair): its
    history row, mean loss and seconds."""
    run.model.train()
    order = torch.randperm(len(run.views), generator=run.gen)
    losses = []
    t0 = time.perf_counter()
    for step in range(run.steps):
        idx = np.sort(order[step * run.batch:(step + 1) * run.batch].numpy())
        x = torch.from_numpy(np.asarray(run.views[idx])).to(run.dev).float().div_(255.0)
        a = run.augment(x[:, 0:1])  # raw view
        b = run.augment(x[:, 1:2])  # CLAHE view: the positive of the same knee
        with autocast(run.dev, run.dtype):
            za = run.model(_normalise(a))
            zb = run.model(_normalise(b))
        loss = run.loss_fn(za.float(), zb.float())
        if not torch.isfinite(loss):
            raise KoaError(f"pretraining diverged at epoch {epoch} (loss {loss.item()}); "
                           "lower the learning rate")
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.sched.step()
        losses.append(loss.detach())
    mean = float(torch.stack(losses).mean()) if losses else float("nan")
    seconds = time.perf_counter() - t0
    return ({"epoch": epoch, "loss": round(mean, 5), "seconds": round(seconds, 2),
             "img_s": round(run.steps * run.batch / seconds, 1) if seconds else None},
            mean, seconds)
