"""Tests for koa_core.data.index: name parsing, discovery of both layouts, odd folders and files,
leakage, the seeded patient-grouped flat split and its manifest."""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from koa_core.data.index import (
    SPLITS,
    Record,
    discover,
    parse_name,
    read_manifest,
    split_flat,
    write_manifest,
)
from koa_core.errors import KoaError


# ------------------------------------------------------------------ parse_name
@pytest.mark.parametrize("name, want", [
    ("9001695L", ("9001695", "L")),
    ("9001695R.png", ("9001695", "R")),
    ("9001695L.webp", ("9001695", "L")),
    ("/some/where/train/2/1234567R.jpg", ("1234567", "R")),
    (Path("x/9001695L.png"), ("9001695", "L")),
    ("abc.png", (None, None)),
    ("90016950L.png", (None, None)),  # 8 digits
    ("900169L.png", (None, None)),  # 6 digits
    ("9001695l.png", (None, None)),  # lower-case side
    ("9001695.png", (None, None)),  # no side
    ("9001695X.png", (None, None)),
    ("9001695LR.png", (None, None)),
    ("x9001695L.png", (None, None)),
    ("9001695L_1.png", (None, None)),
    ("", (None, None)),
])
def test_parse_name(name, want):
    assert parse_name(name) == want


# ------------------------------------------------------------------ helpers
def _files_on_disk(root: Path) -> dict[str, dict[int, int]]:
    out = {}
    for s in SPLITS:
        if (root / s).is_dir():
            out[s] = {g: len([p for p in (root / s / str(g)).iterdir() if p.is_file()])
                      for g in range(5)}
    return out


def _move_one(root: Path, src_split: str, dst_split: str) -> str:
    """Copy one image of a patient from src_split into dst_split (same grade); return id."""
    src = min((root / src_split / "0").glob("*.png"))
    dst = root / dst_split / "0" / src.name
    shutil.copy2(src, dst)
    return src.stem[:7]


# ------------------------------------------------------------------ public layout
def test_discover_phantom(phantom_root, tree_hash):
    before = tree_hash(phantom_root)
    idx = discover(phantom_root)
    assert tree_hash(phantom_root) == before  # discovery never writes under the root
    assert idx.layout == "split"
    assert idx.root == str(phantom_root)
    assert idx.manifest is None
    assert idx.counts() == _files_on_disk(phantom_root)
    assert sum(sum(c.values()) for c in idx.counts().values()) == 60
    per_grade = {g: sum(c[g] for c in idx.counts().values()) for g in range(5)}
    assert per_grade == {g: 12 for g in range(5)}
    assert idx.leaks() == {}
    idx.require_no_leakage()  # no raise
    assert idx.warnings == [] and idx.skipped == []
    for r in idx.records:
        assert Path(r.path).is_file()
        assert Path(r.path).parent.name == str(r.grade)
        assert Path(r.path).parent.parent.name == r.split
        assert (r.patient, r.side) == parse_name(r.path)
        assert r.patient is not None and r.patient.startswith("1")
    want_patients = {s: len({r.patient for r in idx.records if r.split == s}) for s in SPLITS}
    assert idx.patients() == want_patients
    assert sum(want_patients.values()) == len({r.patient for r in idx.records})
    assert [len(idx.split(s)) for s in SPLITS] == [sum(c.values()) for c in idx.counts().values()]


def test_discover_is_deterministic_and_sorted(phantom_root):
    a, b = discover(phantom_root), discover(str(phantom_root))
    assert a.records == b.records
    train = [r.path for r in a.split("train")]
    assert train == sorted(train)


def test_auto_test_skipped_with_warning(phantom_copy):
    n = len(discover(phantom_copy).records)
    for g in range(5):
        (phantom_copy / "auto_test" / str(g)).mkdir(parents=True)
    src = next((phantom_copy / "test" / "1").glob("*.png"))
    shutil.copy2(src, phantom_copy / "auto_test" / "1" / src.name)
    idx = discover(phantom_copy)
    assert len(idx.records) == n
    assert not any("auto_test" in Path(r.path).relative_to(phantom_copy).parts for r in idx.records)
    assert any("auto_test" in w and "skipped" in w for w in idx.warnings)
    assert idx.leaks() == {}


def test_unknown_root_folder_warns(phantom_copy):
    (phantom_copy / "extras").mkdir()
    idx = discover(phantom_copy)
    assert any("extras" in w and "not a split folder" in w for w in idx.warnings)


def test_unknown_grade_folder_in_split(phantom_copy):
    n = len(discover(phantom_copy).records)
    odd = phantom_copy / "train" / "7"
    odd.mkdir()
    shutil.copy2(next((phantom_copy / "train" / "0").glob("*.png")), odd / "1999999L.png")
    idx = discover(phantom_copy)
    assert len(idx.records) == n  # the images of "7" are not counted
    assert not any("/7/" in r.path for r in idx.records)
    assert any(str(odd) in w and "not a grade folder" in w for w in idx.warnings)
    assert set(idx.counts()["train"]) == set(range(5))


def test_empty_grade_folder_counts_zero(phantom_copy):
    for p in (phantom_copy / "val" / "3").iterdir():
        p.unlink()
    idx = discover(phantom_copy)
    assert idx.counts()["val"][3] == 0
    assert idx.counts()["train"][3] > 0
    assert idx.warnings == []  # the folder exists: not a "missing grade folder"


def test_missing_grade_folder_warns(phantom_copy):
    shutil.rmtree(phantom_copy / "val" / "4")
    idx = discover(phantom_copy)
    assert idx.counts()["val"][4] == 0
    assert any("val" in w and "/4/" in w and "missing grade folder" in w for w in idx.warnings)


def test_missing_split_is_fine(phantom_copy):
    shutil.rmtree(phantom_copy / "test")
    idx = discover(phantom_copy)
    assert set(idx.counts()) == {"train", "val"}
    assert "test" not in idx.patients()


@pytest.mark.parametrize("where, name, fragment", [
    ("train/0", "notes.txt", "not an image"),
    ("train/0", "Thumbs.db", "not an image"),
    ("train/0", "1234567L.bmp", "not an image"),
    ("train/0", "subdir", "unexpected folder"),
    ("train", "README.md", "file outside the grade folders"),
])
def test_non_images_listed_in_skipped(phantom_copy, where, name, fragment):
    n = len(discover(phantom_copy).records)
    target = phantom_copy / where / name
    if name == "subdir":
        target.mkdir()
        shutil.copy2(next((phantom_copy / "train" / "0").glob("*.png")), target / "1999999L.png")
    else:
        target.write_text("x")
    idx = discover(phantom_copy)
    assert len(idx.records) == n
    assert any(str(target) in s and fragment in s for s in idx.skipped), idx.skipped


def test_symlink_loop_is_kept_and_fails_when_read(phantom_copy):
    """A looping link named like an image stays in the index so that reading reports it."""
    from koa_core.data.imaging import read_gray
    from koa_core.errors import KoaError

    target = phantom_copy / "train" / "2" / "loop.png"
    os.symlink(target.with_name("loop2.png"), target)
    os.symlink(target, target.with_name("loop2.png"))
    paths = {r.path for r in discover(phantom_copy).records}
    assert str(target) in paths
    with pytest.raises(KoaError, match="symbolic links"):
        read_gray(target)


def test_upper_case_and_other_formats_are_images(phantom_copy):
    src = next((phantom_copy / "train" / "0").glob("*.png"))
    shutil.copy2(src, phantom_copy / "train" / "0" / "1999999L.PNG")
    shutil.copy2(src, phantom_copy / "train" / "0" / "1999998L.webp")  # suffix is what counts
    before = discover(phantom_copy).counts()["train"][0]
    assert before == len(list((phantom_copy / "train" / "0").iterdir()))


def test_unparsable_names_count_by_file(phantom_copy):
    src = next((phantom_copy / "train" / "0").glob("*.png"))
    shutil.copy2(src, phantom_copy / "train" / "0" / "scan_a.png")
    shutil.copy2(src, phantom_copy / "train" / "0" / "scan_b.png")
    base = discover(phantom_copy)
    recs = [r for r in base.records if "scan_" in r.path]
    assert len(recs) == 2 and all(r.patient is None and r.side is None for r in recs)
    ids = {r.patient for r in base.split("train") if r.patient}
    assert base.patients()["train"] == len(ids) + 2


# ------------------------------------------------------------------ leakage
def test_leak_detected_and_refused(phantom_copy):
    pid = _move_one(phantom_copy, "train", "test")
    idx = discover(phantom_copy)
    assert idx.leaks() == {pid: ["test", "train"]}
    with pytest.raises(KoaError) as ei:
        idx.require_no_leakage()
    msg = str(ei.value)
    assert pid in msg and "test and train" in msg and "--allow-leakage" in msg
    idx.require_no_leakage(allow=True)  # explicitly allowed: no raise


def test_leak_by_other_knee(phantom_copy):
    # the same patient's *other* knee in another split is leakage too
    src = min((phantom_copy / "train" / "2").glob("*.png"))
    other = "R" if src.stem.endswith("L") else "L"
    pid = src.stem[:7]
    shutil.copy2(src, phantom_copy / "val" / "3" / f"{pid}{other}.png")
    leaks = discover(phantom_copy).leaks()
    assert leaks == {pid: ["train", "val"]}


def test_several_leaks_all_reported(phantom_copy):
    a = _move_one(phantom_copy, "train", "val")
    b = _move_one(phantom_copy, "test", "val")
    leaks = discover(phantom_copy).leaks()
    assert set(leaks) == {a, b}
    assert leaks[a] == ["train", "val"] and leaks[b] == ["test", "val"]


# ------------------------------------------------------------------ flat layout
def _pool(n_patients: int, seed: int = 0, singles_every: int = 5):
    """(path, grade) with mostly two knees per patient, grades correlated within a patient."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n_patients):
        pid = 1_000_000 + i
        g = int(rng.choice(5, p=[0.35, 0.2, 0.25, 0.15, 0.05]))
        pool.append((Path(f"/flat/{g}/{pid}L.png"), g))
        if i % singles_every:
            g2 = int(np.clip(g + rng.integers(-1, 2), 0, 4))
            pool.append((Path(f"/flat/{g2}/{pid}R.png"), g2))
    return pool


def test_split_flat_fractions_stratified_grouped():
    pool = _pool(400)
    recs = split_flat(pool, seed=0)
    assert [Path(r.path) for r in recs] == [p for p, _ in pool]  # order and paths kept
    assert [r.grade for r in recs] == [g for _, g in pool]
    n = len(recs)
    frac = Counter(r.split for r in recs)
    assert frac["train"] / n == pytest.approx(0.7, abs=0.03)
    assert frac["val"] / n == pytest.approx(0.1, abs=0.02)
    assert frac["test"] / n == pytest.approx(0.2, abs=0.03)
    # stratified: every grade roughly 70/10/20 as well
    for g in range(5):
        rg = [r for r in recs if r.grade == g]
        c = Counter(r.split for r in rg)
        assert c["val"] > 0 and c["test"] > 0
        assert c["train"] / len(rg) == pytest.approx(0.7, abs=0.12), (g, c)
    # grouped: both knees of a patient in one split
    where = defaultdict(set)
    for r in recs:
        where[r.patient].add(r.split)
    assert all(len(s) == 1 for s in where.values())
    assert sum(len(v) for v in where.values()) == 400


def test_split_flat_deterministic_per_seed():
    pool = _pool(150)
    a = [r.split for r in split_flat(pool, seed=5)]
    assert a == [r.split for r in split_flat(pool, seed=5)]
    assert a != [r.split for r in split_flat(pool, seed=6)]


@pytest.mark.parametrize("fractions", [(0.6, 0.1, 0.2), (0.75, 0.05, 0.2), (0.5, 0.5, 0.1)])
def test_split_flat_refuses_bad_fractions(fractions):
    with pytest.raises(KoaError, match="tenths"):
        split_flat(_pool(50), fractions=fractions)


def test_split_flat_other_tenths():
    recs = split_flat(_pool(400), seed=1, fractions=(0.8, 0.1, 0.1))
    c = Counter(r.split for r in recs)
    assert c["test"] / len(recs) == pytest.approx(0.1, abs=0.03)


def test_split_flat_few_images_fallback_still_grouped():
    # KL4 with fewer than 10 images: group-only fallback, but knees stay together
    pool = [(Path(f"/f/{i % 4}/{1_000_000 + i}{s}.png"), i % 4) for i in range(40) for s in "LR"]
    pool += [(Path(f"/f/4/{1_100_000 + i}L.png"), 4) for i in range(3)]
    recs = split_flat(pool, seed=0)
    where = defaultdict(set)
    for r in recs:
        where[r.patient].add(r.split)
    assert all(len(s) == 1 for s in where.values())
    assert {r.split for r in recs} == {"train", "val", "test"}


def test_split_flat_tiny_pool_has_val_and_test():
    pool = [(Path(f"/f/{g}/{1_000_000 + g}{s}.png"), g) for g in range(5) for s in "LR"]
    pool += [(Path(f"/f/{g}/{1_000_010 + g}L.png"), g) for g in range(3)]  # 8 patients
    splits = {r.split for r in split_flat(pool, seed=0)}
    assert splits == {"train", "val", "test"}


@pytest.fixture
def flat_root(phantom_root, tmp_path) -> Path:
    """ROOT/{0..4}/ holding all 60 phantom images (12 per grade, ~34 patients)."""
    root = tmp_path / "flat"
    for s in SPLITS:
        for g in range(5):
            (root / str(g)).mkdir(parents=True, exist_ok=True)
            for p in (phantom_root / s / str(g)).iterdir():
                shutil.copy2(p, root / str(g) / p.name)
    return root


def test_discover_flat_writes_manifest_outside_root(flat_root, tmp_path, tree_hash):
    before = tree_hash(flat_root)
    mdir = tmp_path / "manifests"
    idx = discover(flat_root, seed=3, manifest_dir=mdir)
    assert tree_hash(flat_root) == before
    assert idx.layout == "flat"
    assert len(idx.records) == 60
    per_grade = {g: sum(c[g] for c in idx.counts().values()) for g in range(5)}
    assert per_grade == {g: 12 for g in range(5)}
    assert set(idx.counts()) == {"train", "val", "test"}
    assert idx.leaks() == {}
    assert idx.manifest == str(mdir / "flat-split-seed3.csv")
    assert Path(idx.manifest).is_file()
    back = read_manifest(idx.manifest, flat_root)
    assert back == idx.records
    # the manifest stores paths relative to the root
    text = Path(idx.manifest).read_text()
    assert str(flat_root) not in text
    assert text.splitlines()[0] == "path,grade,split,patient,side"


def test_discover_flat_without_manifest_dir(flat_root):
    idx = discover(flat_root, seed=3)
    assert idx.manifest is None
    assert [r.split for r in idx.records] == [r.split for r in discover(flat_root, seed=3).records]


def test_discover_flat_seed_changes_split(flat_root):
    a = [r.split for r in discover(flat_root, seed=0).records]
    b = [r.split for r in discover(flat_root, seed=1).records]
    assert a != b


def test_discover_flat_refuses_manifest_inside_root(flat_root, tree_hash):
    before = tree_hash(flat_root)
    with pytest.raises(KoaError, match="inside the data root"):
        discover(flat_root, manifest_dir=flat_root / "manifests")
    assert tree_hash(flat_root) == before  # not even the manifests/ folder was created


@pytest.mark.parametrize("rel", ["m.csv", "sub/m.csv", "0/m.csv", "./x/../m.csv"])
def test_write_manifest_refuses_inside_root(tmp_path, rel):
    root = tmp_path / "root"
    root.mkdir()
    recs = [Record(str(root / "0" / "1234567L.png"), 0, "train", "1234567", "L")]
    with pytest.raises(KoaError, match="inside the data root"):
        write_manifest(recs, root / rel, root)
    assert list(root.iterdir()) == []


def test_write_manifest_refuses_via_symlinked_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    link = tmp_path / "link"
    link.symlink_to(root)
    recs = [Record(str(root / "0" / "1234567L.png"), 0, "train", "1234567", "L")]
    with pytest.raises(KoaError, match="inside the data root"):
        write_manifest(recs, link / "m.csv", root)


def test_manifest_round_trip_with_none_fields(tmp_path):
    root = tmp_path / "root"
    recs = [Record(str(root / "0" / "1234567L.png"), 0, "train", "1234567", "L"),
            Record(str(root / "3" / "scan.png"), 3, "test", None, None)]
    out = write_manifest(recs, tmp_path / "out" / "m.csv", root)
    assert out == tmp_path / "out" / "m.csv"
    assert not list(out.parent.glob("*.tmp"))  # written atomically, no temp left
    assert read_manifest(out, root) == recs


@pytest.mark.parametrize("content", [
    None, "a,b\n1,2\n", "path,grade,split,patient,side\nx,notint,train,,\n"])
def test_read_manifest_errors(tmp_path, content):
    p = tmp_path / "m.csv"
    if content is not None:
        p.write_text(content)
    with pytest.raises(KoaError, match="not a readable split manifest"):
        read_manifest(p, tmp_path)


# ------------------------------------------------------------------ bad roots
def test_missing_root(tmp_path):
    with pytest.raises(KoaError, match="no such folder"):
        discover(tmp_path / "nope")


def test_file_as_root(tmp_path):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(KoaError, match="not a folder"):
        discover(f)


@pytest.mark.parametrize("layout", [[], ["images"], ["5", "train_set"]])
def test_root_without_dataset(tmp_path, layout):
    for d in layout:
        (tmp_path / d).mkdir()
    (tmp_path / "1234567L.png").write_bytes(b"x")
    with pytest.raises(KoaError, match="no dataset found"):
        discover(tmp_path)


def test_root_with_empty_grade_folders(tmp_path):
    for g in range(5):
        (tmp_path / "train" / str(g)).mkdir(parents=True)
    with pytest.raises(KoaError, match="hold no PNG, JPEG, WebP, TIFF or DICOM images"):
        discover(tmp_path)


def test_tilde_root_is_expanded(phantom_root, monkeypatch):
    monkeypatch.setenv("HOME", str(phantom_root.parent))
    idx = discover(f"~/{phantom_root.name}")
    assert idx.root == str(phantom_root)
    assert len(idx.records) == 60


# ------------------------------------------------------------------ the tree_hash helper
def test_tree_hash_detects_every_kind_of_write(phantom_copy, tree_hash):
    # the "nothing written under the data root" assertions rely on this sensitivity
    h0 = tree_hash(phantom_copy)
    assert tree_hash(phantom_copy) == h0
    f = min((phantom_copy / "train" / "0").glob("*.png"))
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touch
    h1 = tree_hash(phantom_copy)
    assert h1 != h0
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same mtime, new bytes
    h2 = tree_hash(phantom_copy)
    assert h2 != h1
    (phantom_copy / "val" / "tmp.txt").write_text("x")
    h3 = tree_hash(phantom_copy)
    assert h3 != h2
    (phantom_copy / "val" / "tmp.txt").unlink()  # created then removed: folder mtime moved
    assert tree_hash(phantom_copy) != h2
