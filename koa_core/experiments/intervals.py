"""Seed-aware intervals: a t interval over training seeds and a knee interval, combined (§3).

A figure of a configuration trained with k seeds and evaluated on the same n knees varies
for two reasons: which knees were graded (the sample of knees) and which seed trained the
model (the method's run-to-run spread). The paper's claims are about the method, so every
interval here carries both, as two parts added in quadrature on each side (the
method of variance estimates recovery, MOVER: Zou & Donner 2008, Newcombe's square-and-add
for two proportions):

* **seed part**: ``t(0.975, k − 1) · s / √k``, where s is the standard deviation of the k
  seeds' figures on all the knees. With 3 seeds t is 4.30: three values say little about
  the spread of a fourth, and the interval says so.
* **knee part**: for a proportion of knees (accuracy, a grade's recall or precision, a
  share of KL3 knees) the Wilson score interval of the seeds' mean proportion on its
  denominator; for any other figure (an F1, QWK, a difference) the normal interval of a
  delete-one-knee jackknife of the mean over seeds (every seed drops the same knee).

``interval = m̄ − √((m̄ − knee_low)² + seed²), m̄ + √((knee_high − m̄)² + seed²)``,
clipped to the figure's range. Nothing is drawn at random: the interval, and so every
verdict read off it, is the same at every run. With one seed the spread between seeds is
unknown: the interval is the knee part alone and :class:`Estimate` says so
(``seed_spread`` False). :func:`borrowed_spread` handles a one-seed run against a baseline
with several seeds: the baseline's seed spread stands in for the run's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from koa_core.errors import KoaError
from koa_core.metrics.classification import Z95, confusion_figure, wilson

__all__ = ["METHOD", "Estimate", "borrowed_spread", "combine", "jackknife_interval",
           "seed_difference", "seed_figure", "seed_half_width"]

METHOD = ("seed part t(0.975, k−1)·s/√k over the k seeds' figures, knee part a Wilson score "
          "interval (a proportion of knees) or a delete-one-knee jackknife (any other "
          "figure), added in quadrature on each side; nothing resampled at random")


@dataclass(frozen=True)
class Estimate:
    """A figure's mean over seeds with its 95 % interval (``ci``), the knee part alone
    (``knee_ci``), each seed's figure and whether the seeds' spread entered (k > 1)."""

    value: float
    ci: tuple[float, float]
    knee_ci: tuple[float, float]
    per_seed: tuple[float, ...]
    seed_ids: tuple[int, ...]
    seed_spread: bool


def seed_half_width(values, inflate: float = 1.0) -> float:
    """``t(0.975, k−1) · s / √k`` of k seeds' figures (0 for one seed); ``inflate``
    scales s (a one-seed run against a baseline's mean: √(1 + 1/k) · √k)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return 0.0
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) * inflate / np.sqrt(len(v)))


def jackknife_interval(point: float, loo: np.ndarray) -> tuple[float, float]:
    """Normal 95 % interval of ``point`` from its delete-one values ``loo`` (n,)."""
    loo = np.asarray(loo, float)
    loo = loo[np.isfinite(loo)]
    n = len(loo)
    if n < 2 or not np.isfinite(point):
        return (float(point), float(point))
    half = Z95 * np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    return (float(point - half), float(point + half))


def combine(value: float, knee: tuple[float, float], seed: float,
            bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """The knee interval and the seed half-width added in quadrature on each side."""
    lo = value - np.hypot(value - knee[0], seed)
    hi = value + np.hypot(knee[1] - value, seed)
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return (float(lo), float(hi))


def _cm_figures(y: np.ndarray, pred: np.ndarray, name: str) -> tuple[float, np.ndarray]:
    """A confusion-matrix figure on all knees and with each knee left out in turn."""
    cm = np.bincount(y * 5 + pred, minlength=25).reshape(5, 5)
    loo = np.repeat(cm[None], len(y), axis=0)
    loo[np.arange(len(y)), y, pred] -= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(confusion_figure(cm[None], name)[0]), confusion_figure(loo, name)


def _loo_index(n: int) -> np.ndarray:
    """(n, n − 1): row i holds every knee but i."""
    a = np.tile(np.arange(n - 1), (n, 1))
    return a + (a >= np.arange(n)[:, None])


def _denominator(name: str, y: np.ndarray, preds: list[np.ndarray]) -> float | None:
    """The knees a proportion is a share of (None: not a proportion)."""
    if name == "accuracy":
        return float(len(y))
    fig, _, g = name.partition(":")
    if fig == "recall":
        return float((y == int(g)).sum())
    if fig == "precision":
        return float(np.mean([(p == int(g)).sum() for p in preds]))
    return None


def _check_same_knees(groups: list[dict[int, dict]], seeds: list[int]) -> np.ndarray:
    y = groups[0][seeds[0]]["grade"]
    for g in groups:
        for s in seeds:
            if not np.array_equal(g[s]["grade"], y):
                raise KoaError("records of different validation knees cannot be compared")
    return np.asarray(y)


def _per_seed(by_seed: dict[int, dict], seeds: list[int], y: np.ndarray,
              name: str | Callable) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's figure on all knees (k,) and with each knee left out (k, n)."""
    if callable(name):
        full, loo = np.arange(len(y))[None], _loo_index(len(y))
        return (np.array([name(by_seed[s], full)[0] for s in seeds], float),
                np.stack([name(by_seed[s], loo) for s in seeds]).astype(float))
    pairs = [_cm_figures(y, np.asarray(by_seed[s]["pred"]), name) for s in seeds]
    return np.array([p for p, _ in pairs]), np.stack([loo for _, loo in pairs])


def _mean_loo(loo: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # a knee whose removal leaves every seed undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(loo, axis=0)


def seed_figure(by_seed: dict[int, dict], name: str | Callable,
                bounds: tuple[float, float] | None = None,
                denominator: float | None = None) -> Estimate:
    """The mean over a configuration's seeds of a figure, with its interval. ``name`` is a
    confusion-matrix figure (``accuracy``, ``recall:4``, ``macro_f1``, ...), or a function
    ``f(run, idx) -> (rows,)`` of one seed's record on rows of knee indices, with
    ``denominator`` the knees it is a proportion of (None: not a proportion). A
    confusion-matrix figure other than QWK lies in [0, 1], which bounds its interval."""
    seeds = sorted(by_seed)
    if not seeds:
        raise KoaError("seed_figure: no seeds")
    y = _check_same_knees([by_seed], seeds)
    point, loo = _per_seed(by_seed, seeds, y, name)
    value = float(np.nanmean(point)) if np.isfinite(point).any() else float("nan")
    if isinstance(name, str):
        denominator = _denominator(name, y, [np.asarray(by_seed[s]["pred"]) for s in seeds])
        if bounds is None and name != "qwk":
            bounds = (0.0, 1.0)
    knee = (wilson(value, denominator) if denominator is not None
            else jackknife_interval(value, _mean_loo(loo)))
    ci = combine(value, knee, seed_half_width(point), bounds)
    return Estimate(value, ci, knee, tuple(float(v) for v in point), tuple(seeds),
                    len(seeds) > 1)


def seed_difference(a: dict[int, dict], b: dict[int, dict], name: str) -> Estimate:
    """``a`` minus ``b`` over the seeds both have: seed s of one against seed s of the
    other on the same knees (paired by seed and by knee)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise KoaError("no seed is shared by the two configurations")
    y = _check_same_knees([a, b], seeds)
    pa, la = _per_seed(a, seeds, y, name)
    pb, lb = _per_seed(b, seeds, y, name)
    d = pa - pb
    value = float(d.mean())
    knee = jackknife_interval(value, _mean_loo(la - lb))
    ci = combine(value, knee, seed_half_width(d), None if name == "qwk" else (-1.0, 1.0))
    return Estimate(value, ci, knee, tuple(float(v) for v in d), tuple(seeds), len(seeds) > 1)


def borrowed_spread(run: dict, baseline: dict[int, dict], name: str) -> Estimate:
    """A one-seed ``run`` minus the mean of a baseline with several seeds. The run's own
    seed spread is unknown, so the baseline's stands in: the seed part is the baseline's
    t half-width scaled by √(k + 1) (one new seed against a mean of k)."""
    seeds = sorted(baseline)
    if len(seeds) < 2:
        raise KoaError("borrowed_spread: the baseline needs two seeds or more")
    y = _check_same_knees([baseline, {seeds[0]: run}], seeds[:1])
    _check_same_knees([baseline], seeds)
    pb, lb = _per_seed(baseline, seeds, y, name)
    pr, lr = _per_seed({0: run}, [0], y, name)
    value = float(pr[0] - pb.mean())
    knee = jackknife_interval(value, lr[0] - _mean_loo(lb))
    seed = seed_half_width(pb, inflate=np.sqrt(len(seeds) + 1))
    ci = combine(value, knee, seed, None if name == "qwk" else (-1.0, 1.0))
    return Estimate(value, ci, knee, tuple(float(pr[0] - v) for v in pb), tuple(seeds), True)
