"""Conformal prediction sets: the finite-sample quantile, the ordinal and LAC scores by hand,
agreement with crepes on the scores they share, and the coverage they promise."""

import math

import numpy as np
import pytest

from koa_core.errors import KoaError
from koa_core.metrics import conformal as cp


def test_a_set_by_hand():
    """p = (0.05, 0.50, 0.30, 0.10, 0.05): the run grows from KL1 to KL2 (0.30 > 0.05), then
    KL3 (0.10 > 0.05), then KL0 (a tie with KL4 grows upwards: KL4 first)."""
    p = np.array([[0.05, 0.50, 0.30, 0.10, 0.05]])
    s = cp.grade_scores(p, "ordinal")[0]
    assert s.tolist() == pytest.approx([1.00, 0.50, 0.80, 0.90, 0.95])
    c = cp.Conformal("ordinal", 0.9, False, (0.85,), 100)
    assert c.sets(p)[0].tolist() == [False, True, True, False, False]
    assert cp.set_label(c.sets(p)[0]) == "KL1–KL2"
    assert cp.Conformal("ordinal", 0.9, False, (0.40,), 100).sets(p)[0].sum() == 1  # never empty
    lac = cp.Conformal("lac", 0.9, False, (0.92,), 100).sets(p)[0]
    assert lac.tolist() == [False, True, True, True, False]
    # class-conditional: KL3 within its own threshold, KL2 not: the run holds both
    cc = cp.Conformal("ordinal", 0.9, True, (0, 0.6, 0.7, 0.95, 0), 100).sets(p)[0]
    assert cc.tolist() == [False, True, True, True, False]


def test_the_finite_sample_quantile():
    s = np.arange(1, 10, dtype=float)  # 9 scores
    assert cp.quantile(s, 0.9) == 9.0  # rank ⌈10 · 0.9⌉ = 9
    assert cp.quantile(s, 0.5) == 5.0
    assert math.isinf(cp.quantile(s[:8], 0.9))  # rank 9 of 8: every grade


def _data(n, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 5)) + np.linspace(0, 1, 5)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])  # a calibrated model
    return p, y


@pytest.mark.parametrize("method", cp.METHODS)
def test_thresholds_agree_with_crepes(method):
    """crepes (a conformal library) given the same scores gives the same sets: marginal and
    Mondrian (one threshold per grade), non-smoothed p-values. crepes keeps a grade whose
    p-value equals 1 − confidence exactly, the split-conformal quantile does not (Vovk's
    set is p > α): where (n + 1)·α is a whole number the two differ by one rank, so crepes
    is asked for a confidence a hair below."""
    from crepes import ConformalClassifier

    conf = 0.9 - 1e-9

    p, y = _data(400, 0)
    q, yq = _data(300, 1)
    cal = cp.grade_scores(p, method)[np.arange(len(y)), y]
    test = cp.grade_scores(q, method)
    ours = cp.fit_conformal(p, y, 0.9, method)
    ref = ConformalClassifier().fit(cal)
    theirs = np.stack([ref.predict_set(test[:, [k]].repeat(2, 1), confidence=conf,
                                       smoothing=False)[:, 0] for k in range(5)], 1)
    assert np.array_equal(test <= ours.thresholds[0], theirs.astype(bool))
    cc = cp.fit_conformal(p, y, 0.9, method, class_conditional=True)
    mond = ConformalClassifier().fit(cal, bins=y)
    theirs = np.stack([mond.predict_set(test[:, [k]].repeat(2, 1), bins=np.full(len(q), k),
                                        confidence=conf, smoothing=False)[:, 0]
                       for k in range(5)], 1)
    assert np.array_equal(test <= np.array(cc.thresholds)[None], theirs.astype(bool))


def test_sets_cover_what_they_promise_and_ordinal_sets_are_runs():
    """200 random halves of 2,000 exchangeable knees: the mean coverage of 90 % sets sits at
    0.90 (the guarantee: at least 0.90 on average, at most 0.90 + 1/(n+1)); every ordinal
    set, marginal or per grade, is a run of neighbouring grades."""
    p, y = _data(2000, 2)
    rng = np.random.default_rng(3)
    cover = {False: [], True: []}
    for _ in range(200):
        idx = rng.permutation(len(y))
        a, b = idx[:1000], idx[1000:]
        for cc in (False, True):
            c = cp.fit_conformal(p[a], y[a], 0.9, "ordinal", class_conditional=cc)
            sets = c.sets(p[b])
            cover[cc].append(cp.set_stats(sets, y[b])["coverage"])
            first = sets.argmax(1)
            assert (sets.sum(1) == 5 - sets[:, ::-1].argmax(1) - first).all()  # one run
    assert 0.895 <= np.mean(cover[False]) <= 0.91
    assert np.mean(cover[True]) >= 0.895


def test_class_conditional_needs_knees_of_every_grade():
    assert cp.least_knees(0.9) == 9 and cp.least_knees(0.8) == 4
    assert math.isinf(cp.quantile(np.ones(8), 0.9)) and cp.quantile(np.ones(9), 0.9) == 1
    p, y = _data(200, 4)
    y[np.flatnonzero(y == 4)[8:]] = 3  # eight KL4 knees: one short at 90 %
    with pytest.raises(KoaError, match="at least 9 calibration knees of every grade.*8 .KL4"):
        cp.fit_conformal(p, y, class_conditional=True)
    with pytest.raises(KoaError, match="at least 9 calibration knees; got 5"):
        cp.fit_conformal(p[:5], y[:5])
    with pytest.raises(KoaError, match="between 0 and 1"):
        cp.fit_conformal(p, y, coverage=1.2)


def test_a_sidecar_entry_round_trips_and_a_bad_one_is_one_line():
    p, y = _data(300, 5)
    c = cp.fit_conformal(p, y, 0.9, "ordinal", class_conditional=True)
    assert cp.Conformal.from_dict(c.to_dict()) == c
    for bad in ({"method": "vibes", "coverage": 0.9, "class_conditional": False,
                 "thresholds": [0.5], "n": 10}, {"method": "ordinal"},
                {**c.to_dict(), "thresholds": [0.5]}):
        with pytest.raises(KoaError, match="conformal calibration is malformed"):
            cp.Conformal.from_dict(bad)


def test_set_stats_and_labels():
    sets = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 1, 0, 0]], bool)
    s = cp.set_stats(sets, np.array([1, 3, 2]))
    assert s["coverage"] == pytest.approx(2 / 3) and s["mean_set_size"] == pytest.approx(5 / 3)
    assert s["per_grade"]["3"] == {"coverage": 0.0, "mean_set_size": 1.0, "n": 1}
    assert s["sizes"] == {"1": 1, "2": 2, "3+": 0}
    assert [cp.set_label(r) for r in sets] == ["KL0–KL1", "KL2", "KL0, KL2"]


@pytest.mark.parametrize("coverage", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_a_coverage_outside_zero_one_is_refused_not_looped_on(coverage):
    """least_knees searches for the n whose quantile is finite: at coverage 1 there is
    none, so every fit refuses such a coverage there, in one line, instead of looping."""
    p, y = _data(50, 1)
    for call in (lambda: cp.least_knees(coverage), lambda: cp.too_few(y, coverage, False),
                 lambda: cp.fit_conformal(p, y, coverage)):
        with pytest.raises(KoaError, match="^--coverage must lie between 0 and 1"):
            call()


def test_a_set_given_by_its_grades_reads_as_the_boolean_row_does():
    for grades in ([4], [1, 2, 3], [0, 2], [0, 1, 2, 3, 4]):
        assert cp.grades_label(grades) == cp.set_label(np.isin(np.arange(5), grades))
    assert cp.grades_label([1, 2, 3]) == "KL1–KL3" and cp.grades_label([0, 2]) == "KL0, KL2"
