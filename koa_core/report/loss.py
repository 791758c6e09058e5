"""Loss weighting (paper §2.3b, Table 2): the focal loss's effective influence per grade
and its modulating factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from koa_core.paper import ALPHA
from koa_core.report.paper import KL
from koa_core.train.losses import effective_influence_share, focal_loss, resolve_alpha


def influence_table(counts: Sequence[int], alpha=ALPHA, gamma: float = 2.0,
                    paper: Sequence[float] | None = None) -> pd.DataFrame:
    """Table 2 recomputed with :func:`~koa_core.train.losses.effective_influence_share`.

    Columns: count, share before (%), alpha, share after alpha (%), share after alpha and
    the focal factor with each grade's typical p = its class prior (%), and the paper's
    column when given.
    """
    import torch

    counts = [int(c) for c in counts]
    prior = [c / sum(counts) for c in counts]
    s = effective_influence_share(counts, alpha, gamma)
    sp = effective_influence_share(counts, alpha, gamma, p_correct=prior)
    a = resolve_alpha(alpha, counts) if not isinstance(alpha, torch.Tensor) else alpha
    df = pd.DataFrame({"count": counts, "share before %": np.multiply(s["before"], 100),
                       "alpha": [round(float(v), 4) for v in a],
                       "after alpha %": np.multiply(s["after_alpha"], 100),
                       "after alpha + focal (p = prior) %":
                           np.multiply(sp["after_alpha_gamma"], 100)}, index=KL)
    if paper is not None:
        df["paper %"] = list(paper)
    return df.round(2).assign(alpha=df["alpha"])  # alpha keeps its printed three digits


def focal_figure(gammas: Sequence[float] = (0, 1, 2, 3, 5)):
    """Loss against p of the true grade, computed with :func:`~koa_core.train.losses.focal_loss`
    (gamma = 0 is cross-entropy), and the focal factor (1-p)^gamma scaling each sample."""
    import matplotlib.pyplot as plt
    import torch

    p = np.linspace(0.01, 0.99, 197)
    logits = torch.tensor(np.log(np.stack([p, 1 - p], axis=1)), dtype=torch.float32)
    target = torch.zeros(len(p), dtype=torch.long)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for g in gammas:
        label, lw = ("cross-entropy" if g == 0 else f"focal, gamma = {g:g}"), 2.2 if g == 2 else 1.2
        loss = focal_loss(logits, target, gamma=float(g), reduction="none").numpy()
        axes[0].plot(p, loss, label=label, lw=lw)
        axes[1].plot(p, (1 - p) ** g, label=label, lw=lw)
    axes[0].set(xlabel="p of the true grade", ylabel="loss", ylim=(0, 4.6), title="loss")
    axes[1].set(xlabel="p of the true grade", ylabel="(1 - p)^gamma", title="focal factor")
    axes[0].legend()
    fig.tight_layout()
    return fig


def influence_text(table: pd.DataFrame, label: str = "this training split") -> str:
    """Markdown: image share and influence share (after alpha, and after alpha and the
    focal factor at p = prior) of KL0 and KL4 in an :func:`influence_table`."""
    n = int(table["count"].sum())
    focal = "after alpha + focal (p = prior) %"

    def grade(g):
        r = table.loc[g]
        return (f"{g} holds {r['share before %']:.1f} % of the images and "
                f"{r['after alpha %']:.1f} % of the influence after alpha "
                f"({r[focal]:.1f} % with the focal factor at p = prior)")

    return f"On {label} ({n:,} images), {grade('KL0')}; {grade('KL4')}."


def table2_verdict(table: pd.DataFrame) -> str:
    """Markdown: Table 2 recomputed (an :func:`influence_table` with the paper's column)
    against the paper's last column, for KL0 and KL4, and what the paper's column sums to."""
    ours, paper = table["after alpha %"], table["paper %"]
    diff = (ours - paper).abs()
    return (f"Recomputed from the paper's counts and alpha, the influence share after "
            f"weighting is {ours['KL0']:.1f} % for KL0 and {ours['KL4']:.1f} % for KL4, "
            f"where the paper's Table 2 prints {paper['KL0']:.1f} % and {paper['KL4']:.1f} %; "
            f"the largest gap is {diff.max():.1f} points ({diff.idxmax()}), and the paper's "
            f"column sums to {paper.sum():.1f} %.")


def table2_reasons(table: pd.DataFrame) -> str:
    """Markdown bullets, computed from an :func:`influence_table` with the paper's column:
    n x alpha and its shares against the paper's, the paper's share per unit of n x alpha
    (KL0-KL3 against KL4), and what the paper's column sums to."""
    na = table["count"] * table["alpha"]
    shares = 100 * na / na.sum()
    per = table["paper %"] / na
    low, kl4 = per.iloc[:4], per.iloc[4]

    def nums(v, d=1):
        v = [f"{x:.{d}f}" for x in v]
        return ", ".join(v[:-1]) + " and " + v[-1]

    return "\n".join([
        f"- n·α is {nums(na)} (sum {na.sum():.1f}): shares of {nums(shares)} %, not "
        f"the paper's {nums(table['paper %'])} %.",
        f"- The paper's share divided by n·α is {low.min():.3f}-{low.max():.3f} for "
        f"KL0-KL3 and {kl4:.3f} for KL4: the paper's numbers are close to proportional to n·α "
        f"for KL0-KL3 and {kl4 / low.mean():.1f} times that for KL4. A focal factor would "
        f"have to be about equal for KL0-KL3 and that many times larger for KL4.",
        f"- The paper's shares sum to {table['paper %'].sum():.1f} %, not 100 %."])


def conjecture_text(guess: pd.Series, paper: pd.Series) -> str:
    """Markdown: how close a conjectured column comes to the paper's (largest gap)."""
    gap = (guess - paper).abs()
    return (f"The conjecture reproduces every share of the paper's column within "
            f"{gap.max():.2f} points (largest gap at {gap.idxmax()}).")

