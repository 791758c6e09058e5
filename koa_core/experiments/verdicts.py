"""The scorecard's verdict words and the one table of rules that chooses them (§3).

A claim's verdict is read off its :class:`Evidence` by :func:`judge`, which walks
:data:`RULES` in order and returns the first rule that applies; the landing page prints the
same table. The rules fail safe: a word that says more than "inconclusive" needs at least
:data:`MIN_SEEDS` seeds in every arm, arms trained alike, and images the claim is about.

* **not testable on this data** comes first: a row that needs the raw radiograph (a
  single-stream configuration, a step with one, the gate's leaning) measured on a copy of
  the data whose every image was enhanced upstream.
* **too few seeds**: an arm with fewer than :data:`MIN_SEEDS` seeds.
* **confounded**: the two arms of a step differ in how they were trained (epochs run,
  early stopping, hardware, commit, data copy or encoding); what differs is named.
* **value** claims read the interval of ours minus the paper's (our seed-aware interval
  and the paper's own Wilson interval on its test support, square-and-add) in the
  direction the paper claims (:mod:`koa_core.paper`): a floor (*at least*), a ceiling
  (*at most*) or a value (*about*, symmetric). Wholly on the wrong side of 0 (below a
  floor or a value, above a ceiling): **not reproduced**, with the deviations of our runs
  listed beside it (**not comparable** only where a record measures that a deviation
  explains the gap); wholly above a floor or a value: **exceeds the paper**; otherwise
  **reproduced** where the interval stays within a tolerance no tighter than the paper's
  own 95 % sampling error on that claim (:func:`tolerance`), else **inconclusive**.
* **difference** claims (Table 5's steps) and **threshold** claims: the interval above
  the reference reproduces the claim, below it does not, across it is inconclusive.
* rows of ours that the paper never claimed read **helps**, **hurts** or
  **inconclusive**.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from koa_core.metrics.classification import Z95
from koa_core.paper import ABOUT, AT_LEAST, AT_MOST

__all__ = ["CONFOUNDED", "EXCEEDS", "Evidence", "HELPS", "HURTS", "INCONCLUSIVE",
           "MIN_SEEDS", "NOT_COMPARABLE", "NOT_REPRODUCED", "NOT_TESTABLE", "REPRODUCED",
           "RULES", "Rule", "TOLERANCE", "TOO_FEW_SEEDS", "WORDS", "judge", "paper_error",
           "tolerance"]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
EXCEEDS, NOT_COMPARABLE = "exceeds the paper", "not comparable"
NOT_TESTABLE = "not testable on this data"
HELPS, HURTS = "helps", "hurts"
TOO_FEW_SEEDS, CONFOUNDED = "too few seeds", "confounded"
WORDS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, EXCEEDS, NOT_COMPARABLE, NOT_TESTABLE,
         HELPS, HURTS, TOO_FEW_SEEDS, CONFOUNDED)

# Seeds an arm needs before a row gets a word about agreement or direction. # ours
MIN_SEEDS = 3

# The least tolerance of a value claim: 5 accuracy points, 0.05 in F1 or recall; wider
# where the paper's own 95 % sampling error on the claim is wider. # ours (the paper states
# no equivalence margin)
TOLERANCE = {"points": 5.0, "fraction": 0.05}


def paper_error(value: float, support: int, scale: float = 1.0) -> float:
    """The paper's binomial standard error: √(p(1−p)/N), in the claim's units (``scale``
    100 for percent). A figure that is not a proportion of N (an F1) gets the same
    approximation."""
    p = value / scale
    return scale * float(np.sqrt(max(p * (1 - p), 0.0) / support))


def tolerance(value: float, support: int, scale: float = 1.0) -> float:
    """A value claim's tolerance: :data:`TOLERANCE`, or the paper's own 95 % sampling
    error on the claim where that is wider (KL4 recall on 51 knees: ±0.113)."""
    base = TOLERANCE["points" if scale == 100 else "fraction"]
    return max(base, Z95 * paper_error(value, support, scale)) if support else base


@dataclass(frozen=True)
class Evidence:
    """What a verdict is read from. ``lo``/``hi``: the interval of ours minus the
    reference (the paper's value, 0 for a step, the threshold); ``seeds``: the fewest seeds
    of any arm; ``confounders``: how the arms' training differs; ``explained_by``: a
    record that measures a deviation closing the gap."""

    kind: str  # value, difference, threshold, ours
    lo: float
    hi: float
    seeds: int
    direction: str = AT_LEAST
    tol: float = 0.0
    needs_raw: bool = False
    enhanced: bool = False
    confounders: tuple[str, ...] = ()
    explained_by: str | None = None


@dataclass(frozen=True)
class Rule:
    """One row of the table: ``word`` where ``test`` holds, for claims of ``kinds``."""

    word: str
    kinds: str
    when: str
    test: Callable[[Evidence], bool]


_ALL = ("value", "difference", "threshold", "ours")


def _short(e: Evidence) -> bool:
    """On the wrong side of the paper's figure: below a floor or a value, above a
    ceiling."""
    if e.direction == AT_MOST:
        return e.lo > 0
    return e.hi < 0


def _holds(e: Evidence) -> bool:
    if e.direction == AT_LEAST:
        return e.lo >= -e.tol
    if e.direction == AT_MOST:
        return e.hi <= e.tol
    return -e.tol <= e.lo and e.hi <= e.tol


RULES: tuple[Rule, ...] = (
    Rule(NOT_TESTABLE, "every kind", "the row needs the raw radiograph (a single-stream "
         "configuration, a step with one, the gate's leaning) and its records were made on a "
         "copy whose every image was enhanced upstream",
         lambda e: e.needs_raw and e.enhanced),
    Rule(TOO_FEW_SEEDS, "every kind", f"an arm has fewer than {MIN_SEEDS} seeds",
         lambda e: e.seeds < MIN_SEEDS),
    Rule(CONFOUNDED, "steps, rows of ours", "the arms differ in how they were trained "
         "(epochs run, early stopping, hardware, commit, data copy or encoding); what "
         "differs is named", lambda e: e.kind in ("difference", "ours") and bool(e.confounders)),
    Rule(EXCEEDS, "value (at least, about)", "the interval of ours − paper lies above 0",
         lambda e: e.kind == "value" and e.direction != AT_MOST and e.lo > 0),
    Rule(NOT_COMPARABLE, "value", "on the wrong side of the paper's figure, and a record "
         "measures that a deviation of ours explains the gap",
         lambda e: e.kind == "value" and _short(e) and e.explained_by is not None),
    Rule(NOT_REPRODUCED, "value", "at least / about: the interval lies below 0; at most: "
         "above 0; the deviations of our runs are listed beside the word",
         lambda e: e.kind == "value" and _short(e)),
    Rule(REPRODUCED, "value", "at least: the interval reaches 0 and its low end is ≥ "
         "−tolerance; at most: its high end is ≤ +tolerance; about: the interval lies "
         "inside ±tolerance", lambda e: e.kind == "value" and _holds(e)),
    Rule(REPRODUCED, "step, threshold", "the interval lies above 0 (above the threshold)",
         lambda e: e.kind in ("difference", "threshold") and e.lo > 0),
    Rule(NOT_REPRODUCED, "step, threshold", "the interval lies below 0 (below the threshold)",
         lambda e: e.kind in ("difference", "threshold") and e.hi < 0),
    Rule(HELPS, "rows of ours", "the interval lies above 0",
         lambda e: e.kind == "ours" and e.lo > 0),
    Rule(HURTS, "rows of ours", "the interval lies below 0",
         lambda e: e.kind == "ours" and e.hi < 0),
    Rule(INCONCLUSIVE, "every kind", "none of the above", lambda e: True),
)


def judge(e: Evidence) -> str:
    """The verdict word: the first rule of :data:`RULES` that applies."""
    if e.kind not in _ALL or e.direction not in (AT_LEAST, AT_MOST, ABOUT):
        raise ValueError(f"judge: unknown claim kind {e.kind!r} or direction {e.direction!r}")
    finite = bool(np.isfinite(e.lo) and np.isfinite(e.hi))
    return next(r.word for r in RULES if (finite or r.word in _NO_INTERVAL) and r.test(e))


# the words a row without a finite interval can still get
_NO_INTERVAL = (NOT_TESTABLE, TOO_FEW_SEEDS, CONFOUNDED, INCONCLUSIVE)
