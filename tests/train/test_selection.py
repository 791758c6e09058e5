"""Selection on validation and early stopping (koa_core.train.selection)."""

import math

import pytest

from koa_core.train.selection import Selection


def test_scripted_scores_select_the_best_epoch_and_stop_after_patience():
    sel = Selection(patience=2)
    picked, stopped_before = [], None
    for epoch, score in enumerate([0.2, 0.6, 0.4, 0.3, 0.9], start=1):
        if sel.stop:
            stopped_before = epoch
            break
        if sel.update(score):
            picked.append(epoch)
    assert picked == [1, 2] and stopped_before == 5
    assert sel.best == 0.6 and sel.stale == 2


def test_a_tie_keeps_the_earlier_epoch_and_nan_never_selects():
    sel = Selection(patience=5)
    assert sel.update(0.5) is True
    assert sel.update(0.5) is False and sel.stale == 1
    assert sel.update(math.nan) is False and sel.stale == 2 and sel.best == 0.5
    assert sel.update(0.5000001) is True and sel.stale == 0


def test_stop_is_exactly_at_patience():
    sel = Selection(patience=3)
    sel.update(1.0)
    for k in range(1, 4):
        assert not sel.stop
        sel.update(0.0)
        assert sel.stale == k
    assert sel.stop


def test_resume_carries_best_and_stale():
    sel = Selection(patience=2, best=0.7, stale=1)
    assert not sel.stop
    assert sel.update(0.69) is False and sel.stop
    assert Selection(patience=2, best=0.7, stale=1).update(0.71) is True


def test_first_finite_score_is_always_selected_and_patience_is_checked():
    assert Selection(patience=1).update(-1e9) is True
    with pytest.raises(ValueError):
        Selection(patience=0)


def test_patience_message():
    with pytest.raises(ValueError, match="^patience must be >= 1, got 0$"):
        Selection(patience=0)
    assert Selection(patience=1).best == -math.inf


def test_a_fresh_selection_has_not_stopped():
    sel = Selection(patience=1)
    assert sel.stale == 0 and not sel.stop  # the first epoch always runs


def test_last_scores_each_epoch_by_its_number():
    """Fixed-length training: every epoch is selected in turn, nothing stops early."""
    from koa_core.train.selection import LAST, score

    sel = Selection(patience=1)
    for e, f1 in enumerate([0.6, 0.4, 0.3], 1):
        row = {"epoch": e, "val_macro_f1": f1}
        assert sel.update(score(row, LAST)) is True and not sel.stop
        assert score(row, "macro_f1") == f1
