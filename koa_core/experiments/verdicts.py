"""The scorecard's verdict words and the rules that choose them (§3, every claim).

Every verdict is read off a seed-aware 95 % interval (:mod:`.intervals`) by one rule per
kind of claim, and :data:`RULES` states them in words wherever verdicts are shown.

* **value** claims, a figure the paper reports (accuracy 72.06 %, KL4 recall 0.784): the
  interval is of *ours minus the paper's*: each side of our interval and the paper's own
  95 % sampling error, binomial on its test support (accuracy on 1,656 knees: about ±2.2
  points), added in quadrature. Inside ±:data:`TOLERANCE` and containing 0:
  **reproduced**; containing 0 but reaching past the tolerance: **inconclusive**; above 0,
  for a one-directional claim (a recall, an accuracy: the paper claims at least this):
  **exceeds the paper**; below 0:
  **not reproduced**, unless a handicap of ours that the paper did not have (training from
  scratch against its ImageNet start, a synthetic phantom) could by itself explain the
  shortfall: then **not comparable**, with the handicap named.
* **difference** claims, one configuration beating another (Table 5's steps): the
  interval of the seed-paired difference above 0 is **reproduced**, below 0 **not
  reproduced**, containing 0 **inconclusive**; accuracy and macro F1 each get a verdict.
  Both arms share the split, initialisation and data, so no handicap applies.
* **threshold** claims (over 40 % of KL3 knees called KL2 or KL4): the interval above the
  threshold is reproduced, below it not reproduced, across it inconclusive.
* rows of ours that the paper never claimed (the gate alone, cross-attention on top of
  the gate, chapter 8's levers) read **helps**, **hurts** or **inconclusive**, never
  "reproduced".
* a claim about what the raw image and its CLAHE view each contribute, measured on a copy
  of the data that was enhanced upstream, is **not testable on this data**.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXCEEDS", "HELPS", "HURTS", "INCONCLUSIVE", "NOT_COMPARABLE", "NOT_REPRODUCED",
           "NOT_TESTABLE", "REPRODUCED", "RULES", "TOLERANCE", "WORDS", "ablation_verdict",
           "difference_verdict", "paper_error", "threshold_verdict", "value_verdict"]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
EXCEEDS, NOT_COMPARABLE = "exceeds the paper", "not comparable"
NOT_TESTABLE = "not testable on this data"
HELPS, HURTS = "helps", "hurts"
WORDS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, EXCEEDS, NOT_COMPARABLE, NOT_TESTABLE,
         HELPS, HURTS)

# How far ours may sit from the paper's figure and still reproduce it: 5 accuracy points,
# 0.05 in F1 or recall. # ours (the paper states no equivalence margin)
TOLERANCE = {"points": 5.0, "fraction": 0.05}

RULES = [
    ("value claim (a figure the paper reports)",
     "the interval of ours minus the paper's (each side of our interval and the paper's "
     "binomial 95 % sampling error on its test support, added in quadrature): inside ±5 "
     "points (±0.05) and containing 0 → reproduced; "
     "containing 0 but wider → inconclusive; above 0 → exceeds the paper; below 0 → not "
     "reproduced, or not comparable where a handicap of ours the paper did not have "
     "(training from scratch, the phantom) could explain the shortfall"),
    ("difference claim (one configuration beats another)",
     "the seed-paired difference's interval above 0 → reproduced, below 0 → not "
     "reproduced, containing 0 → inconclusive; for accuracy and for macro F1"),
    ("threshold claim", "the interval above the threshold → reproduced, below → not "
     "reproduced, across it → inconclusive"),
    ("our own rows (not claimed by the paper)", "interval above 0 → helps, below 0 → "
     "hurts, containing 0 → inconclusive"),
    ("raw against CLAHE, the gate, on an enhanced copy", "not testable on this data"),
]


def paper_error(value: float, support: int, scale: float = 1.0) -> float:
    """The paper's binomial standard error: √(p(1−p)/N), in the claim's units (``scale``
    100 for percent). A figure that is not a proportion of N (an F1) gets the same
    approximation."""
    p = value / scale
    return scale * float(np.sqrt(max(p * (1 - p), 0.0) / support))


def value_verdict(ci: list[float], tolerance: float, one_sided: bool = True,
                  handicap: str | None = None) -> str:
    """The verdict of a value claim from the interval of ours minus the paper's."""
    lo, hi = ci
    if lo > 0:
        return EXCEEDS if one_sided else NOT_REPRODUCED
    if hi < 0:
        return NOT_COMPARABLE if handicap else NOT_REPRODUCED
    return REPRODUCED if max(-lo, hi) <= tolerance else INCONCLUSIVE


def difference_verdict(ci: list[float]) -> str:
    """A claimed improvement, from the interval of our seed-paired difference."""
    if ci[0] > 0:
        return REPRODUCED
    if ci[1] < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def threshold_verdict(ci: list[float], threshold: float) -> str:
    """A claim that a figure exceeds ``threshold``."""
    return difference_verdict([ci[0] - threshold, ci[1] - threshold])


def ablation_verdict(ci: list[float]) -> str:
    """A row of ours the paper never claimed: helps, hurts or inconclusive."""
    return {REPRODUCED: HELPS, NOT_REPRODUCED: HURTS}.get(difference_verdict(ci),
                                                          INCONCLUSIVE)
