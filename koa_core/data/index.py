"""Dataset discovery, patient parsing, leakage checks and splits (paper §2.1-2.2, Table 1).

Two layouts are recognised:

* the public layout ``ROOT/{train,val,test}/{0..4}/*`` of the Chen 2018 KL dataset
  (PNG, JPEG, WebP, TIFF or DICOM; the folder name is the Kellgren-Lawrence grade);
* a flat layout ``ROOT/{0..4}/*``, which gets a seeded, grade-stratified, patient-grouped
  70/10/20 split (scikit-learn ``StratifiedGroupKFold``) written as a CSV manifest
  *outside* the data root.

``auto_test/`` (automatically re-detected crops of the *test* knees, near-duplicates of
test) is skipped with a warning. File names such as ``9001695L`` carry a 7-digit patient
id and the knee side; a patient found in two splits is leakage and is refused unless the
caller explicitly allows it. Discovery only lists and stats files: it never writes under
the data root.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from koa_core.data.imaging import is_image_file
from koa_core.errors import KoaError
from koa_core.files import atomic_open

__all__ = [
    "SPLITS",
    "DatasetIndex",
    "Record",
    "discover",
    "parse_name",
    "read_manifest",
    "split_flat",
    "write_manifest",
]

SPLITS = ("train", "val", "test")
GRADE_DIRS = tuple(str(g) for g in range(5))
_NAME = re.compile(r"^(\d{7})([LR])$")
_MAX_FILES = 2_000_000  # guards a runaway walk (e.g. a mis-typed root)


@dataclass(frozen=True)
class Record:
    """One knee image: where it is, its grade, its split and whose knee it is."""

    path: str
    grade: int
    split: str
    patient: str | None = None
    side: str | None = None


@dataclass
class DatasetIndex:
    """Everything discovery found under a root."""

    root: str
    layout: str  # "split" or "flat"
    records: list[Record]
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # non-image files, odd folders
    manifest: str | None = None

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    def counts(self) -> dict[str, dict[int, int]]:
        """Images per split and grade (all five grades listed, zeros included)."""
        out: dict[str, dict[int, int]] = {}
        for s in SPLITS:
            c = Counter(r.grade for r in self.records if r.split == s)
            if c or s in {r.split for r in self.records}:
                out[s] = {g: c.get(g, 0) for g in range(5)}
        return out

    def patients(self) -> dict[str, int]:
        """Distinct patients per split (records without a parsable id count by file)."""
        out = {}
        for s in SPLITS:
            ids = {r.patient or r.path for r in self.records if r.split == s}
            if ids:
                out[s] = len(ids)
        return out

    def leaks(self) -> dict[str, list[str]]:
        """Patients whose knees appear in more than one split: {patient: [splits]}."""
        where: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            if r.patient:
                where[r.patient].add(r.split)
        return {p: sorted(s) for p, s in sorted(where.items()) if len(s) > 1}

    def require_no_leakage(self, allow: bool = False) -> None:
        """Raise a KoaError if a patient is in two splits, unless ``allow``."""
        leaks = self.leaks()
        if leaks and not allow:
            p, s = next(iter(leaks.items()))
            raise KoaError(
                f"{self.root}: {len(leaks)} patient(s) appear in more than one split "
                f"(e.g. {p} in {' and '.join(s)}); this leaks test knees into training. "
                "Fix the split, or pass --allow-leakage to proceed anyway"
            )


def parse_name(path: str | Path) -> tuple[str | None, str | None]:
    """Patient id and side from a name like ``9001695L.png``; (None, None) otherwise."""
    m = _NAME.match(Path(path).stem)
    return (m.group(1), m.group(2)) if m else (None, None)


def _list_images(folder: Path, skipped: list[str]) -> list[Path]:
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        p = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError:  # e.g. a symlink loop: kept, so that reading it reports the error
            is_dir = False
        if is_dir:
            skipped.append(f"{p}/ (unexpected folder)")
        elif is_image_file(p):
            out.append(p)
        else:
            skipped.append(f"{p} (not an image)")
    return out


def _grade_folders(base: Path, warnings: list[str], skipped: list[str], split: str):
    for child in sorted(base.iterdir()):
        if child.name in GRADE_DIRS and child.is_dir():
            yield int(child.name), child
        elif child.is_dir():
            msg = f"{child}/: not a grade folder (0-4); skipped"
            if child.name == "auto_test":
                msg = (f"{child}/: skipped (automatic re-crops of the test knees; "
                       "training on it leaks test images)")
            warnings.append(msg)
        else:
            skipped.append(f"{child} (file outside the grade folders)")
    for g in GRADE_DIRS:
        if not (base / g).is_dir():
            warnings.append(f"{base}/{g}/: missing grade folder in {split}")


def discover(root: str | Path, seed: int = 0, manifest_dir: str | Path | None = None
             ) -> DatasetIndex:
    """List the images of a dataset root (public or flat layout); never writes under it.

    For a flat root the split is computed (``split_flat``) and, if ``manifest_dir`` is
    given, written there as ``<root-name>-split-seed<seed>.csv``.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise KoaError(f"{root}: no such folder")
    if not root.is_dir():
        raise KoaError(f"{root}: not a folder")
    warnings: list[str] = []
    skipped: list[str] = []
    records: list[Record] = []
    present = [s for s in SPLITS if (root / s).is_dir()]
    flat = [g for g in GRADE_DIRS if (root / g).is_dir()]
    if present:
        layout = "split"
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name not in SPLITS:
                msg = f"{child}/: not a split folder; skipped"
                if child.name == "auto_test":
                    msg = (f"{child}/: skipped (automatic re-crops of the test knees; "
                           "near-duplicates of test)")
                warnings.append(msg)
        for split in present:
            for grade, folder in _grade_folders(root / split, warnings, skipped, split):
                for p in _list_images(folder, skipped):
                    records.append(Record(str(p), grade, split, *parse_name(p)))
                    if len(records) > _MAX_FILES:
                        raise KoaError(f"{root}: more than {_MAX_FILES:,} images; wrong root?")
    elif flat:
        layout = "flat"
        pool = []
        for grade, folder in _grade_folders(root, warnings, skipped, "root"):
            pool += [(p, grade) for p in _list_images(folder, skipped)]
        records = split_flat(pool, seed=seed)
    else:
        raise KoaError(f"{root}: no dataset found (expected {{train,val,test}}/{{0..4}}/ "
                       "or {0..4}/ folders of images)")
    if not records:
        raise KoaError(f"{root}: the grade folders hold no PNG, JPEG, WebP, TIFF or DICOM images")
    index = DatasetIndex(str(root), layout, records, warnings, skipped)
    if layout == "flat" and manifest_dir is not None:
        out = Path(manifest_dir) / f"{root.name}-split-seed{seed}.csv"
        index.manifest = str(write_manifest(records, out, root))
    return index


def split_flat(pool: list[tuple[Path, int]], seed: int = 0,
               fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> list[Record]:
    """Seeded, grade-stratified, patient-grouped train/val/test split of (path, grade).

    Uses ``StratifiedGroupKFold`` with 10 folds: 7 folds train, 1 val, 2 test (70/10/20).
    Both knees of a patient always land in the same split.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if abs(sum(fractions) - 1) > 1e-6 or any(round(f * 10) != f * 10 for f in fractions):
        raise KoaError("split fractions must be tenths summing to 1, e.g. 0.7/0.1/0.2")
    grades = np.array([g for _, g in pool])
    groups = [parse_name(p)[0] or str(p) for p, _ in pool]
    n_folds = 10
    min_class = min(Counter(grades.tolist()).values())
    fold_of = np.empty(len(pool), dtype=int)
    if min_class < n_folds:
        # Too few images of some grade for 10 stratified folds: spread the patients, in a
        # seeded order, evenly over the 10 folds (grouped, not stratified), so that even a
        # handful of patients reaches val and test.
        uniq = sorted(set(groups))
        order = np.random.default_rng(seed).permutation(len(uniq))
        fold_of_group = {uniq[j]: k * n_folds // len(uniq) for k, j in enumerate(order)}
        fold_of[:] = [fold_of_group[g] for g in groups]
    else:
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            np.zeros(len(grades)), grades, groups)
        for k, (_, test_idx) in enumerate(folds):
            fold_of[test_idx] = k
    n_train, n_val = round(fractions[0] * 10), round(fractions[1] * 10)
    names = np.where(fold_of < n_train, "train", np.where(fold_of < n_train + n_val, "val",
                                                          "test"))
    return [Record(str(p), int(g), str(s), *parse_name(p))
            for (p, g), s in zip(pool, names)]


def write_manifest(records: list[Record], out: str | Path, root: str | Path) -> Path:
    """Write a CSV manifest (path relative to root, grade, split, patient, side)."""
    out = Path(out)
    root = Path(root).resolve()
    if out.resolve().is_relative_to(root):
        raise KoaError(f"{out}: refusing to write a manifest inside the data root {root}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(records[0])))
        w.writeheader()
        for r in records:
            row = asdict(r)
            row["path"] = os.path.relpath(Path(r.path).resolve(), root)
            w.writerow(row)
    return out


def read_manifest(path: str | Path, root: str | Path) -> list[Record]:
    """Read a manifest written by :func:`write_manifest`."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [Record(str(Path(root) / r["path"]), int(r["grade"]), r["split"],
                       r["patient"] or None, r["side"] or None) for r in rows]
    except (OSError, KeyError, ValueError) as exc:
        raise KoaError(f"{path}: not a readable split manifest ({exc})") from None
