"""Tests for koa_core.data.cache: build once, hit after, invalidate on any change, detect
corruption, and never write under the data root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from koa_core.data.cache import ViewCache, default_cache_dir, views_digest
from koa_core.data.index import Record, discover
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError

PRE = Preprocessor(size=48)


@pytest.fixture(scope="module")
def records(phantom_root):
    recs = discover(phantom_root).records
    return recs[::3]  # 20 images: every grade, every split


def _expected(records, pre=PRE) -> np.ndarray:
    return np.stack([np.stack(pre.load(r.path)) for r in records])


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_cold_build_then_warm_hit(records, phantom_root, tmp_path, tree_hash):
    before = tree_hash(phantom_root)
    cache = ViewCache(tmp_path / "c", workers=2)
    arr = cache.get(records, PRE, root=str(phantom_root))
    assert cache.last_status == "built"
    assert arr.shape == (len(records), 2, 48, 48) and arr.dtype == np.uint8
    want = _expected(records)
    np.testing.assert_array_equal(arr, want)
    key = cache.key(records, PRE)
    npy, meta = cache.paths(key)
    assert _files(tmp_path / "c") == sorted([npy.name, meta.name])  # no temp files left
    m = json.loads(meta.read_text())
    assert m["shape"] == [len(records), 2, 48, 48]
    assert m["params"] == PRE.params() and m["n"] == len(records)

    again = cache.get(records, PRE, root=str(phantom_root))
    assert cache.last_status == "hit"
    np.testing.assert_array_equal(again, want)
    assert isinstance(again, np.memmap)  # later epochs memory-map the file

    fresh = ViewCache(tmp_path / "c", workers=1)  # a new process/run: still a hit
    np.testing.assert_array_equal(fresh.get(records, PRE), want)
    assert fresh.last_status == "hit"
    assert tree_hash(phantom_root) == before


def test_key_is_stable_and_order_sensitive(records, tmp_path):
    cache = ViewCache(tmp_path / "c")
    k = cache.key(records, PRE)
    assert k == ViewCache(tmp_path / "other").key(records, PRE)  # not tied to the folder
    assert len(k) == 24 and all(c in "0123456789abcdef" for c in k)
    assert cache.key(records[::-1], PRE) != k
    assert cache.key(records[:-1], PRE) != k


@pytest.mark.parametrize("pre2", [
    Preprocessor(size=32), Preprocessor(size=48, crop=False),
    Preprocessor(size=48, clahe_clip=3.0), Preprocessor(size=48, clahe_tiles=4),
])
def test_changed_params_give_new_key_and_rebuild(records, tmp_path, pre2):
    cache = ViewCache(tmp_path / "c", workers=2)
    cache.get(records, PRE)
    assert cache.key(records, pre2) != cache.key(records, PRE)
    arr = cache.get(records, pre2)
    assert cache.last_status == "built"
    np.testing.assert_array_equal(arr, _expected(records, pre2))
    assert len(list((tmp_path / "c").glob("views-*.npy"))) == 2


def test_version_bump_changes_key(records, tmp_path, monkeypatch):
    import koa_core.data.preprocess as pp

    cache = ViewCache(tmp_path / "c")
    k = cache.key(records, PRE)
    monkeypatch.setattr(pp, "PREPROCESS_VERSION", pp.PREPROCESS_VERSION + 1)
    assert cache.key(records, PRE) != k


def test_touched_source_gives_new_key(phantom_copy, tmp_path):
    recs = discover(phantom_copy).records[:8]
    cache = ViewCache(tmp_path / "c", workers=2)
    cache.get(recs, PRE, root=str(phantom_copy))
    k = cache.key(recs, PRE)
    st = os.stat(recs[3].path)
    os.utime(recs[3].path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cache.key(recs, PRE) != k
    cache.get(recs, PRE, root=str(phantom_copy))
    assert cache.last_status == "built"


def test_changed_source_content_is_rebuilt(phantom_copy, tmp_path):
    recs = discover(phantom_copy).records[:6]
    cache = ViewCache(tmp_path / "c", workers=2)
    old = np.array(cache.get(recs, PRE))
    # replace one image by another one's bytes (same size class), new mtime
    src = Path(recs[0].path)
    data = Path(recs[1].path).read_bytes()
    src.write_bytes(data)
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new = cache.get(recs, PRE)
    assert cache.last_status == "built"
    np.testing.assert_array_equal(new[0], new[1])
    assert not np.array_equal(new[0], old[0])


def _corrupt_flip(npy: Path) -> None:
    data = bytearray(npy.read_bytes())
    for i in (len(data) - 1, len(data) // 2 + 200, len(data) - 500):  # data part, not header
        data[i] ^= 0xFF
    npy.write_bytes(bytes(data))


def _corrupt_truncate(npy: Path) -> None:
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) - 1000])


def _corrupt_header(npy: Path) -> None:
    data = npy.read_bytes()
    npy.write_bytes(b"garbage!" + data[8:])


def _corrupt_meta(npy: Path) -> None:
    npy.with_suffix(".json").write_text("{not json")


def _corrupt_meta_digest(npy: Path) -> None:
    meta = npy.with_suffix(".json")
    m = json.loads(meta.read_text())
    m["digest"] = "0" * 32
    meta.write_text(json.dumps(m))


def _corrupt_meta_shape(npy: Path) -> None:
    meta = npy.with_suffix(".json")
    m = json.loads(meta.read_text())
    del m["shape"]
    meta.write_text(json.dumps(m))


def _corrupt_empty(npy: Path) -> None:
    # what a rename-without-fsync can leave after a power loss
    npy.write_bytes(b"")


def _corrupt_zip_magic(npy: Path) -> None:
    data = npy.read_bytes()
    npy.write_bytes(b"PK\x03\x04" + data[4:])


@pytest.mark.parametrize("corrupt", [_corrupt_flip, _corrupt_truncate, _corrupt_header,
                                     _corrupt_meta, _corrupt_meta_digest, _corrupt_meta_shape,
                                     _corrupt_empty,
                                     _corrupt_zip_magic],
                         ids=lambda f: f.__name__[9:])
def test_corruption_detected_and_rebuilt(records, tmp_path, corrupt):
    cache = ViewCache(tmp_path / "c", workers=2)
    cache.get(records, PRE)
    key = cache.key(records, PRE)
    npy, _ = cache.paths(key)
    corrupt(npy)
    assert cache.load(key) is None
    assert cache.last_status == "corrupt"
    arr = cache.get(records, PRE)
    assert cache.last_status == "rebuilt (corrupt)"
    np.testing.assert_array_equal(arr, _expected(records))
    cache.get(records, PRE)
    assert cache.last_status == "hit"


@pytest.mark.parametrize("remove", ["npy", "json"])
def test_half_missing_entry_is_a_miss(records, tmp_path, remove):
    cache = ViewCache(tmp_path / "c", workers=2)
    cache.get(records, PRE)
    key = cache.key(records, PRE)
    npy, meta = cache.paths(key)
    (npy if remove == "npy" else meta).unlink()
    assert cache.load(key) is None
    assert cache.last_status == "miss"
    cache.get(records, PRE)
    assert cache.last_status == "built"


@pytest.mark.parametrize("sub", [".", "cache", "train/.koa_cache"])
def test_cache_inside_data_root_refused(phantom_copy, tree_hash, sub):
    recs = discover(phantom_copy).records[:4]
    before = tree_hash(phantom_copy)
    cache = ViewCache(phantom_copy / sub)
    with pytest.raises(KoaError, match="inside the data root"):
        cache.get(recs, PRE, root=str(phantom_copy))
    assert tree_hash(phantom_copy) == before


def test_cache_inside_root_via_symlink_refused(phantom_copy, tmp_path, tree_hash):
    recs = discover(phantom_copy).records[:4]
    link = tmp_path / "link_to_root"
    link.symlink_to(phantom_copy)
    before = tree_hash(phantom_copy)
    with pytest.raises(KoaError, match="inside the data root"):
        ViewCache(link / "cache").get(recs, PRE, root=str(phantom_copy))
    assert tree_hash(phantom_copy) == before


def test_unreadable_image_is_reported(phantom_copy, tmp_path):
    recs = discover(phantom_copy).records[:10]
    bad = Path(recs[4].path)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    cache = ViewCache(tmp_path / "c", workers=2)
    with pytest.raises(KoaError) as ei:
        cache.get(recs, PRE, root=str(phantom_copy))
    msg = str(ei.value)
    assert str(bad) in msg and "1 image(s) could not be read" in msg
    assert "koa data check" in msg
    assert not list((tmp_path / "c").glob("views-*"))  # nothing half-built was stored


def test_missing_source_file_is_koa_error(tmp_path):
    recs = [Record(str(tmp_path / "gone.png"), 0, "train")]
    with pytest.raises(KoaError, match="gone.png"):
        ViewCache(tmp_path / "c").get(recs, PRE)


def test_empty_records_give_empty_array(tmp_path):
    cache = ViewCache(tmp_path / "c")
    arr = cache.get([], PRE)
    assert arr.shape == (0, 2, 48, 48) and arr.dtype == np.uint8
    assert not (tmp_path / "c").exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("KOA_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "koa_core"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "koa_core"
    monkeypatch.setenv("KOA_CACHE_DIR", str(tmp_path / "koa"))
    assert default_cache_dir() == tmp_path / "koa"


def test_isolated_cache_is_the_default(isolated_cache, records):
    cache = ViewCache(workers=2)
    assert cache.dir == isolated_cache
    cache.get(records[:3], PRE)
    assert len(list(isolated_cache.glob("views-*.npy"))) == 1


def test_data_root_unchanged_after_everything(phantom_root, tree_hash, tmp_path):
    # the session phantom was used by every test above; prove one more full cycle
    # (build, hit, corrupt, rebuild) leaves its tree byte-for-byte unchanged
    before = tree_hash(phantom_root)
    recs = discover(phantom_root).records
    cache = ViewCache(tmp_path / "c", workers=2)
    cache.get(recs, PRE, root=str(phantom_root))
    cache.get(recs, PRE, root=str(phantom_root))
    _corrupt_flip(cache.paths(cache.key(recs, PRE))[0])
    cache.get(recs, PRE, root=str(phantom_root))
    assert cache.last_status == "rebuilt (corrupt)"
    assert tree_hash(phantom_root) == before


BUILD = """
import sys
import numpy as np
from koa_core.data.cache import ViewCache
from koa_core.data.index import discover
from koa_core.data.preprocess import Preprocessor
root, cache_dir, out = sys.argv[1:4]
recs = discover(root).records[::3]
for _ in range(3):  # build, then hit, racing the other process
    arr = ViewCache(cache_dir, workers=1).get(recs, Preprocessor(size=48), root=root)
np.save(out, np.asarray(arr))
"""


def test_two_processes_building_the_same_entry_at_once(records, phantom_root, tmp_path):
    """Real processes race on one key: both finish with the right views and a third
    process finds a verified entry, not a half-written one."""
    import subprocess
    import sys

    cache = tmp_path / "c"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(phantom_root), str(cache),
                               str(tmp_path / f"out{i}.npy")], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    want = _expected(records)
    for i in range(2):
        assert np.array_equal(np.load(tmp_path / f"out{i}.npy"), want)
    third = ViewCache(cache)
    assert np.array_equal(np.asarray(third.get(records, PRE, root=str(phantom_root))), want)
    assert third.last_status == "hit"
    assert not [n for n in _files(cache) if n.endswith(".tmp")]


def test_chunked_build_and_slice_reader_give_the_same_views(records, tmp_path, monkeypatch):
    """Built CHUNK images at a time (here 3) and read back slice by slice without mapping the
    file: the same pixels and the same digest as the whole array."""
    from koa_core.data import cache as cache_mod

    monkeypatch.setattr(cache_mod, "CHUNK", 3)
    cache = ViewCache(tmp_path / "c", workers=2)
    view = cache.get(records, PRE, mapped=False)
    assert isinstance(view, cache_mod.ViewFile) and len(view) == len(records)
    want = _expected(records)
    np.testing.assert_array_equal(np.asarray(view), want)
    np.testing.assert_array_equal(view[2:7], want[2:7])
    np.testing.assert_array_equal(view[-1], want[-1])
    meta = json.loads(cache.paths(cache.key(records, PRE))[1].read_text())
    assert meta["digest"] == views_digest(want)
    again = ViewCache(tmp_path / "c").get(records, PRE, mapped=False)
    assert isinstance(again, cache_mod.ViewFile)
    np.testing.assert_array_equal(again[0:len(records)], want)


def test_a_bad_file_in_a_later_chunk_leaves_no_partial_cache(records, tmp_path, monkeypatch):
    from koa_core.data import cache as cache_mod

    monkeypatch.setattr(cache_mod, "CHUNK", 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    recs = list(records[:4]) + [Record(str(bad), 0, "train")]
    cache = ViewCache(tmp_path / "c", workers=1)
    with pytest.raises(KoaError, match="could not be read"):
        cache.get(recs, PRE)
    assert _files(tmp_path / "c") == []
