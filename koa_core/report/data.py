"""Dataset tables and figures (paper §2.1, Table 1, Fig. 1): counts per split and grade,
the paper's count slips, sample grids, leakage, the central crop; and, for the published
profile, the same tables from a ``koa data stats --json`` summary and the caveats of the
committed real sample.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from koa_core import GRADE_NAMES
from koa_core.data.imaging import read_gray
from koa_core.data.preprocess import central_crop
from koa_core.errors import KoaError
from koa_core.paper import (
    FIG1_COUNTS,
    TABLE1,
    TABLE2_COUNTS,
    TABLE2_SHARES_PCT,
    TABLE3,
    TABLE4,
    TEST_KNEES,
)
from koa_core.report.paper import KL
from koa_core.train.dataset import stratified_subset


def _counts_frame(counts: dict[str, Sequence[int]]) -> pd.DataFrame:
    df = pd.DataFrame({s: list(c) for s, c in counts.items()}, index=KL)
    df["total"] = df.sum(axis=1)
    df["share %"] = (100 * df["total"] / df["total"].sum()).round(2)
    df["KL0 : KLk"] = (df["total"].iloc[0] / df["total"].replace(0, np.nan)).round(1)
    total = df.drop(columns=["share %", "KL0 : KLk"]).sum().to_frame("total").T
    df = pd.concat([df, total.assign(**{"share %": 100.0})])
    df["KL0 : KLk"] = df["KL0 : KLk"].astype(object).where(df["KL0 : KLk"].notna(), "")
    return df


def counts_table(source) -> pd.DataFrame:
    """Images per grade and split of a :class:`~koa_core.data.index.DatasetIndex` (or of a
    ``koa data stats --json`` summary, see :func:`load_stats`), with shares and the
    imbalance ratio KL0 : KLk."""
    return _counts_frame(split_counts(source))


def paper_counts_table() -> pd.DataFrame:
    """The paper's Table 1 in the layout of :func:`counts_table`, plus Fig. 1's totals."""
    df = _counts_frame(TABLE1)
    df.insert(4, "Fig. 1 total", list(FIG1_COUNTS) + [sum(FIG1_COUNTS)])
    return df


def paper_count_slips() -> pd.DataFrame:
    """Where the paper's own counts disagree with each other (reported, not copied): every
    figure is read from :mod:`koa_core.paper`."""
    total = sum(TABLE2_COUNTS)  # 9,786: the abstract's, §2.1's and Table 2's total
    kl3_table1 = sum(c[3] for c in TABLE1.values())
    macro = f"{TABLE3['macro'][2]:.4f}", f"{TABLE4['macro'][2]:.4f}"
    weighted = f"{TABLE3['weighted'][2]:.4f}", f"{TABLE4['weighted'][2]:.4f}"
    rows = [("images in the dataset", "abstract, §2.1, §2.3a", f"{total:,}",
             "Table 1 (the split counts, which match the data) totals "
             f"{sum(map(sum, TABLE1.values())):,}"),
            ("KL3 images", "Fig. 1", f"{FIG1_COUNTS[3]:,}",
             f"then the grades sum to {sum(FIG1_COUNTS):,}, not {total:,}"),
            ("KL3 images", "Table 2", f"{TABLE2_COUNTS[3]:,}",
             f"agrees with Table 2's {100 * TABLE2_COUNTS[3] / total:.2f} % of {total:,}"),
            ("KL3 images", "Table 1", f"{kl3_table1:,}", "the split counts; they match the data"),
            ("test support", "Table 4",
             f"{TABLE4['per_class'][2][3]} (KL2) / {TABLE4['accuracy'][1]:,}",
             f"Table 3 and Table 1: {TABLE3['per_class'][2][3]} / {TEST_KNEES:,}"),
            ("Table 2 shares", "Table 2", f"sum to {sum(TABLE2_SHARES_PCT):.1f} %",
             "shares should sum to 100 %"),
            (f"Weighted F1 {macro[0]} -> {macro[1]}", "§4 (Conclusion)", "Weighted F1-score",
             f"{macro[0]} and {macro[1]} are the macro averages of Tables 3 and 4 (weighted: "
             f"{weighted[0]} and {weighted[1]})")]
    return pd.DataFrame(rows, columns=["quantity", "where", "paper says", "but"])


def share_figure(ours: pd.DataFrame, paper: pd.DataFrame, label: str = "ours"):
    """Bar chart of the grade shares (%), ours beside the paper's Table 1."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    x = np.arange(5)
    ax.bar(x - 0.2, ours["share %"].iloc[:5], 0.4, label=label)
    ax.bar(x + 0.2, paper["share %"].iloc[:5], 0.4, label="paper, Table 1")
    ax.set(xticks=x, xticklabels=KL, ylabel="share of images (%)", title="Grade distribution")
    ax.legend()
    fig.tight_layout()
    return fig


def sample_grid(index, per_grade: int = 4, split: str | None = None, seed: int = 0):
    """One row per grade of randomly chosen images of a split (like the paper's Fig. 1);
    ``split`` None: the first of train, val, test that holds images."""
    import matplotlib.pyplot as plt

    split = split or first_split(index)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(5, per_grade, figsize=(1.5 * per_grade + 0.4, 7.6),
                             squeeze=False)
    for g in range(5):
        recs = [r for r in index.split(split) if r.grade == g]
        picks = rng.permutation(len(recs))[:per_grade]
        for j, ax in enumerate(axes[g]):
            if j < len(picks):
                ax.imshow(read_gray(recs[picks[j]].path), cmap="gray", vmin=0, vmax=255)
            ax.set(xticks=[], yticks=[])
        axes[g][0].set_ylabel(GRADE_NAMES[g].replace(" ", "\n"))
    fig.tight_layout()
    return fig


def leakage_table(report) -> pd.DataFrame:
    """The patient/leakage facts of a :class:`~koa_core.data.check.ScanReport` (or of a
    ``koa data stats --json`` summary, which also lists the source formats), one per row."""
    if isinstance(report, dict):
        return pd.DataFrame(_stats_leakage_rows(report),
                            columns=["check", "value", "verdict"]).set_index("check")
    idx = report.index
    leaks = report.leaks
    rows = [(f"patients in {s}", n, "") for s, n in idx.patients().items()]
    rows += [("patients in more than one split", len(leaks),
              "ok" if not leaks else "LEAK, e.g. " + ", ".join(list(leaks)[:3])),
             ("identical files in two splits", len(report.duplicates),
              "ok" if not report.duplicates else "LEAK"),
             ("unreadable images", len(report.unreadable), "ok" if not report.unreadable
              else report.unreadable[0]),
             ("image sizes", ", ".join(report.sizes), ""),
             ("usable for training", "yes" if report.usable() else "no",
              "; ".join(report.problems()))]
    return pd.DataFrame(rows, columns=["check", "value", "verdict"]).set_index("check")


def crop_example(img: np.ndarray, pad: int = 40, extra_width: float = 0.35):
    """Figure: the image inside black padding and a wider field (a raw radiograph's look),
    and what :func:`~koa_core.data.preprocess.central_crop` keeps of it."""
    import matplotlib.pyplot as plt

    w = img.shape[1]
    side = int(extra_width * w)
    wide = cv2.copyMakeBorder(img, pad, pad, pad + side, pad, cv2.BORDER_CONSTANT, value=0)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, im, title in zip(axes, (wide, central_crop(wide)), ("input", "central crop")):
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[], title=f"{title} {im.shape[1]}x{im.shape[0]}")
    fig.tight_layout()
    return fig


def sample_images(index, n: int = 40, split: str | None = None, seed: int = 0
                  ) -> tuple[list[np.ndarray], list[int]]:
    """``n`` decoded, centrally cropped images of a split (grade-stratified, seeded) at their
    own size, and their grades; ``split`` None: the first of train, val, test that holds
    images (all of them when ``n`` is at least their number)."""
    recs = stratified_subset(index.split(split or first_split(index)), n, seed=seed)
    return [central_crop(read_gray(r.path)) for r in recs], [r.grade for r in recs]


# ---------------------------------------------------------------- the published profile
# A full dataset copy is summarised by ``koa data stats ROOT --json`` (a "stats" dict) and
# its live figures use a committed sample of it; the helpers below take a stats dict
# wherever the demo path takes a DatasetIndex or ScanReport, so a chapter reads the same
# way with either.

def load_stats(path: str | Path | None) -> dict | None:
    """The JSON written by ``koa data stats ROOT --json``; None for an empty path."""
    if not path:
        return None
    stats = json.loads(Path(path).read_text())
    if not isinstance(stats, dict) or "counts" not in stats:
        raise KoaError(f"{path}: not the output of koa data stats ROOT --json (no counts)")
    return stats


def first_split(index, prefer: Sequence[str] = ("train", "val", "test")) -> str:
    """The first split of ``prefer`` that holds images (a sample of validation knees, for
    instance, has no training split)."""
    for s in prefer:
        if index.split(s):
            return s
    raise KoaError(f"{index.root}: no images in the {', '.join(prefer)} split(s)")


def split_counts(source) -> dict[str, list[int]]:
    """Images per grade 0..4 of each split, from a DatasetIndex or a stats dict."""
    if isinstance(source, dict):
        return {s: [int(c.get(str(g), 0)) for g in range(5)]
                for s, c in source["counts"].items()}
    return {s: [c[g] for g in range(5)] for s, c in source.counts().items()}


def source_name(source) -> str:
    """The data root's folder name (a DatasetIndex, a ScanReport or a stats dict)."""
    root = source["root"] if isinstance(source, dict) else getattr(source, "index", source).root
    return Path(str(root)).name


def majority_table(source, paper: dict[str, Sequence[int]] = TABLE1) -> pd.DataFrame:
    """The majority rate (share of the most frequent grade, what always answering it
    scores) of the validation and test splits, ours beside the paper's Table 1. A split
    the data lacks reads "n/a": held out for a stats summary (the copy was made without
    it), "no such split here" for a data root."""
    ours = split_counts(source)
    missing = "n/a: held out" if isinstance(source, dict) else "n/a (no such split here)"
    rows = []
    for s in ("val", "test"):
        c = ours.get(s)
        rows.append({"split": s, "images": sum(c) if c else 0,
                     "majority rate (ours)": f"{max(c) / sum(c):.3f}" if c and sum(c)
                     else missing,
                     "paper's Table 1": f"{max(paper[s]) / sum(paper[s]):.3f}"})
    return pd.DataFrame(rows).set_index("split")


def imbalance_text(ours: pd.DataFrame, paper: pd.DataFrame, majority: pd.DataFrame) -> str:
    """Markdown: the grade shares and KL0 : KL4 ratio of :func:`counts_table` tables and the
    validation majority rate of :func:`majority_table`, ours against the paper's."""
    def part(t):
        return (t.loc["KL0", "share %"], t.loc["KL4", "share %"],
                t.loc["KL0", "total"] / max(t.loc["KL4", "total"], 1))

    (o0, o4, orat), (p0, p4, prat) = part(ours), part(paper)
    val = majority.loc["val", "majority rate (ours)"]
    text = (f"KL0 is {o0:.1f} % of the images counted here and KL4 {o4:.1f} % (paper's "
            f"Table 1: {p0:.1f} % and {p4:.1f} %), {orat:.1f} KL0 images for each KL4 image "
            f"(paper: {prat:.1f}).")
    if not str(val).startswith("n/a"):
        text += (f" A model that always answers KL0 is right on {100 * float(val):.1f} % of the "
                 "validation split: accuracy is read against this majority rate, and "
                 "per-grade recall (KL4 above all) matters more than the headline number.")
    return text


def _stats_leakage_rows(stats: dict) -> list[tuple]:
    leaks, dups, bad = (stats.get(k) or [] for k in
                        ("leaking_patients", "duplicates_across_splits", "unreadable"))
    problems = stats.get("problems") or []
    return ([(f"patients in {s}", n, "") for s, n in stats["patients"].items()]
            + [("patients in more than one split", len(leaks),
                "ok" if not leaks else "LEAK, e.g. " + ", ".join(list(leaks)[:3])),
               ("identical files in two splits", len(dups), "ok" if not dups else "LEAK"),
               ("unreadable images", len(bad), "ok" if not bad else str(bad[0])),
               ("image sizes", ", ".join(stats.get("sizes") or {}), ""),
               ("source formats", ", ".join(stats.get("formats") or {}), ""),
               ("usable for training", "no" if problems else "yes", "; ".join(problems))])


def leakage_verdict(table: pd.DataFrame, warnings: Sequence[str] = ()) -> str:
    """Markdown: what :func:`leakage_table` found, one computed sentence."""
    v = table["value"]
    facts = [("patient", "appears in two splits", int(v["patients in more than one split"])),
             ("file", "is duplicated across splits", int(v["identical files in two splits"])),
             ("image", "fails to decode", int(v["unreadable images"]))]
    text = "; ".join(f"no {what} {verb}" if n == 0 else f"{n} {what}(s) {verb}"
                     for what, verb, n in facts)
    text = text[0].upper() + text[1:] + f" ({len(warnings)} discovery warning(s))"
    return text + (". The data are usable for training." if v["usable for training"] == "yes"
                   else ". The data are NOT usable for training: "
                   + str(table.loc["usable for training", "verdict"]) + ".")


def _short_commit(commit: str) -> str:
    head, _, tail = str(commit).partition("-")
    return head[:12] + (f"-{tail}" if tail else "")


def stats_provenance(stats: dict, label: str = "") -> str:
    """Markdown: where a stats summary comes from (command, code commit, date); absolute
    paths in the command are shown by their last part."""
    prov = stats.get("provenance") or {}
    cmd = " ".join(Path(w).name if w.startswith("/") else w
                   for w in str(prov.get("command") or "koa data stats ROOT --json").split())
    splits = ", ".join(f"{s} {sum(c):,}" for s, c in split_counts(stats).items())
    return (f"Counts and checks of the full copy `{source_name(stats)}`{label} "
            f"({stats.get('images', 0):,} images: {splits}) come from `{cmd}`, run on code "
            f"commit `{_short_commit(prov.get('commit', 'unknown'))}`"
            + (f" on {str(prov['created'])[:10]}" if prov.get("created") else "") + ".")


def sample_table(index) -> pd.DataFrame:
    """The knees of a (small) data root per grade: how many and their file names, which
    are the OAI patient id and the knee's side (L/R)."""
    rows = []
    for g in range(5):
        recs = sorted((r for r in index.records if r.grade == g), key=lambda r: r.path)
        rows.append({"grade": KL[g], "split": ", ".join(sorted({r.split for r in recs})),
                     "knees": len(recs),
                     "files (OAI patient id + side)": ", ".join(Path(r.path).stem
                                                                for r in recs)})
    return pd.DataFrame(rows).set_index("grade")


def sample_note(index, study: str = "") -> str:
    """Markdown: the data caveats of the committed real sample at ``index`` (how many
    knees of which split, drawn how), plus, for ``study`` "clahe", what the CLAHE study
    measures on them."""
    meta_path = Path(index.root) / "SAMPLE.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    counts = split_counts(index)
    per = sorted({n for c in counts.values() for n in c})
    per_grade = f"{per[0]} per grade" if len(per) == 1 else "per grade: " + ", ".join(
        f"{KL[g]} {sum(c[g] for c in counts.values())}" for g in range(5))
    text = (f"**Data caveats.** The live figures use the committed sample of "
            f"{len(index.records)} real knees: the {' and '.join(counts)} split only, "
            f"{per_grade}" + (f", drawn by `{meta['command']}`" if meta.get("command") else "")
            + ".")
    if study == "clahe":
        text += (" The \"raw\" row of the study below is each knee as the sample stores it, "
                 "and each clip limit is one CLAHE pass on it.")
    return text


def counts_match_text(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Markdown: split by split, whether :func:`counts_table` counts equal the paper's
    Table 1 (:func:`paper_counts_table`) grade for grade, where they differ, and (for a
    split of another size, e.g. the phantom's) how far its grade shares are from the
    paper's."""
    parts = []
    for s in [c for c in ours.columns if c in ("train", "val", "test")]:
        n, m = int(ours.loc["total", s]), int(paper.loc["total", s])
        diff = [f"{g} {int(ours.loc[g, s]):,} vs {int(paper.loc[g, s]):,}" for g in KL
                if ours.loc[g, s] != paper.loc[g, s]]
        if not diff:
            parts.append(f"the {s} split ({n:,} images) equals the paper's Table 1 grade "
                         "for grade")
        elif n != m:
            gap = max(abs(100 * ours.loc[g, s] / max(n, 1) - 100 * paper.loc[g, s] / m)
                      for g in KL)
            parts.append(f"the {s} split has {n:,} images (paper: {m:,}), with grade shares "
                         f"within {gap:.1f} points of the paper's")
        else:
            parts.append(f"the {s} split ({n:,} images) differs from the paper's Table 1 in "
                         + ", ".join(diff))
    missing = [s for s in ("train", "val", "test") if s not in ours.columns]
    text = "; ".join(parts) if parts else "no split was counted"
    text = text[0].upper() + text[1:]
    if missing:
        text += f" ({' and '.join(missing)} not counted here)"
    return text + "."


def crop_text(index, n: int = 40, split: str | None = None, seed: int = 0) -> str:
    """Markdown: of the images :func:`sample_images` takes (same ``n``, ``split``, ``seed``),
    how many :func:`~koa_core.data.preprocess.central_crop` leaves exactly as they are."""
    recs = stratified_subset(index.split(split or first_split(index)), n, seed=seed)
    same, sizes = 0, set()
    for r in recs:
        img = read_gray(r.path)
        out = central_crop(img)
        same += out.shape == img.shape and bool(np.array_equal(out, img))
        sizes.add(f"{img.shape[1]}x{img.shape[0]}")
    return (f"On the {len(recs)} images of this chapter ({', '.join(sorted(sizes))} pixels), "
            f"the central crop leaves {same} unchanged and crops {len(recs) - same}.")

