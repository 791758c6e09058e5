"""Loss weighting (paper §2.3b, Table 2): the focal loss's effective influence per grade
and its modulating factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..config import PAPER_ALPHA
from .paper import KL


def influence_table(counts: Sequence[int], alpha=PAPER_ALPHA, gamma: float = 2.0,
                    paper: Sequence[float] | None = None) -> pd.DataFrame:
    """Table 2 recomputed with :func:`~koa_core.losses.effective_influence_share`.

    Columns: count, share before (%), alpha, share after alpha (%), share after alpha and
    the focal factor with each grade's typical p = its class prior (%), and the paper's
    column when given.
    """
    import torch

    from ..losses import effective_influence_share, resolve_alpha

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
    """Loss against p of the true grade, computed with :func:`~koa_core.losses.focal_loss`
    (gamma = 0 is cross-entropy), and the focal factor (1-p)^gamma scaling each sample."""
    import matplotlib.pyplot as plt
    import torch

    from ..losses import focal_loss

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
