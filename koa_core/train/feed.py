"""Training batches for the loop of paper §2.3: a DataLoader for CPUs, GPU-resident views
for GPUs.

Both feeds give, per epoch, ``(x, y)`` batches on the training device: ``x`` the model
input ``(B, 2, S, S)`` uint8 (raw, CLAHE) and ``y`` the grades. Both order an epoch by
:class:`~koa_core.train.dataset.EpochSampler` (a permutation drawn from (seed, epoch)) and draw
every sample's augmentation from (seed, epoch, sample index), so a run is reproducible and
a resumed run repeats an uninterrupted one.

* :class:`LoaderFeed` - the cached views go through a DataLoader whose (persistent)
  workers apply :class:`~koa_core.train.augment.ClassAugment` (albumentations) per sample; the
  next epoch's first batches are prepared while the model is validated.
* :class:`DeviceFeed` - the split's uint8 views live on the device (5,778 x 2 x 224 x 224
  bytes = 0.58 GB for the training split) and each batch is augmented there by
  :class:`~koa_core.train.gpu_augment.GpuClassAugment` (kornia), so the GPU never waits for host
  workers. The same distributions as the CPU path, not the same pixels (see that module).

:func:`make_feed` picks the device feed on CUDA (``data.device_resident: auto``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from koa_core.errors import KoaError
from koa_core.train.dataset import EpochSampler, KneeDataset, make_loader, start_epoch
from koa_core.train.gpu_augment import GpuClassAugment

__all__ = ["DeviceFeed", "LoaderFeed", "batch_input", "device_views", "make_feed",
           "to_model_layout", "use_device_feed"]


def to_model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def batch_input(raw, clahe, device, channels_last: bool) -> torch.Tensor:
    """The model input (N, 2, S, S) on ``device`` from a loader batch's two views."""
    # copy the (pinned) views first, join them on the device: a joined host tensor
    # would be unpinned and its copy synchronous
    x = torch.cat([raw.to(device, non_blocking=True), clahe.to(device, non_blocking=True)], 1)
    return to_model_layout(x, channels_last)


def device_views(views: np.ndarray, device: torch.device) -> torch.Tensor:
    """A split's cached views as one tensor on ``device`` (a copy: the cache is read-only)."""
    return torch.from_numpy(np.array(views)).to(device)


class LoaderFeed:
    """Batches from a DataLoader with persistent workers (augmentation on the host)."""

    kind = "loader"

    def __init__(self, ds: KneeDataset, batch_size: int, device: torch.device, seed: int,
                 num_workers: int = 0, channels_last: bool = True, sampler=None):
        self.device, self.channels_last = device, channels_last
        self.sampler = sampler if sampler is not None else EpochSampler(len(ds), seed=seed)
        # one loader for every epoch: workers persist, the epoch reaches them via set_epoch
        self.loader = make_loader(ds, batch_size, shuffle=True, num_workers=num_workers,
                                  sampler=self.sampler, persistent=True)
        self._next: tuple[int, Iterator] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def prefetch(self, epoch: int) -> None:
        """Let the workers start on epoch ``epoch`` (e.g. while the model is validated)."""
        self._next = (epoch, start_epoch(self.loader, epoch))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._next is not None and self._next[0] == epoch:
            it = self._next[1]
        else:
            it = start_epoch(self.loader, epoch)
        self._next = None
        for raw, clahe, y, _ in it:
            yield (batch_input(raw, clahe, self.device, self.channels_last),
                   y.to(self.device, non_blocking=True))

    def close(self) -> None:
        self._next = None
        self.loader = None  # shuts persistent workers down


class DeviceFeed:
    """Batches gathered from views held on the device and augmented there."""

    kind = "device"

    def __init__(self, ds: KneeDataset, batch_size: int, device: torch.device, seed: int,
                 channels_last: bool = True, drop_last: bool = False):
        self.device, self.channels_last = device, channels_last
        self.batch_size, self.drop_last = int(batch_size), drop_last
        self.views = device_views(ds.views, device)
        self.grades = torch.from_numpy(np.asarray(ds.grades, dtype=np.int64)).to(device)
        self.sampler = EpochSampler(len(ds), seed=seed)
        aug = ds.augment
        self.augment = (GpuClassAugment(aug.size, aug.class_specific, seed=aug.seed)
                        if aug is not None else None)

    def __len__(self) -> int:
        n = len(self.grades)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def prefetch(self, epoch: int) -> None:  # nothing to prepare: batches are made on demand
        pass

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.int64).to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.views.index_select(0, idx)
            y = self.grades.index_select(0, idx)
            if self.augment is not None:
                x = self.augment(x, y, idx, epoch)
            yield to_model_layout(x, self.channels_last), y

    def close(self) -> None:
        self.views = self.grades = None


def use_device_feed(mode, device: torch.device, distributed: bool = False) -> bool:
    """``data.device_resident``: ``auto`` (on CUDA, single process), ``on`` or ``off``."""
    mode = {True: "on", False: "off"}.get(mode, mode)
    if mode == "auto":
        return device.type == "cuda" and not distributed
    if mode in ("on", "off"):
        if mode == "on" and distributed:
            raise KoaError("data.device_resident=on is for one process; use off under torchrun")
        return mode == "on"
    raise KoaError(f"data.device_resident must be auto, on or off (got {mode!r})")


def make_feed(cfg, ds: KneeDataset, device: torch.device, sampler=None,
              distributed: bool = False):
    """The feed ``cfg`` asks for on ``device`` (see :func:`use_device_feed`)."""
    if use_device_feed(cfg.data.device_resident, device, distributed):
        # a compiled step keeps one batch shape: drop the last, smaller batch of an epoch
        return DeviceFeed(ds, cfg.train.batch_size, device, cfg.train.seed,
                          cfg.train.channels_last, drop_last=bool(cfg.train.compile))
    return LoaderFeed(ds, cfg.train.batch_size, device, cfg.train.seed, cfg.data.num_workers,
                      cfg.train.channels_last, sampler=sampler)
