"""Checkpoint selection on validation and early stopping (paper §2.4, §3.1: the model is
chosen on the validation split, never the test split).

After every epoch the selection metric (validation macro F1 by default) is offered to
:class:`Selection`: a strictly higher score than every earlier epoch selects this epoch (a
tie keeps the earlier one; NaN never selects), and training stops before the next epoch
once ``patience`` epochs in a row brought no better score.

``select_metric: last`` is fixed-length training: every epoch is the selected one (its
score is its epoch number), nothing stops early, and the record's figure is the last
epoch's, chosen by nothing measured on the validation knees.
"""

from __future__ import annotations

import math

__all__ = ["LAST", "Selection", "score"]

LAST = "last"


def score(row: dict, metric: str) -> float:
    """The selection score of one epoch's history row: its validation ``metric``, or its
    epoch number for :data:`LAST`."""
    return float(row["epoch"]) if metric == LAST else float(row[f"val_{metric}"])


class Selection:
    """The best score so far and the epochs since it; ``stop`` once ``patience`` ran out."""

    def __init__(self, patience: int, best: float = -math.inf, stale: int = 0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = int(patience)
        self.best = float(best)
        self.stale = int(stale)

    def update(self, score: float) -> bool:
        """Offer one epoch's score; True if this epoch is now the selected one."""
        improved = score > self.best  # False for NaN
        if improved:
            self.best, self.stale = float(score), 0
        else:
            self.stale += 1
        return improved

    @property
    def stop(self) -> bool:
        """True once ``patience`` epochs in a row have not improved on the best score."""
        return self.stale >= self.patience
