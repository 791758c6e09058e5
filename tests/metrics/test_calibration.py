"""Calibration (beyond the paper): ECE, reliability bins, cross-fitted temperature."""

import numpy as np
import pytest

from koa_core.metrics import calibration as cal


def _overconfident(n=2000, seed=0, t_true=2.5):
    """Knees whose grade is drawn from softmax(z); the model reports softmax(t_true z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 5))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true_p])
    reported = np.exp(t_true * z)
    return reported / reported.sum(1, keepdims=True), y, true_p


def test_temperature_recovers_the_overconfidence_factor():
    probs, y, _ = _overconfident()
    assert cal.fit_temperature(probs, y) == pytest.approx(2.5, rel=0.1)


def test_temperature_scaling_keeps_the_grade_and_lowers_ece_out_of_fold():
    probs, y, _ = _overconfident()
    groups = np.arange(len(y)) // 2  # two knees per patient
    rep = cal.calibration_report(probs, y, groups)
    assert rep["after"]["ece"] < 0.5 * rep["before"]["ece"]
    assert rep["after"]["nll"] < rep["before"]["nll"]
    assert all(t == pytest.approx(2.5, rel=0.15) for t in rep["fold_temperatures"])
    scaled = cal.apply_temperature(probs, 2.5)
    assert (scaled.argmax(1) == probs.argmax(1)).all()


def test_cross_fitting_keeps_a_patients_knees_in_one_fold():
    probs, y, _ = _overconfident(n=200)
    groups = np.repeat(np.arange(100), 2)
    # a temperature fitted with one of a patient's knees would be fitted on that patient:
    # check the folds directly
    from sklearn.model_selection import GroupKFold
    for a, b in GroupKFold(2).split(probs, y, groups):
        assert not set(groups[a]) & set(groups[b])
    out, temps = cal.cross_fitted_temperature(probs, y, groups)
    assert len(temps) == 2 and np.allclose(out.sum(1), 1)


def test_ece_agrees_with_the_reliability_bins_and_is_zero_when_calibrated():
    probs, y, true_p = _overconfident(n=4000, t_true=1.0)
    bins = cal.reliability_bins(probs, y)
    n = sum(b["n"] for b in bins)
    from_bins = sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"])
    assert cal.ece(probs, y) == pytest.approx(from_bins, abs=1e-5)
    assert cal.ece(probs, y) < 0.03  # reported = true probabilities
    over, y2, _ = _overconfident(n=4000)
    assert cal.ece(over, y2) > 0.1


def test_reliability_bins_put_every_knee_in_exactly_one_bin():
    probs = np.array([[1.0, 0, 0, 0, 0], [0.2] * 5, [0.5, 0.5, 0, 0, 0]])
    bins = cal.reliability_bins(probs, np.array([0, 1, 1]), n_bins=5)
    assert sum(b["n"] for b in bins) == 3
    assert bins[-1]["n"] == 1 and bins[-1]["accuracy"] == 1.0  # confidence 1.0 in the last
    assert bins[0]["n"] == 1 and bins[0]["confidence"] == pytest.approx(0.2)


def test_read_only_arrays_give_no_warning():
    """Arrays from pandas may be read-only views: no warning may reach a notebook."""
    import warnings

    probs, y, _ = _overconfident(n=200)
    probs.setflags(write=False)
    y.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = cal.calibration_report(probs, y, np.arange(200) // 2)
    assert rep["n"] == 200
