"""Seed-aware intervals: seeds and knees resampled, on crafted predictions."""

import numpy as np
import pytest

from koa_core.errors import KoaError
from koa_core.experiments import intervals

Y = np.repeat(np.arange(5), [320, 150, 200, 100, 30])


def _pred(rate, seed):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(len(Y)) < rate, Y, (Y + rng.integers(1, 5, len(Y))) % 5)


def _runs(preds):
    return {s: {"grade": Y, "pred": p, "gate_raw": None} for s, p in enumerate(preds, 1)}


def test_agreeing_seeds_give_the_knee_only_interval():
    same = _pred(0.6, 0)
    one = intervals.seed_figure(_runs([same]), "accuracy", n_boot=500)
    three = intervals.seed_figure(_runs([same, same, same]), "accuracy", n_boot=500)
    assert three["ci"] == pytest.approx(three["knee_ci"])
    assert three["ci"] == pytest.approx(one["ci"])  # the same knee draws
    assert not one["seed_spread"] and three["seed_spread"]


def test_disagreeing_seeds_widen_the_interval_to_cover_them():
    runs = _runs([_pred(0.45, 1), _pred(0.60, 2), _pred(0.75, 3)])
    r = intervals.seed_figure(runs, "accuracy", n_boot=1000)
    lo, hi = r["ci"]
    assert lo <= min(r["per_seed"]) and hi >= max(r["per_seed"])
    assert hi - lo > 2 * (r["knee_ci"][1] - r["knee_ci"][0])
    assert r["value"] == pytest.approx(np.mean(r["per_seed"]))


def test_seed_difference_is_paired_by_seed_and_knee():
    a = _runs([_pred(0.7, 1), _pred(0.7, 2)])
    b = {s: {**v, "pred": v["pred"].copy()} for s, v in a.items()}
    d = intervals.seed_difference(a, b, "accuracy", n_boot=300)
    assert d["value"] == 0 and d["ci"] == [0, 0]  # identical arms: no spread at all
    b[2]["pred"] = _pred(0.5, 9)
    d = intervals.seed_difference(a, b, "macro_f1", n_boot=300)
    assert d["per_seed"][0] == 0 and d["per_seed"][1] > 0
    with pytest.raises(KoaError, match="no seed"):
        intervals.seed_difference(a, {7: a[1]}, "accuracy")


def test_borrowed_spread_uses_the_baseline_seeds():
    base = _runs([_pred(0.5, 1), _pred(0.6, 2), _pred(0.7, 3)])
    run = {"grade": Y, "pred": _pred(0.65, 4)}
    r = intervals.borrowed_spread(run, base, "accuracy", n_boot=1000)
    assert r["value"] == pytest.approx((run["pred"] == Y).mean()
                                       - np.mean([(v["pred"] == Y).mean()
                                                  for v in base.values()]))
    assert r["ci"][0] < r["value"] < r["ci"][1]
    assert r["ci"][1] - r["ci"][0] > 1.5 * (r["knee_ci"][1] - r["knee_ci"][0])
    tight = _runs([_pred(0.6, 1)] * 3)
    t = intervals.borrowed_spread(run, tight, "accuracy", n_boot=1000)
    assert t["ci"] == pytest.approx(t["knee_ci"])
    with pytest.raises(KoaError, match="two seeds"):
        intervals.borrowed_spread(run, _runs([_pred(0.6, 1)]), "accuracy")


def test_per_grade_figures_match_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    p = _pred(0.6, 5)
    full = np.arange(len(Y))[None]
    for g in range(5):
        assert intervals.boot_figures(Y, p, full, f"recall:{g}")[0] == pytest.approx(
            recall_score(Y, p, labels=[g], average="macro"))
        assert intervals.boot_figures(Y, p, full, f"precision:{g}")[0] == pytest.approx(
            precision_score(Y, p, labels=[g], average="macro"))
        assert intervals.boot_figures(Y, p, full, f"f1:{g}")[0] == pytest.approx(
            f1_score(Y, p, labels=[g], average="macro"))
    assert intervals.boot_figures(Y, p, full, "weighted_f1")[0] == pytest.approx(
        f1_score(Y, p, average="weighted"))
    with pytest.raises(KoaError, match="unknown figure"):
        intervals.boot_figures(Y, p, full, "recall:7")
