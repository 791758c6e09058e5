"""Grades with a coverage guarantee: split conformal prediction sets (ours, beyond the paper).

Calibrated on held-out knees, a set of grades holds the true grade for at least the stated
share of knees like them (say 90 %), whatever the model's quality (Vovk et al. 2005;
Angelopoulos & Bates 2021). A score says how badly a grade fits a knee's probabilities;
the threshold is the finite-sample quantile of the calibration knees' scores at their true
grades, the ⌈(n + 1)·coverage⌉-th smallest (:func:`quantile`), and a knee's set is every
grade whose score is within it.

Scores (:data:`METHODS`):

* ``ordinal`` (the default): the set is a run of neighbouring grades grown from the most
  probable one, each step adding whichever neighbour is more probable; a grade's score is
  the probability mass of the run when it first joins (ordinal adaptive prediction sets,
  Lu, Angelopoulos & Pomerantz, MICCAI 2022). Sets read as a radiologist says them:
  "KL2-KL3".
* ``lac``: one minus the grade's probability (least ambiguous set-valued classifiers,
  Sadinle, Lei & Wasserman 2019); sets need not be contiguous.

``class_conditional`` (Mondrian conformal prediction) fits one threshold per true grade, so
that each grade, the rare KL4 included, gets the coverage on its own; an ordinal set is
then the smallest run holding every grade within its own threshold. Every set holds the
most probable grade, so none is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from koa_core.errors import KoaError
from koa_core.metrics.classification import Z95, wilson

__all__ = ["METHODS", "Conformal", "fit_conformal", "grade_scores", "grades_label",
           "least_knees", "quantile", "set_label", "set_report", "set_stats", "too_few"]

METHODS = ("ordinal", "lac")


def least_knees(coverage: float) -> int:
    """The fewest calibration scores whose quantile for ``coverage`` is finite: n with
    ⌈(n + 1)·coverage⌉ ≤ n (9 at 90 %). Fewer would put every grade in every set. A
    coverage outside (0, 1) is refused here, the one check every fit goes through."""
    if not 0 < coverage < 1:
        raise KoaError(f"--coverage must lie between 0 and 1, got {coverage}")
    n = 1
    while math.ceil((n + 1) * coverage) > n:
        n += 1
    return n


def quantile(scores: np.ndarray, coverage: float) -> float:
    """The ⌈(n + 1)·coverage⌉-th smallest of ``scores`` (n of them); infinite where that
    rank passes n (too few scores for the coverage: every grade is in the set)."""
    s = np.sort(np.asarray(scores, float))
    rank = math.ceil((len(s) + 1) * coverage)
    return float(s[rank - 1]) if 1 <= rank <= len(s) else math.inf


def _ordinal_scores(p: np.ndarray) -> np.ndarray:
    rows = np.arange(len(p))
    k = p.shape[1]
    lo = hi = p.argmax(1)
    mass = p[rows, lo].copy()
    out = np.full(p.shape, np.inf)
    out[rows, lo] = mass
    for _ in range(k - 1):
        left = np.where(lo > 0, p[rows, np.maximum(lo - 1, 0)], -1.0)
        right = np.where(hi < k - 1, p[rows, np.minimum(hi + 1, k - 1)], -1.0)
        go_left = left > right  # a tie grows towards the higher grade
        lo, hi = np.where(go_left, lo - 1, lo), np.where(go_left, hi, hi + 1)
        new = np.where(go_left, lo, hi)
        mass = mass + p[rows, new]
        out[rows, new] = mass
    return out


def grade_scores(probs: np.ndarray, method: str) -> np.ndarray:
    """``(N, K)``: the score of every grade as a knee's label (lower fits better)."""
    p = np.asarray(probs, float)
    if method == "ordinal":
        return _ordinal_scores(p)
    if method == "lac":
        return 1.0 - p
    raise KoaError(f"conformal method {method!r} is not one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class Conformal:
    """A fitted calibration: ``thresholds`` one (marginal) or one per grade
    (``class_conditional``), from ``n`` calibration knees."""

    method: str
    coverage: float
    class_conditional: bool
    thresholds: tuple[float, ...]
    n: int

    def sets(self, probs: np.ndarray) -> np.ndarray:
        """``(N, K)`` booleans: the grades in each knee's set."""
        p = np.asarray(probs, float)
        within = grade_scores(p, self.method) <= np.asarray(self.thresholds)[None, :]
        within[np.arange(len(p)), p.argmax(1)] = True  # never empty
        if self.method == "ordinal" and self.class_conditional:  # the run that holds them
            idx = np.arange(p.shape[1])[None, :]
            lo = np.where(within, idx, p.shape[1]).min(1, keepdims=True)
            hi = np.where(within, idx, -1).max(1, keepdims=True)
            within = (idx >= lo) & (idx <= hi)
        return within

    def to_dict(self) -> dict:
        return {"method": self.method, "coverage": self.coverage,
                "class_conditional": self.class_conditional,
                "thresholds": [None if math.isinf(t) else t for t in self.thresholds],
                "n": self.n}

    @classmethod
    def from_dict(cls, d: dict, classes: int = 5) -> Conformal:
        """A calibration from a sidecar's ``conformal`` entry, checked in one line."""
        try:
            method, cov, cc = d["method"], float(d["coverage"]), bool(d["class_conditional"])
            t = tuple(math.inf if v is None else float(v) for v in d["thresholds"])
            n = int(d["n"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KoaError(f"the checkpoint's conformal calibration is malformed ({exc})") \
                from None
        if method not in METHODS or not 0 < cov < 1 or len(t) != (classes if cc else 1) \
                or any(math.isnan(v) for v in t):
            raise KoaError("the checkpoint's conformal calibration is malformed: method "
                           f"{method!r}, coverage {cov}, {len(t)} threshold(s)")
        return cls(method, cov, cc, t, n)


def too_few(y: np.ndarray, coverage: float, class_conditional: bool, classes: int = 5
            ) -> str | None:
    """Why these calibration grades are too few for ``coverage`` (None: enough)."""
    least, y = least_knees(coverage), np.asarray(y)
    if class_conditional:
        counts = np.bincount(y, minlength=classes)
        if counts.min() < least:
            return (f"class-conditional sets at {coverage:g} need at least {least} "
                    f"calibration knees of every grade; the fewest here: {counts.min()} "
                    f"(KL{counts.argmin()})")
    elif len(y) < least:
        return (f"conformal sets at {coverage:g} need at least {least} calibration knees; "
                f"got {len(y)}")
    return None


def fit_conformal(probs: np.ndarray, y: np.ndarray, coverage: float = 0.90,
                  method: str = "ordinal", class_conditional: bool = False) -> Conformal:
    """The threshold(s) for ``coverage`` from calibration knees' probabilities and grades."""
    p, y = np.asarray(probs, float), np.asarray(y)
    short = too_few(y, coverage, class_conditional, p.shape[1])
    if short:
        raise KoaError(short)
    true = grade_scores(p, method)[np.arange(len(y)), y]
    if class_conditional:
        t = tuple(quantile(true[y == g], coverage) for g in range(p.shape[1]))
    else:
        t = (quantile(true, coverage),)
    return Conformal(method, coverage, class_conditional, t, int(len(y)))


def set_label(row: np.ndarray) -> str:
    """A set in words: ``KL2``, ``KL1–KL3`` (a run), ``KL0, KL2`` (not a run)."""
    g = np.flatnonzero(row)
    if len(g) == 1:
        return f"KL{g[0]}"
    if g[-1] - g[0] == len(g) - 1:
        return f"KL{g[0]}–KL{g[-1]}"
    return ", ".join(f"KL{v}" for v in g)


def grades_label(grades) -> str:
    """:func:`set_label` of a set given as its grades (``[1, 2, 3]``: ``KL1–KL3``)."""
    return set_label(np.isin(np.arange(max(grades) + 1), list(grades)))


def set_stats(sets: np.ndarray, y: np.ndarray) -> dict:
    """Empirical coverage and mean set size, overall and per true grade, and how many
    knees got a set of one, two, three or more grades."""
    sets, y = np.asarray(sets, bool), np.asarray(y)
    hit = sets[np.arange(len(y)), y]
    size = sets.sum(1)
    per = {str(g): {"coverage": float(hit[y == g].mean()), "mean_set_size":
                    float(size[y == g].mean()), "n": int((y == g).sum())}
           for g in range(sets.shape[1]) if (y == g).any()}
    return {"coverage": float(hit.mean()), "mean_set_size": float(size.mean()),
            "per_grade": per, "sizes": {"1": int((size == 1).sum()), "2": int((size == 2).sum()),
                                        "3+": int((size >= 3).sum())}}


def _mean_ci(v: np.ndarray) -> list[float]:
    half = Z95 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return [float(v.mean() - half), float(v.mean() + half)]


def set_report(conf: Conformal, probs: np.ndarray, y: np.ndarray) -> dict:
    """What ``koa evaluate`` reports of a calibration on labelled knees: :func:`set_stats`
    with intervals, coverage (Wilson 95 %) and mean set size (normal), overall and per
    grade, and the target."""
    sets, y = conf.sets(probs), np.asarray(y)
    stats, size = set_stats(sets, y), sets.sum(1).astype(float)
    for g, v in stats["per_grade"].items():
        v["coverage_ci"] = list(wilson(v["coverage"], v["n"]))
        v["mean_set_size_ci"] = _mean_ci(size[y == int(g)])
    return {"target": conf.coverage, "method": conf.method,
            "class_conditional": conf.class_conditional, "n": int(len(y)), **stats,
            "coverage_ci": list(wilson(stats["coverage"], len(y))),
            "mean_set_size_ci": _mean_ci(size)}
