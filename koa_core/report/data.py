"""Dataset tables and figures (paper §2.1, Table 1, Fig. 1): counts per split and grade,
the paper's count slips, sample grids, leakage, the central crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd

from .. import GRADE_NAMES
from .paper import KL, PAPER_FIG1_COUNTS, PAPER_TABLE1


def _counts_frame(counts: dict[str, Sequence[int]]) -> pd.DataFrame:
    df = pd.DataFrame({s: list(c) for s, c in counts.items()}, index=KL)
    df["total"] = df.sum(axis=1)
    df["share %"] = (100 * df["total"] / df["total"].sum()).round(2)
    df["KL0 : KLk"] = (df["total"].iloc[0] / df["total"].replace(0, np.nan)).round(1)
    total = df.drop(columns=["share %", "KL0 : KLk"]).sum().to_frame("total").T
    df = pd.concat([df, total.assign(**{"share %": 100.0})])
    df["KL0 : KLk"] = df["KL0 : KLk"].astype(object).where(df["KL0 : KLk"].notna(), "")
    return df


def counts_table(index) -> pd.DataFrame:
    """Images per grade and split of a :class:`~koa_core.data.DatasetIndex`, with shares
    and the imbalance ratio KL0 : KLk."""
    return _counts_frame({s: [c[g] for g in range(5)] for s, c in index.counts().items()})


def paper_counts_table() -> pd.DataFrame:
    """The paper's Table 1 in the layout of :func:`counts_table`, plus Fig. 1's totals."""
    df = _counts_frame(PAPER_TABLE1)
    df.insert(4, "Fig. 1 total", list(PAPER_FIG1_COUNTS) + [sum(PAPER_FIG1_COUNTS)])
    return df


def paper_count_slips() -> pd.DataFrame:
    """Where the paper's own counts disagree with each other (reported, not copied)."""
    rows = [("images in the dataset", "abstract, §2.1, §2.3a", "9,786",
             "Table 1 (the split counts, which match the data) totals 8,260"),
            ("KL3 images", "Fig. 1", "1,786", "then the grades sum to 10,286, not 9,786"),
            ("KL3 images", "Table 2", "1,286", "agrees with Table 2's 13.14 % of 9,786"),
            ("KL3 images", "Table 1", "1,086", "the split counts; they match the data"),
            ("test support", "Table 4", "448 (KL2) / 1,657", "Table 3 and Table 1: 447 / 1,656"),
            ("Table 2 shares", "Table 2", "sum to 94.0 %", "shares should sum to 100 %")]
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


def sample_grid(index, per_grade: int = 4, split: str = "train", seed: int = 0):
    """One row per grade of randomly chosen images of a split (like the paper's Fig. 1)."""
    import matplotlib.pyplot as plt

    from ..imaging import read_gray

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
    """The patient/leakage facts of a :class:`~koa_core.datacheck.ScanReport`, one per row."""
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
    and what :func:`~koa_core.preprocess.central_crop` keeps of it."""
    import matplotlib.pyplot as plt

    from ..preprocess import central_crop

    w = img.shape[1]
    side = int(extra_width * w)
    wide = cv2.copyMakeBorder(img, pad, pad, pad + side, pad, cv2.BORDER_CONSTANT, value=0)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, im, title in zip(axes, (wide, central_crop(wide)), ("input", "central crop")):
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[], title=f"{title} {im.shape[1]}x{im.shape[0]}")
    fig.tight_layout()
    return fig


def sample_images(index, n: int = 40, split: str = "train", seed: int = 0
                  ) -> tuple[list[np.ndarray], list[int]]:
    """``n`` decoded, centrally cropped images of a split (grade-stratified, seeded) at their
    own size, and their grades."""
    from ..dataset import stratified_subset
    from ..imaging import read_gray
    from ..preprocess import central_crop

    recs = stratified_subset(index.split(split), n, seed=seed)
    return [central_crop(read_gray(r.path)) for r in recs], [r.grade for r in recs]
