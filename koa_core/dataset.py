"""PyTorch Dataset and DataLoader builders for the two-view knee data (paper §2.2-2.3).

A :class:`KneeDataset` serves cached ``uint8`` views; each item is
``(raw, clahe, grade, meta)`` with ``raw`` and ``clahe`` as ``uint8`` tensors of shape
``(1, size, size)`` (the model converts and normalises them on the device, which keeps
the loader light), ``grade`` an int and ``meta`` a dict with the record's path, patient,
side and split. Augmentation (:mod:`koa_core.augment`) runs in the loader workers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import ClassAugment
from .cache import ViewCache
from .data import Record
from .preprocess import Preprocessor

__all__ = ["KneeDataset", "class_counts", "load_views", "make_loader", "stratified_subset"]


class KneeDataset(Dataset):
    """(raw view, CLAHE view, grade, record metadata) for each record."""

    def __init__(self, records: Sequence[Record], views: np.ndarray,
                 augment: ClassAugment | None = None):
        if len(records) != len(views):
            raise ValueError(f"{len(records)} records but {len(views)} cached views")
        self.records = list(records)
        self.views = views
        self.grades = np.array([r.grade for r in self.records], dtype=np.int64)
        self.augment = augment
        self.epoch_seed = augment.seed if augment else 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation so epoch ``e`` draws the same whether resumed or not."""
        self.epoch_seed = (self.augment.seed if self.augment else 0) * 100_003 + epoch
        if self.augment is not None:
            self.augment.reseed(self.epoch_seed)

    def __getitem__(self, i: int):
        raw, clahe = self.views[i, 0], self.views[i, 1]
        grade = int(self.grades[i])
        if self.augment is not None:
            raw, clahe = self.augment(raw, clahe, grade)
        r = self.records[i]
        meta = {k: ("" if v is None else v) for k, v in asdict(r).items()}
        meta["index"] = i
        # np.array copies out of the read-only memory map (torch wants writable memory)
        return (torch.from_numpy(np.array(raw))[None], torch.from_numpy(np.array(clahe))[None],
                grade, meta)


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    ds = info.dataset
    if getattr(ds, "augment", None) is not None:
        # Mix the epoch seed (set by set_epoch before the workers start) with the worker
        # id: streams differ per worker and per epoch, and repeat on resume.
        ds.augment.reseed(ds.epoch_seed * 1009 + info.id)


def make_loader(ds: KneeDataset, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, sampler=None, drop_last: bool = False) -> DataLoader:
    """A DataLoader with seeded shuffling and per-worker augmentation seeds."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, generator=g,
                      worker_init_fn=_worker_init if num_workers else None,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


def stratified_subset(records: Sequence[Record], n: int | None, seed: int = 0
                      ) -> list[Record]:
    """At most ``n`` records keeping the grade proportions (seeded); all if n is None."""
    records = list(records)
    if n is None or n >= len(records):
        return records
    rng = np.random.default_rng(seed)
    by_grade: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_grade.setdefault(r.grade, []).append(i)
    keep: list[int] = []
    for g, idx in sorted(by_grade.items()):
        k = max(1, round(n * len(idx) / len(records)))
        keep += rng.choice(idx, size=min(k, len(idx)), replace=False).tolist()
    return [records[i] for i in sorted(keep)]


def load_views(records: Sequence[Record], pre: Preprocessor, cache: ViewCache | None = None,
               root: str | None = None, progress: bool = False) -> np.ndarray:
    """Cached (N, 2, size, size) uint8 views for the records."""
    cache = cache or ViewCache()
    return cache.get(records, pre, root=root, progress=progress)


def class_counts(records: Sequence[Record]) -> list[int]:
    """Images per grade 0..4."""
    c = Counter(r.grade for r in records)
    return [c.get(g, 0) for g in range(5)]
