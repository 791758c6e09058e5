"""The verdict words, each from its rule."""

import pytest

from koa_core.experiments import verdicts as v


@pytest.mark.parametrize("ci,one_sided,handicap,word", [
    ([-3.0, 3.0], True, None, v.REPRODUCED),
    ([-8.0, 3.0], True, None, v.INCONCLUSIVE),
    ([1.0, 9.0], True, None, v.EXCEEDS),
    ([1.0, 9.0], False, None, v.NOT_REPRODUCED),
    ([-9.0, -1.0], True, None, v.NOT_REPRODUCED),
    ([-9.0, -1.0], True, "trained from scratch", v.NOT_COMPARABLE),
    ([1.0, 9.0], True, "trained from scratch", v.EXCEEDS),
])
def test_value_verdict(ci, one_sided, handicap, word):
    assert v.value_verdict(ci, 5.0, one_sided, handicap) == word


def test_difference_threshold_and_ablation_words():
    assert v.difference_verdict([0.1, 2]) == v.REPRODUCED
    assert v.difference_verdict([-2, -0.1]) == v.NOT_REPRODUCED
    assert v.difference_verdict([-2, 2]) == v.INCONCLUSIVE
    assert v.threshold_verdict([0.45, 0.6], 0.4) == v.REPRODUCED
    assert v.threshold_verdict([0.2, 0.35], 0.4) == v.NOT_REPRODUCED
    assert v.ablation_verdict([0.1, 2]) == v.HELPS
    assert v.ablation_verdict([-2, -0.1]) == v.HURTS
    assert v.ablation_verdict([-2, 2]) == v.INCONCLUSIVE
    assert v.REPRODUCED not in {v.ablation_verdict(c) for c in ([1, 2], [-2, -1], [-1, 1])}


def test_paper_error_is_binomial_on_the_support():
    assert v.paper_error(72.06, 1656, 100) == pytest.approx(1.103, abs=1e-3)  # ±2.2 at 95 %
    assert v.paper_error(0.7843, 51) == pytest.approx(0.0576, abs=1e-3)
