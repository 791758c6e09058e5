"""Evaluation metrics: the paper's classification report (§3, Tables 3-4, Figs 5-6) plus
ordinal metrics and bootstrap confidence intervals.

Point estimates come from scikit-learn (accuracy, per-class precision/recall/F1, macro and
weighted F1, the 5x5 confusion matrix, quadratic weighted kappa, MAE in grades). The paper
reports none of QWK, MAE or intervals; we add them because KL grading is ordinal and the
test set (1,656 images) is small enough for intervals to matter. Intervals are percentile
bootstrap over test samples, computed from per-resample confusion matrices in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from koa_core.errors import KoaError

__all__ = ["LABELS", "Z95", "classification_metrics", "confusion_figure", "confusion_scores",
           "format_report", "majority_rate", "wilson"]

LABELS = (0, 1, 2, 3, 4)
_K = len(LABELS)
# Quadratic disagreement weights (i - j)^2 / (K - 1)^2, as in cohen_kappa_score.
_QW = ((np.arange(_K)[:, None] - np.arange(_K)[None, :]) ** 2 / (_K - 1) ** 2).astype(float)
# Cap on resampled indices held at once (n_boot x n), to bound memory for large sets.
_BOOT_CHUNK_ELEMS = 4_000_000


def _as_grades(y: Any, what: str) -> np.ndarray:
    arr = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    if arr.ndim != 1:
        raise KoaError(f"{what}: expected a 1-D sequence of grades, got shape {arr.shape}")
    if (arr.size and not np.issubdtype(arr.dtype, np.integer)
            and (not np.issubdtype(arr.dtype, np.number) or not np.all(np.mod(arr, 1) == 0))):
        raise KoaError(f"{what}: grades must be integers 0..{_K - 1}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= _K):
        raise KoaError(f"{what}: grades must lie in 0..{_K - 1}, "
                       f"found {int(arr.min())}..{int(arr.max())}")
    return arr


Z95 = 1.959963984540054  # the normal 97.5 % quantile


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` of ``n``."""
    if not n > 0 or not np.isfinite(p):
        return (float("nan"), float("nan"))
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / d
    return (float(centre - half), float(centre + half))


def majority_rate(y_true: Sequence[int] | np.ndarray) -> float:
    """Share of the most frequent grade: the accuracy of always predicting it."""
    yt = _as_grades(y_true, "y_true")
    if yt.size == 0:
        raise KoaError("majority_rate: no samples")
    return float(np.bincount(yt, minlength=_K).max() / yt.size)


def _qwk(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # sklearn returns NaN (0/0) when both raters use one and the same grade; observed
    # disagreement is then 0, i.e. perfect agreement, which we report as 1.0.
    if np.array_equal(y_true, y_pred):
        return 1.0
    from sklearn.metrics import cohen_kappa_score  # imported here: `koa predict` never needs it

    return float(cohen_kappa_score(y_true, y_pred, labels=list(LABELS), weights="quadratic"))


def confusion_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro F1 and QWK for a stack of confusion matrices ``(m, K, K)``.

    Same conventions as the point estimates: macro F1 averages over grades present in
    y_true or y_pred (sklearn's default); QWK is 1.0 when there is no disagreement.
    """
    cm = cm.astype(float)
    n = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true_n = cm.sum(axis=2)
    pred_n = cm.sum(axis=1)
    denom = true_n + pred_n
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    macro_f1 = (f1 * present).sum(axis=1) / present.sum(axis=1)
    accuracy = tp.sum(axis=1) / n

    observed = (cm * _QW).sum(axis=(1, 2))
    expected = (true_n[:, :, None] * pred_n[:, None, :] / n[:, None, None] * _QW).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        qwk = np.where(observed == 0, 1.0, 1.0 - observed / expected)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "qwk": qwk}


def confusion_figure(cm: np.ndarray, name: str) -> np.ndarray:
    """One figure for each confusion matrix of a stack ``(m, K, K)`` (rows true, columns
    predicted): ``accuracy``, ``macro_f1``, ``qwk`` (as :func:`confusion_scores`),
    ``weighted_f1`` (F1 weighted by true support, sklearn's ``average="weighted"``), or a
    grade's ``recall:G``, ``precision:G`` or ``f1:G``. A per-grade figure is NaN in a matrix
    where it is undefined (no true knee of the grade for recall, no prediction of it for
    precision); F1 is 0 where the grade is neither true nor predicted, as in sklearn."""
    cm = np.asarray(cm, float)
    if name in ("accuracy", "macro_f1", "qwk"):
        return confusion_scores(cm)[name]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true_n, pred_n = cm.sum(axis=2), cm.sum(axis=1)
    f1 = np.divide(2 * tp, true_n + pred_n, out=np.zeros_like(tp), where=true_n + pred_n > 0)
    if name == "weighted_f1":
        return (f1 * true_n).sum(axis=1) / true_n.sum(axis=1)
    kind, _, grade = name.partition(":")
    if kind not in ("recall", "precision", "f1") or grade not in {str(g) for g in LABELS}:
        raise KoaError(f"unknown figure {name!r} (accuracy, macro_f1, qwk, weighted_f1, "
                       "recall:G, precision:G, f1:G)")
    g = int(grade)
    if kind == "f1":
        return f1[:, g]
    support = true_n[:, g] if kind == "recall" else pred_n[:, g]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(support > 0, tp[:, g] / support, np.nan)


def _bootstrap(yt: np.ndarray, yp: np.ndarray, n_boot: int, seed: int,
               level: float) -> dict[str, Any]:
    rng = np.random.Generator(np.random.PCG64(seed))
    n = yt.size
    codes = yt * _K + yp  # one cell index per sample into the flattened K x K matrix
    chunk = max(1, _BOOT_CHUNK_ELEMS // n)
    scores: dict[str, list[np.ndarray]] = {"accuracy": [], "macro_f1": [], "qwk": []}
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        # Offset each resample's cell codes so one bincount builds all m matrices.
        flat = codes[idx] + (np.arange(m) * _K * _K)[:, None]
        cm = np.bincount(flat.ravel(), minlength=m * _K * _K).reshape(m, _K, _K)
        for key, vals in confusion_scores(cm).items():
            scores[key].append(vals)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out: dict[str, Any] = {}
    for key, parts in scores.items():
        vals = np.concatenate(parts)
        # nanquantile: a resample whose score is undefined is dropped, not propagated.
        if np.all(np.isnan(vals)):
            out[key] = [None, None]
        else:
            lo, hi = np.nanquantile(vals, [lo_q, hi_q])
            out[key] = [float(lo), float(hi)]
    out["level"] = float(level)
    out["n_boot"] = int(vals.size)  # the resamples drawn, counted
    out["seed"] = int(seed)
    return out


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, QWK, MAE, per-grade report, confusion matrix and CIs.

    Grades are 0..4; all five always appear in ``per_class`` (keys ``"0"``..``"4"``,
    zero_division=0) and in the 5x5 ``confusion_matrix`` (rows = true grade).
    ``macro_f1`` averages over grades present in ``y_true`` or ``y_pred`` (sklearn's
    default; a grade absent from both has no defined F1); ``macro_avg`` and
    ``weighted_avg`` hold the matching precision/recall/f1. ``qwk`` is 1.0 for
    perfect predictions, even when only one grade occurs. ``ci`` holds percentile
    bootstrap intervals (``n_boot`` resamples of the samples, numpy ``Generator`` seeded
    with ``seed``) for accuracy, macro F1 and QWK, or is None when ``n_boot == 0``.
    Every value is a plain Python int/float/list/dict, ready for ``json.dumps``.
    """
    yt = _as_grades(y_true, "y_true")
    yp = _as_grades(y_pred, "y_pred")
    if yt.size != yp.size:
        raise KoaError(f"y_true has {yt.size} samples but y_pred has {yp.size}")
    if yt.size == 0:
        raise KoaError("classification_metrics: no samples")
    if n_boot < 0:
        raise KoaError(f"n_boot must be >= 0, got {n_boot}")
    if not 0 < ci < 1:
        raise KoaError(f"ci must be in (0, 1), got {ci}")

    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_absolute_error

    labels = list(LABELS)
    per_class, averages = _per_class_and_averages(yt, yp)
    out: dict[str, Any] = {
        "n": int(yt.size),
        "accuracy": float(accuracy_score(yt, yp)),
        "macro_f1": float(f1_score(yt, yp, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(yt, yp, average="weighted", zero_division=0)),
        "qwk": _qwk(yt, yp),
        "mae": float(mean_absolute_error(yt, yp)),
        "per_class": per_class,
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion_matrix": confusion_matrix(yt, yp, labels=labels).astype(int).tolist(),
        "ci": _bootstrap(yt, yp, int(n_boot), int(seed), float(ci)) if n_boot else None,
    }
    return out


def _per_class_and_averages(yt: np.ndarray, yp: np.ndarray) -> tuple[dict, dict]:
    """Precision, recall, F1 and support of every grade, and their macro and weighted
    averages over the grades present in ``yt`` or ``yp``."""
    from sklearn.metrics import precision_recall_fscore_support

    prec, rec, f1, support = precision_recall_fscore_support(
        yt, yp, labels=list(LABELS), zero_division=0)
    per_class = {
        str(c): {"precision": float(prec[i]), "recall": float(rec[i]),
                 "f1": float(f1[i]), "support": int(support[i])}
        for i, c in enumerate(LABELS)
    }
    averages = {}
    for avg in ("macro", "weighted"):
        # labels=None: average over grades present in y_true or y_pred (see docstring).
        p, r, f, _ = precision_recall_fscore_support(yt, yp, average=avg, zero_division=0)
        averages[avg] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    return per_class, averages


def _fmt_ci(ci: dict[str, Any] | None, key: str) -> str:
    if not ci or ci.get(key) is None or ci[key][0] is None:
        return ""
    lo, hi = ci[key]
    return f"  [{100 * ci['level']:.0f}% CI {lo:.4f}-{hi:.4f}]"


def format_report(metrics: dict[str, Any]) -> str:
    """Text table in the layout of the paper's Tables 3-4, then QWK, MAE and the CIs."""
    per_class = metrics["per_class"]
    n = metrics["n"]
    lines = [f"{'':>14}{'precision':>11}{'recall':>10}{'f1-score':>10}{'support':>10}", ""]
    for c in sorted(per_class, key=int):
        row = per_class[c]
        lines.append(f"{'KL' + c:>14}{row['precision']:>11.4f}{row['recall']:>10.4f}"
                     f"{row['f1']:>10.4f}{row['support']:>10d}")
    lines.append("")
    lines.append(f"{'accuracy':>14}{'':>11}{'':>10}{metrics['accuracy']:>10.4f}{n:>10d}")
    for name, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        avg = metrics.get(key)
        if avg is None:  # older dicts without the averages: print F1 only
            f1 = metrics["macro_f1" if key == "macro_avg" else "weighted_f1"]
            lines.append(f"{name:>14}{'':>11}{'':>10}{f1:>10.4f}{n:>10d}")
        else:
            lines.append(f"{name:>14}{avg['precision']:>11.4f}{avg['recall']:>10.4f}"
                         f"{avg['f1']:>10.4f}{n:>10d}")
    ci = metrics.get("ci")
    lines.append("")
    lines.append(f"accuracy {metrics['accuracy']:.4f}{_fmt_ci(ci, 'accuracy')}")
    lines.append(f"macro F1 {metrics['macro_f1']:.4f}{_fmt_ci(ci, 'macro_f1')}")
    lines.append(f"QWK      {metrics['qwk']:.4f}{_fmt_ci(ci, 'qwk')}")
    lines.append(f"MAE      {metrics['mae']:.4f} grades")
    if ci:
        lines.append(f"(percentile bootstrap, {ci['n_boot']} resamples, seed {ci['seed']})")
    return "\n".join(lines)
