"""The evaluation chapter's conformal sets: coverage and set size by repeated half-splits
(ours, beyond the paper; :mod:`koa_core.metrics.conformal`).

Each split calibrates on half of the knees of every grade (a stratified half, so that every
grade is in both halves) and measures the sets on the other half. Beside the conformal
methods, two sets without a guarantee: the two most probable grades (top-2), and the most
probable grades until their probabilities reach the target (a probability threshold,
uncalibrated).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from koa_core.errors import KoaError
from koa_core.metrics.conformal import fit_conformal, set_stats

__all__ = ["METHODS", "conformal_figure", "half_split_table"]

# (label, method, class-conditional); None: a set without calibration
METHODS = (("ordinal (default)", "ordinal", False), ("ordinal, per grade", "ordinal", True),
           ("LAC", "lac", False), ("top-2 (no guarantee)", "top2", None),
           ("probability ≥ target (no guarantee)", "mass", None))


def _halves(y: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    a = np.concatenate([rng.permutation(np.flatnonzero(y == g))[: (y == g).sum() // 2]
                        for g in np.unique(y)])
    return a, np.setdiff1d(np.arange(len(y)), a)


def _plain_sets(p: np.ndarray, how: str, coverage: float) -> np.ndarray:
    order = np.argsort(-p, 1)
    if how == "top2":
        ranks = np.arange(p.shape[1])[None, :] < 2
    else:  # the most probable grades until their mass reaches the target
        mass = np.cumsum(np.take_along_axis(p, order, 1), 1)
        ranks = np.concatenate([np.ones((len(p), 1), bool), mass[:, :-1] < coverage], 1)
    out = np.zeros(p.shape, bool)
    np.put_along_axis(out, order, ranks, 1)
    return out


def _one_split(p, y, a, b, coverage) -> dict[str, dict]:
    out = {}
    for label, method, cc in METHODS:
        if cc is None:
            sets = _plain_sets(p[b], method, coverage)
        else:
            try:
                sets = fit_conformal(p[a], y[a], coverage, method, cc).sets(p[b])
            except KoaError:  # too few knees of a grade in a half
                continue
        out[label] = set_stats(sets, y[b])
    return out


def half_split_table(probs: np.ndarray, y: np.ndarray, coverage: float = 0.90,
                     splits: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per method and grade: mean coverage and mean set size over ``splits`` random
    stratified half-splits (a method that cannot be fitted on a half is left out)."""
    p, y = np.asarray(probs, float), np.asarray(y)
    rng = np.random.default_rng(seed)
    runs = [_one_split(p, y, *_halves(y, rng), coverage) for _ in range(splits)]
    rows = []
    for label, _, _ in METHODS:
        got = [r[label] for r in runs if label in r]
        if not got:
            continue
        row = {"method": label, "splits": len(got),
               "coverage": np.mean([g["coverage"] for g in got]),
               "mean set size": np.mean([g["mean_set_size"] for g in got])}
        for g in range(p.shape[1]):
            row[f"KL{g} coverage"] = np.mean([x["per_grade"][str(g)]["coverage"] for x in got])
            row[f"KL{g} size"] = np.mean([x["per_grade"][str(g)]["mean_set_size"] for x in got])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method").round(3)


def conformal_figure(table: pd.DataFrame, coverage: float = 0.90):
    """Coverage per grade against the target (left) and mean set size per grade (right),
    one line per method."""
    import matplotlib.pyplot as plt

    grades = [c.split()[0] for c in table.columns if c.endswith("coverage") and c != "coverage"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, row) in enumerate(table.iterrows()):
        style = {"marker": "os^Dv"[i % 5], "label": label}
        left.plot(grades, [row[f"{g} coverage"] for g in grades], **style)
        right.plot(grades, [row[f"{g} size"] for g in grades], **style)
    left.axhline(coverage, color="k", lw=0.8, ls="--")
    left.set(ylabel="coverage (held-out half)", ylim=(0, 1.02),
             title="does the set hold the grade?")
    right.set(ylabel="mean grades in the set", ylim=(0, 5.2), title="how many grades it names")
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
