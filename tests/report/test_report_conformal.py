"""The evaluation chapter's conformal table: half-splits per grade, and the sets without a
guarantee beside them."""

import numpy as np
import pytest

from koa_core.report.conformal import _plain_sets, half_split_table


def _data(n, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return p, np.array([rng.choice(5, p=row) for row in p])


def test_half_splits_reach_the_target_and_list_every_method():
    p, y = _data(1000, 0)
    t = half_split_table(p, y, coverage=0.9, splits=40)
    assert list(t.index) == ["ordinal (default)", "ordinal, per grade", "LAC",
                             "top-2 (no guarantee)", "probability ≥ target (no guarantee)"]
    assert t.loc["ordinal (default)", "coverage"] == pytest.approx(0.9, abs=0.02)
    assert (t.loc["ordinal, per grade", [f"KL{g} coverage" for g in range(5)]] >= 0.85).all()
    assert t.loc["top-2 (no guarantee)", "mean set size"] == 2.0
    assert (t["splits"] == 40).all()


def test_a_method_a_half_cannot_fit_is_left_out():
    p, y = _data(200, 1)
    y[np.flatnonzero(y == 4)[6:]] = 3  # six KL4 knees: three a half, too few per grade
    assert "ordinal, per grade" not in half_split_table(p, y, splits=3).index


def test_the_sets_without_a_guarantee_by_hand():
    p = np.array([[0.05, 0.50, 0.30, 0.10, 0.05]])
    assert _plain_sets(p, "top2", 0.9)[0].tolist() == [False, True, True, False, False]
    # 0.50 + 0.30 + 0.10 reaches 0.9: three grades
    assert _plain_sets(p, "mass", 0.9)[0].tolist() == [False, True, True, True, False]
