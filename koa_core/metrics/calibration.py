"""Calibration of the grade probabilities (beyond the paper, which reports none).

A grade with a probability is only useful to a clinician if the probability means
something: of the knees given 0.8, about 80 % should have that grade. Measured here:

* the expected calibration error (ECE, 15 equal-width confidence bins, L1; torchmetrics'
  ``multiclass_calibration_error``) and the negative log-likelihood;
* the reliability diagram's bins (mean confidence, accuracy, count);
* temperature scaling (Guo et al. 2017): probabilities ``softmax(log p / T)`` with one
  ``T`` fitted by minimising the NLL. Fitted and judged on the same validation knees it
  would flatter itself, so :func:`cross_fitted_temperature` fits ``T`` on one half of the
  patients and applies it to the other (and back): every knee is scaled by a temperature
  fitted without it.

``koa calibrate`` fits ``T`` on a checkpoint's validation knees and stores it in the
checkpoint's sidecar (:func:`sidecar_temperature` reads it back); every backend then reports
``softmax(log p / T)``. The grade, an argmax, is the same with or without it.
"""

from __future__ import annotations

import math

import numpy as np
from torchmetrics.functional.classification import multiclass_calibration_error

from koa_core.errors import KoaError

__all__ = ["apply_temperature", "calibration_report", "cross_fitted_temperature", "ece",
           "fit_temperature", "nll", "patient_folds", "reliability_bins",
           "sidecar_temperature"]

N_BINS = 15


def _logp(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """``softmax(log p / t)`` row by row (``t`` > 1 softens, < 1 sharpens)."""
    z = _logp(probs) / float(t)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def sidecar_temperature(sidecar: dict) -> float | None:
    """The temperature ``koa calibrate`` stored in a checkpoint's sidecar, or None."""
    cal = sidecar.get("calibration")
    if cal is None:
        return None
    try:
        t = float(cal["temperature"])
    except (KeyError, TypeError, ValueError):
        raise KoaError("checkpoint sidecar: calibration.temperature is missing or not a "
                       "number (run koa calibrate again)") from None
    if not math.isfinite(t) or t <= 0:
        raise KoaError(f"checkpoint sidecar: calibration.temperature must be a positive "
                       f"number (got {t})")
    return t


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true grades."""
    return float(-_logp(probs)[np.arange(len(y)), np.asarray(y)].mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the NLL of ``y`` (bounded 1-D search over
    log T)."""
    from scipy.optimize import minimize_scalar

    r = minimize_scalar(lambda lt: nll(apply_temperature(probs, np.exp(lt)), y),
                        bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                        options={"xatol": 1e-4})
    return float(np.exp(r.x))


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top-1 confidence (L1, equal-width bins)."""
    import torch

    # copies: the arrays may be read-only views (pandas), which torch warns about
    p = torch.tensor(np.array(probs, np.float32))
    return float(multiclass_calibration_error(p, torch.tensor(np.array(y)), p.shape[1],
                                              n_bins=n_bins, norm="l1"))


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per confidence bin (equal width on [0, 1]): its range, the knees in it, their mean
    top-1 confidence and their accuracy (None for an empty bin)."""
    probs = np.asarray(probs)
    conf, pred = probs.max(1), probs.argmax(1)
    hit = pred == np.asarray(y)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = which == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                    "confidence": float(conf[m].mean()) if m.any() else None,
                    "accuracy": float(hit[m].mean()) if m.any() else None})
    return out


def patient_folds(groups, folds: int = 2, seed: int = 0):
    """(fit, apply) index pairs over ``folds`` folds of patients (``groups``: one patient id
    per knee; a patient's knees share a fold), the patients shuffled by ``seed``
    (GroupKFold itself is deterministic by group size)."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    uniq = np.unique(groups)
    code = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq))))
    g = np.array([code[v] for v in groups])
    return list(GroupKFold(n_splits=folds).split(g, g, g))


def cross_fitted_temperature(probs: np.ndarray, y: np.ndarray, groups: list | np.ndarray,
                             folds: int = 2, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Probabilities scaled by temperatures fitted on the other folds of patients
    (``groups``: one patient id per knee; both knees of a patient share a fold).
    Returns the scaled probabilities and the fold temperatures."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    out = np.empty_like(probs)
    temps = []
    for fit_idx, apply_idx in patient_folds(groups, folds, seed):
        t = fit_temperature(probs[fit_idx], y[fit_idx])
        temps.append(t)
        out[apply_idx] = apply_temperature(probs[apply_idx], t)
    return out, temps


def calibration_report(probs: np.ndarray, y: np.ndarray, groups, n_bins: int = N_BINS) -> dict:
    """ECE, NLL and reliability bins before and after cross-fitted temperature scaling,
    and the temperature fitted on all the knees (what a shipped model would carry)."""
    scaled, temps = cross_fitted_temperature(probs, y, groups)
    return {
        "n": int(len(y)), "n_bins": n_bins,
        "before": {"ece": ece(probs, y, n_bins), "nll": nll(probs, y),
                   "bins": reliability_bins(probs, y, n_bins)},
        "after": {"ece": ece(scaled, y, n_bins), "nll": nll(scaled, y),
                  "bins": reliability_bins(scaled, y, n_bins)},
        "fold_temperatures": temps,
        "temperature_all": fit_temperature(probs, y),
    }
