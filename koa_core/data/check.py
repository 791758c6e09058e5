"""Dataset health check: counts, patients, leakage, unreadable files, sizes (paper Table 1).

:func:`scan` decodes every image once (in threads) and gathers what a researcher must
know before training: images per split and grade, patients per split, patients found in
two splits, identical files in two splits, files that do not decode, the image sizes and
source formats, intensity statistics per grade, and the input check of
:mod:`koa_core.data.inputcheck` per split - which says when a whole folder looks CLAHE-enhanced
already, as copies of the public dataset in circulation are. It reads only; nothing under
the data root is written.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from koa_core.data.dicom import decode_dicom, has_dicom_magic
from koa_core.data.imaging import DICOM_SUFFIXES, read_bytes, to_gray_uint8
from koa_core.data.index import DatasetIndex
from koa_core.data.raster import decode_raw
from koa_core.errors import KoaError, printable

__all__ = ["ScanReport", "format_check", "scan"]


@dataclass
class ScanReport:
    """What :func:`scan` found; ``usable`` says whether training can proceed."""

    index: DatasetIndex
    unreadable: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # "224x224" -> count
    formats: dict[str, int] = field(default_factory=dict)  # "8-bit gray" -> count
    duplicates: list[list[str]] = field(default_factory=list)  # same bytes, two splits
    intensity: dict[str, dict[str, float]] = field(default_factory=dict)  # grade -> stats
    checked: dict[str, int] = field(default_factory=dict)  # split -> images checked
    flags: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> flag -> count
    check_source: str | None = None  # whose profile judged them (None: no check)

    def looks_enhanced(self) -> list[str]:
        """Splits where most images look CLAHE-enhanced already."""
        return [s for s, n in self.checked.items()
                if n and self.flags.get(s, {}).get("enhanced", 0) > n / 2]

    @property
    def leaks(self) -> dict[str, list[str]]:
        return self.index.leaks()

    def problems(self, allow_leakage: bool = False) -> list[str]:
        out = []
        if self.unreadable:
            out.append(f"{len(self.unreadable)} unreadable image(s)")
        if self.leaks and not allow_leakage:
            out.append(f"{len(self.leaks)} patient(s) in more than one split")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} identical file(s) in more than one split")
        if not any(r.split == "train" for r in self.index.records):
            out.append("no training images")
        return out

    def usable(self, allow_leakage: bool = False) -> bool:
        return not self.problems(allow_leakage)

    def to_dict(self) -> dict:
        idx = self.index
        return {
            "root": idx.root,
            "layout": idx.layout,
            "manifest": idx.manifest,
            "images": len(idx.records),
            "counts": {s: {str(g): n for g, n in c.items()} for s, c in idx.counts().items()},
            "patients": idx.patients(),
            "leaking_patients": self.leaks,
            "duplicates_across_splits": self.duplicates,
            "unreadable": self.unreadable,
            "sizes": self.sizes,
            "formats": self.formats,
            "intensity_by_grade": self.intensity,
            "input_check": {"profile": self.check_source, "checked": self.checked,
                            "flags": self.flags, "looks_enhanced": self.looks_enhanced()},
            "warnings": idx.warnings,
            "skipped": idx.skipped,
            "problems": self.problems(),
        }


def _describe(img: np.ndarray) -> str:
    bits = "16-bit" if img.dtype == np.uint16 else "8-bit"
    ch = 1 if img.ndim == 2 else img.shape[2]
    return f"{bits} " + {1: "gray", 3: "RGB", 4: "RGBA"}.get(ch, f"{ch}-channel")


def _one(path: str, check=None):
    out = _decode(path)
    flags = check.flags(out[3]) if check is not None and out[3] is not None else None
    return (*out, flags)


def _decode(path: str):
    try:  # a regular file, read up to the size limit: a FIFO or /dev/zero is one line
        data = read_bytes(path)
    except KoaError as exc:
        return path, None, None, None, str(exc)
    digest = hashlib.sha1(data).hexdigest()

    if Path(path).suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(data[:132]):
        try:  # the DICOM rule of koa_core.data.dicom (LUTs, window, MONOCHROME1) gives the pixels
            gray, meta = decode_dicom(data, path)
        except KoaError as exc:
            return path, digest, None, None, str(exc)
        return path, digest, f"DICOM {meta.get('photometric', '')}".strip(), gray, None
    try:  # the header first: a decompression bomb is refused before its pixels exist
        raw = decode_raw(data, path)
        gray = to_gray_uint8(raw, path)
    except KoaError as exc:
        return path, digest, None, None, str(exc)
    return path, digest, _describe(raw), gray, None


def scan(index: DatasetIndex, workers: int = 4, check=None) -> ScanReport:
    """Decode every image of the index and collect the health report; ``check`` (an
    :class:`~koa_core.data.inputcheck.InputCheck`) judges every image as well."""
    rep = ScanReport(index, check_source=check.source if check is not None else None)
    flag_counts: dict[str, Counter] = defaultdict(Counter)
    by_digest: dict[str, set[tuple[str, str]]] = defaultdict(set)
    sizes: Counter = Counter()
    formats: Counter = Counter()
    sums: dict[int, list[tuple[float, float]]] = defaultdict(list)
    grade_of = {r.path: r for r in index.records}
    with ThreadPoolExecutor(workers) as pool:
        for path, digest, fmt, gray, err, flags in pool.map(partial(_one, check=check),
                                                             [r.path for r in index.records]):
            rec = grade_of[path]
            if digest:
                by_digest[digest].add((rec.split, path))
            if err:
                rep.unreadable.append(err)
                continue
            sizes[f"{gray.shape[1]}x{gray.shape[0]}"] += 1
            formats[fmt] += 1
            sums[rec.grade].append((float(gray.mean()), float(gray.std())))
            if flags is not None:
                rep.checked[rec.split] = rep.checked.get(rec.split, 0) + 1
                flag_counts[rec.split].update(flags)
    rep.flags = {s: dict(sorted(c.items())) for s, c in flag_counts.items()}
    rep.sizes = dict(sizes.most_common())
    rep.formats = dict(formats.most_common())
    rep.duplicates = sorted(
        sorted(p for _, p in group) for group in by_digest.values()
        if len({s for s, _ in group}) > 1)
    for g in sorted(sums):
        arr = np.array(sums[g])
        rep.intensity[str(g)] = {"n": len(arr), "mean": round(float(arr[:, 0].mean()), 2),
                                 "std": round(float(arr[:, 1].mean()), 2)}
    return rep


def format_check(rep: ScanReport, allow_leakage: bool = False) -> str:
    """The human-readable table printed by ``koa data check``."""
    idx = rep.index
    counts = idx.counts()
    patients = idx.patients()
    lines = [f"dataset: {idx.root} ({idx.layout} layout, {len(idx.records)} images)"]
    if idx.manifest:
        lines.append(f"split manifest: {idx.manifest}")
    head = f"{'split':<7}" + "".join(f"{'KL' + str(g):>7}" for g in range(5))
    lines += ["", head + f"{'total':>8}{'patients':>10}"]
    for s, c in counts.items():
        lines.append(f"{s:<7}" + "".join(f"{c[g]:>7}" for g in range(5))
                     + f"{sum(c.values()):>8}{patients.get(s, 0):>10}")
    total = [sum(c[g] for c in counts.values()) for g in range(5)]
    lines.append(f"{'all':<7}" + "".join(f"{n:>7}" for n in total) + f"{sum(total):>8}"
                 + f"{sum(patients.values()):>10}")
    lines.append("")
    lines.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in rep.sizes.items()))
    lines.append("formats: " + ", ".join(f"{k} ({v})" for k, v in rep.formats.items()))
    leaks = rep.leaks
    lines.append(f"patients in more than one split: {len(leaks)}"
                 + (f" (e.g. {', '.join(list(leaks)[:3])})" if leaks else ""))
    lines.append(f"identical files across splits: {len(rep.duplicates)}")
    lines.append(f"unreadable images: {len(rep.unreadable)}")
    lines += [f"  {printable(u)}" for u in rep.unreadable[:20]]
    if len(rep.unreadable) > 20:
        lines.append(f"  ... and {len(rep.unreadable) - 20} more")
    for w in idx.warnings:
        lines.append(f"warning: {printable(w)}")
    if idx.skipped:
        n = len(idx.skipped)
        lines.append(f"skipped {n} non-image entr{'y' if n == 1 else 'ies'}, "
                     f"e.g. {idx.skipped[0]}")
    lines += _check_lines(rep)
    problems = rep.problems(allow_leakage)
    lines.append("")
    lines.append("usable: yes" if not problems else "usable: NO - " + "; ".join(problems))
    return "\n".join(lines)


def _check_lines(rep: ScanReport) -> list[str]:
    if rep.check_source is None:
        return []
    lines = [f"input check (profile: {rep.check_source}):"]
    for split, n in rep.checked.items():
        f = rep.flags.get(split, {})
        found = ", ".join(f"{k} {v}" for k, v in f.items()) or "none flagged"
        lines.append(f"  {split}: {n} images; {found}")
    for split in rep.looks_enhanced():
        n, k = rep.checked[split], rep.flags[split]["enhanced"]
        lines.append(f"warning: {split} looks CLAHE-enhanced already ({k} of {n} images), "
                     "unlike the public dataset's original crops: koa's checkpoints expect "
                     "the originals (one trained on an enhanced copy applies the enhancement "
                     "itself, preprocess.input_clahe_clip) and would enhance these twice")
    return lines
