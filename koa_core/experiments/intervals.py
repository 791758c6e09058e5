"""Seed-aware intervals: a two-level bootstrap over training seeds and validation knees (§3).

A figure of a configuration trained with k seeds and evaluated on the same n knees varies
for two reasons: which knees were graded (the sample of knees) and which seed trained the
model (the method's run-to-run spread). An interval over knees alone describes these k
trained models; the paper's claims are about the method, so every interval here
resamples both. Each of the B resamples:

1. draws n knees with replacement, one draw shared by every seed (every model graded the
   same knees) and, in a paired difference, by both configurations;
2. computes each seed's figure on those knees, m_1 .. m_k, and their mean m̄;
3. draws k seeds with replacement, with mean m*;
4. keeps m̄ + c (m* − m̄), with c = √(k / (k − 1)): the seed-level bootstrap of a mean of k
   values has variance (k − 1)/k of s²/k, and c undoes that shrinkage.

The 2.5th and 97.5th percentiles of the kept values are the 95 % interval. Where the seeds
agree, step 4 adds nothing and the interval is the knee-only one; where they disagree it
widens to cover them. With one seed the spread between seeds is unknown: the interval is
the knee-only one, and :func:`seed_aware` says so (``seed_spread`` False).
:func:`borrowed_spread` handles a one-seed run compared against a baseline with several
seeds (the levers of chapter 8): the baseline's seed spread stands in for the run's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from koa_core.errors import KoaError
from koa_core.metrics.classification import confusion_figure

__all__ = ["METHOD", "borrowed_spread", "boot_figures", "knee_draws", "seed_aware",
           "seed_difference", "seed_figure"]

METHOD = ("two-level bootstrap: each resample draws the validation knees (shared by every "
          "seed and both arms of a difference) and then the seeds, with replacement; the "
          "seed deviation is scaled by √(k/(k−1)); 95 % percentile interval")


def knee_draws(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` knee indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def boot_figures(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, name: str) -> np.ndarray:
    """A figure (:func:`~koa_core.metrics.classification.confusion_figure` name) of one
    model's predictions on each row of knee indices ``idx`` ``(B, n)``."""
    y, pred = np.asarray(y), np.asarray(pred)
    b = idx.shape[0]
    cells = (np.arange(b)[:, None] * 25 + y[idx] * 5 + pred[idx]).ravel()
    cm = np.bincount(cells, minlength=b * 25).reshape(b, 5, 5)
    return confusion_figure(cm, name)


def seed_aware(point: np.ndarray, boot: np.ndarray, seed: int = 0,
               level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """The interval of the mean over seeds, from each seed's figure on all knees ``point``
    ``(k,)`` and on each knee resample ``boot`` ``(k, B)`` (the same resamples for every
    seed). Returns value (the mean), ci, knee_ci (knees only, seeds fixed), per_seed and
    seed_spread (whether the seeds' spread entered the interval: k > 1). ``bounds``: the
    figure's range (a recall lies in [0, 1]); the scaled seed deviation can step past it,
    and the interval is clipped to it."""
    point, boot = np.asarray(point, float), np.asarray(boot, float)
    k = len(point)
    if k == 0 or boot.shape[0] != k:
        raise KoaError("seed_aware: one row of resampled figures per seed is needed")
    with warnings.catch_warnings():  # a resample where every seed's figure is undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_b = np.nanmean(boot, axis=0) if k > 1 else boot[0]
    kept = mean_b
    if k > 1:
        pick = np.random.default_rng(seed + 1).integers(0, k, size=(k, boot.shape[1]))
        star = np.take_along_axis(boot, pick, axis=0).mean(axis=0)
        kept = mean_b + np.sqrt(k / (k - 1)) * (star - mean_b)
    if bounds is not None:
        kept = np.clip(kept, *bounds)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {"value": float(point.mean()), "ci": _percentiles(kept, q),
            "knee_ci": _percentiles(mean_b, q), "per_seed": point.tolist(),
            "seeds": k, "seed_spread": k > 1}


def _percentiles(values: np.ndarray, q: list[float]) -> list[float]:
    if np.all(np.isnan(values)):
        return [float("nan"), float("nan")]
    return [float(v) for v in np.nanpercentile(values, q)]


def _check_same_knees(groups: list[dict[int, dict]], seeds: list[int]) -> np.ndarray:
    y = groups[0][seeds[0]]["grade"]
    for g in groups:
        for s in seeds:
            if not np.array_equal(g[s]["grade"], y):
                raise KoaError("records of different validation knees cannot be compared")
    return np.asarray(y)


def seed_figure(by_seed: dict[int, dict], name: str | Callable, n_boot: int = 2000,
                seed: int = 0, bounds: tuple[float, float] | None = None) -> dict:
    """:func:`seed_aware` of a figure over a configuration's seeds. ``name`` is a
    confusion-matrix figure, or a function ``f(run, idx) -> (B,)`` of one seed's record
    and knee resamples (e.g. the gate's leaning). A confusion-matrix figure other than QWK
    lies in [0, 1], which bounds its interval; a function's ``bounds`` are given."""
    seeds = sorted(by_seed)
    y = _check_same_knees([by_seed], seeds)
    idx = knee_draws(len(y), n_boot, seed)
    full = np.arange(len(y))[None]
    f = name if callable(name) else (lambda run, i: boot_figures(y, run["pred"], i, name))
    point = np.array([f(by_seed[s], full)[0] for s in seeds])
    boot = np.stack([f(by_seed[s], idx) for s in seeds])
    if bounds is None and isinstance(name, str) and name != "qwk":
        bounds = (0.0, 1.0)
    return {**seed_aware(point, boot, seed, bounds=bounds), "seed_ids": seeds}


def seed_difference(a: dict[int, dict], b: dict[int, dict], name: str, n_boot: int = 2000,
                    seed: int = 0) -> dict:
    """:func:`seed_aware` of ``a`` minus ``b`` over the seeds both have (seed s of one
    against seed s of the other: paired by seed and by knee)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise KoaError("no seed is shared by the two configurations")
    y = _check_same_knees([a, b], seeds)
    idx = knee_draws(len(y), n_boot, seed)
    full = np.arange(len(y))[None]
    point = np.array([boot_figures(y, a[s]["pred"], full, name)[0]
                      - boot_figures(y, b[s]["pred"], full, name)[0] for s in seeds])
    boot = np.stack([boot_figures(y, a[s]["pred"], idx, name)
                     - boot_figures(y, b[s]["pred"], idx, name) for s in seeds])
    return {**seed_aware(point, boot, seed, bounds=(-1.0, 1.0) if name != "qwk" else None),
            "seed_ids": seeds}


def borrowed_spread(run: dict, baseline: dict[int, dict], name: str, n_boot: int = 2000,
                    seed: int = 0) -> dict:
    """A one-seed ``run`` minus a baseline with several seeds. The run's own seed spread is
    unknown, so the baseline's stands in: each resample adds to the knee-resampled
    difference (run minus the baseline's mean) a draw of the baseline's seed deviation,
    scaled by √(1 + 1/k) (the run's one seed plus the baseline's mean over k)."""
    seeds = sorted(baseline)
    if len(seeds) < 2:
        raise KoaError("borrowed_spread: the baseline needs two seeds or more")
    y = _check_same_knees([baseline, {seeds[0]: run}], seeds[:1])
    _check_same_knees([baseline], seeds)
    idx = knee_draws(len(y), n_boot, seed)
    full = np.arange(len(y))[None]
    base_point = np.array([boot_figures(y, baseline[s]["pred"], full, name)[0] for s in seeds])
    base_boot = np.stack([boot_figures(y, baseline[s]["pred"], idx, name) for s in seeds])
    run_point = boot_figures(y, run["pred"], full, name)[0]
    knee = boot_figures(y, run["pred"], idx, name) - base_boot.mean(axis=0)
    k = len(seeds)
    pick = np.random.default_rng(seed + 1).integers(0, k, size=idx.shape[0])
    dev = base_boot[pick, np.arange(idx.shape[0])] - base_boot.mean(axis=0)
    kept = knee + np.sqrt(k / (k - 1)) * np.sqrt(1 + 1 / k) * dev
    q = [2.5, 97.5]
    return {"value": float(run_point - base_point.mean()), "ci": _percentiles(kept, q),
            "knee_ci": _percentiles(knee, q), "per_seed": [float(run_point - v)
                                                          for v in base_point],
            "seeds": 1, "seed_spread": True, "borrowed_from": seeds}
