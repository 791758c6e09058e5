"""Tests for koa_core.train.dataset: items, batching, seeded shuffling and augmentation (with
and without worker processes), subsets and class counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from koa_core.data.cache import ViewCache
from koa_core.data.index import Record, discover
from koa_core.data.preprocess import Preprocessor
from koa_core.train.augment import ClassAugment
from koa_core.train.dataset import (
    EpochSampler,
    KneeDataset,
    class_counts,
    load_views,
    make_loader,
    stratified_subset,
)

S = 48
PRE = Preprocessor(size=S)


@pytest.fixture(scope="module")
def recs_views(phantom_root, tmp_path_factory):
    recs = discover(phantom_root).records  # 60 images
    views = ViewCache(tmp_path_factory.mktemp("dscache"), workers=2).get(recs, PRE)
    return recs, views


def _ds(recs_views, seed=1, augment=True, class_specific=True):
    recs, views = recs_views
    aug = ClassAugment(S, class_specific=class_specific, seed=seed) if augment else None
    return KneeDataset(recs, views, aug)


def _epoch(ds, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    raws, clahes, grades, idx = [], [], [], []
    for raw, clahe, grade, meta in make_loader(ds, **kw):
        raws.append(raw)
        clahes.append(clahe)
        grades.append(grade)
        idx.append(meta["index"])
    return torch.cat(raws), torch.cat(clahes), torch.cat(grades), torch.cat(idx)


# ------------------------------------------------------------------ items
@pytest.mark.parametrize("augment", [False, True])
def test_item_types(recs_views, augment):
    recs, views = recs_views
    ds = _ds(recs_views, augment=augment)
    assert len(ds) == len(recs) == 60
    for i in (0, 17, 59):
        raw, clahe, grade, meta = ds[i]
        for t in (raw, clahe):
            assert isinstance(t, torch.Tensor)
            assert t.dtype == torch.uint8 and tuple(t.shape) == (1, S, S)
        assert type(grade) is int and grade == recs[i].grade
        assert meta["path"] == recs[i].path
        assert meta["patient"] == recs[i].patient
        assert meta["side"] == recs[i].side
        assert meta["split"] == recs[i].split
        assert meta["index"] == i
        if not augment:
            np.testing.assert_array_equal(raw[0].numpy(), views[i, 0])
            np.testing.assert_array_equal(clahe[0].numpy(), views[i, 1])


def test_item_meta_none_becomes_empty_string():
    views = np.zeros((1, 2, S, S), np.uint8)
    ds = KneeDataset([Record("/x/scan.png", 2, "val")], views)
    _, _, grade, meta = ds[0]
    assert grade == 2 and meta["patient"] == "" and meta["side"] == ""


@pytest.mark.parametrize("augment", [False, True])
def test_items_do_not_write_to_views(recs_views, augment):
    views = recs_views[1]
    before = np.array(views)
    ds = _ds(recs_views, augment=augment)
    for i in range(len(ds)):
        raw, _, _, _ = ds[i]
        raw.fill_(0)  # a consumer modifying its tensor must not reach the cache
    np.testing.assert_array_equal(np.asarray(views), before)


def test_length_mismatch_raises(recs_views):
    recs, views = recs_views
    with pytest.raises(ValueError, match="59 records but 60"):
        KneeDataset(recs[:-1], views)


# ------------------------------------------------------------------ loader
def test_make_loader_collates(recs_views):
    ds = _ds(recs_views)
    batches = list(make_loader(ds, batch_size=16, shuffle=False))
    assert [b[0].shape[0] for b in batches] == [16, 16, 16, 12]
    raw, clahe, grade, meta = batches[0]
    assert raw.shape == clahe.shape == (16, 1, S, S) and raw.dtype == torch.uint8
    assert grade.dtype == torch.int64 and grade.shape == (16,)
    assert isinstance(meta["path"], list) and len(meta["path"]) == 16
    assert meta["index"].tolist() == list(range(16))
    assert grade.tolist() == [r.grade for r in ds.records[:16]]
    assert [b[0].shape[0] for b in make_loader(ds, 16, shuffle=False, drop_last=True)] == [16] * 3


def test_shuffle_deterministic_for_a_seed(recs_views):
    ds = _ds(recs_views, augment=False)

    def order(seed):
        return _epoch(ds, batch_size=8, shuffle=True, seed=seed)[3].tolist()

    a = order(5)
    assert a == order(5)
    assert sorted(a) == list(range(60))
    assert a != list(range(60))
    assert a != order(6)
    assert _epoch(ds, batch_size=8, shuffle=False, seed=5)[3].tolist() == list(range(60))


def test_sampler_overrides_shuffle(recs_views):
    ds = _ds(recs_views, augment=False)
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.ones(len(ds)), num_samples=20, generator=torch.Generator().manual_seed(0))
    idx = _epoch(ds, batch_size=8, shuffle=True, sampler=sampler)[3]
    assert len(idx) == 20


def test_workers_work_and_are_reproducible(recs_views):
    recs, views = recs_views
    small = (recs[:24], views[:24])

    def run():
        ds = _ds(small, seed=2)
        return _epoch(ds, batch_size=6, shuffle=True, seed=3, num_workers=2)

    a, b = run(), run()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert sorted(a[3].tolist()) == list(range(24))
    assert a[0].shape == (24, 1, S, S)
    # the labels still match the images' records after worker collation
    assert a[2].tolist() == [recs[i].grade for i in a[3].tolist()]


# ------------------------------------------------------------------ epochs
def test_set_epoch_same_augmentation_in_fresh_datasets(recs_views):
    a, b = _ds(recs_views, seed=4), _ds(recs_views, seed=4)
    a.set_epoch(3)
    b.set_epoch(3)
    ea = _epoch(a, batch_size=16, shuffle=False)
    eb = _epoch(b, batch_size=16, shuffle=False)
    for x, y in zip(ea, eb):
        assert torch.equal(x, y)


def test_set_epoch_resumed_equals_continuous(recs_views):
    cont = _ds(recs_views, seed=4)
    for e in range(3):
        cont.set_epoch(e)
        last = _epoch(cont, batch_size=16, shuffle=False)
    resumed = _ds(recs_views, seed=4)
    resumed.set_epoch(2)
    again = _epoch(resumed, batch_size=16, shuffle=False)
    assert torch.equal(last[0], again[0]) and torch.equal(last[1], again[1])


def test_epochs_and_seeds_differ(recs_views):
    ds = _ds(recs_views, seed=4)
    ds.set_epoch(0)
    e0 = _epoch(ds, batch_size=16, shuffle=False)[0]
    ds.set_epoch(1)
    e1 = _epoch(ds, batch_size=16, shuffle=False)[0]
    assert not torch.equal(e0, e1)
    other = _ds(recs_views, seed=5)
    other.set_epoch(1)
    assert not torch.equal(e1, _epoch(other, batch_size=16, shuffle=False)[0])


def test_set_epoch_respected_with_workers(recs_views):
    recs, views = recs_views
    small = (recs[:12], views[:12])

    def epochs(which):
        ds = _ds(small, seed=4)
        loader_kw = {"batch_size": 6, "shuffle": False, "num_workers": 2}
        out = []
        for e in which:
            ds.set_epoch(e)
            out.append(_epoch(ds, **loader_kw)[0])
        return out

    cont = epochs([0, 1])
    fresh1 = epochs([1])[0]
    assert not torch.equal(cont[0], fresh1)  # epoch 0 and epoch 1 draw differently
    assert torch.equal(cont[1], fresh1)  # and a resumed epoch 1 equals the continuous one


def test_draws_do_not_depend_on_workers_or_order(recs_views):
    recs, views = recs_views
    small = (recs[:16], views[:16])
    ds = _ds(small, seed=4)
    ds.set_epoch(2)
    serial = _epoch(ds, batch_size=4, shuffle=False)
    parallel = _epoch(ds, batch_size=5, shuffle=True, seed=9, num_workers=2)
    order = parallel[3].argsort()
    assert torch.equal(serial[0], parallel[0][order])
    assert torch.equal(serial[1], parallel[1][order])


def test_persistent_workers_follow_set_epoch(recs_views):
    recs, views = recs_views
    small = (recs[:12], views[:12])
    ds = _ds(small, seed=4)
    sampler = EpochSampler(len(ds), seed=1)
    loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=2, sampler=sampler,
                         persistent=True)
    seen = []
    for e in (0, 1):
        ds.set_epoch(e)
        sampler.set_epoch(e)
        seen.append([torch.cat(b) for b in zip(*[(r, i["index"]) for r, _, _, i in loader])])
    assert loader._iterator is not None  # the same workers served both epochs
    fresh = _ds(small, seed=4)
    fresh.set_epoch(1)
    ref = fresh_sampler = EpochSampler(len(fresh), seed=1)
    fresh_sampler.set_epoch(1)
    again = [torch.cat(b) for b in zip(*[(r, i["index"]) for r, _, _, i in
                                         make_loader(fresh, 4, True, sampler=ref)])]
    assert torch.equal(seen[1][1], again[1])  # epoch 1 order repeats in a fresh loader
    assert torch.equal(seen[1][0], again[0])  # and so do its augmentation draws
    assert not torch.equal(seen[0][0], seen[1][0])


def test_epoch_sampler_is_a_permutation_per_epoch():
    s = EpochSampler(50, seed=3)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    b = list(s)
    assert sorted(a) == sorted(b) == list(range(50)) and a != b
    s.set_epoch(0)
    assert list(s) == a and len(s) == 50


# ------------------------------------------------------------------ subsets and counts
def _records(counts, seed=0):
    out = []
    for g, n in enumerate(counts):
        out += [Record(f"/d/train/{g}/{1_000_000 + 10 * i + g}L.png", g, "train",
                       str(1_000_000 + 10 * i + g), "L") for i in range(n)]
    rng = np.random.default_rng(seed)
    return [out[i] for i in rng.permutation(len(out))]


def test_stratified_subset_keeps_grades_and_proportions():
    recs = _records([400, 180, 260, 130, 30])
    sub = stratified_subset(recs, 100, seed=0)
    c = class_counts(sub)
    assert all(n >= 1 for n in c)
    assert abs(len(sub) - 100) <= 3
    for g, n in enumerate(c):
        assert n == pytest.approx(100 * [400, 180, 260, 130, 30][g] / 1000, abs=1.5)
    pos = {r.path: i for i, r in enumerate(recs)}
    assert [pos[r.path] for r in sub] == sorted(pos[r.path] for r in sub)  # original order
    assert len({r.path for r in sub}) == len(sub)  # no duplicates


def test_stratified_subset_rare_grade_kept():
    recs = _records([500, 200, 250, 45, 5])
    c = class_counts(stratified_subset(recs, 20, seed=1))
    assert all(n >= 1 for n in c), c


def test_stratified_subset_seeded():
    recs = _records([50, 40, 30, 20, 10])
    a = stratified_subset(recs, 30, seed=1)
    assert a == stratified_subset(recs, 30, seed=1)
    assert a != stratified_subset(recs, 30, seed=2)


@pytest.mark.parametrize("n", [None, 150, 151, 10_000])
def test_stratified_subset_all_when_not_smaller(n):
    recs = _records([50, 40, 30, 20, 10])
    assert stratified_subset(recs, n) == recs


@pytest.mark.parametrize("counts", [[0, 0, 0, 0, 0], [3, 0, 1, 0, 7], [400, 180, 260, 130, 30]])
def test_class_counts(counts):
    assert class_counts(_records(counts)) == counts
    assert class_counts(iter(_records(counts))) == counts


def test_class_counts_on_phantom(recs_views):
    recs, _ = recs_views
    assert class_counts(recs) == [12] * 5
    train = [r for r in recs if r.split == "train"]
    assert class_counts(train) == [Counter(r.grade for r in train)[g] for g in range(5)]


def test_load_views_uses_default_cache(recs_views, isolated_cache):
    recs, views = recs_views
    arr = load_views(recs[:5], PRE)
    np.testing.assert_array_equal(arr, views[:5])
    assert len(list(isolated_cache.glob("views-*.npy"))) == 1
