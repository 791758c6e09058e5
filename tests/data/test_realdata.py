"""Checks against the real KL dataset (train and val only), read in place, never written.

Skipped cleanly when the dataset is absent. Location: ``$KOA_REAL_DATA`` if set, else
``<parent of the repository>/shared/data/kl224``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.realdata

REAL = Path(os.environ.get("KOA_REAL_DATA") or
            Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kl224")

TRAIN = {0: 2286, 1: 1046, 2: 1516, 3: 757, 4: 173}
VAL = {0: 328, 1: 153, 2: 212, 3: 106, 4: 27}


@pytest.fixture(scope="module")
def real_root() -> Path:
    if not (REAL / "train").is_dir():
        pytest.skip(f"real KL dataset not found at {REAL} (set KOA_REAL_DATA to use it)")
    return REAL


def _names_mtimes(root: Path) -> str:
    """Hash of every entry's relative path, size and mtime (cheap: no file contents)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        d = Path(dirpath)
        h.update(f"D {d.relative_to(root)} {os.lstat(d).st_mtime_ns}\n".encode())
        for name in sorted(filenames):
            st = os.lstat(d / name)
            h.update(f"F {(d / name).relative_to(root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def untouched(real_root):
    """Asserts, after the module's tests, that nothing under the root changed."""
    before = _names_mtimes(real_root)
    yield
    assert _names_mtimes(real_root) == before, f"something under {real_root} was modified"


@pytest.fixture(scope="module")
def index(real_root, untouched):
    from koa_core.data.index import discover

    return discover(real_root)


def test_counts_match_table1(index):
    assert index.layout == "split"
    assert index.counts() == {"train": TRAIN, "val": VAL}
    assert len(index.records) == sum(TRAIN.values()) + sum(VAL.values()) == 6604


def test_no_leaks_and_every_name_parses(index):
    assert index.leaks() == {}
    index.require_no_leakage()
    assert all(r.patient is not None and r.side in ("L", "R") for r in index.records)
    assert index.warnings == [] and index.skipped == []


def test_subset_views_and_loader(index, real_root, tmp_path_factory):
    import torch

    from koa_core.data.cache import ViewCache
    from koa_core.data.preprocess import Preprocessor
    from koa_core.train.augment import ClassAugment
    from koa_core.train.dataset import KneeDataset, class_counts, make_loader, stratified_subset

    sub = stratified_subset(index.split("train"), 64, seed=0)
    assert abs(len(sub) - 64) <= 3
    assert all(n >= 1 for n in class_counts(sub))

    # the bytes we read are the dataset's own (MANIFEST.sha256 lists every file)
    manifest = real_root / "MANIFEST.sha256"
    if manifest.is_file():
        sums = dict(reversed(ln.split(maxsplit=1)) for ln in manifest.read_text().splitlines()
                    if ln.strip())
        for r in sub[:16]:
            rel = "./" + Path(r.path).relative_to(real_root).as_posix()
            assert hashlib.sha256(Path(r.path).read_bytes()).hexdigest() == sums[rel]

    cache_dir = tmp_path_factory.mktemp("realcache")
    cache = ViewCache(cache_dir, workers=2)
    pre = Preprocessor(size=224)
    views = cache.get(sub, pre, root=str(real_root))
    assert cache.last_status == "built"
    assert views.shape == (len(sub), 2, 224, 224) and views.dtype == np.uint8
    cache.get(sub, pre, root=str(real_root))
    assert cache.last_status == "hit"
    # 224x224 crops: the preprocessing is the identity on the raw view
    from koa_core.data.imaging import read_gray

    np.testing.assert_array_equal(views[0, 0], read_gray(sub[0].path))
    assert not Path(cache_dir).resolve().is_relative_to(real_root.resolve())

    ds = KneeDataset(sub, views, ClassAugment(224, seed=0))
    ds.set_epoch(0)
    loader = make_loader(ds, batch_size=16, shuffle=True, seed=0)
    batches = []
    for b in loader:
        batches.append(b)
        if len(batches) == 2:
            break
    for raw, clahe, grade, meta in batches:
        assert raw.shape == clahe.shape == (16, 1, 224, 224)
        assert raw.dtype == clahe.dtype == torch.uint8
        assert grade.shape == (16,) and int(grade.min()) >= 0 and int(grade.max()) <= 4
        assert all(p.startswith(str(real_root)) for p in meta["path"])
        assert set(meta["split"]) == {"train"}
