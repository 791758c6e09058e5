"""PyTorch Dataset and DataLoader builders for the two-view knee data (paper §2.2-2.3).

A :class:`KneeDataset` serves cached ``uint8`` views; each item is
``(raw, clahe, grade, meta)`` with ``raw`` and ``clahe`` as ``uint8`` tensors of shape
``(1, size, size)`` (the model converts and normalises them on the device, which keeps
the loader light), ``grade`` an int and ``meta`` a dict with the record's path, patient,
side and split. Augmentation (:mod:`koa_core.train.augment`) runs in the loader workers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from koa_core.data.cache import ViewCache
from koa_core.data.index import Record
from koa_core.data.preprocess import Preprocessor
from koa_core.train.augment import ClassAugment

__all__ = ["EpochSampler", "KneeDataset", "class_counts", "load_views", "make_loader",
           "start_epoch", "stratified_subset"]


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
        # shared with the loader workers (also persistent ones) through shared memory
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``e`` draws the same augmentation whether resumed or not, in any worker."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def sample_seed(self, i: int) -> int:
        """The augmentation seed of sample ``i`` in the current epoch."""
        base = self.augment.seed if self.augment is not None else 0
        return ((base * 100_003 + self.epoch) * 1_000_003 + int(i)) % 2**31

    def __getitem__(self, i: int):
        raw, clahe = self.views[i, 0], self.views[i, 1]
        grade = int(self.grades[i])
        if self.augment is not None:
            raw, clahe = self.augment(raw, clahe, grade, seed=self.sample_seed(i))
        r = self.records[i]
        meta = {k: ("" if v is None else v) for k, v in asdict(r).items()}
        meta["index"] = i
        # np.array copies out of the read-only memory map (torch wants writable memory)
        return (torch.from_numpy(np.array(raw))[None], torch.from_numpy(np.array(clahe))[None],
                grade, meta)


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation per epoch, drawn from (seed, epoch) alone.

    The single-process counterpart of ``DistributedSampler``'s ``set_epoch``: one loader
    (with persistent workers) serves every epoch, and epoch ``e`` of a resumed run is
    ordered as in an uninterrupted one.
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def make_loader(ds: KneeDataset, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, sampler=None, drop_last: bool = False,
                persistent: bool = False) -> DataLoader:
    """A DataLoader with seeded shuffling; ``persistent`` keeps the workers across epochs."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, generator=g,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=bool(persistent and num_workers),
                      prefetch_factor=4 if num_workers else None)


def start_epoch(loader: DataLoader, epoch: int):
    """Set epoch ``epoch``'s order (the loader's sampler) and augmentation (its dataset);
    returns an iterator, whose workers start preparing batches at once."""
    loader.dataset.set_epoch(epoch)
    loader.sampler.set_epoch(epoch)
    return iter(loader)


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
