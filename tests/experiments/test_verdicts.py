"""The verdict words, each from its row of the one rule table, on crafted evidence."""

import pytest

from koa_core.experiments import verdicts as v
from koa_core.paper import ABOUT, AT_LEAST, AT_MOST


def _value(lo, hi, direction=AT_LEAST, tol=5.0, seeds=3, **kw):
    return v.judge(v.Evidence("value", lo, hi, seeds, direction, tol, **kw))


@pytest.mark.parametrize("lo,hi,direction,word", [
    # a floor (the paper's headline accuracy: at least 72.06 %)
    (-3.0, 3.0, AT_LEAST, v.REPRODUCED),
    (-4.0, 20.0, AT_LEAST, v.REPRODUCED),  # the floor holds; the top is open
    (-8.0, 3.0, AT_LEAST, v.INCONCLUSIVE),
    (1.0, 9.0, AT_LEAST, v.EXCEEDS),
    (-27.7, -4.5, AT_LEAST, v.NOT_REPRODUCED),  # short, though the top is within tolerance
    # a value: symmetric
    (-3.0, 3.0, ABOUT, v.REPRODUCED),
    (-3.0, 8.0, ABOUT, v.INCONCLUSIVE),
    (0.5, 9.0, ABOUT, v.EXCEEDS),
    (-9.0, -0.5, ABOUT, v.NOT_REPRODUCED),
    # a ceiling (KL3 "remained difficult": its recall at most 0.538)
    (-0.30, -0.10, AT_MOST, v.REPRODUCED),
    (0.002, 0.23, AT_MOST, v.NOT_REPRODUCED),  # recalled better than the paper says it can be
    (-0.02, 0.20, AT_MOST, v.INCONCLUSIVE),
])
def test_value_words_follow_the_direction_the_paper_claims(lo, hi, direction, word):
    tol = 0.065 if direction == AT_MOST else 5.0  # KL3 recall's: the paper's error on 223
    assert _value(lo, hi, direction, tol) == word


def test_exceeds_is_never_the_word_of_a_ceiling():
    assert _value(1.0, 9.0, AT_MOST) == v.NOT_REPRODUCED


def test_the_tolerance_is_no_tighter_than_the_papers_own_error():
    """KL4 recall on 51 test knees has a 95 % sampling error of ±0.113, over twice the
    least tolerance: with it, a figure on the paper's value can read "reproduced"."""
    assert v.tolerance(0.7843, 51) == pytest.approx(1.96 * 0.0576, abs=1e-3)
    assert v.tolerance(72.06, 1656, 100) == v.TOLERANCE["points"]
    assert v.tolerance(0.6712, 1656) == v.TOLERANCE["fraction"]
    ci = (-0.10, 0.11)  # the paper's own error on each side, and a little of ours
    assert _value(*ci, tol=v.TOLERANCE["fraction"]) == v.INCONCLUSIVE
    assert _value(*ci, tol=v.tolerance(0.7843, 51)) == v.REPRODUCED


def test_the_guards_come_before_any_interval():
    assert _value(1, 9, seeds=2) == v.TOO_FEW_SEEDS
    assert _value(1, 9, needs_raw=True, enhanced=True, seeds=2) == v.NOT_TESTABLE
    assert _value(1, 9, needs_raw=True, enhanced=False) == v.EXCEEDS
    assert _value(1, 9, needs_raw=False, enhanced=True) == v.EXCEEDS
    step = v.Evidence("difference", 1.0, 5.0, 3, confounders=("epochs run",))
    assert v.judge(step) == v.CONFOUNDED
    assert v.judge(v.Evidence("difference", 1.0, 5.0, 2, confounders=("epochs",))) == \
        v.TOO_FEW_SEEDS
    # a value claim has one arm: nothing to confound
    assert _value(1, 9, confounders=("x",)) == v.EXCEEDS


def test_not_comparable_needs_a_record_that_measures_the_explanation():
    assert _value(-9, -1) == v.NOT_REPRODUCED
    assert _value(-9, -1, explained_by="early stopping: without it ...") == v.NOT_COMPARABLE
    # an explanation does not soften a figure that is not short
    assert _value(-3, 3, explained_by="x") == v.REPRODUCED


def test_steps_thresholds_and_rows_of_ours():
    def judge(kind, lo, hi, seeds=3):
        return v.judge(v.Evidence(kind, lo, hi, seeds))

    assert judge("difference", 0.1, 2) == v.REPRODUCED
    assert judge("difference", -2, -0.1) == v.NOT_REPRODUCED
    assert judge("difference", -2, 2) == v.INCONCLUSIVE
    assert judge("threshold", 0.05, 0.2) == v.REPRODUCED
    assert judge("ours", 0.1, 2) == v.HELPS
    assert judge("ours", -2, -0.1) == v.HURTS
    assert judge("ours", -2, 2) == v.INCONCLUSIVE
    assert judge("ours", 1, 2, seeds=1) == v.TOO_FEW_SEEDS
    assert v.REPRODUCED not in {judge("ours", *c) for c in ([1, 2], [-2, -1], [-1, 1])}
    assert judge("difference", float("nan"), float("nan")) == v.INCONCLUSIVE
    with pytest.raises(ValueError, match="kind"):
        judge("vibes", 0, 1)


def test_the_rule_table_is_what_judge_reads():
    """Every word is reachable through a row of :data:`RULES`, the table the landing page
    prints, and the last row catches everything."""
    assert {r.word for r in v.RULES} == set(v.WORDS)
    assert v.RULES[-1].word == v.INCONCLUSIVE
    assert v.RULES[0].word == v.NOT_TESTABLE and v.RULES[1].word == v.TOO_FEW_SEEDS


def test_paper_error_is_binomial_on_the_support():
    assert v.paper_error(72.06, 1656, 100) == pytest.approx(1.103, abs=1e-3)  # ±2.2 at 95 %
    assert v.paper_error(0.7843, 51) == pytest.approx(0.0576, abs=1e-3)
